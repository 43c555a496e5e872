//! Syscalls, where the current task is by definition the caller: listen()'s backlog,
//! accept()'s result (ownership of accepted sockets, EMFILE/ENFILE) and connect() failures.
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use rst_trace_common::{
    AcceptRecord, ConnectRecord, CounterFamily, RecordKind, SyscallArgs, Tuple, STASH_LISTEN,
};

use crate::{
    emit::{count, deliver},
    kread::{current_fd_sock, current_task, fill_tuple, member, sk_netns, sk_tuple, sockaddr, tp},
    layout::{lay, wanted},
    resets::header,
    sockstate::RST_SYSCALL_ARGS,
};

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const EADDRNOTAVAIL: i32 = 99;

#[inline(always)]
fn tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    let fd: u64 = tp(&ctx, lay!(tp.sys_enter_fd)).unwrap_or(0);
    let backlog: u64 = tp(&ctx, lay!(tp.sys_enter_listen_backlog)).unwrap_or(0);
    let args = SyscallArgs {
        what: STASH_LISTEN,
        fd: fd as i32,
        backlog: backlog as u32,
        ..Default::default()
    };
    let _ = RST_SYSCALL_ARGS.insert(tid(), args, 0);
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = try_enter_accept(&ctx);
    0
}

fn try_enter_accept(ctx: &TracePointContext) -> Option<()> {
    let fd: u64 = tp(ctx, lay!(tp.sys_enter_fd))?;
    let fd = fd as i32;
    let sk = current_fd_sock(fd);
    let mut args = SyscallArgs {
        what: RecordKind::Accept as u32,
        fd,
        listener_skaddr: sk,
        ..Default::default()
    };
    if sk != 0 {
        args.listener = sk_tuple(sk);
        args.netns = sk_netns(sk);
        args.ack_backlog = member(sk, lay!(st.sk_ack_backlog)).unwrap_or(0);
        args.max_ack_backlog = member(sk, lay!(st.sk_max_ack_backlog)).unwrap_or(0);
    }
    RST_SYSCALL_ARGS.insert(tid(), args, 0).ok()
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_exit_accept(&ctx);
    0
}

/// Per-CPU room for the accept record: with the stashed arguments it does not fit the
/// combined stack older verifiers (5.10, 6.1) allow across the helper calls.
#[map(name = "RST_SCRATCH_ACCEPT")]
static RST_SCRATCH_ACCEPT: PerCpuArray<AcceptRecord> = PerCpuArray::with_max_entries(1, 0);

fn try_exit_accept(ctx: &TracePointContext) -> Option<()> {
    let tid = tid();
    let args = RST_SYSCALL_ARGS.get_ptr(tid)?;
    // SAFETY: per-thread entry, written only by this thread's syscall entry.
    let (what, netns, listener_port) =
        unsafe { ((*args).what, (*args).netns, (*args).listener.local_port) };
    if what != RecordKind::Accept as u32 {
        let _ = RST_SYSCALL_ARGS.remove(tid);
        return None;
    }
    let ret: i64 = tp(ctx, lay!(tp.sys_exit_ret)).unwrap_or(-1);
    let ret = ret as i32;
    // Successful accepts come from inet_csk_accept when it is hooked.
    let skip_success = ret >= 0 && accept_via_function();
    if skip_success
        || (ret < 0 && ret != -EMFILE && ret != -ENFILE)
        || !wanted(netns, listener_port, 0)
    {
        // EAGAIN and friends are the normal life of a non-blocking accept loop.
        let _ = RST_SYSCALL_ARGS.remove(tid);
        return None;
    }
    // SAFETY: a per-CPU slot used by this program only, never across a sleep.
    let rec = unsafe { &mut *RST_SCRATCH_ACCEPT.get_ptr_mut(0)? };
    unsafe {
        rec.listener = (*args).listener;
        rec.listener_skaddr = (*args).listener_skaddr;
        rec.listen_fd = (*args).fd;
        rec.listener_ack_backlog = (*args).ack_backlog;
        rec.listener_max_ack_backlog = (*args).max_ack_backlog;
    }
    let _ = RST_SYSCALL_ARGS.remove(tid);
    rec.header = header(RecordKind::Accept, netns);
    rec.task = current_task();
    rec.ret = ret;
    rec.conn = Tuple::default();
    rec.conn_skaddr = 0;
    if ret >= 0 {
        let sk = current_fd_sock(ret);
        rec.conn_skaddr = sk;
        if sk != 0 {
            rec.conn = sk_tuple(sk);
        }
    }
    count(
        CounterFamily::Accept,
        if ret < 0 { (-ret) as u32 } else { 0 },
    );
    deliver(RecordKind::Accept, &*rec);
    Some(())
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_enter_connect(&ctx);
    0
}

fn try_enter_connect(ctx: &TracePointContext) -> Option<()> {
    let fd: u64 = tp(ctx, lay!(tp.sys_enter_fd))?;
    let uaddr: u64 = tp(ctx, lay!(tp.sys_enter_connect_uservaddr))?;
    let mut raw = [0u8; 28];
    // A sockaddr_in is 16 bytes; read that much first so short IPv4 buffers still work.
    let head: [u8; 16] = unsafe { bpf_probe_read_user(uaddr as *const [u8; 16]) }.ok()?;
    raw[..16].copy_from_slice(&head);
    if let Ok(tail) = unsafe { bpf_probe_read_user((uaddr + 16) as *const [u8; 12]) } {
        raw[16..].copy_from_slice(&tail);
    }
    let mut args = SyscallArgs {
        what: RecordKind::Connect as u32,
        fd: fd as i32,
        ..Default::default()
    };
    args.listener.family = sockaddr(
        &raw,
        &mut args.listener.remote_addr,
        &mut args.listener.remote_port,
    );
    let sk = current_fd_sock(fd as i32);
    if sk != 0 {
        args.netns = sk_netns(sk);
    }
    RST_SYSCALL_ARGS.insert(tid(), args, 0).ok()
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = try_exit_connect(&ctx);
    0
}

fn try_exit_connect(ctx: &TracePointContext) -> Option<()> {
    let tid = tid();
    let args: SyscallArgs = unsafe { *RST_SYSCALL_ARGS.get_ptr(tid)? };
    let _ = RST_SYSCALL_ARGS.remove(tid);
    if args.what != RecordKind::Connect as u32 {
        return None;
    }
    let ret: i64 = tp(ctx, lay!(tp.sys_exit_ret))?;
    let ret = ret as i32;
    if ret != -EADDRNOTAVAIL {
        return None;
    }
    if !wanted(args.netns, 0, args.listener.remote_port) {
        return None;
    }
    let rec = ConnectRecord {
        header: header(RecordKind::Connect, args.netns),
        task: current_task(),
        tuple: args.listener,
        fd: args.fd,
        ret,
    };
    count(CounterFamily::Connect, (-ret) as u32);
    deliver(RecordKind::Connect, &rec);
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
fn accepted(listener: u64, child: u64) -> Option<()> {
    if child == 0 {
        return None;
    }
    let netns = sk_netns(child);
    let local_port = member::<u16>(child, lay!(st.skc_num)).unwrap_or(0);
    if !wanted(netns, local_port, 0) {
        return None;
    }
    let rec = unsafe { &mut *RST_SCRATCH_ACCEPT.get_ptr_mut(0)? };
    rec.header = header(RecordKind::Accept, netns);
    rec.task = current_task();
    // Filled in place in the scratch record: see fill_tuple.
    fill_tuple(child, &mut rec.conn);
    fill_tuple(
        if listener != 0 { listener } else { child },
        &mut rec.listener,
    );
    rec.listener_skaddr = listener;
    rec.listener_ack_backlog = member(listener, lay!(st.sk_ack_backlog)).unwrap_or(0);
    rec.listener_max_ack_backlog = member(listener, lay!(st.sk_max_ack_backlog)).unwrap_or(0);
    rec.conn_skaddr = child;
    rec.listen_fd = -1;
    rec.ret = 0;
    count(CounterFamily::Accept, 0);
    deliver(RecordKind::Accept, &*rec);
    Some(())
}

// inet_csk_accept(sk, arg) on ≥ 6.10; (sk, flags, err, kern) before: the agent loads the
// program whose arity matches the kernel's BTF.
#[aya_ebpf::macros::fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit2(ctx: aya_ebpf::programs::FExitContext) -> u32 {
    let _ = accepted(
        ctx.arg::<*const core::ffi::c_void>(0) as u64,
        ctx.arg::<*const core::ffi::c_void>(2) as u64,
    );
    0
}

#[aya_ebpf::macros::fexit(function = "inet_csk_accept")]
pub fn inet_csk_accept_fexit4(ctx: aya_ebpf::programs::FExitContext) -> u32 {
    let _ = accepted(
        ctx.arg::<*const core::ffi::c_void>(0) as u64,
        ctx.arg::<*const core::ffi::c_void>(4) as u64,
    );
    0
}

#[aya_ebpf::macros::kretprobe]
pub fn inet_csk_accept_kretprobe(ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
    let child: u64 = ctx.ret();
    let _ = accepted(0, child);
    0
}
