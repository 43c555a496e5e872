//! Detaching every program at once.
//!
//! Releasing a tracepoint attachment waits for RCU grace periods
//! (`tracepoint_synchronize_unregister`), about 40 ms each here, so dropping the programs one
//! after the other took 0.6–0.8 s on this 6.18 machine. Released from parallel threads, the
//! waits that the kernel does not serialise (perf-event tracepoints take a global mutex around
//! theirs) overlap: 0.4–0.45 s, which keeps an exit (on a signal, or when the output fails)
//! within a second.
use aya::programs::Program;

use crate::loader::Loaded;

/// Detaches and unloads every program of `loaded`, in parallel, then drops the rest (maps).
pub fn detach_all(mut loaded: Loaded) {
    std::thread::scope(|s| {
        for (_, p) in loaded.ebpf.programs_mut() {
            // A thread that cannot be started leaves its program to the drop below.
            let _ = std::thread::Builder::new()
                .name("detach".into())
                .spawn_scoped(s, move || unload(p));
        }
    });
    drop(loaded);
}

/// Unloads one program (its links are detached first). Unloading an already unloaded program
/// is an error aya reports and nothing else; the drop that follows does the same work anyway.
fn unload(p: &mut Program) {
    let _ = match p {
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        // The agent loads no other kinds; were one added, dropping it still detaches it.
        _ => Ok(()),
    };
}
