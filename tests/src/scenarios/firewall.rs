//! A firewall in front of two listeners: REJECT (tcp-reset) and DROP rules of the family's own
//! tool (iptables or ip6tables).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::{causes_seen, field, how, total, with_cause, Run};
use crate::{event, mib, Mib};
use rst_trace_common::names::program;

/// netfilter's RSTs are reported as firewall_reject with the intended listener's owner and
/// reconcile with the rule's packet counter, not with Tcp.OutRsts (which stays put); the
/// clients' refusals are linked to them. Dropped SYNs are reported per packet where the kernel
/// gives a drop reason (6.1 and later); where the agent says it cannot see them, it must report
/// none.
pub fn firewall(r: &mut Run) {
    const REJECTS: u64 = 3;
    let (rej_port, drop_port) = (r.port(41501), r.port(41502));
    let addr = r.addr();
    let (rej_s, drop_s) = (rej_port.to_string(), drop_port.to_string());
    let mark = r.mark();
    let mut rej_srv = r.listen(addr, rej_port, &["--accept"]);
    let mut drop_srv = r.listen(addr, drop_port, &["--accept"]);
    let (rej_pid, drop_pid) = (rej_srv.pid(), drop_srv.pid());
    r.rule(&[
        "-p",
        "tcp",
        "--dport",
        &rej_s,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    r.rule(&["-p", "tcp", "--dport", &drop_s, "-j", "DROP"]);
    let m0 = r.env.settled_mib();
    let res = r.connect(addr, rej_port, REJECTS as u32, &["--timeout-ms", "5000"]);
    r.info("reject_client", json!(res));
    let client_pid = r.last_pid();
    r.check(
        "every rejected connect is refused",
        json!(REJECTS),
        json!(res.iter().filter(|l| l.starts_with("refused")).count()),
    );
    let lports: BTreeSet<u16> = res
        .iter()
        .filter(|l| l.starts_with("refused"))
        .filter_map(|l| field(l, "lport").and_then(|p| p.parse().ok()))
        .collect();
    let m1 = r.env.settled_mib();
    let reject_pkts = r.rule_packets("REJECT", &format!("dpt:{rej_port}"));
    let dres = r.connect(
        addr,
        drop_port,
        2,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    r.info("drop_client", json!(dres));
    let m2 = r.env.settled_mib();
    let drop_pkts = r.rule_packets("DROP", &format!("dpt:{drop_port}"));
    let drop_observable =
        r.env.agent().started()["causes"]["firewall_drop"]["observable"] == json!(true);
    r.wait_total(mark, reject_pkts as i64, |l| {
        total(&with_cause(l, "firewall_reject"))
    });
    if drop_observable {
        r.wait_total(mark, drop_pkts as i64, |l| {
            total(&with_cause(l, "firewall_drop"))
        });
    }
    let t = r.bound(Duration::from_secs(20));
    let _ = rej_srv.stop(t);
    let _ = drop_srv.stop(t);
    let (lines, stats) = r.finish(mark);

    let rejects = with_cause(&lines, "firewall_reject");
    r.check(
        "REJECT rule packets (one per connect)",
        json!(REJECTS),
        json!(reject_pkts),
    );
    r.check(
        "firewall_reject total == REJECT rule packets",
        json!(reject_pkts),
        json!(total(&rejects)),
    );
    r.check(
        "firewall_reject: (origin, owner pid, local port) of every event",
        json!([["netfilter", rej_pid, rej_port]]),
        json!(rejects
            .iter()
            .map(|v| (
                event::origin(v).unwrap_or("-").to_owned(),
                event::owner_pid(v).unwrap_or(0),
                event::local_port(v).unwrap_or(0)
            ))
            .collect::<BTreeSet<_>>()),
    );
    r.check(
        "firewall_reject peer ports == the refused clients' ports",
        json!(lports),
        json!(rejects
            .iter()
            .filter_map(|v| event::peer_port(v))
            .collect::<BTreeSet<_>>()),
    );
    r.check(
        "Tcp.OutRsts delta while rejecting (netfilter's RSTs are not TCP's)",
        json!(0),
        json!(mib::delta(&m0, &m1, "Tcp.OutRsts")),
    );
    let refused: Vec<&Value> = with_cause(&lines, "connection_refused")
        .into_iter()
        .filter(|v| event::peer_port(v) == Some(rej_port))
        .collect();
    r.check(
        "connection_refused: (owner pid, related.cause) of every event",
        json!([[client_pid, "firewall_reject"]]),
        json!(refused
            .iter()
            .map(|v| (
                event::owner_pid(v).unwrap_or(0),
                event::str_at(v, "related.cause").unwrap_or("-").to_owned()
            ))
            .collect::<BTreeSet<_>>()),
    );
    let drops = with_cause(&lines, "firewall_drop");
    r.check_true(
        "the DROP rule saw the SYNs",
        drop_pkts >= 2,
        json!(drop_pkts),
    );
    if drop_observable {
        let skipped = event::stats_skipped_runs(stats.as_ref(), &[program::KFREE_SKB]);
        r.check_count(
            "firewall_drop total == DROP rule packets",
            drop_pkts,
            total(&drops),
            skipped,
        );
        r.check(
            "firewall_drop: (reason, owner pid, local port) of every event",
            json!([["NETFILTER_DROP", drop_pid, drop_port]]),
            json!(drops
                .iter()
                .map(|v| (
                    event::reason(v).unwrap_or("-").to_owned(),
                    event::owner_pid(v).unwrap_or(0),
                    event::local_port(v).unwrap_or(0)
                ))
                .collect::<BTreeSet<_>>()),
        );
    } else {
        r.check(
            "firewall_drop events where the agent says it cannot see them",
            json!(0),
            json!(drops.len()),
        );
    }
    r.check_network_type(&[rejects.clone(), drops.clone()].concat(), r.family);
    if let Some(s) = stats {
        r.check(
            "final stats causes.firewall_reject == REJECT rule packets",
            json!(reject_pkts),
            json!(event::stats_cause(&s, "firewall_reject")),
        );
    }
    r.info("firewall_drop_observable", json!(drop_observable));
    r.info("drop_phase_mib", json!(Mib::changes(&m1, &m2)));
    r.info(
        "events",
        json!(rejects
            .iter()
            .chain(&drops)
            .map(|v| how(v))
            .collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.claims(
        &lines,
        &["firewall_reject", "firewall_drop", "connection_refused"],
    );
}
