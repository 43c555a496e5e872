//! `accept_queue_overflow` and `syn_queue_overflow`: a listener's queues are full. Seen per
//! packet (a drop hook, the ACK-time drop reason, an RST sent with tcp_abort_on_overflow) or by
//! polling the listeners' drop counters; a saturation warning comes before drops start. An
//! ongoing fd_exhaustion on the same listener is named as the overflow's root cause.
use rst_trace_common::{
    event::{
        Evidence, FdIncidentRef, ListenQueueEvidence, ProcessRef, QueueFill, Related, SynSource,
    },
    ListenDropRecord, ResetSentRecord, SkbDropRecord, LISTEN_DROP_ACK_ACCEPT_FULL,
    LISTEN_DROP_SYN_ACCEPT_FULL, LISTEN_DROP_SYN_QUEUE_FULL,
};

pub use rst_trace_common::event::ListenQueueEvidence as EvidenceType;

use super::{port_text, round_ms, segment_direction, tcp_flags};
use rst_trace_common::tcp::TCP_LISTEN;

use crate::{
    cause::{Cause, Direction, Origin},
    correlate::{FdIncidents, ListenDropLedger},
    diagnosis::Diagnosis,
    enrich::{Enricher, ListenerView},
    host::HostInfo,
    listeners::{Finding, Saturation},
    records::{Endpoint, Endpoints},
    sockdiag::NetnsSnapshot,
};

/// Values the advice quotes.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub port: Option<u16>,
    pub requested_backlog: Option<u32>,
    pub somaxconn: Option<u32>,
    pub queue: Option<(u32, u32)>,
    pub dropped: Option<u64>,
    pub interval_s: Option<f64>,
    pub fd_exhaustion_related: bool,
}

/// The listener's owners and queue settings, into the event.
fn apply(d: &mut Diagnosis, ev: &mut ListenQueueEvidence, f: &mut Facts, v: ListenerView) {
    if v.owner.is_some() {
        d.owner = v.owner;
        d.other_owners = v.other_owners;
    }
    ev.accepting_processes = Some(v.accepting);
    ev.listener_inode = v.inode;
    ev.listener_group = v.group;
    ev.listen_backlog_requested = Some(v.requested_backlog);
    ev.listener_address = Some(v.address);
    if v.somaxconn.is_some() {
        ev.somaxconn = Some(v.somaxconn);
    }
    f.requested_backlog = v.requested_backlog;
    f.somaxconn = v.somaxconn;
}

/// The live fd_exhaustion incident on the listener, as the event's `related`.
fn related_incident(incidents: &FdIncidents, now: u64, netns: u32, port: u16) -> Option<Related> {
    let i = incidents.live(now, netns, port)?;
    Some(Related::FdIncident(FdIncidentRef {
        cause: Cause::FdExhaustion,
        incident: i.id.clone(),
        process: ProcessRef::new(i.pid, &i.comm),
        accept_failures: i.failures,
        note: "the owner cannot accept() for lack of file descriptors, so its accept queue fills: one incident, root cause fd_exhaustion".into(),
    }))
}

fn unspecified(like: std::net::IpAddr) -> std::net::IpAddr {
    if like.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}

/// A listener's endpoints: the peer side is unspecified.
fn listener_endpoints(addr: std::net::IpAddr, port: u16) -> Endpoints {
    Endpoints {
        local: Endpoint { addr, port },
        remote: Endpoint {
            addr: unspecified(addr),
            port: 0,
        },
    }
}

/// An RST sent for a final ACK that found the accept queue full (tcp_abort_on_overflow=1).
pub fn on_reset_sent<H: HostInfo>(
    ctx: &mut Enricher<H>,
    incidents: &FdIncidents,
    d: &mut Diagnosis,
    r: &ResetSentRecord,
    reason: Option<&str>,
) {
    let now = r.header.ktime_ns;
    let snap = &r.snap;
    let mut ev = ListenQueueEvidence {
        stage: Some("ack".into()),
        accept_queue: Some(Some(QueueFill {
            length: snap.sk_ack_backlog,
            cap: snap.sk_max_ack_backlog,
        })),
        tcp_abort_on_overflow: Some(Some(1)),
        ..Default::default()
    };
    let mut f = Facts {
        port: d.endpoints.map(|e| e.local.port),
        queue: Some((snap.sk_ack_backlog, snap.sk_max_ack_backlog)),
        ..Default::default()
    };
    if let Some(l) = ctx.table.listener_by_sk(r.skaddr).cloned() {
        let v = ctx.listener_view(d.netns, f.port.unwrap_or(0), &l);
        apply(d, &mut ev, &mut f, v);
    } else if let Some(o) = ctx.kernel_owner(&r.owner) {
        d.owner = Some(o);
    }
    if let Some(e) = d.endpoints {
        d.related = related_incident(incidents, now, d.netns, e.local.port);
        f.fd_exhaustion_related = d.related.is_some();
    }
    ev.kernel_reason = reason.map(str::to_owned);
    d.advice = advice(Cause::AcceptQueueOverflow, &f);
    d.evidence = Evidence::ListenQueue(ev);
}

/// The handshake's final ACK dropped because the accept queue is full (drop reason
/// TCP_LISTEN_OVERFLOW, or NO_SOCKET on the SYN-cookie path).
pub fn on_skb_drop<H: HostInfo>(
    ctx: &mut Enricher<H>,
    ledger: &mut ListenDropLedger,
    incidents: &FdIncidents,
    d: &mut Diagnosis,
    r: &SkbDropRecord,
    reason: &str,
) {
    let now = r.header.ktime_ns;
    let mut ev = ListenQueueEvidence {
        kernel_reason: Some(reason.to_owned()),
        tcp_flags: Some(tcp_flags(r.tcp_flags)),
        segment_direction: Some(segment_direction(r.flags)),
        ..Default::default()
    };
    let mut f = Facts {
        port: d.endpoints.map(|e| e.local.port),
        ..Default::default()
    };
    if let Some(e) = d.endpoints {
        ledger.ack_time_drop(d.netns, e.local.port);
        d.tcp_state = Some(TCP_LISTEN);
        ev.stage = Some("ack".into());
        if reason == "NO_SOCKET" {
            ev.syncookie_handshake = Some(true);
        }
        // The receiving socket is the listener itself: in an SO_REUSEPORT group it says which
        // member overflowed.
        if let Some(l) = ctx.find_listener(d.netns, r.rx_sk, &e.local) {
            let v = ctx.listener_view(d.netns, e.local.port, &l);
            apply(d, &mut ev, &mut f, v);
        }
        if let Some(v) = ctx.sysctl(d.netns, "net.ipv4.tcp_abort_on_overflow") {
            ev.tcp_abort_on_overflow = Some(v.parse::<u32>().ok());
        }
        d.related = related_incident(incidents, now, d.netns, e.local.port);
        f.fd_exhaustion_related = d.related.is_some();
    }
    d.advice = advice(Cause::AcceptQueueOverflow, &f);
    d.evidence = Evidence::ListenQueue(ev);
}

/// A listener drop seen on the drop path itself (fentry/kprobe tiers).
pub fn on_listen_drop<H: HostInfo>(
    ctx: &mut Enricher<H>,
    ledger: &mut ListenDropLedger,
    incidents: &FdIncidents,
    r: &ListenDropRecord,
) -> Option<Diagnosis> {
    let now = r.header.ktime_ns;
    let netns = r.header.netns;
    let e = Endpoints::try_from(&r.tuple).ok()?;
    let (cause, stage, via) = match r.stage {
        LISTEN_DROP_SYN_ACCEPT_FULL => (Cause::AcceptQueueOverflow, "syn", "tcp_conn_request"),
        LISTEN_DROP_ACK_ACCEPT_FULL => (Cause::AcceptQueueOverflow, "ack", "tcp_v*_syn_recv_sock"),
        LISTEN_DROP_SYN_QUEUE_FULL => (Cause::SynQueueOverflow, "syn", "tcp_conn_request"),
        _ => return None,
    };
    if cause == Cause::SynQueueOverflow {
        ledger.syn_queue_drop(netns, e.local.port);
    } else {
        ledger.ack_time_drop(netns, e.local.port);
    }
    let mut d = Diagnosis::new(
        ctx.wall(now),
        "rst_trace.listen_drop",
        cause,
        Direction::Dropped,
        Origin::TcpStack,
        netns,
    );
    d.endpoints = Some(e);
    d.tcp_state = Some(TCP_LISTEN);
    let mut ev = ListenQueueEvidence::default();
    let mut f = Facts {
        port: Some(e.local.port),
        queue: Some((r.ack_backlog, r.max_ack_backlog)),
        ..Default::default()
    };
    if let Some(l) = ctx.find_listener(netns, r.skaddr, &e.local) {
        let v = ctx.listener_view(netns, e.local.port, &l);
        apply(&mut d, &mut ev, &mut f, v);
    }
    ev.stage = Some(stage.into());
    ev.observed_by = Some(format!("per packet at {via}"));
    ev.accept_queue = Some(Some(QueueFill {
        length: r.ack_backlog,
        cap: r.max_ack_backlog,
    }));
    ev.syn_queue_length = Some(u64::from(r.syn_qlen));
    if cause == Cause::SynQueueOverflow {
        let cookies = ctx.sysctl_u32(netns, "net.ipv4.tcp_syncookies");
        ev.tcp_syncookies = Some(cookies);
        ev.outcome = Some(
            if cookies.unwrap_or(1) == 0 {
                "dropped"
            } else {
                "syn cookie sent"
            }
            .into(),
        );
    } else {
        if stage == "ack" {
            // As for ACK-time drops seen by drop reason: whether the client was told (an RST)
            // or left believing it is connected.
            ev.tcp_abort_on_overflow =
                Some(ctx.sysctl_u32(netns, "net.ipv4.tcp_abort_on_overflow"));
        }
        d.related = related_incident(incidents, now, netns, e.local.port);
        f.fd_exhaustion_related = d.related.is_some();
    }
    d.advice = advice(cause, &f);
    d.evidence = Evidence::ListenQueue(ev);
    Some(d)
}

/// Whether the SYN sources look like a flood from few or a burst from many.
fn pattern(top_sources: &[(std::net::IpAddr, usize)]) -> &'static str {
    let total: usize = top_sources.iter().map(|(_, n)| n).sum();
    let top = top_sources.first().map_or(0, |(_, n)| *n);
    if total == 0 {
        "unknown"
    } else if top * 2 >= total {
        "flood from few sources"
    } else {
        "burst from many sources"
    }
}

/// Drops found by polling a namespace's listeners and counters.
pub fn explain_finding<H: HostInfo>(
    ctx: &mut Enricher<H>,
    incidents: &FdIncidents,
    netns: u32,
    found: &Finding,
    snap: &NetnsSnapshot,
    interval_s: f64,
) -> Diagnosis {
    let now = ctx.now();
    let event = if found.cause == Cause::SynQueueOverflow {
        "rst_trace.syn_queue_overflow"
    } else {
        "rst_trace.listen_drops"
    };
    let mut d = Diagnosis::new(
        ctx.wall(now),
        event,
        found.cause,
        Direction::Dropped,
        Origin::TcpStack,
        netns,
    );
    d.count = found.count;
    d.tcp_state = Some(TCP_LISTEN);
    d.endpoints = found.addr.map(|addr| listener_endpoints(addr, found.port));
    let num = |n: &str| snap.sysctls.get(n).and_then(|v| v.parse::<u32>().ok());
    let mut ev = ListenQueueEvidence::default();
    let mut f = Facts {
        port: Some(found.port),
        dropped: Some(found.count),
        interval_s: Some(interval_s),
        queue: found.queue,
        ..Default::default()
    };
    let listeners = ctx.table.listeners(netns, found.port);
    let known = listeners
        .iter()
        .find(|l| found.inode.is_some() && l.inode == found.inode)
        .or_else(|| listeners.iter().find(|l| Some(l.addr) == found.addr))
        .or_else(|| listeners.first())
        .cloned();
    if let Some(l) = &known {
        let v = ctx.listener_view(netns, found.port, l);
        apply(&mut d, &mut ev, &mut f, v);
    }
    f.somaxconn = num("net.core.somaxconn");
    ev.interval_seconds = Some(round_ms(interval_s));
    ev.observed_by = Some("polling: sock_diag drop counters and TcpExt MIB (no per-packet hook for this drop on this kernel)".into());
    ev.accept_queue = Some(found.queue.map(|(length, cap)| QueueFill { length, cap }));
    ev.somaxconn = Some(f.somaxconn);
    if found.cause == Cause::SynQueueOverflow {
        ev.syn_queue_length = Some(found.syn_queue as u64);
        ev.syn_cookies_sent = Some(found.cookies);
        ev.syns_dropped = Some(found.count.saturating_sub(found.cookies));
        ev.tcp_max_syn_backlog = Some(num("net.ipv4.tcp_max_syn_backlog"));
        ev.tcp_syncookies = Some(num("net.ipv4.tcp_syncookies"));
        ev.top_sources = Some(
            found
                .top_sources
                .iter()
                .map(|(a, n)| SynSource {
                    address: a.to_string(),
                    syn_recv: *n as u64,
                })
                .collect(),
        );
        ev.pattern = Some(pattern(&found.top_sources).into());
    } else {
        ev.stage = Some("syn".into());
        ev.tcp_abort_on_overflow = Some(num("net.ipv4.tcp_abort_on_overflow"));
        d.related = related_incident(incidents, now, netns, found.port);
        f.fd_exhaustion_related = d.related.is_some();
    }
    d.advice = advice(found.cause, &f);
    d.evidence = Evidence::ListenQueue(ev);
    d
}

/// A listener whose accept queue is at least 80 % full: a warning before drops start.
pub fn explain_saturation<H: HostInfo>(
    ctx: &mut Enricher<H>,
    netns: u32,
    s: &Saturation,
) -> Diagnosis {
    let now = ctx.now();
    let mut d = Diagnosis::new(
        ctx.wall(now),
        "rst_trace.listener_saturated",
        Cause::AcceptQueueOverflow,
        Direction::None,
        Origin::TcpStack,
        netns,
    );
    d.count = 0;
    d.endpoints = Some(listener_endpoints(s.addr, s.port));
    d.tcp_state = Some(TCP_LISTEN);
    let mut ev = ListenQueueEvidence::default();
    let mut f = Facts {
        port: Some(s.port),
        queue: Some((s.queue, s.cap)),
        ..Default::default()
    };
    if let Some(l) = ctx.table.listeners(netns, s.port).first().cloned() {
        let v = ctx.listener_view(netns, s.port, &l);
        apply(&mut d, &mut ev, &mut f, v);
    }
    ev.accept_queue = Some(Some(QueueFill {
        length: s.queue,
        cap: s.cap,
    }));
    ev.warning = Some("accept queue at or above 80% of its cap: drops are imminent".into());
    d.advice = format!(
        "The accept queue of :{} is {}/{} full. {}",
        s.port,
        s.queue,
        s.cap,
        advice(Cause::AcceptQueueOverflow, &f)
    );
    d.evidence = Evidence::ListenQueue(ev);
    d
}

/// Backlog and somaxconn, accept workers, or the fd shortage behind it.
pub fn advice(cause: Cause, f: &Facts) -> String {
    if cause == Cause::SynQueueOverflow {
        return "The SYN queue is full: a SYN flood or a burst of new connections. Keep net.ipv4.tcp_syncookies on, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog, and rate-limit abusive sources.".into();
    }
    let port = port_text(f.port);
    let mut s = String::new();
    if let (Some(r), Some(m)) = (f.requested_backlog, f.somaxconn) {
        s.push_str(&format!(
            "The accept queue cap is min(listen() backlog={r}, net.core.somaxconn={m})={}. ",
            r.min(m)
        ));
    } else if let Some((_, cap)) = f.queue {
        s.push_str(&format!("The accept queue cap is {cap}. "));
    }
    if let (Some(n), Some(i)) = (f.dropped, f.interval_s) {
        s.push_str(&format!(
            "{n} connection(s) dropped in {i:.1} s on {port}. "
        ));
    }
    if f.fd_exhaustion_related {
        s.push_str("The owner is failing accept() for lack of file descriptors (see related): raise its RLIMIT_NOFILE first.");
    } else {
        s.push_str("The application is not accepting fast enough: raise the listen() backlog and net.core.somaxconn, add accept workers, and look for a blocked accept loop.");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_advice_quotes_the_effective_backlog() {
        let f = Facts {
            port: Some(80),
            requested_backlog: Some(128),
            somaxconn: Some(4096),
            dropped: Some(312),
            interval_s: Some(1.0),
            ..Default::default()
        };
        let a = advice(Cause::AcceptQueueOverflow, &f);
        assert!(
            a.contains("min(listen() backlog=128, net.core.somaxconn=4096)=128"),
            "{a}"
        );
        assert!(a.contains("312 connection(s) dropped in 1.0 s"), "{a}");
    }

    #[test]
    fn flood_and_burst_are_told_apart() {
        let a = |s: &str| s.parse().expect("ip");
        assert_eq!(pattern(&[]), "unknown");
        assert_eq!(
            pattern(&[(a("10.0.0.1"), 9), (a("10.0.0.2"), 1)]),
            "flood from few sources"
        );
        assert_eq!(
            pattern(&[(a("10.0.0.1"), 1), (a("10.0.0.2"), 1), (a("10.0.0.3"), 1)]),
            "burst from many sources"
        );
    }
}
