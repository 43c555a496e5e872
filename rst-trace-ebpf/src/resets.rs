//! RSTs the local stack sends and RSTs that arrive.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated,
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext},
};
use rst_trace_common::{
    tcp::{TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT, TCP_TIME_WAIT},
    CounterFamily, RecordHeader, RecordKind, ResetReceivedRecord, ResetSentRecord, Tuple,
    REASON_NONE, RECORD_VERSION, RST_FULLSOCK, RST_HAS_SOCK, RST_KEEPALIVE_ON, RST_LINGER_ZERO,
    SLOT_NO_REASON, TCP_SEND_RESET_REASON_ARG,
};

use crate::{
    emit::{count, deliver},
    kread::{
        arg_value, fill_tuple_state, is_fullsock_state, keepalive_on, linger_zero, member,
        sk_netns, sk_netns_cookie, sk_netns_in, sk_tuple_state, skb_netns, tcp_snapshot, Kmem,
        Probe, Typed, AF_INET6,
    },
    layout::{lay, wanted},
    owners,
    skbdrop::TCP_FLAG_RST,
};

#[inline(always)]
pub fn header(kind: RecordKind, netns: u32) -> RecordHeader {
    RecordHeader {
        kind: kind as u16,
        version: RECORD_VERSION,
        cpu: unsafe { generated::bpf_get_smp_processor_id() },
        ktime_ns: unsafe { generated::bpf_ktime_get_ns() },
        netns,
        _pad: 0,
    }
}

/// The last RST the TCP stack sent on this CPU. IPv6 sends socket-less RSTs without attaching
/// its control socket to the packet, so at the device they look like netfilter's; the stack's
/// own are recognised by their ports (the transmit follows on the same CPU).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackReset {
    pub ktime_ns: u64,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u32,
}

#[map(name = "RST_STACK_RESET")]
static RST_STACK_RESET: PerCpuArray<StackReset> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn stack_reset_sent(t: &Tuple, now: u64) {
    if let Some(slot) = RST_STACK_RESET.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, written only by programs running on this CPU.
        unsafe {
            (*slot).ktime_ns = now;
            (*slot).local_port = t.local_port;
            (*slot).remote_port = t.remote_port;
        }
    }
}

/// How long after the stack's RST its transmit may come. Natively microseconds; a guest under
/// emulation (QEMU TCG) took over a millisecond for some (IPv6 closed ports on 5.10 were
/// reported as firewall_reject besides no_listener). A match is consumed, so a longer window
/// cannot pair one stack RST with a later netfilter RST on the same ports.
const STACK_RESET_WINDOW_NS: u64 = 100_000_000;

/// Whether an RST with these ports leaving now is the one the TCP stack just sent here; the
/// slot is cleared when it is.
#[inline(always)]
pub fn sent_by_stack(local_port: u16, remote_port: u16) -> bool {
    let Some(slot) = RST_STACK_RESET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as above.
    let s = unsafe { *slot };
    let now = unsafe { generated::bpf_ktime_get_ns() };
    let hit = s.ktime_ns != 0
        && s.local_port == local_port
        && s.remote_port == remote_port
        && now.wrapping_sub(s.ktime_ns) < STACK_RESET_WINDOW_NS;
    if hit {
        // SAFETY: as above.
        unsafe { (*slot).ktime_ns = 0 };
    }
    hit
}

/// A raw tracepoint (see `inet_sock_set_state`): the classic one formats both endpoints
/// before any program runs, for every RST of a storm; the raw one passes `(sk, skb[,
/// reason])` as they are, and the endpoints are read only once the event is wanted. Used
/// where [`tcp_send_reset`] is refused.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset_raw(ctx: RawTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    // A constant position behind a test of the frozen layout: on kernels without the reason
    // argument the verifier drops the read, which attaching would otherwise refuse.
    let reason = if lay!(tp.rst_reason_arg) == TCP_SEND_RESET_REASON_ARG {
        ctx.arg::<u64>(2) as u32
    } else {
        REASON_NONE
    };
    let _ = send_reset::<Probe>(sk, sk, ctx.arg(1), reason);
    0
}

/// The same hook as a BTF tracepoint: the socket and the packet arrive typed, so the
/// endpoints and the namespace of a socket-less RST (a storm's) are plain loads; only the
/// packet's bytes take a helper call.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    let reason = if lay!(tp.rst_reason_arg) == TCP_SEND_RESET_REASON_ARG {
        ctx.arg::<u64>(2) as u32
    } else {
        REASON_NONE
    };
    let _ = send_reset::<Typed>(ctx.arg(0), arg_value(&ctx, 0), ctx.arg(1), reason);
    0
}

/// The RST's endpoints, local (its sender) first, where the classic tracepoint takes them:
/// from a full socket (`sk` as `M` reads it, `skaddr` its address as a number), else reversed
/// from the segment being answered (`skb`). Only a full socket's own RST may come without a
/// segment, so `skb` is not tested here.
#[inline(always)]
fn send_reset_tuple<M: Kmem>(sk: u64, skaddr: u64, skb: u64, fullsock: bool, t: &mut Tuple) {
    if fullsock {
        let _ = fill_tuple_state::<M>(sk, t);
        if t.local_port == 0 {
            // Closing sockets send their RST after releasing the bind hash, which zeroes
            // skc_num; inet_sport (beyond `struct sock`) stays as it was.
            t.local_port = u16::from_be(member::<u16>(skaddr, lay!(st.inet_sport)).unwrap_or(0));
        }
    } else {
        let _ = crate::skbdrop::segment_tuple::<M>(skb, t);
    }
}

/// Per-CPU room for the record being built: it and the parsed segment headers do not fit in
/// the 512-byte BPF stack together.
#[map(name = "RST_SCRATCH_RESET")]
static RST_SCRATCH_RESET: PerCpuArray<ResetSentRecord> = PerCpuArray::with_max_entries(1, 0);

/// An RST the stack sends: from socket `sk` (as `M` reads it; `skaddr` its address as a
/// number, 0 for none) in answer to segment `skb`, if any, for `reason`.
#[inline(always)]
fn send_reset<M: Kmem>(sk: u64, skaddr: u64, skb: u64, reason: u32) -> Option<()> {
    if skaddr == 0 {
        return socketless_reset::<M>(skb, reason);
    }
    let state = M::get::<u8>(sk, lay!(st.skc_state)).unwrap_or(0) as u32;
    let fullsock = is_fullsock_state(state);
    // SAFETY: a per-CPU slot, used by this program only and never across a sleep.
    let rec = unsafe { &mut *RST_SCRATCH_RESET.get_ptr_mut(0)? };
    crate::mem::zero(rec);
    // In place: the record was just zeroed, as the tuple's unused bytes must be.
    send_reset_tuple::<M>(sk, skaddr, skb, fullsock, &mut rec.tuple);
    // An RST sent on a listener (tcp_abort_on_overflow=1, bad handshake ACKs) carries the
    // listener's wildcard addresses; the segment it answers has the real connection.
    if state == TCP_LISTEN {
        let _ = crate::skbdrop::segment_tuple::<M>(skb, &mut rec.tuple);
    }
    let netns = sk_netns_in::<M>(sk);
    if !wanted(netns, rec.tuple.local_port, rec.tuple.remote_port) {
        return None;
    }
    rec.header = header(RecordKind::ResetSent, netns);
    rec.skaddr = skaddr;
    rec.state = state;
    rec.reason = reason;
    rec.flags |= RST_HAS_SOCK;
    if state == TCP_TIME_WAIT {
        owners::tw_owner_into(skaddr, rec.header.ktime_ns, &mut rec.owner);
    }
    stack_reset_sent(&rec.tuple, rec.header.ktime_ns);
    if fullsock {
        rec.flags |= RST_FULLSOCK;
        if !owners::owner_into(skaddr, state == TCP_CLOSE, &mut rec.owner) {
            rec.sock_inode = owners::sock_inode(skaddr);
        }
        tcp_snapshot(skaddr, &mut rec.snap);
        if linger_zero(&rec.snap) {
            rec.flags |= RST_LINGER_ZERO;
        }
        if keepalive_on(&rec.snap) {
            rec.flags |= RST_KEEPALIVE_ON;
        }
    }
    let family = if rec.flags & RST_LINGER_ZERO != 0 {
        CounterFamily::ResetSentLingerZero
    } else {
        CounterFamily::ResetSent
    };
    count(family, reason_slot(reason));
    deliver(RecordKind::ResetSent, &*rec);
    Some(())
}

#[inline(always)]
fn reason_slot(reason: u32) -> u32 {
    if reason == REASON_NONE {
        SLOT_NO_REASON
    } else {
        reason
    }
}

/// An RST the stack sends with no socket, in answer to segment `skb` (a closed port): what a
/// storm is made of. Counted, and folded past this CPU's record budget before anything of a
/// record is built. The tracepoint and the function hooks of older kernels both come here.
#[inline(always)]
fn socketless_reset<M: Kmem>(skb: u64, reason: u32) -> Option<()> {
    // SAFETY: a per-CPU slot, used by this program only and never across a sleep.
    let rec = unsafe { &mut *RST_SCRATCH_RESET.get_ptr_mut(0)? };
    // Only the endpoints, word by word (a tuple on the stack would be zeroed by a byte loop):
    // the segment's fields leave the rest of the addresses as they find them. The rest of the
    // record is zeroed only if it is sent.
    const TUPLE_AT: usize = core::mem::offset_of!(ResetSentRecord, tuple);
    crate::mem::zero_span(rec, TUPLE_AT, core::mem::size_of::<Tuple>());
    let flags = crate::skbdrop::segment_tuple::<M>(skb, &mut rec.tuple);
    // The stack never answers an RST: a function hook sees the call before that test.
    if flags.is_some_and(|f| f & TCP_FLAG_RST != 0) {
        return None;
    }
    let netns = skb_netns::<M>(skb);
    if !wanted(netns, rec.tuple.local_port, rec.tuple.remote_port) {
        return None;
    }
    // Only IPv6 leaves its socket-less RSTs without a socket at the device (IPv4 attaches the
    // namespace's control socket), so only IPv6 needs the mark, and its clock read.
    if rec.tuple.family == AF_INET6 {
        stack_reset_sent(&rec.tuple, unsafe { generated::bpf_ktime_get_ns() });
    }
    count(CounterFamily::ResetSent, reason_slot(reason));
    if crate::fold::sent_folded(netns, &rec.tuple, reason) {
        return Some(());
    }
    // Every member but the endpoints: a member added later fails to compile here.
    let ResetSentRecord {
        header,
        tuple: _,
        skaddr,
        state,
        reason: rec_reason,
        flags,
        _pad,
        snap,
        owner,
        sock_inode,
    } = rec;
    *header = crate::resets::header(RecordKind::ResetSent, netns);
    (*skaddr, *state, *rec_reason, *flags, *_pad, *sock_inode) = (0, 0, reason, 0, 0, 0);
    crate::mem::zero(snap);
    crate::mem::zero(owner);
    deliver(RecordKind::ResetSent, &*rec);
    Some(())
}

/// A raw tracepoint: every RST a socket receives, refused connects included, and only the
/// socket to read. Used where [`tcp_receive_reset`] is refused.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let _ = receive_reset::<Probe>(sk, sk);
    0
}

/// The same hook as a BTF tracepoint: the socket's endpoints, namespace and cookie are plain
/// loads.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    let _ = receive_reset::<Typed>(ctx.arg(0), arg_value(&ctx, 0));
    0
}

/// An RST received by socket `sk` (as `M` reads it; `skaddr` its address as a number).
#[inline(always)]
fn receive_reset<M: Kmem>(sk: u64, skaddr: u64) -> Option<()> {
    if skaddr == 0 {
        return None;
    }
    let (tuple, state) = sk_tuple_state::<M>(sk);
    // The cookie the socket already has: the classic tracepoint generated one for every
    // socket it saw; a cookie nobody asked for before (sock_diag, SO_COOKIE, BPF) is 0.
    let (netns, sock_cookie) = sk_netns_cookie::<M>(sk);
    if !wanted(netns, tuple.local_port, tuple.remote_port) {
        return None;
    }
    if state as u32 == TCP_SYN_SENT {
        return refusal(skaddr, &tuple, netns, sock_cookie);
    }
    let mut rec = ResetReceivedRecord {
        header: header(RecordKind::ResetReceived, netns),
        tuple,
        skaddr,
        sock_cookie,
        state: state as u32,
        ..Default::default()
    };
    if is_fullsock_state(state as u32) {
        tcp_snapshot(skaddr, &mut rec.snap);
        if !owners::owner_into(skaddr, false, &mut rec.owner) {
            rec.sock_inode = owners::sock_inode(skaddr);
        }
    }
    count(CounterFamily::ResetReceived, state as u32);
    deliver(RecordKind::ResetReceived, &rec);
    Some(())
}

/// Per-CPU room for a refusal's record: the receive program's other record is on its stack,
/// and both do not fit there.
#[map(name = "RST_SCRATCH_REFUSAL")]
static RST_SCRATCH_REFUSAL: PerCpuArray<ResetReceivedRecord> = PerCpuArray::with_max_entries(1, 0);

/// The socket whose connect() an RST just refused on this CPU, and the tick it was: its change
/// to CLOSE follows at once (tcp_reset closes it after tracing), and the state-change program
/// needs no read of the socket to know it is no failed port allocation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct JustRefused {
    skaddr: u64,
    jiffies: u64,
}

#[map(name = "RST_JUST_REFUSED")]
static RST_JUST_REFUSED: PerCpuArray<JustRefused> = PerCpuArray::with_max_entries(1, 0);

/// Whether socket `skaddr`, changing from SYN_SENT to CLOSE, is the one an RST refused just
/// before on this CPU. The mark is consumed: a later socket at the same address (freed
/// sockets' memory is reused at once) is judged by its own reads. A mark whose change to
/// CLOSE was never seen (the state-change program skipped as a nested run) is no longer
/// believed a tick later.
#[inline(always)]
pub fn refused_just_now(skaddr: u64) -> bool {
    let Some(m) = RST_JUST_REFUSED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot; the refusal and its change to CLOSE run in one call chain on
    // this CPU.
    unsafe {
        if (*m).skaddr != skaddr {
            return false;
        }
        (*m).skaddr = 0;
        (*m).jiffies == generated::bpf_jiffies64()
    }
}

/// An RST that refused a connect() (socket `skaddr` in SYN_SENT, endpoints `t`): what a storm
/// of refusals is made of. It has no data, no idle time and no linger to show, so no snapshot;
/// past this CPU's record budget it is folded under its owner before a record is built.
#[inline(always)]
fn refusal(skaddr: u64, t: &Tuple, netns: u32, sock_cookie: u64) -> Option<()> {
    if let Some(m) = RST_JUST_REFUSED.get_ptr_mut(0) {
        // SAFETY: as in `refused_just_now`.
        unsafe {
            (*m).skaddr = skaddr;
            (*m).jiffies = generated::bpf_jiffies64();
        }
    }
    // SAFETY: a per-CPU slot, used by this program only and never across a sleep (a run that
    // would interrupt this one on the same CPU is not made).
    let rec = unsafe { &mut *RST_SCRATCH_REFUSAL.get_ptr_mut(0)? };
    // Only the owner is zeroed now (a miss leaves it so); the rest only if the record is sent.
    crate::mem::zero(&mut rec.owner);
    let found = owners::owner_into(skaddr, false, &mut rec.owner);
    count(CounterFamily::ResetReceived, TCP_SYN_SENT);
    if found && crate::fold::refusal_folded(netns, t, &rec.owner) {
        return Some(());
    }
    // Every member but the owner: a member added later fails to compile here.
    let ResetReceivedRecord {
        header,
        tuple,
        skaddr: rec_skaddr,
        sock_cookie: rec_cookie,
        state,
        _pad,
        snap,
        owner: _,
        sock_inode,
    } = rec;
    *header = crate::resets::header(RecordKind::ResetReceived, netns);
    *tuple = *t;
    (*rec_skaddr, *rec_cookie, *state, *_pad) = (skaddr, sock_cookie, TCP_SYN_SENT, 0);
    crate::mem::zero(snap);
    *sock_inode = if found { 0 } else { owners::sock_inode(skaddr) };
    deliver(RecordKind::ResetReceived, &*rec);
    Some(())
}

/// An RST seen at `tcp_v4/v6_send_reset` entry, for kernels whose `tcp_send_reset` tracepoint
/// fires only for full sockets (before 6.10: `if (sk_fullsock(sk))`): RSTs with no socket (no
/// listener) and RSTs from a TIME_WAIT or request socket. Full sockets are left to the
/// tracepoint; an incoming RST is never answered, so it is skipped.
#[inline(always)]
fn function_reset(sk: u64, skb: u64) -> Option<()> {
    if skb == 0 {
        return None;
    }
    if sk == 0 {
        return socketless_reset::<Probe>(skb, REASON_NONE);
    }
    let state = member::<u8>(sk, lay!(st.skc_state)).unwrap_or(0) as u32;
    if is_fullsock_state(state) {
        return None;
    }
    // SAFETY: a per-CPU slot, used by this program only and never across a sleep.
    let rec = unsafe { &mut *RST_SCRATCH_RESET.get_ptr_mut(0)? };
    crate::mem::zero(rec);
    let flags = crate::skbdrop::segment_tuple::<Probe>(skb, &mut rec.tuple)?;
    if flags & TCP_FLAG_RST != 0 {
        return None;
    }
    let netns = sk_netns(sk);
    if !wanted(netns, rec.tuple.local_port, rec.tuple.remote_port) {
        return None;
    }
    rec.header = header(RecordKind::ResetSent, netns);
    rec.reason = REASON_NONE;
    rec.skaddr = sk;
    rec.state = state;
    rec.flags |= RST_HAS_SOCK;
    if state == TCP_TIME_WAIT {
        owners::tw_owner_into(sk, rec.header.ktime_ns, &mut rec.owner);
    }
    stack_reset_sent(&rec.tuple, rec.header.ktime_ns);
    count(CounterFamily::ResetSent, SLOT_NO_REASON);
    deliver(RecordKind::ResetSent, &*rec);
    Some(())
}

#[fentry(function = "tcp_v4_send_reset")]
pub fn tcp_v4_send_reset_fentry(ctx: FEntryContext) -> u32 {
    let _ = function_reset(
        ctx.arg::<*const c_void>(0) as u64,
        ctx.arg::<*const c_void>(1) as u64,
    );
    0
}

#[fentry(function = "tcp_v6_send_reset")]
pub fn tcp_v6_send_reset_fentry(ctx: FEntryContext) -> u32 {
    let _ = function_reset(
        ctx.arg::<*const c_void>(0) as u64,
        ctx.arg::<*const c_void>(1) as u64,
    );
    0
}

#[kprobe]
pub fn send_reset_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let _ = function_reset(sk, skb);
    }
    0
}
