//! One explained event, and how it is written out (JSON lines or text).
//!
//! JSON attribute names follow the OpenTelemetry semantic conventions (`network.local.address`,
//! `process.pid`, `process.executable.name`, `process.linux.cgroup`, `thread.id`,
//! `container.id`), with dots written as nesting; rst-trace's own fields sit at the top level.
use std::{fmt::Write as _, sync::Arc, time::SystemTime};

use rst_trace_common::event::{
    CauseEvent, EventId, EventKind, Evidence, Host, LineMeta, Network, Related, SocketAddress, Tcp,
};
use rst_trace_common::TcpState;
use serde_json::Value;

use crate::{
    cause::{Cause, Direction, Origin},
    owner::Owner,
    records::Endpoints,
};

#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub time: SystemTime,
    /// `rst_trace.<what happened>`, e.g. `rst_trace.reset_sent`.
    pub event: &'static str,
    pub cause: Cause,
    pub direction: Direction,
    pub origin: Origin,
    /// The kernel's own reason name, verbatim, when it gave one.
    pub reason: Option<String>,
    /// The cause was derived from state and code path rather than given by the kernel.
    pub inferred: bool,
    /// How many occurrences this one event stands for (aggregated events have more than one).
    pub count: u64,
    pub netns: u32,
    pub endpoints: Option<Endpoints>,
    pub tcp_state: Option<u32>,
    pub owner: Option<Arc<Owner>>,
    /// Further owners of the same socket (forked workers, SO_REUSEPORT groups).
    pub other_owners: Vec<Arc<Owner>>,
    /// The evidence type of the cause's family (rst_trace_common::event).
    pub evidence: Evidence,
    pub advice: String,
    pub related: Option<Related>,
}

impl Diagnosis {
    pub fn new(
        time: SystemTime,
        event: &'static str,
        cause: Cause,
        direction: Direction,
        origin: Origin,
        netns: u32,
    ) -> Self {
        Self {
            time,
            event,
            cause,
            direction,
            origin,
            reason: None,
            inferred: false,
            count: 1,
            netns,
            endpoints: None,
            tcp_state: None,
            owner: None,
            other_owners: Vec::new(),
            evidence: Evidence::empty(cause),
            advice: String::new(),
            related: None,
        }
    }

    /// The line as its type: what `to_json` writes and what readers parse.
    pub fn to_event(&self) -> CauseEvent {
        let addr = |e: &crate::records::Endpoint| SocketAddress {
            address: e.addr.to_string(),
            port: e.port,
        };
        CauseEvent {
            time: rfc3339_nanos(self.time),
            event: EventId {
                name: self.event.into(),
                kind: EventKind::Cause,
            },
            cause: self.cause,
            direction: self.direction,
            origin: self.origin,
            reason: self.reason.clone(),
            inferred: self.inferred,
            count: self.count,
            network: Network {
                transport: "tcp".into(),
                family: self.endpoints.map(|e| {
                    if e.local.addr.is_ipv4() {
                        "ipv4"
                    } else {
                        "ipv6"
                    }
                    .into()
                }),
                netns: self.netns,
                local: self.endpoints.map(|e| addr(&e.local)),
                peer: self.endpoints.map(|e| addr(&e.remote)),
                community_id: self.community_id(),
            },
            tcp: Tcp {
                state: self.tcp_state.map(|s| TcpState::name_of(s).into()),
            },
            owner: self.owner.as_ref().map(|o| o.to_event()),
            other_owners: self.other_owners.iter().map(|o| o.to_event()).collect(),
            evidence: self.evidence.clone(),
            advice: self.advice.clone(),
            related: self.related.clone(),
            host: Host {
                name: crate::schema::host_name().into(),
            },
            rst_trace: LineMeta {
                schema_version: crate::schema::SCHEMA_VERSION.into(),
            },
        }
    }

    pub fn to_json(&self) -> Value {
        // Plain data: serializing it cannot fail.
        serde_json::to_value(self.to_event()).unwrap_or(Value::Null)
    }

    /// The Community ID of the connection this event is about, so it joins the same flow in
    /// Zeek, Suricata or Elastic records. Only for one connection: both ends known, with
    /// ports (a listener's event, with the peer side unspecified, or a connect() that never
    /// got a local port, has none).
    pub fn community_id(&self) -> Option<String> {
        let e = self.endpoints?;
        let known = |p: &crate::records::Endpoint| p.port != 0 && !p.addr.is_unspecified();
        if !known(&e.local) || !known(&e.remote) {
            return None;
        }
        crate::community_id::tcp((e.local.addr, e.local.port), (e.remote.addr, e.remote.port))
    }

    /// One line for a terminal: time, cause, where, who, why.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{} {:<26}",
            rfc3339_nanos(self.time),
            self.cause.as_str()
        );
        if self.count > 1 {
            let _ = write!(s, " x{}", self.count);
        }
        if let Some(e) = self.endpoints {
            let _ = write!(
                s,
                " {}:{} <-> {}:{}",
                e.local.addr, e.local.port, e.remote.addr, e.remote.port
            );
        }
        let _ = write!(s, " netns={}", self.netns);
        match &self.owner {
            Some(o) => {
                let _ = write!(s, " owner={}[{}]", o.comm, o.pid);
            }
            None => s.push_str(" owner=-"),
        }
        if let Some(r) = &self.reason {
            let _ = write!(s, " reason={r}");
        }
        if self.inferred {
            s.push_str(" (inferred)");
        }
        if !self.advice.is_empty() {
            let _ = write!(s, " — {}", self.advice);
        }
        s
    }
}

/// UTC RFC 3339 with nanoseconds, e.g. `2026-11-23T23:59:01.123456789Z`.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 { y + 1 } else { y },
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::records::Endpoint;

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_478_341, 123_456_789);
        assert_eq!(rfc3339_nanos(t), "2026-11-23T23:59:01.123456789Z");
        assert_eq!(
            rfc3339_nanos(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339_nanos(leap)[..10], "2000-02-29");
    }

    #[test]
    fn json_follows_the_documented_shape() {
        let mut d = Diagnosis::new(
            SystemTime::UNIX_EPOCH,
            "rst_trace.reset_sent",
            Cause::NoListener,
            Direction::Sent,
            Origin::TcpStack,
            7,
        );
        d.reason = Some("NO_SOCKET".into());
        d.endpoints = Some(Endpoints {
            local: Endpoint {
                addr: "127.0.0.1".parse().expect("ip"),
                port: 8080,
            },
            remote: Endpoint {
                addr: "::1".parse().expect("ip"),
                port: 5,
            },
        });
        d.tcp_state = Some(7);
        let v = d.to_json();
        assert_eq!(v["cause"], "no_listener");
        assert_eq!(v["direction"], "sent");
        assert_eq!(v["origin"], "tcp_stack");
        assert_eq!(v["reason"], "NO_SOCKET");
        assert_eq!(v["owner"], Value::Null);
        assert_eq!(v["network"]["local"]["port"], 8080);
        assert_eq!(v["network"]["peer"]["address"], "::1");
        assert_eq!(v["network"]["netns"], 7);
        assert_eq!(v["tcp"]["state"], "CLOSE");
        assert_eq!(v["event"]["name"], "rst_trace.reset_sent");
        assert_eq!(v["host"]["name"], crate::schema::host_name());
        assert_eq!(
            v["rst_trace"]["schema_version"],
            crate::schema::SCHEMA_VERSION
        );
        // Mixed families (not a real connection) have no flow hash.
        assert_eq!(v["network"]["community_id"], Value::Null);
        assert!(d.to_text().contains("no_listener"));
    }

    fn conn(local: (&str, u16), remote: (&str, u16)) -> Diagnosis {
        let mut d = Diagnosis::new(
            SystemTime::UNIX_EPOCH,
            "rst_trace.reset_sent",
            Cause::NoListener,
            Direction::Sent,
            Origin::TcpStack,
            7,
        );
        d.endpoints = Some(Endpoints {
            local: Endpoint {
                addr: local.0.parse().expect("ip"),
                port: local.1,
            },
            remote: Endpoint {
                addr: remote.0.parse().expect("ip"),
                port: remote.1,
            },
        });
        d
    }

    #[test]
    fn one_connection_carries_its_community_id() {
        // The spec's TCP example, from either side of the connection.
        let client = conn(("128.232.110.120", 34855), ("66.35.250.204", 80));
        let server = conn(("66.35.250.204", 80), ("128.232.110.120", 34855));
        for d in [client, server] {
            assert_eq!(
                d.to_json()["network"]["community_id"],
                "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
            );
        }
        // A listener's event: the peer side is unspecified, so no single flow.
        let listener = conn(("127.0.0.1", 8080), ("0.0.0.0", 0));
        assert_eq!(listener.to_json()["network"]["community_id"], Value::Null);
        // connect() that failed before getting a local port.
        let failed = conn(("10.0.0.1", 0), ("10.0.0.2", 80));
        assert_eq!(failed.to_json()["network"]["community_id"], Value::Null);
        let mut none = conn(("127.0.0.1", 1), ("127.0.0.1", 2));
        none.endpoints = None;
        assert_eq!(none.to_json()["network"]["community_id"], Value::Null);
    }
}
