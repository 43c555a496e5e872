//! `firewall_reject` and `firewall_drop`: netfilter answered a segment with an RST it built
//! itself (REJECT --reject-with tcp-reset), or dropped it. The REJECT's RST and the drop of the
//! segment it answers are paired into one event ([`crate::correlate::RejectPairing`]).
use rst_trace_common::{
    event::{Evidence, FirewallEvidence},
    ForeignResetRecord, SkbDropRecord,
};

pub use rst_trace_common::event::FirewallEvidence as EvidenceType;

use super::{segment_direction, tcp_flags};
use crate::{
    cause::{Cause, Direction, Origin},
    correlate::RejectPairing,
    diagnosis::Diagnosis,
    enrich::Enricher,
    host::HostInfo,
    records::Endpoints,
};

/// A REJECT's RST on `e`, first seen at `at`.
pub fn reject<H: HostInfo>(ctx: &Enricher<H>, netns: u32, e: Endpoints, at: u64) -> Diagnosis {
    let mut d = Diagnosis::new(
        ctx.wall(at),
        "rst_trace.reset_sent",
        Cause::FirewallReject,
        Direction::Sent,
        Origin::Netfilter,
        netns,
    );
    d.endpoints = Some(e);
    let listeners = ctx.table.listeners(netns, e.local.port);
    let (owner, others, _) = Enricher::<H>::listener_owner(listeners, &e.local);
    d.owner = owner;
    d.other_owners = others;
    d.evidence = Evidence::Firewall(FirewallEvidence {
        note: Some("the RST was built by netfilter (REJECT --reject-with tcp-reset), not by TCP: Tcp.OutRsts does not count it".into()),
        intended_listener: Some(!listeners.is_empty()),
        ..Default::default()
    });
    d.advice = advice(Cause::FirewallReject);
    d
}

/// Adds to the firewall evidence that [`reject`] built.
fn amend(d: &mut Diagnosis, f: impl FnOnce(&mut FirewallEvidence)) {
    if let Evidence::Firewall(ev) = &mut d.evidence {
        f(ev);
    }
}

/// An RST netfilter built. Where the kernel frees packets with a reason (5.17+) it waits for
/// the drop of the segment it answers; elsewhere, or when too many wait, it is reported now.
pub fn on_foreign_reset<H: HostInfo>(
    ctx: &Enricher<H>,
    pairing: &mut RejectPairing,
    netfilter_drops_seen: bool,
    r: &ForeignResetRecord,
) -> Option<Diagnosis> {
    let e = Endpoints::try_from(&r.tuple).ok()?;
    let (netns, at) = (r.header.netns, r.header.ktime_ns);
    // Without the NETFILTER_DROP drop reason (before 5.17) the dropped segment is never seen:
    // waiting for it would only delay the report past the moment the peer's receipt of this
    // RST looks for it.
    if netfilter_drops_seen && pairing.reset(netns, e, at) {
        return None;
    }
    let mut d = reject(ctx, netns, e, at);
    amend(&mut d, |ev| {
        ev.dropped_segment_seen = Some(false);
        if !netfilter_drops_seen {
            // This kernel frees packets without a reason: the drop cannot be seen.
            ev.dropped_segment_observable = Some(false);
        }
    });
    Some(d)
}

/// REJECT RSTs whose dropped segment was never seen (e.g. REJECT outside INPUT).
pub fn expire<H: HostInfo>(
    ctx: &Enricher<H>,
    pairing: &mut RejectPairing,
    now: u64,
) -> Vec<Diagnosis> {
    pairing
        .expire(now)
        .into_iter()
        .map(|u| {
            let mut d = reject(ctx, u.netns, u.endpoints, u.first_ns);
            d.count = u.count;
            amend(&mut d, |ev| ev.dropped_segment_seen = Some(false));
            d
        })
        .collect()
}

/// A segment netfilter dropped: half of a REJECT when an RST answered it, else a drop.
pub fn on_skb_drop<H: HostInfo>(
    ctx: &mut Enricher<H>,
    pairing: &mut RejectPairing,
    mut d: Diagnosis,
    r: &SkbDropRecord,
    reason: &str,
) -> Diagnosis {
    let now = r.header.ktime_ns;
    if let Some(e) = d.endpoints {
        if let Some(t) = pairing.drop_seen(now, d.netns, e) {
            let mut rej = reject(ctx, d.netns, e, t);
            rej.reason = Some(reason.to_owned());
            amend(&mut rej, |ev| {
                ev.dropped_segment_flags = Some(tcp_flags(r.tcp_flags));
                ev.kernel_reason = Some(reason.to_owned());
            });
            return rej;
        }
    }
    d.evidence = Evidence::Firewall(FirewallEvidence {
        kernel_reason: Some(reason.to_owned()),
        tcp_flags: Some(tcp_flags(r.tcp_flags)),
        segment_direction: Some(segment_direction(r.flags)),
        ..Default::default()
    });
    if let Some(e) = d.endpoints {
        if let Some(o) = ctx.kernel_owner(&r.owner) {
            d.owner = Some(o);
        } else {
            let listeners = ctx.table.listeners(d.netns, e.local.port);
            let (owner, others, _) = Enricher::<H>::listener_owner(listeners, &e.local);
            d.owner = owner;
            d.other_owners = others;
        }
    }
    d.advice = advice(d.cause);
    d
}

pub fn advice(cause: Cause) -> String {
    if cause == Cause::FirewallReject {
        "A netfilter rule answered with REJECT --reject-with tcp-reset: fix the rule, or use DROP if silence is intended."
    } else {
        "A netfilter rule dropped the segment: check iptables/nftables rules for this port."
    }
    .into()
}
