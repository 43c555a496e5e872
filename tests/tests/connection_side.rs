//! RSTs the local stack sends on established connections, on the real kernel: close() with
//! unread data and SO_LINGER {1, 0}. The RST names the server process that closed the socket
//! (not the client that was on the CPU), the peer sees reset_by_peer, and the agent's RSTs
//! reconcile with the netns's Tcp.OutRsts and TcpExt.TCPAbortOnClose/TCPAbortOnData.

use std::time::Duration;

use rst_trace_tests::{event, mib, require_root, Agent, Mib, Netns, Peer};

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

fn run_case(mode: &str, port: u16, extra: Option<&str>, want_cause: &str, mib_key: &str) {
    let ns = Netns::new();
    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start(&ns, None);
    let port_s = port.to_string();
    let mut args = vec![mode, "--port", port_s.as_str()];
    args.extend(extra);
    let mut srv = Peer::spawn(&ns, PEER, &args);
    let server_pid = srv.pid();
    let mut cli = Peer::spawn(
        &ns,
        PEER,
        &[
            "send",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--bytes",
            "1000",
            "--wait-close",
        ],
    );
    let client_pid = cli.pid();
    let c = cli.wait_exit(Duration::from_secs(15));
    let s = srv.wait_exit(Duration::from_secs(15));
    assert!(
        c.status.success() && s.status.success(),
        "{mode}: client {c:?} server {s:?}"
    );
    let sent = agent.wait_for(
        |v| event::has_cause(v, want_cause),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(sent.len(), 1, "{mode}: lines {:?}", agent.lines());
    let peer_side = agent.wait_for(
        |v| event::has_cause(v, "reset_by_peer"),
        1,
        Duration::from_secs(20),
    );
    let after = Mib::snapshot(&ns);
    let stopped = agent.stop();

    let v = &sent[0];
    assert_eq!(event::direction(v), Some("sent"), "{v}");
    assert_eq!(event::origin(v), Some("tcp_stack"), "{v}");
    assert_eq!(event::local_port(v), Some(port), "{v}");
    assert_eq!(
        event::owner_pid(v),
        Some(server_pid),
        "the closing server owns the RST, not client {client_pid}: {v}"
    );
    if mode == "abort-close" {
        assert_eq!(event::u64_at(v, "evidence.unread_bytes"), Some(1000), "{v}");
        assert_eq!(event::reason(v), Some("TCP_ABORT_ON_CLOSE"), "{v}");
    } else {
        assert!(
            event::str_at(v, "evidence.linger").is_some_and(|l| l.starts_with("on, 0")),
            "linger flag told apart: {v}"
        );
        assert_eq!(event::reason(v), Some("TCP_STATE"), "{v}");
    }
    assert_eq!(peer_side.len(), 1, "the client sees the RST arrive");
    assert_eq!(
        event::owner_pid(&peer_side[0]),
        Some(client_pid),
        "{}",
        peer_side[0]
    );

    let rst_events = stopped.causes(|v| event::direction(v) == Some("sent"));
    assert_eq!(
        rst_events.len() as i64,
        mib::delta(&before, &after, "Tcp.OutRsts"),
        "sent RSTs vs Tcp.OutRsts: {:?}",
        Mib::changes(&before, &after)
    );
    assert_eq!(
        mib::delta(&before, &after, mib_key),
        1,
        "{mib_key}: {:?}",
        Mib::changes(&before, &after)
    );
    assert_eq!(
        event::stats_cause(&stopped.final_stats, want_cause),
        1,
        "final stats: {}",
        stopped.final_stats
    );
    assert_eq!(
        event::stats_cause(&stopped.final_stats, "reset_by_peer"),
        1,
        "final stats: {}",
        stopped.final_stats
    );
}

#[test]
fn close_with_unread_data_is_abort_on_close() {
    require_root();
    run_case(
        "abort-close",
        41101,
        None,
        "abort_on_close",
        "TcpExt.TCPAbortOnClose",
    );
}

#[test]
fn so_linger_zero_is_abort_by_application() {
    require_root();
    run_case(
        "linger0",
        41102,
        Some("--wait-data"),
        "abort_by_application",
        "TcpExt.TCPAbortOnData",
    );
}
