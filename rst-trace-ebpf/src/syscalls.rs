//! Syscalls, where the current task is by definition the caller: listen()'s backlog and
//! accept()'s result (ownership of accepted sockets, EMFILE/ENFILE).
use aya_ebpf::{
    macros::{fentry, fexit, map, tracepoint},
    maps::PerCpuArray,
    programs::{FEntryContext, FExitContext, TracePointContext},
    EbpfContext,
};
use rst_trace_common::{
    errno::{EMFILE, ENFILE},
    AcceptRecord, CounterFamily, RecordKind, SyscallArgs, Tuple, STASH_LISTEN,
};

use crate::{
    emit::{count, deliver},
    kread::{
        accept_queue, arg_value, current_fd_sock, current_task, fill_tuple, sk_netns, syscall_arg,
        tp,
    },
    layout::{lay, wanted},
    owners,
    resets::header,
    sockstate::stash,
};

#[inline(always)]
fn tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let fd: u64 = tp(&ctx, lay!(tp.sys_enter_fd)).unwrap_or(0);
    let backlog: u64 = tp(&ctx, lay!(tp.sys_enter_listen_backlog)).unwrap_or(0);
    stash_listen(fd as i32, backlog as u32);
    0
}

/// listen()'s arguments where BPF trampolines work: `__sys_listen(fd, backlog)` is what the
/// syscall calls. Unlike a syscall tracepoint, it costs nothing to the host's other syscalls.
#[fentry(function = "__sys_listen")]
pub fn sys_listen_fentry(ctx: FEntryContext) -> u32 {
    stash_listen(ctx.arg::<i32>(0), ctx.arg::<i32>(1) as u32);
    0
}

/// Kept for the state change to LISTEN that follows in the same call: the backlog asked for,
/// before `net.core.somaxconn` caps it.
#[inline(always)]
fn stash_listen(fd: i32, backlog: u32) {
    let tid = tid();
    if let Some(slot) = stash(tid) {
        // SAFETY: an array slot, valid for this run.
        unsafe {
            *slot = SyscallArgs {
                tid,
                what: STASH_LISTEN,
                fd,
                backlog,
            }
        };
    }
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = try_enter_accept(&ctx);
    0
}

/// Only the listening fd is kept: the listener is looked at again only if accept() fails with
/// EMFILE/ENFILE, so a successful accept pays for one map update here.
fn try_enter_accept(ctx: &TracePointContext) -> Option<()> {
    let fd: u64 = tp(ctx, lay!(tp.sys_enter_fd))?;
    let tid = tid();
    let slot = stash(tid)?;
    // SAFETY: an array slot, valid for this run.
    unsafe {
        *slot = SyscallArgs {
            tid,
            what: RecordKind::Accept as u32,
            fd: fd as i32,
            backlog: 0,
        }
    };
    Some(())
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_exit_accept(&ctx);
    0
}

/// Where every kernel's syscall exit record has `long ret`: after the 8-byte common header and
/// the `int __syscall_nr` (padded to 8).
const SYS_EXIT_RET_OFFSET: u16 = 16;

/// The syscall's result. A load from the record at a constant offset is a plain load (the
/// verifier refuses a context offset known only at load time, so those go through a helper
/// call); the layout read from tracefs says whether `ret` is where every kernel has had it, and
/// the verifier keeps only the branch it chooses.
#[inline(always)]
fn sys_exit_ret(ctx: &TracePointContext) -> Option<i64> {
    if lay!(tp.sys_exit_ret) == SYS_EXIT_RET_OFFSET {
        // SAFETY: inside the record, which the verifier checks against the tracepoint's size.
        return Some(unsafe {
            core::ptr::read(
                (ctx.as_ptr() as *const u8).add(SYS_EXIT_RET_OFFSET as usize) as *const i64,
            )
        });
    }
    tp(ctx, lay!(tp.sys_exit_ret))
}

fn try_exit_accept(ctx: &TracePointContext) -> Option<()> {
    let ret = sys_exit_ret(ctx)? as i32;
    if ret >= 0 || !fd_limit(ret) {
        return accept_returned(ret, -1);
    }
    // The listening fd is still in the registers saved at entry; where the kernel cannot hand
    // them over, sys_enter_accept kept it.
    if let Some(fd) = syscall_arg(lay!(st.regs_arg0)) {
        return accept_returned(ret, fd as i32);
    }
    let tid = tid();
    let args = stash(tid)?;
    // SAFETY: an array slot; `tid` tells whether another thread took it over meanwhile.
    let (owner_tid, what, fd) = unsafe { ((*args).tid, (*args).what, (*args).fd) };
    let fd = if owner_tid == tid && what == RecordKind::Accept as u32 {
        fd
    } else {
        -1
    };
    accept_returned(ret, fd)
}

/// accept() and accept4() where BPF trampolines work: `__sys_accept4(fd, addr, addrlen,
/// flags)` is what both syscalls call, and its exit sees the listening fd and the result
/// together, so no entry hook is needed. An fexit has no limit on calls blocked in it (a
/// kretprobe has), which matters for accept().
#[fexit(function = "__sys_accept4")]
pub fn sys_accept4_fexit(ctx: FExitContext) -> u32 {
    let _ = accept_returned(ctx.arg::<i32>(4), ctx.arg::<i32>(0));
    0
}

#[inline(always)]
fn fd_limit(ret: i32) -> bool {
    ret == -EMFILE || ret == -ENFILE
}

/// Per-CPU room for the accept record: with the stashed arguments it does not fit the
/// combined stack older verifiers (5.10, 6.1) allow across the helper calls.
#[map(name = "RST_SCRATCH_ACCEPT")]
static RST_SCRATCH_ACCEPT: PerCpuArray<AcceptRecord> = PerCpuArray::with_max_entries(1, 0);

/// accept() on listening fd `listen_fd` (-1: unknown) returned `ret`.
#[inline(always)]
fn accept_returned(ret: i32, listen_fd: i32) -> Option<()> {
    if ret >= 0 {
        // Where inet_csk_accept is hooked, the child is owned there, in the same context.
        if !accept_via_function() {
            owners::accepted(current_fd_sock(ret));
        }
        return None;
    }
    // EAGAIN and friends are the normal life of a non-blocking accept loop. The stash is left
    // for the thread's next syscall entry to overwrite.
    if !fd_limit(ret) {
        return None;
    }
    let listener = current_fd_sock(listen_fd);
    let netns = sk_netns(listener);
    // SAFETY: a per-CPU slot used by this program only, never across a sleep.
    let rec = unsafe { &mut *RST_SCRATCH_ACCEPT.get_ptr_mut(0)? };
    fill_tuple(listener, &mut rec.listener);
    if !wanted(netns, rec.listener.local_port, 0) {
        return None;
    }
    rec.header = header(RecordKind::Accept, netns);
    rec.task = current_task();
    rec.ret = ret;
    rec.listener_skaddr = listener;
    rec.listen_fd = listen_fd;
    let (ack, max) = accept_queue(listener);
    rec.listener_ack_backlog = ack.unwrap_or(0);
    rec.listener_max_ack_backlog = max.unwrap_or(0);
    rec.conn = Tuple::default();
    rec.conn_skaddr = 0;
    count(CounterFamily::Accept, (-ret) as u32);
    deliver(RecordKind::Accept, &*rec);
    Some(())
}

/// Flags the agent sets after attaching, at index [`RUNTIME_ACCEPT_VIA_FUNCTION`]: 1 when
/// `inet_csk_accept` is hooked, so successful accepts are reported there and not twice.
#[map(name = "RST_RUNTIME")]
pub static RST_RUNTIME: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::with_max_entries(4, 0);

#[inline(always)]
pub fn accept_via_function() -> bool {
    RST_RUNTIME
        .get(rst_trace_common::RUNTIME_ACCEPT_VIA_FUNCTION)
        .is_some_and(|v| *v != 0)
}

/// A socket `inet_csk_accept` hands to the calling process: ownership learnt where the
/// kernel creates it, in the acceptor's own context.
#[inline(always)]
fn accepted(child: u64) -> Option<()> {
    if child == 0 {
        return None;
    }
    owners::accepted(child);
    Some(())
}

// inet_csk_accept(sk, arg) on ≥ 6.10; (sk, flags, err, kern) before: the agent loads the
// program whose arity matches the kernel's BTF. The child, typed, comes as a number: its
// owner's place in the cache is a hash of its address.
#[aya_ebpf::macros::fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit2(ctx: aya_ebpf::programs::FExitContext) -> u32 {
    let _ = accepted(arg_value(&ctx, 2));
    0
}

#[aya_ebpf::macros::fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit4(ctx: aya_ebpf::programs::FExitContext) -> u32 {
    let _ = accepted(arg_value(&ctx, 4));
    0
}

#[aya_ebpf::macros::kretprobe]
pub fn inet_csk_accept_kretprobe(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
    let child: u64 = ctx.ret();
    let _ = accepted(child);
    0
}
