//! Listener-side causes on the real kernel: accept-queue overflow, FD exhaustion linked to the
//! overflow it causes, and no_listener naming the listener that just went away. Servers and
//! clients are separate processes, neither of them the agent, so blaming the task on the CPU
//! (the client, on loopback) fails these tests.

use std::time::Duration;

use rst_trace_tests::{event, mib, require_root, Agent, Mib, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

fn overflow_drops(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|v| {
            event::has_cause(v, "accept_queue_overflow") && event::direction(v) == Some("dropped")
        })
        .filter_map(event::count)
        .sum()
}

#[test]
fn accept_queue_overflow_is_attributed_and_reconciles_with_listen_drops() {
    require_root();
    let ns = Netns::new();
    let port = 41001u16;
    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start(&ns, None);
    // listen(1) and never accept: the accept queue holds two connections, the rest drop.
    let server = Peer::spawn(
        &ns,
        PEER,
        &[
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--backlog",
            "1",
        ],
    );
    let server_pid = server.pid();
    let results = Peer::connect(
        &ns,
        PEER,
        "127.0.0.1",
        port,
        20,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    assert_eq!(results.len(), 20, "client results: {results:?}");
    let after = Mib::settled(&ns);
    let stopped = agent.stop();
    drop(server);

    let drops = mib::delta(&before, &after, "TcpExt.ListenDrops");
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    let reqq = mib::delta(&before, &after, "TcpExt.TCPReqQFullDrop");
    assert!(
        overflows > 0,
        "the scenario produced no overflow; MIB: {:?}",
        Mib::changes(&before, &after)
    );
    let events = stopped.causes(|v| event::has_cause(v, "accept_queue_overflow"));
    let reported = overflow_drops(&events);
    assert_eq!(
        reported as i64,
        overflows,
        "agent total vs TcpExt.ListenOverflows:\n  {}",
        event::summarize(&events)
    );
    assert_eq!(
        drops,
        overflows + reqq,
        "ListenDrops = ListenOverflows + TCPReqQFullDrop"
    );
    assert_eq!(
        reqq, 0,
        "with syncookies on, no SYN is dropped for a full SYN queue here"
    );
    assert_eq!(reported as i64, drops, "agent total vs TcpExt.ListenDrops");
    assert_eq!(
        event::stats_cause(&stopped.final_stats, "accept_queue_overflow"),
        reported,
        "final stats"
    );
    for v in &events {
        assert_eq!(
            event::owner_pid(v),
            Some(server_pid),
            "owner is the listening server, not the client: {v}"
        );
        assert_eq!(event::local_port(v), Some(port), "{v}");
        assert_eq!(event::netns(v), Some(ns.inode()), "{v}");
        assert!(
            !event::str_at(v, "advice").unwrap_or("").is_empty(),
            "advice: {v}"
        );
    }
    let dropped: Vec<&Value> = events
        .iter()
        .filter(|v| event::direction(v) == Some("dropped"))
        .collect();
    let first = dropped.first().expect("at least one drop event");
    assert_eq!(
        event::u64_at(first, "evidence.accept_queue.cap"),
        Some(1),
        "queue cap evidence: {first}"
    );
    assert_eq!(
        event::u64_at(first, "evidence.listen_backlog_requested"),
        Some(1),
        "{first}"
    );
    assert!(
        event::u64_at(first, "evidence.somaxconn").is_some(),
        "{first}"
    );
    assert_eq!(
        event::str_at(first, "evidence.stage"),
        Some("syn"),
        "{first}"
    );
}

#[test]
fn fd_exhaustion_names_the_acceptor_and_explains_the_overflow() {
    require_root();
    let ns = Netns::new();
    let port = 41002u16;
    let mut agent = Agent::start(&ns, None);
    // stdio + the listener + one accepted connection: the second accept() fails with EMFILE.
    let server = Peer::spawn(
        &ns,
        PEER,
        &[
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--backlog",
            "2",
            "--accept",
            "--nofile",
            "6",
        ],
    );
    let server_pid = server.pid();
    let _ = Peer::connect(
        &ns,
        PEER,
        "127.0.0.1",
        port,
        12,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    let fd = agent.wait_for(
        |v| event::has_cause(v, "fd_exhaustion"),
        1,
        Duration::from_secs(20),
    );
    assert!(
        !fd.is_empty(),
        "no fd_exhaustion event; lines: {:?}",
        agent.lines()
    );
    let _ = Mib::settled(&ns);
    let stopped = agent.stop();
    drop(server);

    let fd = stopped.causes(|v| event::has_cause(v, "fd_exhaustion"));
    for v in &fd {
        assert_eq!(event::owner_pid(v), Some(server_pid), "{v}");
        assert_eq!(
            event::u64_at(v, "evidence.listening_port"),
            Some(u64::from(port)),
            "{v}"
        );
        assert_eq!(
            event::u64_at(v, "evidence.rlimit_nofile.soft"),
            Some(6),
            "{v}"
        );
        assert_eq!(event::str_at(v, "reason"), Some("EMFILE"), "{v}");
    }
    let overflow = stopped.causes(|v| {
        event::has_cause(v, "accept_queue_overflow") && event::direction(v) == Some("dropped")
    });
    assert!(
        !overflow.is_empty(),
        "the full queue should overflow while accept() fails"
    );
    let linked = overflow
        .iter()
        .filter(|v| event::str_at(v, "related.cause") == Some("fd_exhaustion"))
        .count();
    assert!(
        linked > 0,
        "overflow events must point back at the fd_exhaustion incident:\n  {}",
        event::summarize(&overflow)
    );
    let incident = event::str_at(&fd[0], "evidence.incident.id").expect("incident id");
    assert!(
        overflow
            .iter()
            .any(|v| event::str_at(v, "related.incident") == Some(incident)),
        "same incident id"
    );
}

#[test]
fn no_listener_names_the_listener_that_just_closed() {
    require_root();
    let ns = Netns::new();
    let port = 41003u16;
    let mut agent = Agent::start(&ns, None);
    let server = Peer::spawn(
        &ns,
        PEER,
        &["listen", "--addr", "127.0.0.1", "--port", &port.to_string()],
    );
    let server_pid = server.pid();
    drop(server); // the "restart": the listener goes away, clients keep coming
    let res = Peer::connect(&ns, PEER, "127.0.0.1", port, 3, &["--timeout-ms", "3000"]);
    assert!(res.iter().all(|r| r.result == "refused"), "{res:?}");
    let got = agent.wait_for(
        |v| event::has_cause(v, "no_listener"),
        3,
        Duration::from_secs(20),
    );
    assert_eq!(got.len(), 3, "lines: {:?}", agent.lines());
    for v in &got {
        assert_eq!(
            event::owner(v),
            Some(&Value::Null),
            "no_listener has no owner: {v}"
        );
        assert_eq!(
            event::u64_at(v, "evidence.last_listener.process.pid"),
            Some(u64::from(server_pid)),
            "{v}"
        );
        assert!(
            event::get(v, "evidence.last_listener.closed_seconds_ago").is_some(),
            "{v}"
        );
        assert!(
            event::str_at(v, "advice")
                .unwrap_or("")
                .contains(&server_pid.to_string()),
            "{v}"
        );
    }
    agent.stop();
}
