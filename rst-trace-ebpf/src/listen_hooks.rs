//! Listener drops on the drop path itself, for kernels that allow function hooks: the
//! SYN-time checks of `tcp_conn_request` and the ACK-time failure of `tcp_v*_syn_recv_sock`.
//! `tcp_conn_request` exists as fentry and kprobe, `tcp_v*_syn_recv_sock` as fexit; the agent attaches
//! the best one that loads. Neither kind works on every kernel (this one may lack both), in
//! which case the agent falls back to counters and drop reasons.
use core::ffi::c_void;

use aya_ebpf::{
    macros::{fentry, fexit, kprobe},
    programs::{FEntryContext, FExitContext, ProbeContext},
};
use rst_trace_common::{
    CounterFamily, ListenDropRecord, RecordKind, Tuple, LISTEN_DROP_ACK_ACCEPT_FULL,
    LISTEN_DROP_SYN_ACCEPT_FULL, LISTEN_DROP_SYN_QUEUE_FULL,
};

use crate::{
    emit::{count, deliver},
    kread::{member, sk_netns, sk_tuple},
    layout::{lay, wanted},
    resets::header,
    skbdrop::segment_tuple,
};

#[inline(always)]
fn backlog(sk: u64) -> (u32, u32) {
    (
        member::<u32>(sk, lay!(st.sk_ack_backlog)).unwrap_or(0),
        member::<u32>(sk, lay!(st.sk_max_ack_backlog)).unwrap_or(0),
    )
}

#[inline(always)]
fn emit(sk: u64, skb: u64, stage: u32, ack: u32, max: u32, qlen: u32) -> Option<()> {
    let mut seen = Tuple::default();
    segment_tuple(skb, &mut seen)?;
    // The listener's own address may be a wildcard; the segment says which address was hit.
    let mut tuple = sk_tuple(sk);
    tuple.family = seen.family;
    tuple.local_addr = seen.local_addr;
    tuple.remote_addr = seen.remote_addr;
    tuple.remote_port = seen.remote_port;
    let netns = sk_netns(sk);
    if !wanted(netns, tuple.local_port, tuple.remote_port) {
        return None;
    }
    let rec = ListenDropRecord {
        header: header(RecordKind::ListenDrop, netns),
        tuple,
        skaddr: sk,
        stage,
        ack_backlog: ack,
        max_ack_backlog: max,
        syn_qlen: qlen,
    };
    count(CounterFamily::ListenDrop, stage);
    deliver(RecordKind::ListenDrop, &rec);
    Some(())
}

/// At `tcp_conn_request` entry: the queues as the SYN finds them decide its fate.
#[inline(always)]
fn conn_request(sk: u64, skb: u64) -> Option<()> {
    let (ack, max) = backlog(sk);
    let qlen = member::<u32>(sk, lay!(st.icsk_syn_qlen)).unwrap_or(0);
    // sk_acceptq_is_full() is `ack > max`; inet_csk_reqsk_queue_is_full() is `qlen >= max`.
    let stage = if ack > max {
        LISTEN_DROP_SYN_ACCEPT_FULL
    } else if qlen >= max {
        LISTEN_DROP_SYN_QUEUE_FULL
    } else {
        return None;
    };
    emit(sk, skb, stage, ack, max, qlen)
}

#[fentry(function = "tcp_conn_request")]
pub fn tcp_conn_request_fentry(ctx: FEntryContext) -> u32 {
    let sk = ctx.arg::<*const c_void>(2) as u64;
    let skb = ctx.arg::<*const c_void>(3) as u64;
    let _ = conn_request(sk, skb);
    0
}

#[kprobe(function = "tcp_conn_request")]
pub fn tcp_conn_request_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(2), ctx.arg::<u64>(3)) {
        let _ = conn_request(sk, skb);
    }
    0
}

/// After `tcp_v*_syn_recv_sock` failed: with the accept queue full that is an ACK-time
/// overflow (kernels before 6.15 give the freed ACK no drop reason).
#[inline(always)]
fn syn_recv_failed(sk: u64, skb: u64, child: u64) -> Option<()> {
    if child != 0 {
        return None;
    }
    let (ack, max) = backlog(sk);
    if ack <= max {
        return None;
    }
    let qlen = member::<u32>(sk, lay!(st.icsk_syn_qlen)).unwrap_or(0);
    emit(sk, skb, LISTEN_DROP_ACK_ACCEPT_FULL, ack, max, qlen)
}

// tcp_v4_syn_recv_sock(sk, skb, req, dst, req_unhash, own_req) -> struct sock *
#[fexit(function = "tcp_v4_syn_recv_sock")]
pub fn tcp_v4_syn_recv_sock_fexit(ctx: FExitContext) -> u32 {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    let skb = ctx.arg::<*const c_void>(1) as u64;
    // The return value follows the six arguments (bpf_get_func_ret needs 5.17).
    let child = ctx.arg::<*const c_void>(6) as u64;
    let _ = syn_recv_failed(sk, skb, child);
    0
}

#[fexit(function = "tcp_v6_syn_recv_sock")]
pub fn tcp_v6_syn_recv_sock_fexit(ctx: FExitContext) -> u32 {
    let sk = ctx.arg::<*const c_void>(0) as u64;
    let skb = ctx.arg::<*const c_void>(1) as u64;
    let child = ctx.arg::<*const c_void>(6) as u64;
    let _ = syn_recv_failed(sk, skb, child);
    0
}
