//! Ring buffer records as the agent decodes them: any bytes the kernel side (or a bug in it)
//! could hand over must decode or fail cleanly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rst_trace::records::fuzz_one(data);
});
