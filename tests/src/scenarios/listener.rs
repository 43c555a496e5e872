//! Listener-side scenarios: closed ports, accept-queue overflow (one listener and a
//! SO_REUSEPORT group), ACK-time overflow (with and without tcp_abort_on_overflow, and a burst
//! that overflows at SYN and at ACK time), and accept() failing with EMFILE.
//!
//! Servers and clients are separate processes, neither the agent: blaming the task on the CPU
//! (the client, on loopback) fails these scenarios.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    causes_seen, distinct, how, owner_pids, results, set_of, tcp_sent_total, total, with_cause,
    Family, Run,
};
use crate::{event, mib, ConnectResult, Mib};
use rst_trace_common::names::program;

/// The programs that see an ACK-time accept queue overflow per packet, on one kernel or another.
const PER_PACKET_DROP_PROGRAMS: &[&str] = &[
    program::KFREE_SKB,
    program::TCP_V4_SYN_RECV_SOCK_FEXIT6,
    program::TCP_V4_SYN_RECV_SOCK_FEXIT7,
    program::TCP_V6_SYN_RECV_SOCK_FEXIT6,
    program::TCP_V6_SYN_RECV_SOCK_FEXIT7,
    program::TCP_V4_SYN_RECV_SOCK_KPROBE,
    program::TCP_V6_SYN_RECV_SOCK_KPROBE,
];

/// Connections to ports with no listener. The first port had a listener a moment ago (a
/// restart): its events name that process as the last listener. Each client's refused connect
/// is the receiving side of the same RST, owned by the client.
pub fn no_listener(r: &mut Run) {
    let ports: Vec<u16> = [40101, 40202, 40303, 40404, 40505]
        .into_iter()
        .map(|p| r.port(p))
        .collect();
    let n = ports.len();
    let addr = r.addr();
    let mark = r.mark();
    let before = r.env.mib();
    let mut restarted = r.listen(addr, ports[0], &[]);
    let restarted_pid = restarted.pid();
    let _ = restarted.stop(r.bound(Duration::from_secs(20)));
    let mut clients = BTreeMap::new();
    let mut client_pids = BTreeSet::new();
    for &p in &ports {
        let res = r.connect(addr, p, 1, &["--timeout-ms", "5000"]);
        client_pids.insert((u64::from(r.last_pid()), p));
        let c = ConnectResult::parse(&res[0]);
        r.check(
            &format!("connect to closed port {p}"),
            json!("refused"),
            json!(c.as_ref().map(|c| c.result.clone())),
        );
        clients.insert(p, c.map_or(0, |c| c.lport));
    }
    r.wait(mark, |v| event::has_cause(v, "no_listener"), n);
    r.wait(mark, |v| event::has_cause(v, "connection_refused"), n);
    let after = r.env.settled_mib();
    let (lines, stats) = r.finish(mark);
    let evs = with_cause(&lines, "no_listener");

    r.check("no_listener events", json!(n), json!(evs.len()));
    let got_ports: Vec<u16> = evs.iter().filter_map(|v| event::local_port(v)).collect();
    let mut sorted = got_ports.clone();
    sorted.sort_unstable();
    r.check(
        "local port of each event, once each",
        json!(ports),
        json!(sorted),
    );
    let a = r.family.loopback();
    let reason = r.reset_reason("NO_SOCKET");
    r.check(
        "(direction, origin, reason, count, transport, type, local address, peer address) of every event",
        json!([["sent", "tcp_stack", reason, 1, "tcp", r.family.network_type(), a, a]]),
        json!(distinct(evs
            .iter()
            .map(|v| json!([
                event::direction(v),
                event::origin(v),
                event::reason(v),
                event::count(v),
                event::str_at(v, "network.transport"),
                event::str_at(v, "network.type"),
                event::local_address(v),
                event::peer_address(v)
            ]))
            )),
    );
    r.check(
        "owner present and null on every event",
        json!([true]),
        json!(evs
            .iter()
            .map(|v| event::owner(v) == Some(&Value::Null))
            .collect::<BTreeSet<_>>()),
    );
    r.check(
        "network.peer.port is the client's port",
        json!(clients),
        json!(evs
            .iter()
            .filter_map(|v| Some((event::local_port(v)?, event::peer_port(v)?)))
            .collect::<BTreeMap<_, _>>()),
    );
    let restarted_evs: Vec<&&Value> = evs
        .iter()
        .filter(|v| event::local_port(v) == Some(ports[0]))
        .collect();
    r.check(
        "evidence.last_listener.process.pid on the restarted port",
        json!([restarted_pid]),
        json!(restarted_evs
            .iter()
            .map(|v| event::u64_at(v, "evidence.last_listener.process.pid"))
            .collect::<Vec<_>>()),
    );
    r.check_true(
        "evidence.last_listener.closed_seconds_ago and the pid in the advice",
        !restarted_evs.is_empty()
            && restarted_evs.iter().all(|v| {
                event::get(v, "evidence.last_listener.closed_seconds_ago").is_some()
                    && event::str_at(v, "advice")
                        .unwrap_or("")
                        .contains(&restarted_pid.to_string())
            }),
        json!(restarted_evs.first()),
    );
    let refused = with_cause(&lines, "connection_refused");
    r.check(
        "connection_refused: (owner pid, peer port) per client",
        json!(client_pids),
        json!(refused
            .iter()
            .map(|v| (
                event::owner_pid(v).map_or(0, u64::from),
                event::peer_port(v).unwrap_or(0)
            ))
            .collect::<BTreeSet<_>>()),
    );
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    r.check("Tcp.OutRsts delta", json!(n), json!(out_rsts));
    r.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(out_rsts),
        json!(tcp_sent_total(&lines)),
    );
    if let Some(s) = stats {
        r.check(
            "final stats causes.no_listener",
            json!(n),
            json!(event::stats_cause(&s, "no_listener")),
        );
    }
    r.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    r.claims(&lines, &["no_listener", "connection_refused"]);
}

fn dropped_overflows(lines: &[Value], port: u16) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| event::has_cause(v, "accept_queue_overflow"))
        .filter(|v| event::local_port(v) == Some(port) && event::direction(v) == Some("dropped"))
        .collect()
}

fn overflow_total(lines: &[Value], port: u16) -> u64 {
    total(&dropped_overflows(lines, port))
}

/// Causes a listener's own close provokes: the connections still in its accept queue are
/// aborted (reported as abort_on_close on some kernels, abort_by_application on others) and
/// their clients see the RST; a stray segment of a dropped SYN-cookie handshake may draw an
/// RST of its own (a protocol reason).
const LISTENER_CLOSE: [&str; 6] = [
    "abort_on_close",
    "abort_by_application",
    "reset_by_peer",
    "connection_refused",
    "protocol_violation",
    // Clients whose handshake was dropped at ACK time believe they are connected: their
    // retransmissions reach the port after the listener is gone.
    "no_listener",
];

fn allowed(extra: &[&'static str]) -> Vec<&'static str> {
    [extra, &LISTENER_CLOSE[..]].concat()
}

/// listen(1) and never accept: the accept queue holds two connections, the rest drop; every
/// drop reconciles with TcpExt.ListenOverflows and names the listening server.
pub fn accept_queue_overflow(r: &mut Run) {
    let port = r.port(41001);
    let addr = r.addr();
    let mark = r.mark();
    let before = r.env.mib();
    let mut server = r.listen(addr, port, &["--backlog", "1"]);
    let server_pid = server.pid();
    // Two handshakes fill the queue (backlog 1 holds two) before the burst, so the burst's SYNs
    // find it full and some drops are at SYN time at any speed, emulated guests included.
    let prefill = r.connect(addr, port, 2, &["--timeout-ms", "2500"]);
    r.info("prefill_results", results(&prefill));
    let client = r.connect(addr, port, 18, &["--nonblocking", "--timeout-ms", "2500"]);
    r.info("client_results", results(&client));
    // Clients whose handshake the server dropped at ACK time still believe they are connected:
    // their retransmissions overflow the queue again for as long as the listener exists. Wait,
    // with the listener still there, until the agent reported what the counters show so far;
    // then close it, and only then are both sides compared over the same window.
    let so_far = mib::delta(&before, &r.env.settled_mib(), "TcpExt.ListenOverflows");
    r.wait_total(mark, so_far, |l| overflow_total(l, port));
    let _ = server.stop(r.bound(Duration::from_secs(20)));
    let after = r.env.settled_mib();
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    r.wait_total(mark, overflows, |l| overflow_total(l, port));
    let (lines, stats) = r.finish(mark);

    let drops = mib::delta(&before, &after, "TcpExt.ListenDrops");
    let reqq = mib::delta(&before, &after, "TcpExt.TCPReqQFullDrop");
    let evs: Vec<&Value> = with_cause(&lines, "accept_queue_overflow")
        .into_iter()
        .filter(|v| event::local_port(v) == Some(port))
        .collect();
    let dropped = dropped_overflows(&lines, port);
    let reported = total(&dropped);
    r.check_true(
        "TcpExt.ListenOverflows delta > 0 (the scenario overflowed)",
        overflows > 0,
        json!(overflows),
    );
    r.check(
        "agent accept_queue_overflow dropped total == TcpExt.ListenOverflows delta",
        json!(overflows),
        json!(reported),
    );
    r.check(
        "TcpExt.ListenDrops == ListenOverflows + TCPReqQFullDrop, TCPReqQFullDrop == 0 (syncookies on)",
        json!([overflows, 0]),
        json!([drops, reqq]),
    );
    r.check(
        "owner pid of every accept_queue_overflow event (0 = none)",
        json!([server_pid]),
        json!(owner_pids(&evs)),
    );
    r.check_true(
        "advice on every event",
        evs.iter()
            .all(|v| !event::str_at(v, "advice").unwrap_or("").is_empty()),
        json!(evs.iter().find(|v| event::str_at(v, "advice").is_none())),
    );
    r.check_network_type(&evs, r.family);
    let first = dropped.first();
    r.check(
        "first drop: evidence (accept_queue.cap, listen_backlog_requested, somaxconn present)",
        json!([1, 1, true]),
        json!(first.map(|v| json!([
            event::u64_at(v, "evidence.accept_queue.cap"),
            event::u64_at(v, "evidence.listen_backlog_requested"),
            event::get(v, "evidence.somaxconn").is_some_and(|s| !s.is_null()),
        ]))),
    );
    // The queue was full before the burst's first SYN (see the prefill above): at any speed,
    // emulated guests included, the first drop is at SYN time.
    r.check(
        "first drop: evidence.stage",
        json!("syn"),
        json!(first.and_then(|v| event::str_at(v, "evidence.stage"))),
    );
    if let Some(s) = stats {
        r.check(
            "final stats causes.accept_queue_overflow",
            json!(reported),
            json!(event::stats_cause(&s, "accept_queue_overflow")),
        );
    }
    r.info("server_pid", json!(server_pid));
    r.info("stages", json!(set_of(&dropped, "evidence.stage")));
    r.info(
        "observed_by",
        json!(set_of(&dropped, "evidence.observed_by")),
    );
    r.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    // A burst at a backlog of 1 may also fill the SYN queue.
    r.claims(
        &lines,
        &allowed(&["accept_queue_overflow", "syn_queue_overflow"]),
    );
}

fn other_owner_pids(v: &Value) -> Vec<Option<u64>> {
    event::get(v, "other_owners")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|o| event::u64_at(o, "process.pid")).collect())
        .unwrap_or_default()
}

/// Two processes each hold an SO_REUSEPORT listener on one port: one never accepts (its own
/// queue overflows), the other serves. Every drop belongs to the stalled member's process;
/// the serving member is never blamed, neither as owner, other owner nor acceptor.
pub fn reuseport_group(r: &mut Run) {
    let port = r.port(41301);
    let addr = r.addr();
    let port_s = port.to_string();
    let mark = r.mark();
    let before = r.env.mib();
    let mut stalled = r.listen(addr, port, &["--backlog", "1", "--reuseport"]);
    // Deep: this member never overflows, even when a burst outruns its accepts.
    let mut serving = r.listen(
        addr,
        port,
        &["--backlog", "1024", "--reuseport", "--accept"],
    );
    let _ = port_s;
    let res = r.connect(addr, port, 40, &["--nonblocking", "--timeout-ms", "2500"]);
    r.info("client_results", results(&res));
    r.check_true(
        "the serving member accepted some",
        res.iter().any(|l| l.starts_with("connected")),
        results(&res),
    );
    let so_far = mib::delta(&before, &r.env.settled_mib(), "TcpExt.ListenOverflows");
    r.wait_total(mark, so_far, |l| overflow_total(l, port));
    let (stalled_pid, serving_pid) = (u64::from(stalled.pid()), u64::from(serving.pid()));
    let _ = serving.stop(r.bound(Duration::from_secs(20)));
    let _ = stalled.stop(r.bound(Duration::from_secs(20)));
    let after = r.env.settled_mib();
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    r.wait_total(mark, overflows, |l| overflow_total(l, port));
    let (lines, stats) = r.finish(mark);

    let drops = dropped_overflows(&lines, port);
    r.check_true(
        "the stalled member overflowed (ListenOverflows delta > 0)",
        overflows > 0,
        json!(overflows),
    );
    r.check(
        "dropped accept_queue_overflow total == TcpExt.ListenOverflows delta",
        json!(overflows),
        json!(total(&drops)),
    );
    if let Some(s) = stats {
        r.check(
            "final stats causes.accept_queue_overflow",
            json!(overflows),
            json!(event::stats_cause(&s, "accept_queue_overflow")),
        );
    }
    r.check(
        "owner pid of every drop: the stalled member, not the serving one",
        json!([stalled_pid]),
        json!(owner_pids(&drops)),
    );
    r.check_true(
        "other_owners hold this socket: never null, never the serving member",
        drops.iter().all(|v| {
            other_owner_pids(v)
                .iter()
                .all(|p| p.is_some() && *p != Some(serving_pid))
        }),
        json!(drops
            .iter()
            .map(|v| other_owner_pids(v))
            .collect::<BTreeSet<_>>()),
    );
    r.check_true(
        "the serving member accepts on its own socket: never among accepting_processes",
        drops.iter().all(|v| {
            event::get(v, "evidence.accepting_processes")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .all(|o| event::u64_at(o, "pid") != Some(serving_pid))
                })
        }),
        json!(drops
            .iter()
            .map(|v| event::get(v, "evidence.accepting_processes").cloned())
            .collect::<Vec<_>>()),
    );
    r.check_network_type(&drops, r.family);
    r.info(
        "pids",
        json!({"stalled": stalled_pid, "serving": serving_pid}),
    );
    r.info("stages", json!(set_of(&drops, "evidence.stage")));
    r.info("observed_by", json!(set_of(&drops, "evidence.observed_by")));
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    // A burst at a backlog of 1 may also fill the SYN queue.
    r.claims(
        &lines,
        &allowed(&["accept_queue_overflow", "syn_queue_overflow"]),
    );
}

/// How the ACK-time scenarios differ.
struct AckTime {
    /// The listener's family (its address: the family's loopback, or "::" for v4-mapped).
    listen_addr: &'static str,
    listen_family: Family,
    /// The clients' address.
    client_addr: &'static str,
    abort_on_overflow: bool,
    /// Clients that arrive at a full queue before the early ones send (SYN-time drops).
    syn_burst: u32,
    base_port: u16,
}

pub fn ack_time_overflow(r: &mut Run) {
    let a = r.addr();
    ack_time(
        r,
        AckTime {
            listen_addr: a,
            listen_family: r.family,
            client_addr: a,
            abort_on_overflow: false,
            syn_burst: 0,
            base_port: 41004,
        },
    );
}

/// An IPv6 listener on "::" with IPv4 clients: tcp_v6_syn_recv_sock hands those to
/// tcp_v4_syn_recv_sock, and each drop must still be reported once.
pub fn ack_time_overflow_v4_mapped(r: &mut Run) {
    ack_time(
        r,
        AckTime {
            listen_addr: "::",
            listen_family: Family::V6,
            client_addr: "127.0.0.1",
            abort_on_overflow: false,
            syn_burst: 0,
            base_port: 41005,
        },
    );
}

pub fn ack_time_overflow_abort(r: &mut Run) {
    let a = r.addr();
    ack_time(
        r,
        AckTime {
            listen_addr: a,
            listen_family: r.family,
            client_addr: a,
            abort_on_overflow: true,
            syn_burst: 0,
            base_port: 41006,
        },
    );
}

/// tcp_abort_on_overflow=1 under a burst that overflows both at SYN time (dropped, no RST) and
/// at ACK time (dropped, answered by an RST): one incident, one count. Every dropped
/// connection is one accept_queue_overflow, and the RSTs are tallied apart.
pub fn abort_on_overflow_burst(r: &mut Run) {
    let a = r.addr();
    ack_time(
        r,
        AckTime {
            listen_addr: a,
            listen_family: r.family,
            client_addr: a,
            abort_on_overflow: true,
            syn_burst: 12,
            base_port: 41007,
        },
    );
}

/// Overflow when the handshake's ACK asks for a place in a full accept queue, the case the
/// per-packet `tcp_v*_syn_recv_sock` hooks exist for. The listener defers accept, so two early
/// handshakes stay request sockets; four more clients send data at once and fill the queue
/// (backlog 3 holds 4); optionally a burst of clients is dropped at SYN time; then the two early
/// clients send, and each of their segments (retransmissions included) is refused by
/// tcp_v*_syn_recv_sock.
fn ack_time(r: &mut Run, c: AckTime) {
    const BACKLOG: u64 = 3;
    let port = r.port(c.base_port);
    // With tcp_abort_on_overflow=1 the listener answers each refused segment with an RST.
    r.sysctl(
        "net.ipv4.tcp_abort_on_overflow",
        if c.abort_on_overflow { "1" } else { "0" },
    );
    let (backlog_s, fill_s) = (BACKLOG.to_string(), (BACKLOG + 1).to_string());
    let go = r.go_file(&format!("ack_time_overflow_{port}"));
    let port_s = port.to_string();
    let mark = r.mark();
    let before = r.env.mib();
    let mut server = r.listen(
        c.listen_addr,
        port,
        &["--backlog", &backlog_s, "--defer-accept", "30"],
    );
    let server_pid = server.pid();
    let mut early = r.peer(&[
        "connect",
        "--addr",
        c.client_addr,
        "--port",
        &port_s,
        "--count",
        "2",
        "--nonblocking",
        "--timeout-ms",
        "60000",
        "--send-bytes",
        "1",
        "--go-file",
        &go,
        "--hold-ms",
        "120000",
    ]);
    let early_results = r.lines(&mut early, 2, Duration::from_secs(60));
    r.info("early_clients", json!(early_results));
    let mut fill = r.peer(&[
        "connect",
        "--addr",
        c.client_addr,
        "--port",
        &port_s,
        "--count",
        &fill_s,
        "--timeout-ms",
        "10000",
        "--send-bytes",
        "1",
        "--hold-ms",
        "120000",
    ]);
    // `connected attempt=I`, then `sent attempt=I`, per client.
    let fill_results = r.lines(
        &mut fill,
        2 * (BACKLOG as usize + 1),
        Duration::from_secs(60),
    );
    r.info("filling_clients", json!(fill_results));
    let deadline = Instant::now() + r.bound(Duration::from_secs(30));
    let mut queue = r.listen_queue(c.listen_family, port);
    while queue != Some(BACKLOG + 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        queue = r.listen_queue(c.listen_family, port);
    }
    r.check(
        "accept queue full before the early clients send",
        json!(BACKLOG + 1),
        json!(queue),
    );
    let mid = r.env.mib();
    if c.syn_burst > 0 {
        // Short-lived: they close before the early clients send, so none of their SYNs is
        // retransmitted into the ACK-time phase.
        let burst = r.connect(
            c.client_addr,
            port,
            c.syn_burst,
            &["--nonblocking", "--timeout-ms", "300"],
        );
        r.info("burst_clients", results(&burst));
    }
    let mid2 = r.env.settled_mib();
    // SYN-time drops may be found by polling the listener's drop counter: wait, with the
    // listener still there, until the agent has reported what the counters show so far.
    let so_far = mib::delta(&before, &mid2, "TcpExt.ListenOverflows");
    r.wait_total(mark, so_far, |l| overflow_total(l, port));
    std::fs::write(&go, b"go").unwrap_or_else(|e| panic!("write {go}: {e}"));
    // The early clients send, and without tcp_abort_on_overflow retransmit: wait for a
    // retransmission of each to be refused as well. Then the listener closes before the
    // clients do: a client's FIN retransmitted to a full queue for minutes would keep the
    // counters moving.
    let refusals = if c.abort_on_overflow { 2 } else { 4 };
    let deadline = Instant::now() + r.bound(Duration::from_secs(30));
    while mib::delta(&mid2, &r.env.mib(), "TcpExt.ListenOverflows") < refusals
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ack_phase_end = r.env.mib();
    let so_far = mib::delta(&before, &ack_phase_end, "TcpExt.ListenOverflows");
    r.wait_total(mark, so_far, |l| overflow_total(l, port));
    let t = r.bound(Duration::from_secs(20));
    let _ = server.stop(t);
    let early_rest = early.stop(t);
    r.info("early_clients_after_go", json!(early_rest.lines));
    let _ = fill.stop(t);
    let after = r.env.settled_mib();
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    r.wait_total(mark, overflows, |l| overflow_total(l, port));
    let (lines, stats) = r.finish(mark);

    let evs = dropped_overflows(&lines, port);
    let reported = total(&evs);
    let syn_time = mib::delta(&mid, &mid2, "TcpExt.ListenOverflows");
    let ack_time = mib::delta(&mid2, &after, "TcpExt.ListenOverflows");
    r.check_true(
        "TcpExt.ListenOverflows rose after the early clients sent (ACK-time overflow happened)",
        mib::delta(&mid2, &ack_phase_end, "TcpExt.ListenOverflows") >= 2,
        json!(mib::delta(&mid2, &ack_phase_end, "TcpExt.ListenOverflows")),
    );
    // A drop whose per-packet run the kernel skipped is found by polling, with the listener
    // that dropped it while that listener is there to be polled.
    let skipped = event::stats_skipped_runs(stats.as_ref(), PER_PACKET_DROP_PROGRAMS);
    r.check_count(
        "agent accept_queue_overflow dropped total == TcpExt.ListenOverflows delta",
        u64::try_from(overflows).unwrap_or(0),
        reported,
        skipped,
    );
    let by_stage = |stage: &str| -> u64 {
        total(
            &evs.iter()
                .copied()
                .filter(|v| event::str_at(v, "evidence.stage") == Some(stage))
                .collect::<Vec<_>>(),
        )
    };
    if c.syn_burst > 0 {
        r.check_true(
            "the burst overflowed at SYN time (ListenOverflows delta > 0)",
            syn_time > 0,
            json!(syn_time),
        );
        r.check(
            "(SYN-time, ACK-time) drops reported == ListenOverflows deltas of each phase",
            json!([syn_time, ack_time]),
            json!([by_stage("syn"), by_stage("ack")]),
        );
    } else {
        r.check(
            "evidence.stage of every event",
            json!(["ack"]),
            json!(set_of(&evs, "evidence.stage")),
        );
        // Per packet: the agent's tcp_v*_syn_recv_sock program where the kernel takes one,
        // else the drop reason the kernel gives the freed ACK (6.15 and later); polled only
        // where the kernel skipped runs of those programs (then the poll finds what they missed).
        let per_packet = |v: &Value| {
            event::str_at(v, "evidence.observed_by") == Some("per packet at tcp_v*_syn_recv_sock")
                || (event::get(v, "evidence.observed_by").is_none()
                    && event::reason(v) == Some("TCP_LISTEN_OVERFLOW"))
        };
        let polled: Vec<&Value> = evs.iter().copied().filter(|v| !per_packet(v)).collect();
        r.check_count(
            "drops seen per packet (the syn_recv_sock hook or the drop reason), not polled",
            reported,
            reported - total(&polled),
            skipped,
        );
        r.info("observed_by", json!(set_of(&evs, "evidence.observed_by")));
    }
    r.check(
        "owner pid of every event (0 = none)",
        json!([server_pid]),
        json!(owner_pids(&evs)),
    );
    // v4-mapped peers are IPv4 traffic: the events say so.
    let traffic = if c.client_addr.contains(':') {
        Family::V6
    } else {
        Family::V4
    };
    r.check_network_type(&evs, traffic);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    if c.abort_on_overflow {
        let rsts: Vec<&Value> = with_cause(&lines, "accept_queue_overflow")
            .into_iter()
            .filter(|v| event::local_port(v) == Some(port) && event::direction(v) == Some("sent"))
            .collect();
        r.check(
            "RSTs sent by the listener (accept_queue_overflow, sent) == ACK-time overflows",
            json!(ack_time),
            json!(total(&rsts)),
        );
        r.check(
            "owner pid, evidence.tcp_abort_on_overflow and stage of every RST",
            json!([[server_pid, 1, "ack"]]),
            json!(distinct(rsts.iter().map(|v| json!([
                event::owner_pid(v).unwrap_or(0),
                event::u64_at(v, "evidence.tcp_abort_on_overflow").unwrap_or(0),
                event::str_at(v, "evidence.stage")
            ])))),
        );
        // The drops the kernel gives a reason (TCP_LISTEN_OVERFLOW) carry the sysctl; those
        // seen by the agent's own tcp_v*_syn_recv_sock program do not (yet).
        r.check(
            "evidence.tcp_abort_on_overflow of every drop seen by its drop reason",
            json!(if evs.iter().any(|v| event::reason(v).is_some()) {
                json!([1])
            } else {
                json!([])
            }),
            json!(evs
                .iter()
                .filter(|v| event::reason(v).is_some())
                .map(|v| event::u64_at(v, "evidence.tcp_abort_on_overflow"))
                .collect::<BTreeSet<_>>()),
        );
        r.check(
            "RSTs TCP sent (agent) == Tcp.OutRsts delta",
            json!(out_rsts),
            json!(tcp_sent_total(&lines)),
        );
        if let Some(s) = &stats {
            r.check(
                "final stats: causes.accept_queue_overflow == ListenOverflows (one incident, one count)",
                json!(overflows),
                json!(event::stats_cause(s, "accept_queue_overflow")),
            );
            r.check(
                "final stats: resets_sent.tcp_stack == Tcp.OutRsts",
                json!(out_rsts),
                json!(event::u64_at(s, "resets_sent.tcp_stack").unwrap_or(0)),
            );
            r.check(
                "final stats: resets_sent.by_cause.accept_queue_overflow == ACK-time overflows",
                json!(ack_time),
                json!(event::u64_at(s, "resets_sent.by_cause.accept_queue_overflow").unwrap_or(0)),
            );
        }
    } else if let Some(s) = &stats {
        r.check(
            "final stats causes.accept_queue_overflow == ListenOverflows",
            json!(overflows),
            json!(event::stats_cause(s, "accept_queue_overflow")),
        );
    }
    r.info("server_pid", json!(server_pid));
    r.info(
        "overflows_by_phase",
        json!({"syn": syn_time, "ack": ack_time}),
    );
    r.info(
        "TCPDeferAcceptDrop",
        json!(mib::delta(&before, &after, "TcpExt.TCPDeferAcceptDrop")),
    );
    r.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    // Where a difference from the kernel's count went, should there be one: the other
    // accept_queue_overflow events (RSTs, polled drops, another port), with how they were seen.
    r.info(
        "other_accept_queue_overflow_events",
        json!(with_cause(&lines, "accept_queue_overflow")
            .into_iter()
            .filter(|v| !evs.iter().any(|e| std::ptr::eq(*e, *v)))
            .map(|v| json!([how(v), event::get(v, "evidence.observed_by")]))
            .collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    // The early clients are closed by the test while their connections linger in the queue.
    r.claims(
        &lines,
        &allowed(&["accept_queue_overflow", "no_listener", "timewait_segment"]),
    );
}

/// accept() at RLIMIT_NOFILE: EMFILE reported with the accepting server as owner, its port and
/// limit; the server's own "accept_error EMFILE" lines are the ground truth for the count. The
/// queue that fills meanwhile overflows, and those drops point back at the incident.
pub fn fd_exhaustion(r: &mut Run) {
    let port = r.port(41003);
    let addr = r.addr();
    let mark = r.mark();
    // stdio + the listener + one accepted connection: the next accept() fails with EMFILE.
    let mut server = r.listen(addr, port, &["--backlog", "2", "--accept", "--nofile", "6"]);
    let server_pid = server.pid();
    let _ = r.connect(addr, port, 12, &["--nonblocking", "--timeout-ms", "2500"]);
    r.wait(mark, |v| event::has_cause(v, "fd_exhaustion"), 1);
    let _ = r.env.settled_mib();
    // Stop the server first so no accept() fails after the count is taken.
    let ex = server.stop(r.bound(Duration::from_secs(20)));
    let emfile = ex
        .lines
        .iter()
        .filter(|l| l.starts_with("accept_error EMFILE"))
        .count() as i64;
    r.wait_total(mark, emfile, |l| total(&with_cause(l, "fd_exhaustion")));
    let (lines, _) = r.finish(mark);
    let fd = with_cause(&lines, "fd_exhaustion");
    r.check_true("the server hit EMFILE", emfile > 0, json!(emfile));
    r.check(
        "agent fd_exhaustion total == the server's EMFILE failures",
        json!(emfile),
        json!(total(&fd)),
    );
    r.check(
        "(owner pid, listening port, RLIMIT_NOFILE soft, reason) of every event",
        json!([[server_pid, port, 6, "EMFILE"]]),
        json!(distinct(fd.iter().map(|v| json!([
            event::owner_pid(v),
            event::u64_at(v, "evidence.listening_port"),
            event::u64_at(v, "evidence.rlimit_nofile.soft"),
            event::reason(v)
        ])))),
    );
    // The listening fd comes from the registers saved at entry where the kernel hands them to
    // programs (≥ 5.15): no entry tracepoint adds work to every syscall on the host.
    let hooks = &r.env.agent().started()["hooks"];
    let entry_attached: Vec<&str> = ["sys_enter_accept", "sys_enter_listen"]
        .into_iter()
        .filter(|h| hooks[*h]["status"] == "attached")
        .collect();
    r.check(
        "syscall entry tracepoints attached (none from 5.15 on)",
        json!(if kernel_at_least(5, 15) {
            vec![]
        } else {
            entry_attached.clone()
        }),
        json!(entry_attached),
    );
    let overflow = dropped_overflows(&lines, port);
    r.check_true(
        "the full queue overflowed while accept() failed",
        !overflow.is_empty(),
        json!(overflow.len()),
    );
    let incident = fd
        .first()
        .and_then(|v| event::str_at(v, "evidence.incident.id"));
    r.check_true(
        "some overflow events point back at the fd_exhaustion incident (related.cause, related.incident)",
        incident.is_some()
            && overflow.iter().any(|v| {
                event::str_at(v, "related.cause") == Some("fd_exhaustion")
                    && event::str_at(v, "related.incident") == incident
            }),
        json!(overflow
            .iter()
            .map(|v| event::get(v, "related").cloned())
            .collect::<Vec<_>>()),
    );
    r.info(
        "events",
        json!(fd.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    // A burst at a backlog of 2 may also fill the SYN queue.
    r.claims(
        &lines,
        &allowed(&[
            "fd_exhaustion",
            "accept_queue_overflow",
            "syn_queue_overflow",
        ]),
    );
}

/// Whether the running kernel is at least `major.minor` (/proc/sys/kernel/osrelease).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
