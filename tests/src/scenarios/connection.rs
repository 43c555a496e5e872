//! Connection-side scenarios: RSTs the stack sends on established connections (close with
//! unread data, SO_LINGER 0, after an idle period, from a timewait socket, on a keepalive
//! timeout), ephemeral port exhaustion, and a storm of refused connects.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{causes_seen, field, how, lport_of, tcp_sent_total, total, with_cause, Run};
use crate::{event, mib, Mib};

/// connect() with the local port range narrowed to four ports: the next connections to the
/// same destination fail with EADDRNOTAVAIL in the client, which the agent names.
pub fn ephemeral_port_exhaustion(r: &mut Run) {
    let port = r.port(41310);
    let addr = r.addr();
    // ip_local_port_range serves both families.
    r.sysctl("net.ipv4.ip_local_port_range", "41320 41323");
    let mark = r.mark();
    let mut server = r.listen(addr, port, &["--accept"]);
    let port_s = port.to_string();
    let mut client = r.peer(&[
        "connect",
        "--addr",
        addr,
        "--port",
        &port_s,
        "--count",
        "7",
        "--timeout-ms",
        "10000",
    ]);
    let client_pid = client.pid();
    let ex = client.wait_exit(r.bound(Duration::from_secs(90)));
    r.info("client", json!(ex.lines));
    let failed = ex
        .lines
        .iter()
        .filter(|l| l.starts_with("EADDRNOTAVAIL"))
        .count();
    r.check_true(
        "the client ran out of local ports (EADDRNOTAVAIL)",
        failed > 0,
        json!(failed),
    );
    r.wait(
        mark,
        |v| event::has_cause(v, "ephemeral_port_exhaustion"),
        failed,
    );
    let _ = server.stop(r.bound(Duration::from_secs(20)));
    let (lines, stats) = r.finish(mark);
    let evs = with_cause(&lines, "ephemeral_port_exhaustion");
    r.check(
        "ephemeral_port_exhaustion total == the client's EADDRNOTAVAIL failures",
        json!(failed),
        json!(total(&evs)),
    );
    r.check(
        "owner pid and destination port of every event",
        json!([[client_pid, port]]),
        json!(evs
            .iter()
            .map(|v| (
                event::owner_pid(v).unwrap_or(0),
                event::peer_port(v).unwrap_or(0)
            ))
            .collect::<BTreeSet<_>>()),
    );
    r.check_network_type(&evs, r.family);
    if let Some(s) = stats {
        r.check(
            "final stats causes.ephemeral_port_exhaustion",
            json!(failed),
            json!(event::stats_cause(&s, "ephemeral_port_exhaustion")),
        );
    }
    r.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    // The clients that did connect close before the server: their peers' FINs are answered,
    // nothing is reset. The server's stop may abort a connection it still holds.
    r.claims(
        &lines,
        &[
            "ephemeral_port_exhaustion",
            "abort_on_close",
            "abort_by_application",
            "reset_by_peer",
        ],
    );
}

/// A connection idle for 3 s, then reset by the server (SO_LINGER 0): the client's received
/// RST carries its idle time (from `tcp_sock` members at BTF offsets, jiffies at the HZ the
/// agent measured) and is linked to the server's abort; each end names its own process.
pub fn reset_after_idle(r: &mut Run) {
    let port = r.port(41201);
    let addr = r.addr();
    let port_s = port.to_string();
    let mark = r.mark();
    let before = r.env.mib();
    let mut server = r.peer(&[
        "idle-linger0",
        "--addr",
        addr,
        "--port",
        &port_s,
        "--idle-ms",
        "3000",
    ]);
    let server_pid = server.pid();
    let mut client = r.peer(&[
        "send",
        "--addr",
        addr,
        "--port",
        &port_s,
        "--bytes",
        "5",
        "--wait-close",
        "--timeout-ms",
        "60000",
    ]);
    let client_pid = client.pid();
    let c = client.wait_exit(r.bound(Duration::from_secs(90)));
    let s = server.wait_exit(r.bound(Duration::from_secs(90)));
    r.info("client", json!(c.lines));
    r.info("server", json!(s.lines));
    r.check(
        "the peers exited 0 (client, server)",
        json!([true, true]),
        json!([c.status.success(), s.status.success()]),
    );
    let lport = lport_of(&c.lines, "connected ");
    let idle_real = s
        .lines
        .iter()
        .find(|l| l.starts_with("closed linger=0"))
        .and_then(|l| field(l, "idle_ms"))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|ms| ms / 1000.0);
    r.check_true(
        "the client saw the reset",
        c.lines.iter().any(|l| l == "reset"),
        json!(c.lines.last()),
    );
    r.wait(mark, |v| event::has_cause(v, "abort_by_application"), 1);
    r.wait(mark, |v| event::has_cause(v, "reset_by_peer"), 1);
    let after = r.env.settled_mib();
    let (lines, stats) = r.finish(mark);
    let aborts = with_cause(&lines, "abort_by_application");
    let received = with_cause(&lines, "reset_by_peer");
    r.check("abort_by_application events", json!(1), json!(aborts.len()));
    r.check("reset_by_peer events", json!(1), json!(received.len()));
    if let Some(a) = aborts.first() {
        r.check(
            "abort: (direction, origin, owner pid, local port, peer port)",
            json!(["sent", "tcp_stack", server_pid, port, lport]),
            json!([
                event::direction(a),
                event::origin(a),
                event::owner_pid(a),
                event::local_port(a),
                event::peer_port(a)
            ]),
        );
    }
    if let Some(v) = received.first() {
        r.check(
            "reset_by_peer: (direction, origin, owner pid, local port, peer port, related.cause)",
            json!([
                "received",
                "peer",
                client_pid,
                lport,
                port,
                "abort_by_application"
            ]),
            json!([
                event::direction(v),
                event::origin(v),
                event::owner_pid(v),
                event::local_port(v),
                event::peer_port(v),
                event::str_at(v, "related.cause")
            ]),
        );
        let idle = event::get(v, "evidence.idle_seconds").and_then(Value::as_f64);
        r.check_true(
            "reset_by_peer: evidence.idle_seconds within 10 % of the server's idle time",
            matches!((idle, idle_real), (Some(i), Some(real)) if (i - real).abs() <= 0.1 * real),
            json!({"idle_seconds": idle, "real": idle_real}),
        );
        let age = event::get(v, "evidence.connection_age_seconds").and_then(Value::as_f64);
        r.check_true(
            "reset_by_peer: evidence.connection_age_seconds between 0.9 x idle and idle + 5 s",
            matches!((age, idle_real), (Some(a), Some(real)) if a >= 0.9 * real && a <= real + 5.0),
            json!({"connection_age_seconds": age, "idle": idle_real}),
        );
    }
    r.check_network_type(&[aborts.clone(), received.clone()].concat(), r.family);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    r.check("Tcp.OutRsts delta", json!(1), json!(out_rsts));
    r.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(out_rsts),
        json!(tcp_sent_total(&lines)),
    );
    r.check(
        "Tcp.EstabResets: the server's abort and the client's reset both leave ESTABLISHED",
        json!(2),
        json!(mib::delta(&before, &after, "Tcp.EstabResets")),
    );
    if let Some(s) = stats {
        r.check(
            "final stats (abort_by_application, reset_by_peer)",
            json!([1, 1]),
            json!([
                event::stats_cause(&s, "abort_by_application"),
                event::stats_cause(&s, "reset_by_peer")
            ]),
        );
    }
    r.info(
        "events",
        json!(aborts
            .iter()
            .chain(&received)
            .map(|v| how(v))
            .collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    r.claims(&lines, &["abort_by_application", "reset_by_peer"]);
}

/// A segment to a socket the server already closed: the server's orphan becomes a timewait
/// socket (FIN_WAIT2 sub-state), the client writes to it, TCP answers with an RST that has no
/// owner; the agent names the server as the socket's last owner, and the client's received
/// RST is linked to it.
pub fn timewait_segment(r: &mut Run) {
    let port = r.port(41202);
    let addr = r.addr();
    let port_s = port.to_string();
    // tcp_fin_timeout > 60 s keeps the orphan a full socket for 3 s, then a timewait socket
    // for 3 s (tcp_time_wait with FIN_WAIT2, timeout - 60 s): a window the test can hit. The
    // sysctl serves both families.
    r.sysctl("net.ipv4.tcp_fin_timeout", "63");
    let go = r.go_file(&format!("timewait_segment_{port}"));
    let mark = r.mark();
    let before = r.env.mib();
    let mut server = r.listen(addr, port, &["--accept", "--hold-ms", "300"]);
    let server_pid = server.pid();
    let mut client = r.peer(&[
        "late-send",
        "--addr",
        addr,
        "--port",
        &port_s,
        "--bytes",
        "10",
        "--late-bytes",
        "10",
        "--go-file",
        &go,
        "--timeout-ms",
        "60000",
    ]);
    let client_pid = client.pid();
    // `connected lport=P`, `sent 10`, `eof`.
    let first = r.lines(&mut client, 3, Duration::from_secs(60));
    r.info("client_before_go", json!(first));
    let lport = lport_of(&first, "connected")
        .unwrap_or_else(|| panic!("client did not connect: {first:?}"));
    // Writing before the orphan is a timewait socket would hit the full socket instead.
    let row = |r: &Run| {
        r.tcp_rows(r.family)
            .into_iter()
            .find(|t| t.local_port == port && t.remote_port == lport)
            .map(|t| (t.state, t.timer))
    };
    let deadline = Instant::now() + r.bound(Duration::from_secs(30));
    let mut now = row(r);
    while now.as_ref().map(|(s, t)| (s.as_str(), t.as_str())) != Some(("05", "03"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        now = row(r);
    }
    r.check(
        "server's socket is a FIN_WAIT2 timewait socket (st 05, timer 03) before the write",
        json!(["05", "03"]),
        json!(now),
    );
    std::fs::write(&go, b"go").unwrap_or_else(|e| panic!("write {go}: {e}"));
    let rest = client.wait_exit(r.bound(Duration::from_secs(90)));
    r.info("client_after_go", json!(rest.lines));
    r.check(
        "the client exited 0, wrote again after the server's FIN, and its socket was reset",
        json!([true, true, true]),
        json!([
            rest.status.success(),
            rest.lines.iter().any(|l| l == "late_sent 10"),
            rest.lines.iter().any(|l| l.starts_with("closed so_error="))
        ]),
    );
    r.wait(mark, |v| event::has_cause(v, "timewait_segment"), 1);
    r.wait(mark, |v| event::has_cause(v, "reset_by_peer"), 1);
    let after = r.env.settled_mib();
    let srv_exit = server.stop(r.bound(Duration::from_secs(20)));
    r.check_true(
        "the server closed first (no RST from it): conn_done",
        srv_exit.lines.iter().any(|l| l.starts_with("conn_done")),
        json!(srv_exit.lines),
    );
    let (lines, stats) = r.finish(mark);
    let tw = with_cause(&lines, "timewait_segment");
    r.check("timewait_segment events", json!(1), json!(tw.len()));
    let tw_reason = r.reset_reason("TCP_TIMEWAIT_SOCKET");
    if let Some(v) = tw.first() {
        r.check(
            "(reason, direction, origin, tcp.state, local port, peer port)",
            json!([tw_reason, "sent", "tcp_stack", "TIME_WAIT", port, lport]),
            json!([
                event::reason(v),
                event::direction(v),
                event::origin(v),
                event::str_at(v, "tcp.state"),
                event::local_port(v),
                event::peer_port(v)
            ]),
        );
        r.check(
            "no owner: a timewait socket belongs to no process (the client was on the CPU)",
            json!(null),
            json!(event::owner_pid(v)),
        );
        r.check(
            "evidence.last_owner is the server that closed the socket",
            json!(server_pid),
            json!(event::u64_at(v, "evidence.last_owner.process.pid")),
        );
    }
    let received: Vec<&Value> = with_cause(&lines, "reset_by_peer")
        .into_iter()
        .filter(|v| event::local_port(v) == Some(lport))
        .collect();
    r.check(
        "the client's received RST: (owner pid, related.cause) of each",
        json!([[client_pid, "timewait_segment"]]),
        json!(received
            .iter()
            .map(|v| json!([event::owner_pid(v), event::str_at(v, "related.cause")]))
            .collect::<Vec<_>>()),
    );
    r.check_network_type(&tw, r.family);
    r.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(mib::delta(&before, &after, "Tcp.OutRsts")),
        json!(tcp_sent_total(&lines)),
    );
    r.check(
        "Tcp.EstabResets: the client's CLOSE_WAIT -> CLOSE on the RST is the only one",
        json!(1),
        json!(mib::delta(&before, &after, "Tcp.EstabResets")),
    );
    if let Some(s) = stats {
        r.check(
            "final stats causes.timewait_segment",
            json!(1),
            json!(event::stats_cause(&s, "timewait_segment")),
        );
    }
    r.info(
        "events",
        json!(tw.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    r.claims(&lines, &["timewait_segment", "reset_by_peer"]);
}

/// A client with keepalive (1 s idle, 1 s interval, 2 probes) whose server stops answering (a
/// DROP rule on the server's port): the client's kernel gives up and sends an RST, reported as
/// keepalive_timeout with the client as owner, once per TCPAbortOnTimeout.
pub fn keepalive_timeout(r: &mut Run) {
    let port = r.port(41503);
    let addr = r.addr();
    let port_s = port.to_string();
    let mark = r.mark();
    let mut server = r.listen(addr, port, &["--accept"]);
    let before = r.env.settled_mib();
    let mut client = r.peer(&[
        "keepalive",
        "--addr",
        addr,
        "--port",
        &port_s,
        "--keepidle",
        "1",
        "--keepintvl",
        "1",
        "--keepcnt",
        "2",
        "--timeout-ms",
        "60000",
    ]);
    let client_pid = client.pid();
    let first = r.lines(&mut client, 1, Duration::from_secs(30));
    let lport = lport_of(&first, "").unwrap_or_else(|| panic!("client did not connect: {first:?}"));
    // The server goes silent: everything the client sends to it is dropped.
    let silence = ["-p", "tcp", "--dport", port_s.as_str(), "-j", "DROP"];
    r.rule(&silence);
    let rest = client.wait_exit(r.bound(Duration::from_secs(90)));
    r.info("client", json!(rest.lines));
    r.check_true(
        "the client's connection timed out (ETIMEDOUT)",
        rest.lines.iter().any(|l| l.starts_with("error ETIMEDOUT")),
        json!(rest.lines.last()),
    );
    r.wait(mark, |v| event::has_cause(v, "keepalive_timeout"), 1);
    // The server closes once the rule is gone: its FIN meets the client's closed port (an RST
    // of the scenario's own, counted on both sides), and nothing is left retransmitting into
    // the next scenario.
    r.delete_rule(&silence);
    let _ = server.stop(r.bound(Duration::from_secs(20)));
    let after = r.env.settled_mib();
    let (lines, stats) = r.finish(mark);
    let ka = with_cause(&lines, "keepalive_timeout");
    r.check(
        "keepalive_timeout total == TcpExt.TCPAbortOnTimeout delta",
        json!(mib::delta(&before, &after, "TcpExt.TCPAbortOnTimeout")),
        json!(total(&ka)),
    );
    r.check("keepalive_timeout events", json!(1), json!(ka.len()));
    let ka_reason = r.reset_reason("TCP_KEEPALIVE_TIMEOUT");
    if let Some(v) = ka.first() {
        r.check(
            "(reason, direction, origin, owner pid, local port, peer port, peer address)",
            json!([
                ka_reason,
                "sent",
                "tcp_stack",
                client_pid,
                lport,
                port,
                addr
            ]),
            json!([
                event::reason(v),
                event::direction(v),
                event::origin(v),
                event::owner_pid(v),
                event::local_port(v),
                event::peer_port(v),
                event::peer_address(v)
            ]),
        );
    }
    r.check_network_type(&ka, r.family);
    r.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(mib::delta(&before, &after, "Tcp.OutRsts")),
        json!(tcp_sent_total(&lines)),
    );
    r.check_true(
        "at least keepcnt probes were sent (TcpExt.TCPKeepAlive >= 2)",
        mib::delta(&before, &after, "TcpExt.TCPKeepAlive") >= 2,
        json!(mib::delta(&before, &after, "TcpExt.TCPKeepAlive")),
    );
    if let Some(s) = stats {
        r.check(
            "final stats causes.keepalive_timeout",
            json!(1),
            json!(event::stats_cause(&s, "keepalive_timeout")),
        );
    }
    r.info(
        "events",
        json!(ka.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    // The DROP rule's drops are reported per packet where the kernel gives a drop reason; the
    // server's late FIN is answered from the client's closed port.
    r.claims(
        &lines,
        &[
            "keepalive_timeout",
            "firewall_drop",
            "no_listener",
            "reset_by_peer",
        ],
    );
}

/// Thousands of refused connects as fast as the machine runs: more events per second than the
/// agent prints (200 per cause by default), so it folds them into summaries, and the totals
/// must still match the kernel's counters and the client's own results exactly.
pub fn rst_storm(r: &mut Run) {
    const CONNECTS: u32 = 3000;
    let port = r.port(41401);
    let addr = r.addr();
    let mark = r.mark();
    let before = r.env.mib();
    let started = Instant::now();
    let res = r.connect(addr, port, CONNECTS, &["--timeout-ms", "5000"]);
    let secs = started.elapsed().as_secs_f64();
    let refused = res.iter().filter(|l| l.starts_with("refused")).count() as u64;
    let after = r.env.settled_mib();
    let rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    let sum = move |lines: &[Value], cause: &str| -> u64 {
        total(
            &with_cause(lines, cause)
                .into_iter()
                .filter(|v| event::local_port(v) == Some(port) || event::peer_port(v) == Some(port))
                .collect::<Vec<_>>(),
        )
    };
    let deadline = Instant::now() + r.bound(Duration::from_secs(60));
    while (sum(&r.env.agent().since(mark), "no_listener") as i64) < rsts
        && Instant::now() < deadline
        && r.env.agent().alive()
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let (lines, stats) = r.finish(mark);
    r.info(
        "connects_per_second",
        json!((f64::from(CONNECTS) / secs).round()),
    );
    r.check("every connect was refused", json!(CONNECTS), json!(refused));
    r.check(
        "no_listener total (sum of count) == Tcp.OutRsts delta",
        json!(rsts),
        json!(sum(&lines, "no_listener")),
    );
    r.check(
        "connection_refused total == the client's refused connects",
        json!(refused),
        json!(sum(&lines, "connection_refused")),
    );
    let folded = lines
        .iter()
        .filter(|v| event::has_cause(v, "no_listener") && event::count(v).is_some_and(|c| c > 1))
        .count();
    // The agent prints 200 events per second and cause by default: a storm faster than that
    // must be folded into summaries (an emulated guest may connect more slowly).
    let rate = f64::from(CONNECTS) / secs;
    r.check_true(
        "the agent folded events into summaries where the storm outran its print rate (200/s)",
        folded > 0 || rate < 200.0,
        json!({"folded": folded, "connects_per_second": rate.round()}),
    );
    // Past the agent's record budget the kernel folds refusals under the connecting process
    // (and the agent may fold those summaries further): every line must still name it.
    let refusals = with_cause(&lines, "connection_refused");
    let summaries = refusals
        .iter()
        .filter(|v| event::get(v, "evidence.sampled").is_some())
        .count();
    r.info("connection_refused_summaries", json!(summaries));
    r.check(
        "connection_refused lines (summaries included) without an owner",
        json!(0),
        json!(refusals
            .iter()
            .filter(|v| event::peer_port(v) == Some(port)
                && event::u64_at(v, "owner.process.pid").is_none())
            .count()),
    );
    if let Some(s) = stats {
        r.check(
            "final stats causes.no_listener == Tcp.OutRsts delta",
            json!(rsts),
            json!(event::stats_cause(&s, "no_listener")),
        );
    }
    r.info("lines", json!(lines.len()));
    r.info("causes_seen", causes_seen(&lines));
    r.claims(&lines, &["no_listener", "connection_refused"]);
}

/// abort-close / linger0 server and a `send --wait-close` client: the server's close sends the
/// RST, which names the server (not the client that was on the CPU); the client sees
/// reset_by_peer; the RSTs reconcile with Tcp.OutRsts and the abort's own TcpExt counter.
fn connection_abort(r: &mut Run, mode: &str, base_port: u16, want_cause: &str, mib_key: &str) {
    let port = r.port(base_port);
    let addr = r.addr();
    let port_s = port.to_string();
    let mark = r.mark();
    let before = r.env.mib();
    let mut server_args = vec![mode, "--addr", addr, "--port", &port_s];
    if mode == "linger0" {
        server_args.push("--wait-data");
    }
    let mut server = r.peer(&server_args);
    let server_pid = server.pid();
    let mut client = r.peer(&[
        "send",
        "--addr",
        addr,
        "--port",
        &port_s,
        "--bytes",
        "1000",
        "--wait-close",
    ]);
    let client_pid = client.pid();
    let c = client.wait_exit(r.bound(Duration::from_secs(60)));
    let s = server.wait_exit(r.bound(Duration::from_secs(60)));
    r.check(
        "the peers exited 0 (client, server)",
        json!([true, true]),
        json!([c.status.success(), s.status.success()]),
    );
    r.info("peers", json!({"server": s.lines, "client": c.lines}));
    let mine = |v: &Value| event::has_cause(v, want_cause) && event::local_port(v) == Some(port);
    r.wait(mark, mine, 1);
    r.wait(mark, |v| event::has_cause(v, "reset_by_peer"), 1);
    let after = r.env.settled_mib();
    let (lines, stats) = r.finish(mark);
    let evs: Vec<&Value> = lines.iter().filter(|v| mine(v)).collect();
    r.check(
        &format!("{want_cause} events on :{port}"),
        json!(1),
        json!(evs.len()),
    );
    let (reason, evidence) = if mode == "abort-close" {
        (r.reset_reason("TCP_ABORT_ON_CLOSE"), json!(1000))
    } else {
        (r.reset_reason("TCP_STATE"), json!(true))
    };
    if let Some(v) = evs.first() {
        let got_evidence = if mode == "abort-close" {
            json!(event::u64_at(v, "evidence.unread_bytes"))
        } else {
            json!(event::str_at(v, "evidence.linger").is_some_and(|l| l.starts_with("on, 0")))
        };
        r.check(
            "(direction, origin, owner pid: the closing server, reason, evidence: unread bytes or linger on 0)",
            json!(["sent", "tcp_stack", server_pid, reason, evidence]),
            json!([
                event::direction(v),
                event::origin(v),
                event::owner_pid(v),
                event::reason(v),
                got_evidence
            ]),
        );
    }
    let received = with_cause(&lines, "reset_by_peer");
    r.check(
        "the client sees the RST arrive: owner pid of each reset_by_peer",
        json!([client_pid]),
        json!(received
            .iter()
            .map(|v| event::owner_pid(v))
            .collect::<Vec<_>>()),
    );
    r.check_network_type(&[evs.clone(), received.clone()].concat(), r.family);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    let sent = lines
        .iter()
        .filter(|v| event::is_cause_event(v) && event::direction(v) == Some("sent"))
        .count();
    r.check(
        "sent RST events == Tcp.OutRsts delta",
        json!(out_rsts),
        json!(sent),
    );
    r.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(out_rsts),
        json!(tcp_sent_total(&lines)),
    );
    r.check(
        &format!("{mib_key} delta"),
        json!(1),
        json!(mib::delta(&before, &after, mib_key)),
    );
    if let Some(s) = stats {
        r.check(
            &format!("final stats ({want_cause}, reset_by_peer)"),
            json!([1, 1]),
            json!([
                event::stats_cause(&s, want_cause),
                event::stats_cause(&s, "reset_by_peer")
            ]),
        );
    }
    r.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    r.info("causes_seen", causes_seen(&lines));
    r.info("mib_changes", json!(Mib::changes(&before, &after)));
    r.claims(&lines, &[want_cause, "reset_by_peer"]);
}

pub fn abort_on_close(r: &mut Run) {
    connection_abort(
        r,
        "abort-close",
        41101,
        "abort_on_close",
        "TcpExt.TCPAbortOnClose",
    );
}

pub fn abort_by_application(r: &mut Run) {
    connection_abort(
        r,
        "linger0",
        41102,
        "abort_by_application",
        "TcpExt.TCPAbortOnData",
    );
}
