//! The metrics endpoint, end to end: `rst-trace run --metrics-addr` in a fresh netns, RSTs from
//! closed-port connects driven by the peer program (not the agent), and
//! - Debian's real Prometheus scraping it every second: its query API must return
//!   rst_trace_causes_total{cause="no_listener"} equal to the namespace's Tcp.OutRsts delta, and
//!   the per-listener series per port;
//! - a real scrape in the Prometheus text format passing `promtool check metrics`, the
//!   OpenMetrics one carrying its content type and `# EOF`, and the server surviving clients
//!   that send nothing, garbage or too much.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use rst_trace_tests::{event, http, mib, poll_until, prometheus::Prometheus, require_root};
use rst_trace_tests::{Agent, Mib, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus 2.42 sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn start_agent(ns: &Netns, metrics_addr: &str) -> Agent {
    let args: Vec<String> = [
        "run",
        "--format",
        "json",
        "--netns",
        ns.name(),
        "--metrics-addr",
        metrics_addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Agent::start_args(&args)
}

/// Closed-port connects from the peer program: `per_port` RSTs on each port.
fn refused(ns: &Netns, ports: &[u16], per_port: u32) {
    for &p in ports {
        let res = Peer::connect(
            ns,
            PEER,
            "127.0.0.1",
            p,
            per_port,
            &["--timeout-ms", "5000"],
        );
        assert!(
            res.iter().all(|r| r.result == "refused"),
            "connects to closed port {p}: {res:?}"
        );
    }
}

/// The value of one sample line `name{labels} value` in a text exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn prometheus_scrapes_counts_that_reconcile_with_the_kernel() {
    require_root();
    const PORTS: [u16; 3] = [40611, 40622, 40633];
    const PER_PORT: u32 = 2;
    let ns = Netns::new();
    let before = Mib::snapshot(&ns);
    let maddr: SocketAddr = format!("127.0.0.1:{}", http::free_port())
        .parse()
        .expect("addr");
    let mut agent = start_agent(&ns, &maddr.to_string());
    let prom = Prometheus::start(maddr);

    // The target is up and its OpenMetrics exposition parses (Prometheus's parser is strict).
    let mut targets = Value::Null;
    let healthy = poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        targets = prom.api("targets").ok()?;
        let t = targets["data"]["activeTargets"]
            .as_array()?
            .first()?
            .clone();
        (t["health"] == "up" && t["lastError"] == "").then_some(())
    });
    assert!(
        healthy.is_some(),
        "Prometheus's target never became healthy: {targets}\nprometheus log:\n{}",
        prom.log()
    );

    refused(&ns, &PORTS, PER_PORT);
    let after = Mib::snapshot(&ns);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    let want = PORTS.len() as i64 * i64::from(PER_PORT);
    assert_eq!(
        out_rsts,
        want,
        "Tcp.OutRsts delta (kernel ground truth); MIB changes: {:?}",
        Mib::changes(&before, &after)
    );

    let query = r#"rst_trace_causes_total{cause="no_listener"}"#;
    let mut last: Result<Vec<(Value, f64)>, String> = Ok(Vec::new());
    let reconciled = poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        last = prom.query(query);
        match &last {
            Ok(v) if v.len() == 1 && v[0].1 == out_rsts as f64 => Some(()),
            _ => None,
        }
    });
    assert!(
        reconciled.is_some(),
        "Prometheus never returned {query} = {out_rsts} (the netns's Tcp.OutRsts delta); last answer: {last:?}\n\
         agent stderr:\n{}\nprometheus log:\n{}",
        agent.stderr_text(),
        prom.log()
    );

    // The RSTs the TCP stack sent, and the per-listener series: one per closed port, no owner.
    // Waited for too: the scrape that first carried the total may have been answered while the
    // agent was still reading the last records.
    let want_ports: BTreeMap<String, (String, f64)> = PORTS
        .iter()
        .map(|p| (p.to_string(), ("none".to_owned(), f64::from(PER_PORT))))
        .collect();
    let mut sent = Ok(Vec::new());
    let mut per_port = Ok(BTreeMap::new());
    let series = poll_until(Duration::from_secs(30), Duration::from_millis(500), || {
        sent = prom.query(r#"rst_trace_resets_sent_total{origin="tcp_stack"}"#);
        per_port = prom
            .query(r#"rst_trace_listener_events_total{cause="no_listener"}"#)
            .map(|v| {
                v.into_iter()
                    .map(|(m, v)| {
                        (
                            m["port"].as_str().unwrap_or("").to_owned(),
                            (m["process"].as_str().unwrap_or("").to_owned(), v),
                        )
                    })
                    .collect::<BTreeMap<_, _>>()
            });
        let sent_ok = matches!(&sent, Ok(v) if v.first().map(|s| s.1) == Some(out_rsts as f64));
        let ports_ok = matches!(&per_port, Ok(p) if *p == want_ports);
        (sent_ok && ports_ok).then_some(())
    });
    assert!(
        series.is_some(),
        "want rst_trace_resets_sent_total{{origin=\"tcp_stack\"}} = {out_rsts} (Tcp.OutRsts) and \
         rst_trace_listener_events_total{{cause=\"no_listener\"}} per port {want_ports:?}; \
         got {sent:?} and {per_port:?}"
    );
    let up = prom.query(r#"up{job="rst-trace"}"#).expect("query up");
    assert_eq!(up.first().map(|s| s.1), Some(1.0), "up: {up:?}");

    let stopped = agent.stop();
    assert_eq!(
        event::stats_cause(&stopped.final_stats, "no_listener"),
        out_rsts as u64,
        "final stats line vs what Prometheus scraped; stats: {}",
        stopped.final_stats
    );
}

#[test]
fn a_real_scrape_passes_promtool_and_bad_clients_do_not_hurt() {
    require_root();
    const PORT: u16 = 40644;
    let ns = Netns::new();
    let port = http::free_port();
    // A bare port binds 127.0.0.1.
    let mut agent = start_agent(&ns, &port.to_string());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    refused(&ns, &[PORT], 1);
    let series = r#"rst_trace_causes_total{cause="no_listener"}"#;
    let listener = format!(
        r#"rst_trace_listener_events_total{{cause="no_listener",port="{PORT}",process="none"}}"#
    );
    let mut body = String::new();
    let counted = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let r = http::get(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).ok()?;
        body = r.body;
        (sample(&body, series) == Some(1.0) && sample(&body, &listener) == Some(1.0)).then_some(())
    });
    assert!(
        counted.is_some(),
        "no {series} 1 and {listener} 1 in the scrape:\n{body}\nagent stderr:\n{}",
        agent.stderr_text()
    );

    // Clients that connect and say nothing, send garbage, or far too much.
    drop(std::net::TcpStream::connect(addr).expect("connect"));
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(b"\x16\x03\x01 not http at all\r\n\r\n");
    }
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(&vec![b'X'; 64 * 1024]);
    }
    let missing = http::get(addr, "/nope", None).expect("GET /nope");
    assert_eq!(missing.status, 404);

    // OpenMetrics for a scraper that asks for it.
    let om = http::get(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).expect("OpenMetrics scrape");
    assert_eq!(om.status, 200);
    assert_eq!(om.header("content-type"), Some(OPENMETRICS));
    assert!(
        om.body.ends_with("# EOF\n"),
        "OpenMetrics body:\n{}",
        om.body
    );
    assert!(om.body.contains("# TYPE rst_trace_causes counter\n"));
    assert!(om.body.contains("# TYPE rst_trace_build info\n"));
    assert_eq!(sample(&om.body, &listener), Some(1.0), "{}", om.body);

    // The Prometheus text format, as curl or promtool get it, passes promtool's lint.
    let text = http::get(addr, "/metrics", Some("text/plain;version=0.0.4")).expect("text scrape");
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for name in [
        "rst_trace_causes_total",
        "rst_trace_listener_events_total",
        "rst_trace_records_delivered_total",
        "rst_trace_records_lost_total",
        "rst_trace_records_undecodable_total",
        "rst_trace_events_folded_total",
        "rst_trace_hook_attached",
        "rst_trace_build_info",
        "rst_trace_owner_table_capacity",
        "rst_trace_owner_table_stored_total",
        "rst_trace_owner_lookups_total",
        "rst_trace_resets_sent_total",
        "rst_trace_program_skipped_runs_total",
    ] {
        assert!(
            text.body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{}",
            text.body
        );
    }
    assert!(
        sample(
            &text.body,
            r#"rst_trace_hook_attached{hook="tcp_send_reset"}"#
        ) == Some(1.0),
        "tcp_send_reset is attached on this kernel:\n{}",
        text.body
    );
    // Every loaded program has its series from the start (the kernel counts skipped runs
    // from 5.12 on), so an alert on increase() works from the first skip.
    assert!(
        sample(
            &text.body,
            r#"rst_trace_program_skipped_runs_total{program="kfree_skb"}"#
        )
        .is_some(),
        "skipped runs of kfree_skb:\n{}",
        text.body
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (cargo xtask setup does)")
        });
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("promtool stdin");
        stdin
            .write_all(text.body.as_bytes())
            .expect("feeding promtool");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}): {}{}\nscrape:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        text.body
    );

    // The agent served all this and still counts; its final totals are what was scraped.
    let scraped = sample(&text.body, series);
    let stopped = agent.stop();
    assert_eq!(
        scraped,
        Some(event::stats_cause(&stopped.final_stats, "no_listener") as f64),
        "scrape vs final stats line: {}",
        stopped.final_stats
    );
}
