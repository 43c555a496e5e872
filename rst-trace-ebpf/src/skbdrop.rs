//! TCP segments the kernel frees with a drop reason the agent asked for (ACK-time accept
//! queue overflow, netfilter drops, ...). The reasons to watch come from the agent, which
//! reads their values from the running kernel's BTF.
use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use rst_trace_common::{
    CounterFamily, ForeignResetRecord, RecordKind, SkbDropRecord, TcpState, Tuple, WatchedDrop,
    KFREE_SKB_REASON_ARG, KFREE_SKB_RX_SK_ARG, MAX_DROP_REASONS, SKB_OUTBOUND, SKB_TUPLE_VALID,
};

use crate::{
    emit::{count, deliver},
    kread::{
        accept_queue, member, sk_netns, skb_netns, skb_network_header, Kmem, Probe, Typed, AF_INET,
        AF_INET6,
    },
    layout::{lay, wanted},
    owners,
    resets::header,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

const SLOT_NO_SOCKET: u32 = WatchedDrop::NoSocket.slot();
const TCP_LISTEN: u8 = TcpState::Listen as u8;

/// A listening socket whose accept queue is over its cap.
#[inline(always)]
fn full_listener(sk: u64) -> bool {
    if sk == 0 {
        return false;
    }
    let state: u8 = member(sk, lay!(st.skc_state)).unwrap_or(0);
    let (ack, max) = accept_queue(sk);
    state == TCP_LISTEN && ack.unwrap_or(0) > max.unwrap_or(u32::MAX)
}

/// Per-CPU room for the record: with the owner it no longer fits the BPF stack beside the
/// parsed headers.
#[map(name = "RST_SCRATCH_DROP")]
static RST_SCRATCH_DROP: PerCpuArray<SkbDropRecord> = PerCpuArray::with_max_entries(1, 0);

/// A raw tracepoint (see `inet_sock_set_state`): every packet freed with a reason passes here,
/// and all but the watched drops leave after reading the reason argument.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

/// The drop reason, if this kernel passes one.
#[inline(always)]
fn drop_reason(ctx: &RawTracePointContext) -> Option<u32> {
    (lay!(tp.kfs_reason_arg) == KFREE_SKB_REASON_ARG).then(|| ctx.arg::<u64>(2) as u32)
}

/// The receiving socket, if this kernel passes one.
#[inline(always)]
fn drop_rx_sk(ctx: &RawTracePointContext) -> u64 {
    if lay!(tp.kfs_rx_sk_arg) == KFREE_SKB_RX_SK_ARG {
        ctx.arg(3)
    } else {
        0
    }
}

#[inline(always)]
fn reason_slot(reason: u32) -> Option<u32> {
    let n = lay!(drop_reason_count);
    let mut i = 0;
    while i < MAX_DROP_REASONS {
        if (i as u32) < n && lay!(drop_reasons)[i] == reason {
            return Some(i as u32);
        }
        i += 1;
    }
    None
}

/// IP version of the packet in `skb` (4 or 6), from its network header.
#[inline(always)]
pub fn ip_version(skb: u64) -> Option<u8> {
    let first: u8 = member(skb_network_header::<Probe>(skb)?, 0)?;
    Some(first >> 4)
}

/// An IPv4 header without options and the TCP header after it.
#[repr(C)]
#[derive(Clone, Copy)]
struct V4Segment {
    ip: Ipv4Hdr,
    tcp: TcpHdr,
}

/// An IPv6 header and the TCP header after it.
#[repr(C)]
#[derive(Clone, Copy)]
struct V6Segment {
    ip: Ipv6Hdr,
    tcp: TcpHdr,
}

/// The first bytes of a segment as either family lays them out, taken in one read. Past a
/// short packet's end it reads the rest of the buffer the packet sits in (the shared info
/// follows the data), which is mapped kernel memory; a read that faults loses the segment as
/// a faulting header read did.
#[repr(C)]
#[derive(Clone, Copy)]
union Segment {
    v4: V4Segment,
    v6: V6Segment,
}

const _: () = assert!(core::mem::size_of::<V4Segment>() == Ipv4Hdr::LEN + TcpHdr::LEN);
const _: () = assert!(core::mem::size_of::<Segment>() == Ipv6Hdr::LEN + TcpHdr::LEN);

/// Source and destination of the TCP segment in `skb`, from its IP and TCP headers, local
/// (the receiver) first; returns the segment's flags byte (CWR ECE URG ACK PSH RST SYN FIN).
#[inline(always)]
pub fn segment_tuple<M: Kmem>(skb: u64, t: &mut Tuple) -> Option<u8> {
    let ip = skb_network_header::<M>(skb)?;
    let seg: Segment = member(ip, 0)?;
    // SAFETY: both views are plain bytes of the same read.
    let (v4, v6) = unsafe { (seg.v4, seg.v6) };
    let th = match v4.ip.vihl >> 4 {
        4 => {
            if v4.ip.proto != IPPROTO_TCP {
                return None;
            }
            t.family = AF_INET;
            t.local_addr[..4].copy_from_slice(&v4.ip.dst_addr);
            t.remote_addr[..4].copy_from_slice(&v4.ip.src_addr);
            let ihl = (v4.ip.vihl & 0xf) as u64;
            if ihl == 5 {
                v4.tcp
            } else {
                // IP options push the TCP header further.
                member(ip + ihl * 4, 0)?
            }
        }
        6 => {
            if v6.ip.next_hdr != IPPROTO_TCP {
                return None;
            }
            t.family = AF_INET6;
            t.local_addr = v6.ip.dst_addr;
            t.remote_addr = v6.ip.src_addr;
            v6.tcp
        }
        _ => return None,
    };
    t.local_port = u16::from_be_bytes(th.dest);
    t.remote_port = u16::from_be_bytes(th.source);
    // Byte 13 of the header: bits 8 to 15 of the data-offset/flags bitfield.
    Some(th._bitfield_1.get(8, 8) as u8)
}

fn try_kfree_skb(ctx: &RawTracePointContext) -> Option<()> {
    let reason = drop_reason(ctx)?;
    let slot = reason_slot(reason)?;
    let rx_sk = drop_rx_sk(ctx);
    if slot == SLOT_NO_SOCKET && !full_listener(rx_sk) {
        // NO_SOCKET is watched only for the handshake ACK that a full listener could not
        // turn into a connection (SYN-cookie handshakes); every other one is no_listener.
        return None;
    }
    let skbaddr: u64 = ctx.arg(0);
    let protocol = u16::from_be(member::<u16>(skbaddr, lay!(st.skb_protocol))?);
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return None;
    }
    // SAFETY: a per-CPU slot, used by this program only and never across a sleep.
    let rec = unsafe { &mut *RST_SCRATCH_DROP.get_ptr_mut(0)? };
    crate::mem::zero(rec);
    rec.skbaddr = skbaddr;
    rec.rx_sk = rx_sk;
    rec.location = ctx.arg(1);
    rec.reason = reason;
    let flags = segment_tuple::<Probe>(skbaddr, &mut rec.tuple)?;
    rec.tcp_flags = flags;
    rec.flags |= SKB_TUPLE_VALID;
    // Locally generated segments have a sending socket and no device yet when netfilter drops
    // them. A receive-path drop names its receiving socket (rx_sk), and TCP may have reused
    // the device field by then, so a missing device alone proves nothing.
    let dev: u64 = member(skbaddr, lay!(st.skb_dev)).unwrap_or(0);
    let sender: u64 = member(skbaddr, lay!(st.skb_sk)).unwrap_or(0);
    if dev == 0 && rx_sk == 0 && sender != 0 {
        rec.flags |= SKB_OUTBOUND;
        let t = rec.tuple;
        rec.tuple.local_addr = t.remote_addr;
        rec.tuple.remote_addr = t.local_addr;
        rec.tuple.local_port = t.remote_port;
        rec.tuple.remote_port = t.local_port;
    }
    let mut netns = skb_netns::<Probe>(skbaddr);
    if netns == 0 && rx_sk != 0 {
        netns = sk_netns(rx_sk);
    }
    if !wanted(netns, rec.tuple.local_port, rec.tuple.remote_port) {
        return None;
    }
    let owning = if rx_sk != 0 { rx_sk } else { sender };
    if owning != 0 {
        owners::owner_into(owning, false, &mut rec.owner);
    }
    rec.header = header(RecordKind::SkbDrop, netns);
    count(CounterFamily::SkbDrop, slot);
    deliver(RecordKind::SkbDrop, &*rec);
    Some(())
}

/// A raw tracepoint: the classic one copies the device name into a record for every packet
/// sent, before any program runs. Used where [`net_dev_queue`] is refused.
#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn net_dev_queue_raw(ctx: RawTracePointContext) -> u32 {
    queued::<Probe>(ctx.arg(0))
}

/// The same hook as a BTF tracepoint: the packet arrives as a pointer of known type, so its
/// socket and length are plain loads rather than helper calls. Every packet the host sends
/// pays for exactly those two reads.
#[btf_tracepoint(function = "net_dev_queue")]
pub fn net_dev_queue(ctx: BtfTracePointContext) -> u32 {
    queued::<Typed>(ctx.arg(0))
}

/// A packet about to be sent, as `M` reads it.
#[inline(always)]
fn queued<M: Kmem>(skbaddr: u64) -> u32 {
    // Packets with a socket (all but forwarded ones and netfilter's replies) leave here.
    if M::get::<u64>(skbaddr, lay!(st.skb_sk)) != Some(0) {
        return 0;
    }
    let _ = foreign_reset::<M>(
        skbaddr,
        M::get::<u32>(skbaddr, lay!(st.skb_len)).unwrap_or(0),
    );
    0
}

pub const TCP_FLAG_RST: u8 = 0x04;

/// The longest packet taken for an RST built outside TCP: netfilter's (nf_reject) carries no
/// payload, no IP options and no TCP options, so 40 (IPv4) or 60 (IPv6) bytes and a link-layer
/// header. Forwarded traffic has no socket either; its data segments leave on the length.
const MAX_FOREIGN_RST_LEN: u32 = 128;

/// A transmitted packet of `len` bytes without a socket: a forwarded one leaves on its
/// length. TCP's own RSTs always carry a socket (the connection's, or the per-netns control
/// socket for socket-less replies); an RST without one was built elsewhere.
#[inline(always)]
fn foreign_reset<M: Kmem>(skbaddr: u64, len: u32) -> Option<()> {
    if len > MAX_FOREIGN_RST_LEN {
        return None;
    }
    let mut seen = Tuple::default();
    let flags = segment_tuple::<M>(skbaddr, &mut seen)?;
    if flags & TCP_FLAG_RST == 0 {
        return None;
    }
    // `seen` is as received: its local port is the RST's destination port.
    if crate::resets::sent_by_stack(seen.remote_port, seen.local_port) {
        return None;
    }
    // segment_tuple reads a packet as received; this one is leaving, so swap the ends.
    let tuple = Tuple {
        family: seen.family,
        local_port: seen.remote_port,
        remote_port: seen.local_port,
        _pad: 0,
        local_addr: seen.remote_addr,
        remote_addr: seen.local_addr,
    };
    let netns = skb_netns::<M>(skbaddr);
    if !wanted(netns, tuple.local_port, tuple.remote_port) {
        return None;
    }
    let rec = ForeignResetRecord {
        header: header(RecordKind::ForeignReset, netns),
        tuple,
        skbaddr,
        tcp_flags: flags,
        _pad: [0; 7],
    };
    count(CounterFamily::ForeignReset, 0);
    deliver(RecordKind::ForeignReset, &rec);
    Some(())
}
