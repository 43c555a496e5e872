//! Kernel side of rst-trace: tracepoint programs that turn resets, drops and the
//! ownership-relevant moments of a socket's life into records for the agent.
//!
//! Every program reads the running kernel's layout (tracepoint field offsets and struct
//! member offsets) from the `RST_LAYOUT` global that the agent fills in at load time, so no
//! single kernel's layout is compiled in. Every event is counted in `RST_COUNTERS` before it
//! is offered to the ring buffer, so counts stay exact when records are lost.
#![no_std]
#![no_main]
// aya-ebpf's map methods take `impl Borrow<K>`; passing keys and values by reference keeps
// them in place on the 512-byte BPF stack instead of copying them into the call.
#![allow(clippy::needless_borrows_for_generic_args)]

mod clock;
mod diag;
mod emit;
mod fold;
mod hot;
mod kread;
mod layout;
mod listen_hooks;
mod mem;
mod owners;
mod resets;
mod skbdrop;
mod sockstate;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
