//! Resets on a connection: sent by this host's stack (`abort_on_close`,
//! `abort_by_application`, `abort_on_memory`, `keepalive_timeout`, `abort_on_timeout`,
//! `timewait_segment`, `protocol_violation`, `unclassified`) or received (`reset_by_peer`,
//! `connection_refused`). A received RST that this host sent itself (loopback, two local
//! namespaces) is linked to its cause on the sending side ([`crate::correlate::RstLink`]).
use rst_trace_common::{
    event::{ConnectionEvidence, Evidence, KeepaliveDefaults, Related, SentResetRef},
    ResetReceivedRecord, ResetSentRecord, TcpSnapshot, RST_LINGER_ZERO, SNAP_SEQ,
};

pub use rst_trace_common::event::ConnectionEvidence as EvidenceType;

use super::{port_text, round_ms};
use crate::{
    attribution::classify_received_reset,
    cause::{Cause, Direction, Origin},
    correlate::{RstLink, SentRst},
    diagnosis::Diagnosis,
    enrich::{ConnOwner, Enricher},
    host::HostInfo,
    records::Endpoints,
};

/// Advice for a refusal that a local REJECT rule produced.
const FIREWALL_REFUSAL: &str = "A local netfilter rule (REJECT --reject-with tcp-reset) refused the connection, not a missing listener: see the firewall_reject event and the rule.";

/// Values the advice quotes.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub port: Option<u16>,
    pub reason: Option<String>,
    pub unread_bytes: Option<u32>,
    pub idle_s: Option<f64>,
}

fn wrapping_gap(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b)
}

fn apply_owner(d: &mut Diagnosis, ev: &mut ConnectionEvidence, c: ConnOwner) {
    if c.owner.is_some() {
        d.owner = c.owner;
    }
    if !c.other_owners.is_empty() {
        d.other_owners = c.other_owners;
    }
    ev.connection_age_seconds = c.age_seconds;
    ev.last_owner = c.last_owner;
    ev.owner_found_by = c.found_by.map(str::to_owned);
    ev.trigger = c.trigger.map(str::to_owned);
}

/// What the socket shows: unread and unacknowledged bytes, idle time, keepalive and linger.
fn socket_state<H: HostInfo>(
    ctx: &Enricher<H>,
    ev: &mut ConnectionEvidence,
    netns: u32,
    cause: Cause,
    snap: &TcpSnapshot,
    flags: u32,
) {
    if snap.valid & SNAP_SEQ != 0 {
        ev.unread_bytes = Some(wrapping_gap(snap.rcv_nxt, snap.copied_seq));
        ev.bytes_in_flight = Some(wrapping_gap(snap.snd_nxt, snap.snd_una));
    }
    ev.idle_seconds = ctx.idle_seconds(snap).map(round_ms);
    if cause == Cause::KeepaliveTimeout {
        // Namespace defaults; a socket may override them with TCP_KEEPIDLE/INTVL/CNT.
        let num = |n: &str| ctx.sysctl(netns, n).and_then(|v| v.parse::<u64>().ok());
        ev.keepalive_defaults = Some(KeepaliveDefaults {
            time_seconds: num("net.ipv4.tcp_keepalive_time"),
            interval_seconds: num("net.ipv4.tcp_keepalive_intvl"),
            probes: num("net.ipv4.tcp_keepalive_probes"),
        });
    }
    if cause == Cause::AbortByApplication {
        let linger_zero = flags & RST_LINGER_ZERO != 0;
        ev.linger = Some(
            if linger_zero {
                "on, 0 s (close aborts)"
            } else {
                "off"
            }
            .into(),
        );
        if ev.trigger.is_none() {
            ev.trigger = Some(
                if linger_zero {
                    "close() with SO_LINGER {1, 0}"
                } else {
                    "disconnect or shutdown by the application"
                }
                .into(),
            );
        }
    }
}

/// An RST this host's stack sent on a connection.
pub fn on_reset_sent<H: HostInfo>(
    ctx: &mut Enricher<H>,
    d: &mut Diagnosis,
    r: &ResetSentRecord,
    reason: Option<&str>,
    unread_bytes: Option<u32>,
) {
    let now = r.header.ktime_ns;
    let mut ev = ConnectionEvidence::default();
    let owner = ctx.conn_owner(d.cause, d.netns, &r.owner, r.sock_inode, d.endpoints, now);
    apply_owner(d, &mut ev, owner);
    socket_state(ctx, &mut ev, d.netns, d.cause, &r.snap, r.flags);
    ev.kernel_reason = reason.map(str::to_owned);
    let f = Facts {
        port: d.endpoints.map(|e| e.local.port),
        reason: reason.map(str::to_owned),
        unread_bytes,
        idle_s: ctx.idle_seconds(&r.snap),
    };
    d.advice = advice(d.cause, &f);
    d.evidence = Evidence::Connection(ev);
}

/// The `related` section of a received RST that this host sent.
fn sent_related(s: &SentRst) -> Related {
    Related::SentReset(SentResetRef {
        cause: s.cause,
        direction: Direction::Sent,
        origin: s.origin,
        netns: s.netns,
        owner_pid: s.owner_pid,
        note: "this RST was sent by this host; its cause on the sending side is above".into(),
    })
}

/// Links a held received RST to the RST this host sent (called by [`RstLink::sent`]).
pub fn link(received: &mut Diagnosis, sent: &SentRst) {
    received.related = Some(sent_related(sent));
    if sent.cause == Cause::FirewallReject && received.cause == Cause::ConnectionRefused {
        received.advice = FIREWALL_REFUSAL.to_owned();
    }
}

/// An RST that arrived. Held back (empty result) when this host may still report sending it.
pub fn on_reset_received<H: HostInfo>(
    ctx: &mut Enricher<H>,
    rst_link: &mut RstLink<Diagnosis>,
    r: &ResetReceivedRecord,
) -> Option<Diagnosis> {
    let mut d = received(ctx, r);
    let Some(e) = d.endpoints else { return Some(d) };
    let mono = ctx.now();
    match rst_link.take_counterpart(mono, e) {
        Some(sent) => {
            link(&mut d, &sent);
            Some(d)
        }
        None => rst_link.hold(mono, e, d),
    }
}

/// The event of an RST that arrived, before it is linked to the local RST it may be.
pub fn received<H: HostInfo>(ctx: &mut Enricher<H>, r: &ResetReceivedRecord) -> Diagnosis {
    let now = r.header.ktime_ns;
    let endpoints = Endpoints::try_from(&r.tuple).ok();
    let cause = classify_received_reset(r.state);
    let mut d = Diagnosis::new(
        ctx.wall(now),
        "rst_trace.reset_received",
        cause,
        Direction::Received,
        Origin::Peer,
        r.header.netns,
    );
    d.endpoints = endpoints;
    d.tcp_state = Some(r.state);
    let mut ev = ConnectionEvidence::default();
    let owner = ctx.conn_owner(cause, d.netns, &r.owner, r.sock_inode, endpoints, now);
    apply_owner(&mut d, &mut ev, owner);
    if cause == Cause::ResetByPeer {
        socket_state(ctx, &mut ev, d.netns, cause, &r.snap, 0);
    }
    ev.sock_cookie = (r.sock_cookie != 0).then_some(r.sock_cookie);
    d.evidence = Evidence::Connection(ev);
    let f = Facts {
        port: endpoints.map(|e| e.remote.port),
        idle_s: ctx.idle_seconds(&r.snap),
        ..Default::default()
    };
    d.advice = advice(cause, &f);
    d
}

/// The operator's next step for each connection cause.
pub fn advice(cause: Cause, f: &Facts) -> String {
    match cause {
        Cause::ConnectionRefused => format!("The remote side answered the SYN with an RST: nothing listens on {} there. See no_listener on that host.", port_text(f.port)),
        Cause::AbortOnClose => format!(
            "The application closed the socket with {} unread byte(s): read the request fully before closing (a common HTTP server early-close bug).",
            f.unread_bytes.map_or_else(|| "some".into(), |b| b.to_string())
        ),
        Cause::AbortByApplication => "The application aborted the connection on purpose (SO_LINGER {on, 0} then close, or a disconnect): check the client or pool library that does it.".into(),
        Cause::AbortOnMemory => "The kernel aborted the connection under memory pressure or too many orphans: raise net.ipv4.tcp_max_orphans / tcp_mem and find the slow readers.".into(),
        Cause::KeepaliveTimeout | Cause::AbortOnTimeout => "The peer stopped answering (keepalive or retransmissions exhausted): the peer is gone or a middlebox dropped the connection's state.".into(),
        Cause::TimewaitSegment => "A segment hit a TIME_WAIT socket: usually harmless; frequent ones mean clients reuse ports too quickly.".into(),
        Cause::ProtocolViolation => format!(
            "The kernel rejected a segment ({}): look for NAT/conntrack or middleboxes rewriting sequence numbers or timestamps, or a client bug.",
            f.reason.as_deref().unwrap_or("invalid segment")
        ),
        Cause::ResetByPeer => match f.idle_s {
            Some(idle) if idle >= 30.0 => format!("The peer reset the connection after {idle:.1} s of silence: the signature of a load balancer or NAT idle timeout (AWS ALB/ELB default 60 s, NLB 350 s). Set TCP keepalive or application pings below the middlebox timeout."),
            _ => "The peer reset the connection: look at the peer's logs; its own rst-trace would name the cause.".into(),
        },
        _ => format!("The kernel gave reason {}; see its documentation.", f.reason.as_deref().unwrap_or("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_idle_reset_points_at_middleboxes() {
        let f = |idle| Facts {
            idle_s: Some(idle),
            ..Default::default()
        };
        assert!(advice(Cause::ResetByPeer, &f(61.0)).contains("ALB"));
        assert!(!advice(Cause::ResetByPeer, &f(0.1)).contains("ALB"));
    }
}
