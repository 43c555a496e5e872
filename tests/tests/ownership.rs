//! Owners off the easy path: sockets older than the agent, processes that exec() after listen(),
//! and IPv6 closed ports next to a REJECT rule. (SO_REUSEPORT groups, each member its own queue,
//! are the shared scenario `reuseport_group`: tests/tests/scenarios.rs, and the VM.) Every scenario drives traffic from
//! other processes than the owners, and checks, besides its counts, that no event names a cause
//! the scenario did not provoke and that no event blames a process not holding the socket.

use std::time::Duration;

use rst_trace_tests::{event, mib, require_root, Agent, Mib, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

fn lines(events: &[Value]) -> String {
    event::summarize(events)
}

/// Fails on any cause event naming a cause outside `allowed`: a scenario provokes what it
/// provokes, and nothing else may show up.
fn assert_no_phantoms(events: &[Value], allowed: &[&str]) {
    let wrong: Vec<String> = events
        .iter()
        .filter(|v| event::cause(v).is_some_and(|c| !allowed.contains(&c)))
        .map(|v| v.to_string())
        .collect();
    assert!(
        wrong.is_empty(),
        "causes this scenario did not provoke:\n  {}",
        wrong.join("\n  ")
    );
}

fn dropped_overflows(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|v| {
            event::has_cause(v, "accept_queue_overflow") && event::direction(v) == Some("dropped")
        })
        .cloned()
        .collect()
}

/// A connection established before the agent started, then aborted (SO_LINGER 0) by the
/// server: both ends are named, from the sockets' inodes found in /proc at start-up.
fn older_than_the_agent(addr: &str, port: u16) {
    require_root();
    let ns = Netns::new();
    let port_s = port.to_string();
    let mut server = Peer::spawn(
        &ns,
        PEER,
        &[
            "idle-linger0",
            "--addr",
            addr,
            "--port",
            &port_s,
            "--idle-ms",
            "8000",
            "--timeout-ms",
            "30000",
        ],
    );
    let mut client = Peer::spawn(
        &ns,
        PEER,
        &[
            "send",
            "--addr",
            addr,
            "--port",
            &port_s,
            "--bytes",
            "10",
            "--wait-close",
            "--timeout-ms",
            "30000",
        ],
    );
    server
        .wait_line(Duration::from_secs(10), |l| l.starts_with("replied"))
        .unwrap_or_else(|| panic!("the server replied; stderr: {}", server.stderr_text()));
    // Only now does the agent start: both sockets are older than it.
    let mut agent = Agent::start(&ns, None);
    client
        .wait_line(Duration::from_secs(20), |l| l == "reset")
        .unwrap_or_else(|| panic!("the client was reset; stderr: {}", client.stderr_text()));
    let is_abort = |v: &Value| event::has_cause(v, "abort_by_application");
    let is_peer = |v: &Value| event::has_cause(v, "reset_by_peer");
    agent.wait_for(is_abort, 1, Duration::from_secs(10));
    agent.wait_for(is_peer, 1, Duration::from_secs(10));
    let stopped = agent.stop();
    let server_pid = server.pid();
    let client_pid = client.pid();
    drop(client);
    drop(server);

    let aborts = stopped.causes(is_abort);
    let resets = stopped.causes(is_peer);
    assert_eq!(aborts.len(), 1, "{}", lines(&stopped.causes(|_| true)));
    assert_eq!(resets.len(), 1, "{}", lines(&stopped.causes(|_| true)));
    assert_eq!(
        event::owner_pid(&aborts[0]),
        Some(server_pid),
        "the server owns the aborted socket: {}",
        aborts[0]
    );
    assert_eq!(
        event::owner_pid(&resets[0]),
        Some(client_pid),
        "the client owns the reset socket: {}",
        resets[0]
    );
    for v in aborts.iter().chain(&resets) {
        assert_eq!(
            event::str_at(v, "owner.learned_from"),
            Some("procfs"),
            "learnt from /proc at start-up: {v}"
        );
    }
    let all = stopped.causes(|_| true);
    assert_no_phantoms(&all, &["abort_by_application", "reset_by_peer"]);
}

#[test]
fn a_connection_older_than_the_agent_names_both_owners_ipv4() {
    older_than_the_agent("127.0.0.1", 41311);
}

#[test]
fn a_connection_older_than_the_agent_names_both_owners_ipv6() {
    older_than_the_agent("::1", 41312);
}

/// Removes the directory of the renamed program, even when the test fails.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A launcher listens, then exec()s the service that serves the socket (socket activation,
/// tini, shell wrappers ending in exec): its overflow names the service as it is called now.
#[test]
fn an_owner_that_execs_is_named_as_it_is_now_ipv4() {
    owner_that_execs("127.0.0.1", 41321);
}

#[test]
fn an_owner_that_execs_is_named_as_it_is_now_ipv6() {
    owner_that_execs("::1", 41322);
}

fn owner_that_execs(addr: &str, port: u16) {
    require_root();
    let dir = TempDir(std::env::temp_dir().join(format!("rst-exec-{}-{port}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let service = dir.0.join("svc-after-exec");
    std::os::unix::fs::symlink(PEER, &service).expect("symlink to the peer");
    let ns = Netns::new();
    let port_s = port.to_string();
    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start(&ns, None);
    let launcher = Peer::spawn(
        &ns,
        PEER,
        &[
            "listen",
            "--addr",
            addr,
            "--port",
            &port_s,
            "--backlog",
            "1",
            "--exec-as",
            service.to_str().expect("utf-8 path"),
        ],
    );
    let results = Peer::connect(
        &ns,
        PEER,
        addr,
        port,
        20,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    assert_eq!(results.len(), 20, "{results:?}");
    let after = Mib::settled(&ns);
    let stopped = agent.stop();
    let pid = launcher.pid();
    drop(launcher);

    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    assert!(overflows > 0, "{:?}", Mib::changes(&before, &after));
    let drops = dropped_overflows(&stopped.causes(|_| true));
    assert!(!drops.is_empty(), "{}", lines(&stopped.causes(|_| true)));
    for v in &drops {
        assert_eq!(event::owner_pid(v), Some(pid), "{v}");
        assert_eq!(
            event::owner_comm(v),
            Some("svc-after-exec"),
            "the name after exec(), not the launcher's: {v}"
        );
    }
}

/// On IPv6 the stack's own RSTs for closed ports leave without a socket attached, like
/// netfilter's: they must be no_listener only, and a real REJECT rule still firewall_reject.
#[test]
fn ipv6_closed_ports_are_no_listener_and_rejects_are_firewall_reject() {
    require_root();
    let ns = Netns::new();
    let closed = [41331u16, 41332, 41333, 41334, 41335];
    let rejected = 41339u16;
    ns.exec(
        "ip6tables",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &rejected.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start(&ns, None);
    for &p in &closed {
        let r = Peer::connect(&ns, PEER, "::1", p, 1, &["--timeout-ms", "5000"]);
        assert_eq!(r[0].result, "refused", "{r:?}");
    }
    let r = Peer::connect(&ns, PEER, "::1", rejected, 3, &["--timeout-ms", "5000"]);
    assert!(r.iter().all(|c| c.result == "refused"), "{r:?}");
    let is_nl = |v: &Value| event::has_cause(v, "no_listener");
    let is_fw = |v: &Value| event::has_cause(v, "firewall_reject");
    agent.wait_for(is_nl, closed.len(), Duration::from_secs(20));
    agent.wait_for(is_fw, 3, Duration::from_secs(20));
    let after = Mib::settled(&ns);
    // A late phantom would arrive within the agent's pairing window (1 s).
    agent.settle(Duration::from_millis(1500));
    let stopped = agent.stop();

    let all = stopped.causes(|_| true);
    let nl = stopped.causes(is_nl);
    let fw = stopped.causes(is_fw);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(
        out_rsts,
        closed.len() as i64,
        "{:?}",
        Mib::changes(&before, &after)
    );
    assert_eq!(
        nl.iter().filter_map(event::count).sum::<u64>() as i64,
        out_rsts,
        "no_listener vs Tcp.OutRsts:\n  {}",
        lines(&all)
    );
    for v in &nl {
        assert_eq!(event::str_at(v, "network.type"), Some("ipv6"), "{v}");
        assert!(closed.contains(&event::local_port(v).unwrap_or(0)), "{v}");
    }
    let rule =
        rst_trace_tests::rule_packets(&ns, "ip6tables", "REJECT", &format!("dpt:{rejected}"));
    assert_eq!(rule, 3, "one REJECT per connect");
    assert_eq!(
        fw.iter().filter_map(event::count).sum::<u64>(),
        rule,
        "firewall_reject vs the rule's packets (none for the closed ports):\n  {}",
        lines(&all)
    );
    for v in &fw {
        assert_eq!(event::local_port(v), Some(rejected), "{v}");
    }
    assert_no_phantoms(
        &all,
        &["no_listener", "firewall_reject", "connection_refused"],
    );
}
