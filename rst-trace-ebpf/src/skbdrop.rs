//! TCP segments the kernel frees with a drop reason the agent asked for (ACK-time accept
//! queue overflow, netfilter drops, ...). The reasons to watch come from the agent, which
//! reads their values from the running kernel's BTF.
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
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
    kread::{accept_queue, member, sk_netns, skb_netns, skb_network_header, AF_INET, AF_INET6},
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
    let first: u8 = member(skb_network_header(skb)?, 0)?;
    Some(first >> 4)
}

/// Source and destination of the TCP segment in `skb`, from its IP and TCP headers, local
/// (the receiver) first; returns the segment's flags byte (CWR ECE URG ACK PSH RST SYN FIN).
#[inline(always)]
pub fn segment_tuple(skb: u64, t: &mut Tuple) -> Option<u8> {
    let ip = skb_network_header(skb)?;
    // An IPv4 header's size read at once: it says the version too, and is no longer than the
    // IPv6 header's start, so one read serves IPv4 segments whole.
    let h4: Ipv4Hdr = member(ip, 0)?;
    let tcp_at = match h4.vihl >> 4 {
        4 => {
            if h4.proto != IPPROTO_TCP {
                return None;
            }
            t.family = AF_INET;
            t.local_addr[..4].copy_from_slice(&h4.dst_addr);
            t.remote_addr[..4].copy_from_slice(&h4.src_addr);
            ip + ((h4.vihl & 0xf) as u64) * 4
        }
        6 => {
            let h: Ipv6Hdr = member(ip, 0)?;
            if h.next_hdr != IPPROTO_TCP {
                return None;
            }
            t.family = AF_INET6;
            t.local_addr = h.dst_addr;
            t.remote_addr = h.src_addr;
            ip + Ipv6Hdr::LEN as u64
        }
        _ => return None,
    };
    let th: TcpHdr = member(tcp_at, 0)?;
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
    let flags = segment_tuple(skbaddr, &mut rec.tuple)?;
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
    let mut netns = skb_netns(skbaddr);
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
/// sent, before any program runs.
#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn net_dev_queue(ctx: RawTracePointContext) -> u32 {
    let _ = try_net_dev_queue(&ctx);
    0
}

const TCP_FLAG_RST: u8 = 0x04;

/// The longest packet taken for an RST built outside TCP: netfilter's (nf_reject) carries no
/// payload, no IP options and no TCP options, so 40 (IPv4) or 60 (IPv6) bytes and a link-layer
/// header. Forwarded traffic has no socket either; its data segments leave on the length.
const MAX_FOREIGN_RST_LEN: u32 = 128;

/// Every transmitted packet passes here, so the common case (a packet with a socket) leaves
/// after one read, and a forwarded one (no socket) after two. TCP's own RSTs always carry a
/// socket (the connection's, or the per-netns control socket for socket-less replies); an RST
/// without one was built elsewhere.
fn try_net_dev_queue(ctx: &RawTracePointContext) -> Option<()> {
    let skbaddr: u64 = ctx.arg(0);
    let sk: u64 = member(skbaddr, lay!(st.skb_sk))?;
    if sk != 0 {
        return None;
    }
    if member::<u32>(skbaddr, lay!(st.skb_len)).unwrap_or(0) > MAX_FOREIGN_RST_LEN {
        return None;
    }
    let mut seen = Tuple::default();
    let flags = segment_tuple(skbaddr, &mut seen)?;
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
    let netns = skb_netns(skbaddr);
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
