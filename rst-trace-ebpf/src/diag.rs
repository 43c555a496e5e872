//! Kernel-side diagnostics on rare failure paths, through aya-log: a record the ring buffer
//! could not take, a kernel read that faulted. Off unless the operator asks: the agent sets
//! aya-log's level global at load time, a read-only constant, so with logging off the verifier
//! removes these calls as dead code, and with it on they run only on the failure branches.
//! The target is `rst_trace_kernel` (`rst_trace_common::names::KERNEL_LOG_TARGET`).
use aya_log_ebpf::{debug, warn};
use rst_trace_common::RecordKind;

/// The ring buffer had no room: the record is lost (its count is not).
#[inline(always)]
pub fn record_lost(kind: RecordKind) {
    warn!(
        &(),
        target: "rst_trace_kernel",
        "ring buffer full: a record of kind {} was lost",
        kind as u16
    );
}

/// A kernel read at a known offset faulted (the socket's namespace, the first read of a
/// socket event: a faulting read there means a stale or wrong pointer).
#[inline(always)]
pub fn read_failed(addr: u64, errno: i32) {
    debug!(
        &(),
        target: "rst_trace_kernel",
        "kernel read at {:x} failed ({})",
        addr,
        errno
    );
}
