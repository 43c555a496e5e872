//! Syscalls, where the current task is by definition the caller: listen()'s backlog,
//! accept()'s result (ownership of accepted sockets, EMFILE/ENFILE) and connect() failures.
use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use rst_trace_common::{
    AcceptRecord, ConnectRecord, CounterFamily, RecordKind, SyscallArgs, STASH_LISTEN,
};

use crate::{
    emit::{count, deliver},
    kread::{current_fd_sock, current_task, member, sk_netns, sk_tuple, sockaddr, tp},
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

fn try_exit_accept(ctx: &TracePointContext) -> Option<()> {
    let tid = tid();
    let args: SyscallArgs = unsafe { *RST_SYSCALL_ARGS.get_ptr(tid)? };
    let _ = RST_SYSCALL_ARGS.remove(tid);
    if args.what != RecordKind::Accept as u32 {
        return None;
    }
    let ret: i64 = tp(ctx, lay!(tp.sys_exit_ret))?;
    let ret = ret as i32;
    if ret < 0 && ret != -EMFILE && ret != -ENFILE {
        // EAGAIN and friends are the normal life of a non-blocking accept loop.
        return None;
    }
    if !wanted(args.netns, args.listener.local_port, 0) {
        return None;
    }
    let mut rec = AcceptRecord {
        header: header(RecordKind::Accept, args.netns),
        task: current_task(),
        listener: args.listener,
        listener_skaddr: args.listener_skaddr,
        listen_fd: args.fd,
        ret,
        listener_ack_backlog: args.ack_backlog,
        listener_max_ack_backlog: args.max_ack_backlog,
        ..Default::default()
    };
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
    deliver(RecordKind::Accept, &rec);
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
