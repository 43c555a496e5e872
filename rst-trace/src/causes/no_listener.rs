//! `no_listener`: a segment arrived for a port nobody listens on, and the kernel answered
//! with an RST. There is no owner by definition: the event names the listener that closed
//! recently, and listeners on the same port bound to another address.
use rst_trace_common::event::{Evidence, LastListener, NoListenerEvidence, ProcessRef};

pub use rst_trace_common::event::NoListenerEvidence as EvidenceType;

use super::{port_text, round_ms};
use crate::{diagnosis::Diagnosis, enrich::Enricher, host::HostInfo};

/// Fills a `no_listener` event from the listener table (an RST sent at `now`).
pub fn explain<H: HostInfo>(ctx: &Enricher<H>, d: &mut Diagnosis, reason: Option<&str>, now: u64) {
    let mut ev = NoListenerEvidence::default();
    let mut last = None;
    let mut elsewhere = Vec::new();
    if let Some(e) = d.endpoints {
        if let Some(c) = ctx.table.closed_listener(d.netns, e.local.port) {
            let ago = now.saturating_sub(c.closed_ns) as f64 / 1e9;
            if let Some(o) = c.owners.first() {
                last = Some((o.comm.clone(), o.pid, ago));
                ev.last_listener = Some(LastListener {
                    process: ProcessRef::new(o.pid, &o.comm),
                    address: c.addr.to_string(),
                    closed_seconds_ago: round_ms(ago),
                });
            }
        }
        elsewhere = ctx
            .table
            .listeners(d.netns, e.local.port)
            .iter()
            .map(|l| format!("{}:{}", l.addr, e.local.port))
            .collect();
        if !elsewhere.is_empty() {
            ev.listening_elsewhere = Some(elsewhere.clone());
        }
    }
    ev.kernel_reason = reason.map(str::to_owned);
    d.advice = advice(d.endpoints.map(|e| e.local.port), last.as_ref(), &elsewhere);
    d.evidence = Evidence::NoListener(ev);
}

/// Start order and readiness, and the bind address when a listener exists elsewhere.
pub fn advice(
    port: Option<u16>,
    last: Option<&(String, u32, f64)>,
    elsewhere: &[String],
) -> String {
    let port = port_text(port);
    let mut s = if let Some((comm, pid, ago)) = last {
        format!("Nothing listens on {port}; the listener ({comm}, pid {pid}) closed {ago:.1} s ago: clients are arriving while it restarts. Make health checks wait for readiness and start the service before its clients.")
    } else {
        format!("Nothing listens on {port}. Check the service is running and started before its clients, and that load balancers only route to it once it is ready.")
    };
    if !elsewhere.is_empty() {
        s.push_str(&format!(
            " A listener on this port exists on {} only: check the bind address.",
            elsewhere.join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_previous_owner() {
        let a = advice(Some(8080), Some(&("myapp".into(), 4242, 1.25)), &[]);
        assert!(
            a.contains(":8080")
                && a.contains("myapp")
                && a.contains("4242")
                && a.contains("1.2 s ago"),
            "{a}"
        );
    }
}
