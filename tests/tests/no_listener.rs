//! no_listener, end to end: SYNs to closed ports in a fresh netns, sent by a client process that is
//! not the agent, with no server at all. The kernel answers each with RST (reason NO_SOCKET); the
//! agent must report exactly one `no_listener` event per SYN, with no owner, and its per-cause count
//! must equal the netns's Tcp.OutRsts delta.

use std::collections::BTreeSet;
use std::time::Duration;

use rst_trace_tests::{event, mib, require_root, Agent, Mib, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");
const PORTS: [u16; 5] = [40101, 40202, 40303, 40404, 40505];

#[test]
fn no_listener_closed_ports() {
    require_root();
    let n = PORTS.len();
    // Declared first, dropped last: peers and agent go before the namespace.
    let ns = Netns::new();
    let inode = ns.inode();

    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start(&ns, None);
    assert_eq!(
        event::u64_at(agent.started(), "netns"),
        Some(inode),
        "started line names another netns: {}",
        agent.started()
    );

    // One client process per port; none of them is the agent, nothing listens.
    let mut client_port = std::collections::BTreeMap::new();
    for &p in &PORTS {
        let res = Peer::connect(&ns, PEER, "127.0.0.1", p, 1, &["--timeout-ms", "5000"]);
        assert_eq!(
            res[0].result, "refused",
            "connect to closed port {p}: {res:?}"
        );
        client_port.insert(p, res[0].lport);
    }

    let is_nl = |v: &Value| event::has_cause(v, "no_listener");
    let got = agent.wait_for(is_nl, n, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        n,
        "want {n} no_listener events, got {}:\n  {}\nall lines: {:?}",
        got.len(),
        event::summarize(&got),
        agent.lines()
    );
    let after = Mib::snapshot(&ns);

    let mut seen = BTreeSet::new();
    for v in &got {
        let ctx = || format!("event: {v}");
        let port =
            event::local_port(v).unwrap_or_else(|| panic!("no network.local.port; {}", ctx()));
        assert!(
            PORTS.contains(&port),
            "unexpected local port {port}; {}",
            ctx()
        );
        assert!(seen.insert(port), "port {port} reported twice; {}", ctx());
        assert_eq!(event::netns(v), Some(inode), "network.netns; {}", ctx());
        assert_eq!(event::direction(v), Some("sent"), "direction; {}", ctx());
        assert_eq!(event::origin(v), Some("tcp_stack"), "origin; {}", ctx());
        assert_eq!(event::reason(v), Some("NO_SOCKET"), "reason; {}", ctx());
        assert_eq!(
            event::owner(v),
            Some(&Value::Null),
            "owner must be present and null; {}",
            ctx()
        );
        assert_eq!(event::count(v), Some(1), "count; {}", ctx());
        assert_eq!(
            event::str_at(v, "network.transport"),
            Some("tcp"),
            "network.transport; {}",
            ctx()
        );
        assert_eq!(
            event::str_at(v, "network.type"),
            Some("ipv4"),
            "network.type; {}",
            ctx()
        );
        assert_eq!(
            event::local_address(v),
            Some("127.0.0.1"),
            "network.local.address; {}",
            ctx()
        );
        assert_eq!(
            event::peer_address(v),
            Some("127.0.0.1"),
            "network.peer.address; {}",
            ctx()
        );
        let lport = client_port[&port];
        if lport != 0 {
            assert_eq!(
                event::peer_port(v),
                Some(lport),
                "network.peer.port is the client's port; {}",
                ctx()
            );
        }
    }
    assert_eq!(seen.len(), n);

    let stopped = agent.stop();
    let all = stopped.causes(is_nl);
    assert_eq!(
        all.len(),
        n,
        "extra no_listener events arrived:\n  {}",
        event::summarize(&all)
    );
    assert_eq!(
        event::stats_cause(&stopped.final_stats, "no_listener"),
        n as u64,
        "final stats causes.no_listener; stats line: {}",
        stopped.final_stats
    );
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(
        out_rsts,
        n as i64,
        "Tcp.OutRsts delta of the netns (kernel ground truth); MIB changes: {:?}",
        Mib::changes(&before, &after)
    );
}
