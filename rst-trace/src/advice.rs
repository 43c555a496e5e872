//! The operator's next step for each cause, filled with the live values that make it
//! concrete (from the catalogue's "advice" column).
use crate::cause::Cause;

/// Values an advice sentence may quote.
#[derive(Debug, Default, Clone)]
pub struct AdviceFacts {
    pub port: Option<u16>,
    pub last_owner: Option<(String, u32, f64)>,
    pub listening_elsewhere: Vec<String>,
    pub requested_backlog: Option<u32>,
    pub somaxconn: Option<u32>,
    pub queue: Option<(u32, u32)>,
    pub dropped: Option<u64>,
    pub interval_s: Option<f64>,
    pub nofile: Option<(u64, u64)>,
    pub open_fds: Option<u64>,
    pub idle_s: Option<f64>,
    pub unread_bytes: Option<u32>,
    pub port_range: Option<String>,
    pub fd_exhaustion_related: bool,
    pub reason: Option<String>,
}

fn limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

pub fn advice(cause: Cause, f: &AdviceFacts) -> String {
    let port = f
        .port
        .map_or_else(|| "the port".to_owned(), |p| format!(":{p}"));
    match cause {
        Cause::NoListener => {
            let mut s = if let Some((comm, pid, ago)) = &f.last_owner {
                format!("Nothing listens on {port}; the listener ({comm}, pid {pid}) closed {ago:.1} s ago: clients are arriving while it restarts. Make health checks wait for readiness and start the service before its clients.")
            } else {
                format!("Nothing listens on {port}. Check the service is running and started before its clients, and that load balancers only route to it once it is ready.")
            };
            if !f.listening_elsewhere.is_empty() {
                s.push_str(&format!(" A listener on this port exists on {} only: check the bind address.", f.listening_elsewhere.join(", ")));
            }
            s
        }
        Cause::AcceptQueueOverflow => {
            let mut s = String::new();
            if let (Some(r), Some(m)) = (f.requested_backlog, f.somaxconn) {
                s.push_str(&format!("The accept queue cap is min(listen() backlog={r}, net.core.somaxconn={m})={}. ", r.min(m)));
            } else if let Some((_, cap)) = f.queue {
                s.push_str(&format!("The accept queue cap is {cap}. "));
            }
            if let (Some(n), Some(i)) = (f.dropped, f.interval_s) {
                s.push_str(&format!("{n} connection(s) dropped in {i:.1} s on {port}. "));
            }
            if f.fd_exhaustion_related {
                s.push_str("The owner is failing accept() for lack of file descriptors (see related): raise its RLIMIT_NOFILE first.");
            } else {
                s.push_str("The application is not accepting fast enough: raise the listen() backlog and net.core.somaxconn, add accept workers, and look for a blocked accept loop.");
            }
            s
        }
        Cause::SynQueueOverflow => "The SYN queue is full: a SYN flood or a burst of new connections. Keep net.ipv4.tcp_syncookies on, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog, and rate-limit abusive sources.".into(),
        Cause::FdExhaustion => {
            let lim = f.nofile.map_or_else(String::new, |(s, h)| format!(" (RLIMIT_NOFILE soft {}, hard {}{})", limit(s), limit(h), f.open_fds.map_or_else(String::new, |n| format!(", {n} open"))));
            format!("accept() on {port} fails for lack of file descriptors{lim}; connections stay queued and the accept queue will overflow. Raise LimitNOFILE/ulimit -n and look for a descriptor leak.")
        }
        Cause::EphemeralPortExhaustion => format!(
            "No free local port for this destination{}. Reuse connections (keepalive, connection pools), widen net.ipv4.ip_local_port_range, or spread over several source addresses (e.g. nginx proxy_bind with split_clients).",
            f.port_range.as_ref().map_or_else(String::new, |r| format!(" (ip_local_port_range {r})"))
        ),
        Cause::ConnectionRefused => format!("The remote side answered the SYN with an RST: nothing listens on {port} there. See no_listener on that host."),
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
        Cause::FirewallReject => "A netfilter rule answered with REJECT --reject-with tcp-reset: fix the rule, or use DROP if silence is intended.".into(),
        Cause::FirewallDrop => "A netfilter rule dropped the segment: check iptables/nftables rules for this port.".into(),
        Cause::Unclassified => format!("The kernel gave reason {}; see its documentation.", f.reason.as_deref().unwrap_or("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_listener_names_the_previous_owner() {
        let f = AdviceFacts {
            port: Some(8080),
            last_owner: Some(("myapp".into(), 4242, 1.25)),
            ..Default::default()
        };
        let a = advice(Cause::NoListener, &f);
        assert!(
            a.contains(":8080")
                && a.contains("myapp")
                && a.contains("4242")
                && a.contains("1.2 s ago"),
            "{a}"
        );
    }

    #[test]
    fn overflow_quotes_the_effective_backlog() {
        let f = AdviceFacts {
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
    fn long_idle_reset_points_at_middleboxes() {
        let f = AdviceFacts {
            idle_s: Some(61.0),
            ..Default::default()
        };
        assert!(advice(Cause::ResetByPeer, &f).contains("ALB"));
        let f = AdviceFacts {
            idle_s: Some(0.1),
            ..Default::default()
        };
        assert!(!advice(Cause::ResetByPeer, &f).contains("ALB"));
    }
}
