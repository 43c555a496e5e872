//! Socket state changes: where owners are learnt and forgotten. Every TCP state change of every
//! socket passes here, so the common transitions leave after reading the two states, and only
//! listeners (rare) and failed port allocations (a problem) send a record.
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use rst_trace_common::{
    errno::EADDRNOTAVAIL, ConnectRecord, CounterFamily, RecordKind, SockStateRecord, SyscallArgs,
    TcpState, OWNER_CONNECT, OWNER_LISTEN, STASH_LISTEN, STASH_SLOTS, STATE_TASK_VALID,
};

use crate::{
    emit::{count, deliver},
    kread::{current_task, member, sk_netns, sk_tuple, syscall_arg},
    layout::{lay, wanted},
    owners,
    resets::header,
};

const IPPROTO_TCP: u16 = 6;
// The states as the tracepoint's `int` fields hold them (values from rst-trace-common).
const TCP_SYN_SENT: i32 = TcpState::SynSent as i32;
const TCP_SYN_RECV: i32 = TcpState::SynRecv as i32;
const TCP_FIN_WAIT1: i32 = TcpState::FinWait1 as i32;
const TCP_FIN_WAIT2: i32 = TcpState::FinWait2 as i32;
const TCP_CLOSE: i32 = TcpState::Close as i32;
const TCP_LISTEN: i32 = TcpState::Listen as i32;
const TCP_CLOSING: i32 = TcpState::Closing as i32;

/// Per-thread syscall arguments between entry and exit (and listen() → state LISTEN).
#[map(name = "RST_SYSCALL_ARGS")]
pub static RST_SYSCALL_ARGS: Array<SyscallArgs> = Array::with_max_entries(STASH_SLOTS, 0);

/// The calling thread's stash slot, and whether it still holds this thread's arguments.
#[inline(always)]
pub fn stash(tid: u32) -> Option<*mut SyscallArgs> {
    RST_SYSCALL_ARGS.get_ptr_mut(tid & (STASH_SLOTS - 1))
}

/// A raw tracepoint: the classic one formats a record (addresses, ports, family) for each of
/// a connection's ten or so state changes before any program runs, and its fields can only be
/// read through a helper call, as their offsets are known at load time. The raw one passes
/// `(sk, oldstate, newstate)` as they are, which the common transitions read and leave.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Option<()> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // The transitions of an established connection's life need nothing: leave before any
    // other read.
    if new != TCP_CLOSE && new != TCP_LISTEN && old != TCP_LISTEN && new != TCP_SYN_SENT {
        return None;
    }
    let skaddr: u64 = ctx.arg(0);
    // First the transitions only TCP makes (SCTP, which changes states here too, has no
    // SYN_SENT or SYN_RECV; MPTCP's subflows are TCP), and closes, which act only on an owner
    // entry: no read of the protocol for them.
    match (old, new) {
        // A child socket is born as a clone of its listener (inet_csk_clone_lock). An entry
        // an earlier socket at the same address left behind is not its own: the child's
        // accept() overwrites it, and its close drops it (`owners::closed`), before the abort
        // RST that would read it.
        (TCP_LISTEN, TCP_SYN_RECV) => return crate::hot::child_born(skaddr),
        // Nothing changes, and a closed entry here is this socket's own, for its abort RST.
        (TCP_CLOSE, TCP_CLOSE) => return None,
        (TCP_SYN_SENT, TCP_CLOSE) => {
            // Still in connect(): no local port could be found (inet_hash_connect failed). The
            // source port, not skc_num: recent kernels trace CLOSE after releasing the bind
            // hash, which zeroes skc_num of every closing socket; inet_sport stays as it was.
            // A refused connect (a storm's) had its port: no read for it.
            if !crate::resets::refused_just_now(skaddr)
                && member::<u16>(skaddr, lay!(st.inet_sport)).unwrap_or(1) == 0
            {
                port_exhausted(skaddr);
            }
            // A connection that never left SYN_SENT sends no RST on its way out (tcp_disconnect
            // and tcp_close reset only synchronised states), and a refusing RST was read
            // before this change (tcp_reset traces it, then closes): nothing is left to own.
            owners::forget(skaddr);
            return None;
        }
        // connect() runs this in the caller's context, before the local port is chosen.
        // Besides TCP only MPTCP's own socket connects through this state (its subflows are
        // TCP): an owner entry for it is never read, and goes at its close, so no read of
        // the protocol for every connect.
        (TCP_CLOSE, TCP_SYN_SENT) => {
            owners::learn(skaddr, OWNER_CONNECT);
            return None;
        }
        (TCP_LISTEN, _) => {}
        (_, TCP_CLOSE) => {
            return owners::closed(
                skaddr,
                old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2 || old == TCP_CLOSING,
            );
        }
        _ => {}
    }
    // MPTCP's subflows are TCP; SCTP changes states here too. Unknown offset: take it as TCP.
    let protocol: u16 = member(skaddr, lay!(st.sk_protocol)).unwrap_or(IPPROTO_TCP);
    if protocol != IPPROTO_TCP {
        return None;
    }
    match (old, new) {
        // listen() runs this in the caller's context.
        (_, TCP_LISTEN) => {
            owners::learn(skaddr, OWNER_LISTEN);
            listener_record(skaddr, old, new, true)
        }
        (TCP_LISTEN, _) => {
            let r = listener_record(skaddr, old, new, false);
            owners::closed(skaddr, false);
            r
        }
        _ => None,
    }
}

/// A listener started (`in_caller`: listen() is running) or stopped listening.
#[inline(always)]
fn listener_record(skaddr: u64, old: i32, new: i32, in_caller: bool) -> Option<()> {
    let tuple = sk_tuple(skaddr);
    let netns = sk_netns(skaddr);
    if !wanted(netns, tuple.local_port, tuple.remote_port) {
        return None;
    }
    let mut rec = SockStateRecord {
        header: header(RecordKind::SockState, netns),
        tuple,
        skaddr,
        old_state: old as u32,
        new_state: new as u32,
        ..Default::default()
    };
    if in_caller {
        rec.flags |= STATE_TASK_VALID;
        rec.task = current_task();
        rec.requested_backlog = requested_backlog(rec.task.tid).unwrap_or(0);
        rec.max_ack_backlog = member(skaddr, lay!(st.sk_max_ack_backlog)).unwrap_or(0);
        rec.sock_inode = owners::sock_inode(skaddr);
    }
    deliver(RecordKind::SockState, &rec);
    Some(())
}

/// The backlog the caller passed to listen(), which is running: from its saved registers
/// where the kernel hands them over, else as `__sys_listen` or sys_enter_listen kept it. A
/// listen that io_uring or the kernel itself runs passes none.
#[inline(always)]
fn requested_backlog(tid: u32) -> Option<u32> {
    if let Some(nr) = syscall_arg(lay!(st.regs_syscall_nr)) {
        if nr as u32 != lay!(st.listen_syscall_nr) {
            return None;
        }
        return syscall_arg(lay!(st.regs_arg1)).map(|b| b as u32);
    }
    let args = stash(tid)?;
    // SAFETY: an array slot, valid for this run.
    let args: &mut SyscallArgs = unsafe { &mut *args };
    if args.tid != tid || args.what != STASH_LISTEN {
        return None;
    }
    args.what = 0;
    Some(args.backlog)
}

/// connect() found no free local port for this destination: EADDRNOTAVAIL, in the caller's
/// context (the socket falls back to CLOSE before connect() returns).
#[inline(always)]
fn port_exhausted(skaddr: u64) -> Option<()> {
    let mut tuple = sk_tuple(skaddr);
    // The destination is set; the local side is not chosen yet.
    tuple.local_port = 0;
    let netns = sk_netns(skaddr);
    if !wanted(netns, 0, tuple.remote_port) {
        return None;
    }
    let rec = ConnectRecord {
        header: header(RecordKind::Connect, netns),
        task: current_task(),
        tuple,
        fd: -1,
        ret: -EADDRNOTAVAIL,
    };
    count(CounterFamily::Connect, EADDRNOTAVAIL as u32);
    deliver(RecordKind::Connect, &rec);
    Some(())
}
