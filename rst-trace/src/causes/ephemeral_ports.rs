//! `ephemeral_port_exhaustion`: connect() fails with EADDRNOTAVAIL, no local port is free for
//! the destination. The evidence is the port range and the sockets to that destination by
//! state (TIME_WAIT most often).
use rst_trace_common::{
    event::{EphemeralPortEvidence, Evidence},
    ConnectRecord,
};

pub use rst_trace_common::event::EphemeralPortEvidence as EvidenceType;

use crate::{
    cause::{Cause, Direction, Origin},
    diagnosis::Diagnosis,
    enrich::Enricher,
    host::HostInfo,
    owner::Learned,
    records::{Endpoints, Task},
};

const EADDRNOTAVAIL: i32 = 99;

/// A connect() that failed: an event only for EADDRNOTAVAIL.
pub fn on_connect<H: HostInfo>(ctx: &mut Enricher<H>, r: &ConnectRecord) -> Option<Diagnosis> {
    if -r.ret != EADDRNOTAVAIL {
        return None;
    }
    let now = r.header.ktime_ns;
    let netns = r.header.netns;
    let task = Task::from(&r.task);
    let owner = ctx.owner(&task, Learned::Syscall);
    let mut d = Diagnosis::new(
        ctx.wall(now),
        "rst_trace.connect_failed",
        Cause::EphemeralPortExhaustion,
        Direction::None,
        Origin::Syscall,
        netns,
    );
    d.endpoints = Endpoints::try_from(&r.tuple).ok();
    d.reason = Some("EADDRNOTAVAIL".into());
    let range = ctx.sysctl(netns, "net.ipv4.ip_local_port_range");
    let mut ev = EphemeralPortEvidence {
        ip_local_port_range: range.clone(),
        ..Default::default()
    };
    if let Some(dst) = d.endpoints.map(|e| e.remote) {
        ev.sockets_to_destination = ctx
            .sockets_to(now, netns, dst)
            .map(|c| c.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    }
    ev.ephemeral_ports = range.as_deref().and_then(port_count);
    d.evidence = Evidence::EphemeralPorts(ev);
    d.owner = Some(owner);
    d.advice = advice(range.as_deref());
    Some(d)
}

/// How many ports `ip_local_port_range` ("lo hi") holds.
fn port_count(range: &str) -> Option<u32> {
    let v: Vec<u32> = range
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [lo, hi] => Some(hi.saturating_sub(lo) + 1),
        _ => None,
    }
}

/// Connection reuse, a wider range, more source addresses.
pub fn advice(port_range: Option<&str>) -> String {
    format!(
        "No free local port for this destination{}. Reuse connections (keepalive, connection pools), widen net.ipv4.ip_local_port_range, or spread over several source addresses (e.g. nginx proxy_bind with split_clients).",
        port_range.map_or_else(String::new, |r| format!(" (ip_local_port_range {r})"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_counted_inclusively() {
        assert_eq!(port_count("32768\t60999"), Some(28232));
        assert_eq!(port_count("garbage"), None);
    }
}
