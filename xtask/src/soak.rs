//! `cargo xtask soak --minutes N`: the agent under a mixed workload for N minutes, sampled
//! every 10 s; fails when a resource or a table grows without bound, or when a total drifts
//! from the kernel's counters.
//!
//! The agent watches one namespace (`--netns`), so its totals can be held against that
//! namespace's MIB exactly. Each cycle there: the healthy listener is restarted, healthy
//! connections churn through it, an RST storm hits a closed port, clients overflow a listener
//! that never accepts, and a batch of throw-away namespaces with their own RSTs comes and goes
//! (the kernel side sees them all and must leave nothing behind in its maps).
//!
//! Growth: over the second half of the samples, the least-squares slope of each series times
//! that half's duration must stay within the series' tolerance ([`TOLERANCES`]): what a
//! steady agent's noise can reach, far below what a leak of one entry per cycle would add.
//! Written to docs/reliability.md when N >= 30, else target/soak/reliability.md.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::child::Process;
use crate::bench::netns::NetnsSet;
use crate::bench::procfs;
use crate::cmd;
use crate::workspace::{Profile, Workspace};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SERVICE_PORT: u16 = 8090;
const OVERFLOW_PORT: u16 = 8091;
const STORM_PER_CYCLE: u64 = 2000;
const CHURN_PER_CYCLE: u64 = 300;
const OVERFLOW_CLIENTS_PER_CYCLE: u64 = 8;
const NAMESPACES_PER_CYCLE: usize = 10;
/// Each series' allowed growth over the second half (slope × duration), and why.
const TOLERANCES: &[(&str, f64, &str)] = &[
    ("rss_kib", 4096.0, "allocator noise: 4 MiB"),
    ("fds", 4.0, "a namespace read in flight holds a few fds"),
    ("threads", 4.0, "namespace readers are short-lived threads"),
    ("cpu_pct", 5.0, "CPU per interval, in percentage points"),
    (
        "table:*",
        256.0,
        "entries a cycle's workload leaves in flight",
    ),
];

/// Tables that fill up by design and forget their oldest entries at their bound (LRU maps,
/// caches cleared when full): judged by their bound, not by their slope.
const BOUNDED_BY_EVICTION: &[&str] = &[
    "table:RST_TW_OWNERS",
    "table:RST_TW_IDS",
    "table:RST_ACCEPTORS",
    "table:RST_HOT_SENT",
    "table:processes",
    "table:fd_facts",
    "table:owners",
    "table:scanned_listeners",
    "table:saturation_warnings",
    "table:port_census",
    "table:recent_sent",
];

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How long to run the workload.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub minutes: u64,
}

/// One 10-second sample of the agent.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_s: f64,
    values: BTreeMap<String, f64>,
}

/// What the workload did, for the report.
#[derive(Debug, Default)]
struct Load {
    cycles: u64,
    connections: u64,
    storm_syns: u64,
    overflow_clients: u64,
    listener_restarts: u64,
    namespaces: u64,
}

/// The agent's stdout, read on a thread: the last stats line and per-cause event counts.
#[derive(Debug, Default)]
struct Seen {
    last_stats: Option<Value>,
    final_stats: Option<Value>,
    event_counts: BTreeMap<String, u64>,
    lines: u64,
    bad_lines: u64,
}

// One straight sequence (set up, load and sample, tear down, judge, write): split up, its
// pieces would only pass the agent, the namespace and the samples back and forth.
pub fn run(args: SoakArgs) -> Result<u8> {
    if args.minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let ws = Workspace::locate()?;
    let built = crate::agent::build(&ws, Profile::Release)?;
    cmd::run(cmd::cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "-p",
        "rst-trace-tests",
        "--bin",
        "rst-trace-peer",
    ]))?;
    let peer = ws.target_dir.join("release/rst-trace-peer");
    NetnsSet::reap_stale();
    let main_ns = NetnsSet::create(1)?;
    let ns = main_ns.first().to_owned();
    let mib_before = mib(&ns)?;

    let (mut agent, seen) = start_agent(&built.binary, &ns)?;
    let (load, samples) = drive(&args, &ns, &peer, &mut agent, &seen)?;
    let mib_after = settled_mib(&ns)?;
    let fin = final_stats(&mut agent, &seen)?;

    // Bad inputs, once the agent is measured: the fuzz target's body on stable, nice'd.
    let fuzz_seconds = (args.minutes * 4).clamp(20, 120);
    let fuzzed = fuzz(&ws, &built.bpf_object, fuzz_seconds)?;
    let seen = seen_lock(&seen)?;
    let growth = growth(&samples);
    let checks = reconcile(&fin, &seen, &mib_before, &mib_after);
    let report = markdown(&args, &load, &samples, &growth, &checks, &fin, &ws, &fuzzed);
    let out = if args.minutes >= 30 {
        ws.root.join("docs/reliability.md")
    } else {
        ws.target_dir.join("soak/reliability.md")
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    print!("{report}");
    eprintln!("xtask: soak: report written to {}", out.display());
    verdict(&growth, &checks, seen.bad_lines)
}

/// The agent, in the host's namespace as deployed, filtering by the soak's namespace; its
/// lines are read on a thread of their own.
fn start_agent(binary: &Path, ns: &str) -> Result<(Process, Arc<Mutex<Seen>>)> {
    let mut agent_cmd = Command::new(binary);
    agent_cmd
        .args([
            "run",
            "--format",
            "json",
            "--netns",
            ns,
            "--stats-interval",
            "10",
        ])
        .args(["--max-events-per-sec", "50"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = Process::spawn("rst-trace", &mut agent_cmd)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    read_agent(&mut agent, seen.clone())?;
    wait_started(&seen, &mut agent)?;
    Ok((agent, seen))
}

/// The mixed workload for `--minutes`, one cycle and one sample every SAMPLE_EVERY.
fn drive(
    args: &SoakArgs,
    ns: &str,
    peer: &Path,
    agent: &mut Process,
    seen: &Arc<Mutex<Seen>>,
) -> Result<(Load, Vec<Sample>)> {
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let pid = agent.pid();
    let mut load = Load::default();
    let mut samples = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.minutes * 60);
    let port = OVERFLOW_PORT.to_string();
    let listen = [
        "listen",
        "--addr",
        "127.0.0.1",
        "--port",
        &port,
        "--backlog",
        "1",
    ];
    let mut overflow = spawn_peer(ns, peer, &listen)?;
    let mut service: Option<Process> = None;
    let mut cpu_prev = (procfs::cpu_seconds(pid)?, Instant::now());
    let mut next_sample = start + SAMPLE_EVERY;
    while Instant::now() < end {
        agent.ensure_running()?;
        cycle(ns, peer, &xtask, &mut service, &mut load)?;
        overflow.ensure_running()?;
        let now = Instant::now();
        if now < next_sample {
            std::thread::sleep(next_sample - now);
        }
        next_sample += SAMPLE_EVERY;
        samples.push(sample(pid, start, &mut cpu_prev, seen)?);
        if let Some(s) = samples.last() {
            eprintln!("xtask: soak: t={:.0}s {}", s.at_s, brief(s));
        }
    }
    if let Some(mut s) = service.take() {
        s.stop(libc::SIGTERM, Duration::from_secs(5))?;
    }
    overflow.stop(libc::SIGTERM, Duration::from_secs(5))?;
    Ok((load, samples))
}

/// Stops the agent and returns its final stats line.
fn final_stats(agent: &mut Process, seen: &Arc<Mutex<Seen>>) -> Result<Value> {
    let status = agent.stop(libc::SIGTERM, Duration::from_secs(30))?;
    // The reader thread sees EOF once the agent is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen
        .lock()
        .map(|s| s.final_stats.is_none())
        .unwrap_or(false)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let fin = seen_lock(seen)?.final_stats.clone();
    fin.with_context(|| format!("the agent (exit {status:?}) printed no final stats line"))
}

/// Fails on a series that grew past its tolerance, a total that drifted from the kernel's,
/// or a line that is not JSON.
fn verdict(growth: &[Growth], checks: &[Check], bad_lines: u64) -> Result<u8> {
    let failed: Vec<String> = growth
        .iter()
        .filter(|g| !g.ok)
        .map(|g| {
            format!(
                "{} grew by {:.1} (tolerance {})",
                g.series, g.growth, g.tolerance
            )
        })
        .chain(
            checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: agent {} vs kernel {}", c.what, c.agent, c.kernel)),
        )
        .collect();
    if bad_lines > 0 {
        bail!("the agent printed {bad_lines} lines that are not JSON");
    }
    if !failed.is_empty() {
        bail!("soak failed:\n  {}", failed.join("\n  "));
    }
    Ok(0)
}

/// One cycle of the mixed workload in `ns`, plus a batch of namespaces of its own.
fn cycle(
    ns: &str,
    peer: &Path,
    xtask: &Path,
    service: &mut Option<Process>,
    load: &mut Load,
) -> Result<()> {
    load.cycles += 1;
    // Listener restart: the old one goes (with whatever it had not accepted), a new one comes.
    if let Some(mut s) = service.take() {
        s.stop(libc::SIGTERM, Duration::from_secs(5))?;
        load.listener_restarts += 1;
    }
    let port = SERVICE_PORT.to_string();
    *service = Some(spawn_peer(
        ns,
        peer,
        &["listen", "--addr", "127.0.0.1", "--port", &port, "--accept"],
    )?);
    let churn = CHURN_PER_CYCLE.to_string();
    run_quiet(NetnsSet::command(ns, peer).args([
        "connect",
        "--addr",
        "127.0.0.1",
        "--port",
        &port,
        "--count",
        &churn,
        "--timeout-ms",
        "2000",
    ]))?;
    load.connections += CHURN_PER_CYCLE;
    let storm = STORM_PER_CYCLE.to_string();
    run_quiet(NetnsSet::command(ns, xtask).args([
        "bench-load",
        "storm",
        "--count",
        &storm,
        "--max-seconds",
        "20",
    ]))?;
    load.storm_syns += STORM_PER_CYCLE;
    let clients = OVERFLOW_CLIENTS_PER_CYCLE.to_string();
    let oport = OVERFLOW_PORT.to_string();
    run_quiet(NetnsSet::command(ns, peer).args([
        "connect",
        "--addr",
        "127.0.0.1",
        "--port",
        &oport,
        "--count",
        &clients,
        "--nonblocking",
        "--timeout-ms",
        "0",
    ]))?;
    load.overflow_clients += OVERFLOW_CLIENTS_PER_CYCLE;
    let batch = NetnsSet::create(NAMESPACES_PER_CYCLE)?;
    for name in batch.names() {
        run_quiet(NetnsSet::command(name, xtask).args([
            "bench-load",
            "storm",
            "--count",
            "5",
            "--max-seconds",
            "10",
        ]))?;
    }
    load.namespaces += NAMESPACES_PER_CYCLE as u64;
    drop(batch);
    Ok(())
}

fn spawn_peer(ns: &str, peer: &Path, args: &[&str]) -> Result<Process> {
    let mut c = NetnsSet::command(ns, peer);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut p = Process::spawn("rst-trace-peer", &mut c)?;
    let out = p.take_stdout().context("peer stdout")?;
    let mut first = String::new();
    BufReader::new(out).read_line(&mut first)?;
    if !first.starts_with("ready") {
        bail!("peer {args:?} did not get ready: {first:?}");
    }
    Ok(p)
}

/// Runs a workload step; its own failure (a refused connect) is part of the load, but a
/// step that cannot start is not.
fn run_quiet(c: &mut Command) -> Result<()> {
    let st = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", cmd::display(c)))?;
    if st.code().is_none() {
        bail!("{} died: {st}", cmd::display(c));
    }
    Ok(())
}

fn read_agent(agent: &mut Process, seen: Arc<Mutex<Seen>>) -> Result<()> {
    let out = agent.take_stdout().context("agent stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let Ok(mut s) = seen.lock() else { break };
            s.lines += 1;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                s.bad_lines += 1;
                continue;
            };
            if v["event"]["name"] == "rst_trace.stats" {
                if v["final"] == true {
                    s.final_stats = Some(v.clone());
                }
                s.last_stats = Some(v);
            } else if v["event"]["kind"] == "cause" {
                if let Some(cause) = v["cause"].as_str() {
                    let n = v["count"].as_u64().unwrap_or(1);
                    *s.event_counts.entry(cause.to_owned()).or_insert(0) += n;
                }
            }
        }
    });
    Ok(())
}

fn wait_started(seen: &Arc<Mutex<Seen>>, agent: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        agent.ensure_running()?;
        if seen.lock().map(|s| s.lines > 0).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the agent did not print its started line within 60 s")
}

fn sample(
    pid: u32,
    start: Instant,
    cpu_prev: &mut (f64, Instant),
    seen: &Arc<Mutex<Seen>>,
) -> Result<Sample> {
    let now = Instant::now();
    let cpu = procfs::cpu_seconds(pid)?;
    let dt = now.duration_since(cpu_prev.1).as_secs_f64().max(0.001);
    let mut values = BTreeMap::new();
    values.insert("cpu_pct".to_owned(), 100.0 * (cpu - cpu_prev.0) / dt);
    *cpu_prev = (cpu, now);
    values.insert(
        "rss_kib".to_owned(),
        procfs::status_kib(pid, "VmRSS")? as f64,
    );
    values.insert(
        "threads".to_owned(),
        procfs::status_kib(pid, "Threads")? as f64,
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    values.insert("fds".to_owned(), fds as f64);
    if let Some(stats) = seen.lock().ok().and_then(|s| s.last_stats.clone()) {
        if let Some(tables) = stats["tables"].as_object() {
            for (name, t) in tables {
                if let (Some(e), Some(c)) = (t["entries"].as_f64(), t["capacity"].as_f64()) {
                    values.insert(format!("table:{name}"), e);
                    values.insert(format!("capacity:{name}"), c);
                }
            }
        }
    }
    Ok(Sample {
        at_s: now.duration_since(start).as_secs_f64(),
        values,
    })
}

fn brief(s: &Sample) -> String {
    let g = |k: &str| s.values.get(k).copied().unwrap_or(f64::NAN);
    format!(
        "rss={:.1}MiB fds={} threads={} cpu={:.1}% owners={} tw={}",
        g("rss_kib") / 1024.0,
        g("fds"),
        g("threads"),
        g("cpu_pct"),
        g("table:RST_OWNERS"),
        g("table:RST_TW_OWNERS")
    )
}

#[derive(Debug)]
struct Growth {
    series: String,
    first: f64,
    last: f64,
    peak: f64,
    capacity: Option<f64>,
    growth: f64,
    tolerance: f64,
    /// Judged by its bound only (see [`BOUNDED_BY_EVICTION`]).
    evicting: bool,
    ok: bool,
}

fn tolerance(series: &str) -> f64 {
    TOLERANCES
        .iter()
        .find(|(k, _, _)| {
            *k == series || (k.ends_with('*') && series.starts_with(&k[..k.len() - 1]))
        })
        .map_or(0.0, |(_, t, _)| *t)
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn growth(samples: &[Sample]) -> Vec<Growth> {
    let half = &samples[samples.len() / 2..];
    let mut keys: Vec<&String> = samples
        .iter()
        .flat_map(|s| s.values.keys())
        .filter(|k| !k.starts_with("capacity:"))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let pts: Vec<(f64, f64)> = half
                .iter()
                .filter_map(|s| s.values.get(k).map(|v| (s.at_s, *v)))
                .collect();
            let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
            let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let span = xs.last().unwrap_or(&0.0) - xs.first().unwrap_or(&0.0);
            let g = slope(&xs, &ys) * span;
            let all: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.values.get(k).copied())
                .collect();
            let capacity = k.strip_prefix("table:").and_then(|t| {
                samples
                    .last()?
                    .values
                    .get(&format!("capacity:{t}"))
                    .copied()
            });
            let peak = all.iter().copied().fold(f64::MIN, f64::max);
            let tol = tolerance(k);
            Growth {
                series: k.clone(),
                first: all.first().copied().unwrap_or(0.0),
                last: all.last().copied().unwrap_or(0.0),
                peak,
                capacity,
                growth: g,
                tolerance: tol,
                evicting: BOUNDED_BY_EVICTION.contains(&k.as_str()),
                ok: (g <= tol || BOUNDED_BY_EVICTION.contains(&k.as_str()))
                    && capacity.is_none_or(|c| peak <= c),
            }
        })
        .collect()
}

#[derive(Debug)]
struct Check {
    what: String,
    agent: i64,
    kernel: i64,
    ok: bool,
    /// What else the agent and the kernel counted that bears on the check, for a reader of a
    /// failed one.
    evidence: String,
}

fn reconcile(
    fin: &Value,
    seen: &Seen,
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> Vec<Check> {
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let n = |v: &Value| v.as_i64().unwrap_or(-1);
    // The RSTs by reason as the programs counted them, and every MIB counter of resets and
    // aborts that moved (TCPAbortFailed: an RST counted but never built, so never traced).
    let moved: Vec<String> = after
        .keys()
        .filter(|k| {
            ["Rst", "Abort", "Reset", "AttemptFails"]
                .iter()
                .any(|w| k.contains(w))
        })
        .filter(|k| d(k) != 0)
        .map(|k| format!("{k} {}", d(k)))
        .collect();
    let mut checks = vec![Check {
        what: "RSTs sent by TCP (resets_sent.tcp_stack vs Tcp.OutRsts)".into(),
        agent: n(&fin["resets_sent"]["tcp_stack"]),
        kernel: d("Tcp.OutRsts"),
        ok: false,
        evidence: format!(
            "the programs counted, by reason: `{}`, on sockets with SO_LINGER 0: `{}`; the MIB counters of resets that moved: {}",
            fin["kernel"]["resets_sent"],
            fin["kernel"]["resets_sent_linger_zero"],
            moved.join(", ")
        ),
    }];
    checks.push(Check {
        what: "accept_queue_overflow (vs TcpExt.ListenOverflows)".into(),
        agent: fin["causes"]["accept_queue_overflow"].as_i64().unwrap_or(0),
        kernel: d("TcpExt.ListenOverflows"),
        ok: false,
        evidence: format!(
            "TcpExt.ListenDrops {} (overflows and the other listener drops)",
            d("TcpExt.ListenDrops")
        ),
    });
    // Nothing lost uncounted: what the per-cause totals hold beyond the events written
    // (their folded counts included) is covered by the records counted as lost.
    let lost = n(&fin["records"]["lost"]);
    let unwritten: i64 = fin["causes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(c, v)| {
                    (v.as_i64().unwrap_or(0)
                        - seen.event_counts.get(c).copied().unwrap_or(0) as i64)
                        .max(0)
                })
                .sum()
        })
        .unwrap_or(0);
    checks.push(Check {
        what: "incidents not written as events (<= records lost)".into(),
        agent: unwritten,
        kernel: lost,
        ok: unwritten <= lost,
        evidence: String::new(),
    });
    for c in checks.iter_mut().take(2) {
        c.ok = c.agent == c.kernel;
    }
    checks
}

fn mib(ns: &str) -> Result<BTreeMap<String, i64>> {
    let out = NetnsSet::command(ns, "cat")
        .args(["/proc/net/netstat", "/proc/net/snmp"])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "reading the MIB of {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    rst_trace_common::mib::parse(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("parsing the MIB of {ns}"))
}

/// The MIB once traffic stopped moving it (bounded: 10 s).
fn settled_mib(ns: &str) -> Result<BTreeMap<String, i64>> {
    let mut last = mib(ns)?;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        let now = mib(ns)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Bad inputs the normal suite tries: proptest cases per test, from the source.
fn property_cases(ws: &Workspace) -> u64 {
    let Ok(src) = std::fs::read_to_string(ws.root.join("rst-trace/src/malformed.rs")) else {
        return 0;
    };
    let mut total = 0u64;
    let mut cases = 0u64;
    for line in src.lines() {
        if let Some(n) = line
            .trim()
            .strip_prefix("#![proptest_config(config(")
            .and_then(|r| r.split(')').next())
        {
            cases = n.parse().unwrap_or(0);
        } else if cases > 0 && line.trim_start().starts_with("fn ") && line.contains("in ") {
            total += cases;
        }
    }
    total
}

/// Locks the reader's state; a reader thread that panicked is a harness failure.
fn seen_lock(seen: &Arc<Mutex<Seen>>) -> Result<std::sync::MutexGuard<'_, Seen>> {
    seen.lock()
        .map_err(|_| anyhow::anyhow!("agent reader panicked"))
}

/// What the fuzz run tried: `(seconds, inputs)`.
#[derive(Debug)]
struct Fuzzed {
    seconds: u64,
    inputs: u64,
}

/// Runs the record decoder's fuzz body (rst-trace/src/malformed.rs) for `seconds` on stable;
/// returns how many inputs it tried. A panic fails the soak.
fn fuzz(ws: &Workspace, bpf_object: &Path, seconds: u64) -> Result<Fuzzed> {
    let mut test = Command::new("nice");
    test.arg(cmd::cargo().get_program())
        .current_dir(&ws.root)
        .env(crate::ebpf::OBJECT_ENV, bpf_object)
        .env("RST_TRACE_FUZZ_SECONDS", seconds.to_string())
        .args(["test", "--release", "-p", "rst-trace", "--lib"])
        .args(["malformed::fuzz_record_decoder_stable", "--"])
        .args(["--ignored", "--exact", "--nocapture"]);
    eprintln!("xtask: soak: $ {}", cmd::display(&test));
    let out = test.output().context("running the fuzz body")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "the record decoder's fuzz body failed ({}):\n{text}",
            out.status
        );
    }
    let inputs = text
        .lines()
        .find_map(|l| l.strip_suffix(" inputs, no panic"))
        .and_then(|n| n.trim().parse().ok())
        .context("the fuzz body did not say how many inputs it tried")?;
    Ok(Fuzzed { seconds, inputs })
}

// Long on purpose: the report is a document template written top to bottom.
#[allow(clippy::too_many_arguments)]
fn markdown(
    args: &SoakArgs,
    load: &Load,
    samples: &[Sample],
    growth: &[Growth],
    checks: &[Check],
    fin: &Value,
    ws: &Workspace,
    fuzzed: &Fuzzed,
) -> String {
    let mut s = String::new();
    let kernel = procfs::kernel_release().unwrap_or_default();
    let _ = writeln!(s, "# Reliability: {}-minute soak\n", args.minutes);
    let _ = writeln!(
        s,
        "Generated by `cargo xtask soak --minutes {}` (xtask/src/soak.rs); do not edit by hand.\n",
        args.minutes
    );
    let _ = writeln!(
        s,
        "- Machine: {}, {} MiB memory, {} CPUs; kernel {kernel}",
        procfs::cpu_model(),
        procfs::memory_mib().unwrap_or(0),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        s,
        "- Samples: {} (every {} s)\n",
        samples.len(),
        SAMPLE_EVERY.as_secs()
    );
    let _ = writeln!(s, "## Load held\n");
    let _ = writeln!(s, "| what | total | per cycle |\n|---|---:|---:|");
    let _ = writeln!(s, "| cycles | {} | |", load.cycles);
    let _ = writeln!(
        s,
        "| healthy connections (through a restarted listener) | {} | {CHURN_PER_CYCLE} |",
        load.connections
    );
    let _ = writeln!(
        s,
        "| RST storm: connects to a closed port | {} | {STORM_PER_CYCLE} |",
        load.storm_syns
    );
    let _ = writeln!(s, "| clients overflowing a listener that never accepts (backlog 1) | {} | {OVERFLOW_CLIENTS_PER_CYCLE} |", load.overflow_clients);
    let _ = writeln!(s, "| listener restarts | {} | 1 |", load.listener_restarts);
    let _ = writeln!(
        s,
        "| namespaces created and destroyed (5 RSTs each) | {} | {NAMESPACES_PER_CYCLE} |\n",
        load.namespaces
    );
    let _ = writeln!(s, "## Faults injected\n");
    let _ = writeln!(s, "Listener killed with connections queued ({} times), accept queue overflowed ({} clients), RST storms folded into summaries ({} RSTs), namespaces vanishing under the agent ({}).\n", load.listener_restarts, load.overflow_clients, load.storm_syns, load.namespaces);
    let _ = writeln!(s, "## Bad inputs tried\n");
    let _ = writeln!(s, "- Property tests (rst-trace/src/malformed.rs, every `cargo xtask test`): {} generated inputs per run", property_cases(ws));
    let _ = writeln!(
        s,
        "- Fuzzing the record decoder (its fuzz target's body on stable, after the workload): \
         {} inputs in {} s, no panic; `cargo xtask fuzz --seconds N` runs it under libFuzzer\n",
        fuzzed.inputs, fuzzed.seconds
    );
    let _ = writeln!(
        s,
        "## Growth (second half: slope × duration, against the tolerance)\n"
    );
    let _ = writeln!(s, "| series | first | last | peak | bound | growth | tolerance | |\n|---|---:|---:|---:|---:|---:|---:|---|");
    for g in growth {
        let tol = if g.evicting {
            "bound only".to_owned()
        } else {
            g.tolerance.to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {tol} | {} |",
            g.series,
            g.first,
            g.last,
            g.peak,
            g.capacity.map_or("-".into(), |c| format!("{c:.0}")),
            g.growth,
            if g.ok { "ok" } else { "FAIL" }
        );
    }
    let _ = writeln!(s, "\n\"bound only\": LRU maps and caches that forget their oldest entries at their bound; they must never pass it. Tolerances of the others: {}.\n", TOLERANCES.iter().map(|(k, t, why)| format!("{k} {t} ({why})")).collect::<Vec<_>>().join("; "));
    let _ = writeln!(s, "## Totals against the kernel\n");
    let _ = writeln!(s, "| check | agent | kernel | |\n|---|---:|---:|---|");
    for c in checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.what,
            c.agent,
            c.kernel,
            if c.ok { "exact" } else { "FAIL" }
        );
    }
    for c in checks.iter().filter(|c| !c.evidence.is_empty()) {
        let _ = writeln!(s, "\n{}: {}.", c.what, c.evidence);
    }
    let r = &fin["records"];
    let _ = writeln!(s, "\nRecords: {} delivered, {} lost and counted, {} undecodable, {} events folded into summaries; nothing lost uncounted: {}.",
        r["delivered"], r["lost"], r["undecodable"], r["suppressed"], if checks.iter().all(|c| c.ok) { "yes" } else { "NO" });
    let _ = writeln!(s, "\nFinal per-cause totals: `{}`", fin["causes"]);
    // A program run the kernel skipped (it was already running on that CPU) is in no counter:
    // beside a count that falls short, this says whether that is why.
    let _ = writeln!(
        s,
        "\nRuns the kernel skipped (`kernel.skipped_runs`, absent when none): `{}`",
        fin["kernel"]
            .get("skipped_runs")
            .unwrap_or(&serde_json::Value::Null)
    );
    let _ = writeln!(
        s,
        "\nTables at the end (entries, capacity, refused, evicted): `{}`",
        fin["tables"]
    );
    let _ = writeln!(s, "\nThe agent at the end: `{}`", fin["process"]);
    s
}

use std::fmt::Write as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Sample {
                at_s: 10.0 * i as f64,
                values: BTreeMap::from([("fds".to_owned(), *v)]),
            })
            .collect()
    }

    #[test]
    fn steady_series_pass_and_growing_ones_fail() {
        let flat = growth(&samples(&[52.0, 60.0, 52.0, 53.0, 52.0, 53.0, 52.0, 53.0]));
        assert!(flat[0].ok, "{flat:?}");
        // One fd per 10 s over the second half: 3 over 30 s, within 4; 2 per 10 s is not.
        let slow = growth(&samples(&[50.0, 50.0, 50.0, 50.0, 50.0, 51.0, 52.0, 53.0]));
        assert!(slow[0].ok, "{slow:?}");
        let leak = growth(&samples(&[50.0, 52.0, 54.0, 56.0, 58.0, 60.0, 62.0, 64.0]));
        assert!(!leak[0].ok, "{leak:?}");
        assert!((leak[0].growth - 6.0).abs() < 1e-9, "{leak:?}");
    }

    #[test]
    fn tolerances_and_slopes() {
        assert_eq!(tolerance("table:RST_OWNERS"), 256.0);
        assert_eq!(tolerance("rss_kib"), 4096.0);
        assert_eq!(tolerance("unknown"), 0.0);
        assert!((slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]) - 2.0).abs() < 1e-12);
        assert_eq!(slope(&[1.0], &[1.0]), 0.0);
    }
}
