//! Signals that a listener needs a look. SYN-time listen drops have no per-packet hook on
//! every kernel, so the agent reads a namespace's counters; these signals say when, so that a
//! namespace whose listeners are healthy is never read at all.
use aya_ebpf::{
    helpers::generated,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use rst_trace_common::{ListenerHotRecord, RecordKind, HOT_QUEUE_FILLING, HOT_SYNACK_RETRANSMIT};

use crate::{
    emit::deliver,
    kread::{accept_queue, member, sk_netns, tp},
    layout::{lay, wanted},
    resets::header,
};

/// A listener signals at most this often.
const HOT_EVERY_NS: u64 = 100_000_000;

/// (netns << 16 | port) → when it last signalled.
#[map(name = "RST_HOT_SENT")]
static RST_HOT_SENT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn signal(netns: u32, port: u16, skaddr: u64, why: u32, queue: u32, cap: u32) -> Option<()> {
    if !wanted(netns, port, 0) {
        return None;
    }
    let key = (u64::from(netns) << 16) | u64::from(port);
    let now = unsafe { generated::bpf_ktime_get_ns() };
    if let Some(last) = RST_HOT_SENT.get_ptr_mut(&key) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe {
            if now.wrapping_sub(*last) < HOT_EVERY_NS {
                return None;
            }
            *last = now;
        }
    } else {
        let _ = RST_HOT_SENT.insert(&key, &now, 0);
    }
    let rec = ListenerHotRecord {
        header: header(RecordKind::ListenerHot, netns),
        skaddr,
        port,
        _pad: 0,
        why,
        queue,
        cap,
    };
    deliver(RecordKind::ListenerHot, &rec);
    Some(())
}

/// A child socket was just cloned from its listener, whose accept-queue length and cap it
/// still carries: a listener at 80 % of its cap is about to drop SYNs.
#[inline(always)]
pub fn child_born(child: u64) -> Option<()> {
    // Every incoming connection passes here.
    let (queue, cap) = accept_queue(child);
    let (queue, cap) = (queue?, cap?);
    if (queue as u64) * 5 < (cap as u64) * 4 {
        return None;
    }
    let port: u16 = member(child, lay!(st.skc_num)).unwrap_or(0);
    signal(sk_netns(child), port, 0, HOT_QUEUE_FILLING, queue, cap)
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit_synack(&ctx);
    0
}

fn try_retransmit_synack(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp(ctx, lay!(tp.rsa_skaddr))?;
    let port: u16 = tp(ctx, lay!(tp.rsa_sport))?;
    signal(sk_netns(sk), port, sk, HOT_SYNACK_RETRANSMIT, 0, 0)
}
