//! Socket state changes that tell who owns a socket and when it goes away.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use rst_trace_common::{RecordKind, SockStateRecord, SyscallArgs, STASH_LISTEN, STATE_TASK_VALID};

use crate::{
    emit::deliver,
    kread::{current_task, member, sk_netns, sk_tuple, tp},
    layout::{lay, wanted},
    resets::header,
};

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Per-thread syscall arguments between entry and exit (and listen() → state LISTEN).
#[map(name = "RST_SYSCALL_ARGS")]
pub static RST_SYSCALL_ARGS: LruHashMap<u32, SyscallArgs> = LruHashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let protocol: u16 = tp(ctx, lay!(tp.ss_protocol))?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = tp(ctx, lay!(tp.ss_oldstate))?;
    let new: i32 = tp(ctx, lay!(tp.ss_newstate))?;
    // listen() and connect() make these two transitions in the caller's own context, so
    // the current task is the owner; every other transition may run in softirq context.
    let in_caller = new == TCP_LISTEN || (old == TCP_CLOSE && new == TCP_SYN_SENT);
    let interesting = in_caller
        || old == TCP_LISTEN
        || (old == TCP_SYN_SENT && new == TCP_ESTABLISHED)
        || new == TCP_CLOSE;
    if !interesting {
        return None;
    }
    let skaddr: u64 = tp(ctx, lay!(tp.ss_skaddr))?;
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
    }
    if new == TCP_LISTEN {
        let tid = rec.task.tid;
        if let Some(args) = RST_SYSCALL_ARGS.get_ptr(tid) {
            let args: &SyscallArgs = unsafe { &*args };
            if args.what == STASH_LISTEN {
                rec.requested_backlog = args.backlog;
            }
        }
        let _ = RST_SYSCALL_ARGS.remove(tid);
        rec.max_ack_backlog = member(skaddr, lay!(st.sk_max_ack_backlog)).unwrap_or(0);
    }
    deliver(RecordKind::SockState, &rec);
    Some(())
}
