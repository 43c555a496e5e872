//! Listener drops on the drop path itself, for kernels that allow function hooks: the
//! SYN-time checks of `tcp_conn_request` and the ACK-time failure of `tcp_v*_syn_recv_sock`.
//! Each exists as fentry/fexit and as kprobe; the agent attaches the best one that loads.
//! Neither kind works on every kernel (this one may lack both), in which case the agent falls
//! back to counters and drop reasons.
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
    kread::{accept_queue, member, sk_netns, sk_tuple},
    layout::{lay, wanted},
    resets::header,
    skbdrop::{ip_version, segment_tuple},
};

#[inline(always)]
fn backlog(sk: u64) -> (u32, u32) {
    let (ack, max) = accept_queue(sk);
    (ack.unwrap_or(0), max.unwrap_or(0))
}

#[inline(always)]
fn emit(sk: u64, skb: u64, stage: u32, ack: u32, max: u32, qlen: u32) -> Option<()> {
    let mut seen = Tuple::default();
    segment_tuple::<crate::kread::Probe>(skb, &mut seen)?;
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
    // sk_acceptq_is_full() is `ack > max`. inet_csk_reqsk_queue_is_full() was `qlen >= max`
    // until a 2025 change (backported to the stable kernels: Debian's 6.1.192 sent no cookie at
    // qlen == max) made it `qlen > max`. With `>`, a kernel of the old rule loses the boundary
    // SYN here and polling (TCPReqQFull* counters) reports it; with `>=`, a kernel of the new
    // rule would get drops that never happened.
    let stage = if ack > max {
        LISTEN_DROP_SYN_ACCEPT_FULL
    } else if qlen > max {
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

/// An IPv6 listener hands IPv4 segments (v4-mapped peers) on to `tcp_v4_syn_recv_sock`,
/// which does the overflow accounting; the IPv6 programs skip them so each drop is reported once.
#[inline(always)]
fn handed_to_v4(v6: bool, skb: u64) -> bool {
    v6 && ip_version(skb) == Some(4)
}

/// After `tcp_v*_syn_recv_sock` failed: with the accept queue full that is an ACK-time
/// overflow (kernels before 6.15 give the freed ACK no drop reason).
#[inline(always)]
fn syn_recv_failed(v6: bool, sk: u64, skb: u64, child: u64) -> Option<()> {
    if child != 0 {
        return None;
    }
    // The queue is still full after a failed call: the same test as at entry.
    syn_recv_entry(v6, sk, skb)
}

/// At `tcp_v*_syn_recv_sock` entry, for kernels whose trampolines cannot take the function
/// (x86 trampolines before 6.6 take at most six arguments; it has seven where opt_child_init
/// exists). The function's first test is `sk_acceptq_is_full()` and it fails straight away
/// when that holds, so the queue at entry decides, as at `tcp_conn_request` entry. No
/// kretprobe: nothing about the outcome is needed, and a pair would have to be matched.
#[inline(always)]
fn syn_recv_entry(v6: bool, sk: u64, skb: u64) -> Option<()> {
    if handed_to_v4(v6, skb) {
        return None;
    }
    let (ack, max) = backlog(sk);
    if ack <= max {
        return None;
    }
    let qlen = member::<u32>(sk, lay!(st.icsk_syn_qlen)).unwrap_or(0);
    emit(sk, skb, LISTEN_DROP_ACK_ACCEPT_FULL, ack, max, qlen)
}

#[kprobe]
pub fn tcp_v4_syn_recv_sock_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let _ = syn_recv_entry(false, sk, skb);
    }
    0
}

#[kprobe]
pub fn tcp_v6_syn_recv_sock_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let _ = syn_recv_entry(true, sk, skb);
    }
    0
}

// tcp_v{4,6}_syn_recv_sock(sk, skb, req, dst, req_unhash, own_req[, opt_child_init]) -> struct sock *
// The return value follows the arguments (bpf_get_func_ret needs 5.17), and the verifier only
// allows constant context offsets, so there is one program per arity: 6 arguments on older
// kernels (Debian's 5.10), 7 where the opt_child_init argument exists (6.18, and Debian's 6.1 and
// 6.12 stable kernels, where a fixed index 6 read a function pointer). The agent picks the
// program from the function's prototype in BTF.
macro_rules! syn_recv_sock_fexit {
    ($name:ident, $function:literal, $v6:literal, $ret:literal) => {
        #[fexit(function = $function)]
        pub fn $name(ctx: FExitContext) -> u32 {
            let sk = ctx.arg::<*const c_void>(0) as u64;
            let skb = ctx.arg::<*const c_void>(1) as u64;
            let child = ctx.arg::<*const c_void>($ret) as u64;
            let _ = syn_recv_failed($v6, sk, skb, child);
            0
        }
    };
}

syn_recv_sock_fexit!(
    tcp_v4_syn_recv_sock_fexit6,
    "tcp_v4_syn_recv_sock",
    false,
    6
);
syn_recv_sock_fexit!(
    tcp_v4_syn_recv_sock_fexit7,
    "tcp_v4_syn_recv_sock",
    false,
    7
);
syn_recv_sock_fexit!(tcp_v6_syn_recv_sock_fexit6, "tcp_v6_syn_recv_sock", true, 6);
syn_recv_sock_fexit!(tcp_v6_syn_recv_sock_fexit7, "tcp_v6_syn_recv_sock", true, 7);
