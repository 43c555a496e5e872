//! The four workloads, each run once under one variant: a fresh namespace (or set of them),
//! the variant started and ready, the load, the measurements, everything torn down again.
//! A run that cannot do what it was asked (counts that do not add up, a tracer that does not
//! start) is an error: that is a broken harness, not a slow agent.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::agent;
use super::bpfstats::{self, ProgCost};
use super::child::Process;
use super::interrupt;
use super::load::{self, Outcome};
use super::netns::NetnsSet;
use super::procfs;
use super::tracer::{Finished, Tools, Tracer, Variant};

/// Established connections one holder process keeps: both ends are its descriptors, and
/// RLIMIT_NOFILE cannot be raised past the hard limit without CAP_SYS_RESOURCE (20,000 on
/// the development machines).
const CONNECTIONS_PER_HOLDER: u64 = 9_000;
/// How long an agent may take to stop when its final output is not needed.
pub const IDLE_STOP_SECONDS: u64 = 30;
/// How long a tracer of a timed workload gets to stop before its stop signal is sent again.
pub const TIMED_STOP_SECONDS: u64 = 120;
/// Listener ports of the start-up workload's holders: one each, so no two holders share one.
const HOLDER_BASE_PORT: u16 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// N connect → accept → close on loopback.
    Churn { connections: u64 },
    /// N connect() to a closed loopback port.
    Storm { connects: u64 },
    /// N getppid() calls: what every other process's syscalls pay.
    Syscalls { calls: u64 },
    /// Namespaces each holding one listener, no traffic.
    Idle { namespaces: usize },
    /// The agent starting next to this many established connections.
    Startup { connections: u64 },
}

impl Workload {
    pub fn key(self) -> String {
        match self {
            Workload::Churn { .. } => "churn".into(),
            Workload::Storm { .. } => "storm".into(),
            Workload::Syscalls { .. } => "syscalls".into(),
            Workload::Idle { namespaces } => format!("idle-{namespaces}"),
            Workload::Startup { connections } => format!("startup-{connections}"),
        }
    }

    /// Events one run is made of (connections, RSTs), for per-event figures.
    pub fn events(self) -> u64 {
        match self {
            Workload::Churn { connections } | Workload::Startup { connections } => connections,
            Workload::Storm { connects } => connects,
            Workload::Syscalls { calls } => calls,
            Workload::Idle { .. } => 0,
        }
    }
}

/// Settings shared by every run.
pub struct Ctx {
    pub tools: Tools,
    /// This executable, which carries the load generator (`bench-load`).
    pub loader: PathBuf,
    /// Pause between a tracer becoming ready and the load, so its first poll is not measured.
    pub settle: Duration,
    pub idle_seconds: u64,
    /// Upper bound of one timed load (the load generator's own bound).
    pub max_load_seconds: u64,
    /// The CPU a timed load runs on (the last online one); the tracers are not pinned.
    pub load_cpu: Option<usize>,
}

/// One run of one workload under one variant.
#[derive(Debug, Clone)]
pub struct Sample {
    pub workload: Workload,
    pub variant: Variant,
    pub round: usize,
    /// Connections or RSTs completed (churn, storm).
    pub events: u64,
    /// Wall time of the load (churn, storm) or of the idle window.
    pub window_s: f64,
    /// Tracer CPU (utime+stime) over the window, drain included.
    pub tracer_cpu_s: Option<f64>,
    /// Busy CPU of the whole host over the idle window.
    pub host_busy_s: Option<f64>,
    pub startup_s: Option<f64>,
    /// Tracer CPU spent starting up (start-up workload).
    pub startup_cpu_s: Option<f64>,
    pub rss_start_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub finished: Option<Finished>,
}

impl Sample {
    pub fn new(workload: Workload, variant: Variant, round: usize) -> Sample {
        Sample {
            workload,
            variant,
            round,
            events: 0,
            window_s: 0.0,
            tracer_cpu_s: None,
            host_busy_s: None,
            startup_s: None,
            startup_cpu_s: None,
            rss_start_kib: None,
            hwm_kib: None,
            finished: None,
        }
    }

    /// Events per second (churn, storm).
    pub fn rate(&self) -> Option<f64> {
        (self.window_s > 0.0 && self.events > 0).then(|| self.events as f64 / self.window_s)
    }
}

/// The in-kernel cost of the agent's programs over one workload (bpf_stats pass).
#[derive(Debug, Clone)]
pub struct Profile {
    pub workload: Workload,
    pub events: u64,
    /// Per program, the median round's (see `bpfstats::median_round`).
    pub costs: Vec<ProgCost>,
    /// Per program, ns/run in each round, in round order.
    pub per_round: BTreeMap<String, Vec<Option<f64>>>,
    /// Programs that emitted records here (see `agent::emitting_programs`).
    pub emitting: BTreeSet<String>,
}

impl Profile {
    /// One profile out of a workload's rounds: per program the median round.
    pub fn of_rounds(rounds: Vec<Profile>) -> Option<Profile> {
        let first = rounds.first()?;
        let (workload, events) = (first.workload, first.events);
        let all: Vec<Vec<ProgCost>> = rounds.iter().map(|r| r.costs.clone()).collect();
        let costs = bpfstats::median_round(&all);
        let per_round = costs
            .iter()
            .map(|c| {
                let each = all
                    .iter()
                    .map(|r| {
                        r.iter()
                            .find(|x| x.name == c.name)
                            .and_then(ProgCost::ns_per_run)
                    })
                    .collect();
                (c.name.clone(), each)
            })
            .collect();
        let emitting = rounds.into_iter().flat_map(|r| r.emitting).collect();
        Some(Profile {
            workload,
            events,
            costs,
            per_round,
            emitting,
        })
    }
}

pub fn run(ctx: &Ctx, workload: Workload, variant: Variant, round: usize) -> Result<Sample> {
    interrupt::check()?;
    let tag = format!("{}-{}-r{round}", workload.key(), variant.key());
    eprintln!("xtask: bench: {tag}");
    let sample = match workload {
        Workload::Churn { .. } | Workload::Storm { .. } | Workload::Syscalls { .. } => {
            timed(ctx, workload, variant, round, &tag, false)?.0
        }
        Workload::Idle { namespaces } => idle(ctx, namespaces, variant, round, &tag)?,
        Workload::Startup { connections } => startup(ctx, connections, variant, round, &tag)?,
    };
    Ok(sample)
}

/// One round of the bpf_stats pass: an agent run of a timed workload with per-program counters
/// read before and after the load. The caller holds `bpfstats::StatsEnabled`.
pub fn profile(ctx: &Ctx, workload: Workload, round: usize) -> Result<Profile> {
    let tag = format!("{}-profile-r{round}", workload.key());
    eprintln!("xtask: bench: {tag}");
    let (_, profile) = timed(ctx, workload, Variant::RstTrace, 0, &tag, true)?;
    profile.context("the profiling run produced no program counters")
}

fn timed(
    ctx: &Ctx,
    workload: Workload,
    variant: Variant,
    round: usize,
    tag: &str,
    with_profile: bool,
) -> Result<(Sample, Option<Profile>)> {
    let ns = NetnsSet::create(1)?;
    let mut tracer = Tracer::start(variant, &ctx.tools, ns.first(), tag)?;
    interrupt::sleep(ctx.settle)?;

    let ids = match (&tracer, with_profile) {
        (Some(t), true) => Some(agent::program_ids(t.pid())?),
        _ => None,
    };
    let before = ids.as_ref().map(bpfstats::snapshot).transpose()?;
    let cpu_before = tracer.as_mut().map(Tracer::cpu_seconds).transpose()?;

    let (mode, n) = match workload {
        Workload::Churn { connections } => ("churn", connections),
        Workload::Storm { connects } => ("storm", connects),
        Workload::Syscalls { calls } => ("syscalls", calls),
        _ => bail!("{} is not a timed workload", workload.key()),
    };
    let outcome = run_load(ctx, ns.first(), mode, n)?;

    if let Some(t) = tracer.as_mut() {
        t.drain()?;
    }
    let after = ids.as_ref().map(bpfstats::snapshot).transpose()?;
    let mut sample = Sample::new(workload, variant, round);
    sample.events = outcome.completed.max(outcome.refused);
    sample.window_s = outcome.elapsed_s;
    if let (Some(t), Some(before)) = (tracer.as_mut(), cpu_before) {
        sample.tracer_cpu_s = Some(t.cpu_seconds()? - before);
        sample.hwm_kib = Some(t.hwm_kib()?);
        sample.startup_s = Some(t.startup_s);
        sample.rss_start_kib = Some(t.rss_start_kib);
    }
    let started = tracer.as_ref().and_then(|t| t.started.clone());
    // The agent's final stats line carries the records delivered and the counts the totals
    // check needs: wait for it. The other tracers' outputs only fill their rows, which show a
    // round whose tracer had to be killed.
    let finished = tracer
        .map(|t| {
            let needed = t.variant() == Variant::RstTrace;
            t.stop(Duration::from_secs(TIMED_STOP_SECONDS), needed)
        })
        .transpose()?;
    drop(ns);

    check_counts(workload, variant, &outcome, finished.as_ref())?;

    let profile = match (before, after, &finished, started) {
        (Some(before), Some(after), Some(fin), Some(started)) => Some(Profile {
            workload,
            events: n,
            costs: bpfstats::delta(&before, &after),
            per_round: BTreeMap::new(),
            emitting: fin
                .stats
                .as_ref()
                .map(|s| agent::emitting_programs(&started, s, n))
                .unwrap_or_default(),
        }),
        _ => None,
    };
    sample.finished = finished;
    Ok((sample, profile))
}

/// The counts a healthy harness produces; anything else means the measurement is void.
fn check_counts(
    workload: Workload,
    variant: Variant,
    o: &Outcome,
    finished: Option<&Finished>,
) -> Result<()> {
    let what = format!("{} under {}", workload.key(), variant.key());
    match workload {
        Workload::Churn { connections } => {
            if o.completed != connections || o.errors > 0 {
                bail!(
                    "{what}: {} of {connections} connections completed, {} errors (first: {})",
                    o.completed,
                    o.errors,
                    o.first_error.as_deref().unwrap_or("none")
                );
            }
            if o.out_rsts != 0 {
                bail!("{what}: the healthy churn sent {} RSTs", o.out_rsts);
            }
        }
        Workload::Storm { connects } => {
            if o.refused != connects || o.completed > 0 || o.errors > 0 {
                bail!(
                    "{what}: {} of {connects} connects refused, {} accepted, {} errors (first: {})",
                    o.refused,
                    o.completed,
                    o.errors,
                    o.first_error.as_deref().unwrap_or("none")
                );
            }
            if o.out_rsts != connects {
                bail!(
                    "{what}: {connects} refused connects but {} RSTs sent",
                    o.out_rsts
                );
            }
            // The agent's kernel counters are exact and count the whole machine: at least ours.
            if let Some(seen) = finished.and_then(|f| f.no_socket_rsts) {
                if seen < connects {
                    bail!("{what}: the agent counted {seen} NO_SOCKET RSTs of {connects}");
                }
            }
        }
        Workload::Syscalls { calls } if o.completed != calls => {
            bail!("{what}: {} of {calls} calls made in time", o.completed);
        }
        _ => {}
    }
    Ok(())
}

/// Runs the load generator inside `netns` and reads its one-line result.
fn run_load(ctx: &Ctx, netns: &str, mode: &str, count: u64) -> Result<Outcome> {
    let mut command = NetnsSet::command(netns, &ctx.loader);
    command
        .args(["bench-load", mode, "--count", &count.to_string()])
        .args(["--max-seconds", &ctx.max_load_seconds.to_string()])
        .args(ctx.load_cpu.map(|c| format!("--cpu={c}")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut process = Process::spawn(&format!("load {mode}"), &mut command)?;
    let stdout = process
        .take_stdout()
        .context("load generator without stdout")?;
    let line = read_line_within(stdout, Duration::from_secs(ctx.max_load_seconds + 60))
        .with_context(|| format!("the {mode} load generator gave no result"))?;
    let status = process
        .wait_timeout(Duration::from_secs(10))?
        .context("the load generator did not exit after printing its result")?;
    if !status.success() {
        bail!("the {mode} load generator failed ({status})");
    }
    Outcome::parse(&line)
}

/// The first line of a child's stdout, waiting at most `timeout` (on a helper thread, since a
/// pipe read cannot time out).
fn read_line_within(stdout: impl Read + Send + 'static, timeout: Duration) -> Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    let end = Instant::now() + timeout;
    loop {
        interrupt::check()?;
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let line = line.context("reading a child's output")?;
                if line.is_empty() {
                    bail!("the child closed its output without a line");
                }
                return Ok(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end => {}
            Err(_) => bail!("no output line within {timeout:?}"),
        }
    }
}

/// Starts a holding load generator and waits for its `ready N`.
fn hold(name: &str, mut command: Command, expected: u64, timeout: Duration) -> Result<Process> {
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut process = Process::spawn(name, &mut command)?;
    let stdout = process.take_stdout().context("holder without stdout")?;
    let line =
        read_line_within(stdout, timeout).with_context(|| format!("{name} never got ready"))?;
    match load::read_ready(&line) {
        Some(n) if n == expected => Ok(process),
        _ => bail!("{name}: expected `ready {expected}`, got {line:?}"),
    }
}

fn idle(ctx: &Ctx, namespaces: usize, variant: Variant, round: usize, tag: &str) -> Result<Sample> {
    let set = NetnsSet::create(namespaces)?;
    let names = ctx.tools.logs.join(format!("{tag}.netns"));
    std::fs::write(&names, set.names().join("\n") + "\n")
        .with_context(|| format!("writing {}", names.display()))?;
    let mut command = Command::new(&ctx.loader);
    command
        .args([
            "bench-load",
            "listeners",
            "--max-seconds",
            "3600",
            "--names",
        ])
        .arg(&names);
    let mut holder = hold(
        "listener holder",
        command,
        namespaces as u64,
        Duration::from_secs(300),
    )?;
    let mut tracer = Tracer::start(variant, &ctx.tools, set.first(), tag)?;
    // Longer than for the timed workloads: the agent's first scans of every namespace are
    // start-up, not idle.
    interrupt::sleep(ctx.settle * 4)?;

    let cpu_before = tracer.as_mut().map(Tracer::cpu_seconds).transpose()?;
    let host_before = procfs::host_busy_seconds()?;
    let t0 = Instant::now();
    interrupt::sleep(Duration::from_secs(ctx.idle_seconds))?;
    let window = t0.elapsed().as_secs_f64();
    let host_after = procfs::host_busy_seconds()?;
    holder.ensure_running()?;

    let mut sample = Sample::new(Workload::Idle { namespaces }, variant, round);
    sample.window_s = window;
    sample.host_busy_s = Some(host_after - host_before);
    if let (Some(t), Some(before)) = (tracer.as_mut(), cpu_before) {
        sample.tracer_cpu_s = Some(t.cpu_seconds()? - before);
        sample.hwm_kib = Some(t.hwm_kib()?);
        sample.startup_s = Some(t.startup_s);
        sample.rss_start_kib = Some(t.rss_start_kib);
    }
    // How long the agent takes to stop next to many namespaces is itself a finding, but not
    // one worth minutes per round: past IDLE_STOP_SECONDS it is killed and reported so.
    sample.finished = tracer
        .map(|t| t.stop(Duration::from_secs(IDLE_STOP_SECONDS), false))
        .transpose()?;
    drop(holder);
    drop(set);
    Ok(sample)
}

fn startup(
    ctx: &Ctx,
    connections: u64,
    variant: Variant,
    round: usize,
    tag: &str,
) -> Result<Sample> {
    let ns = NetnsSet::create(1)?;
    let mut holders = Vec::new();
    let mut left = connections;
    let mut port = HOLDER_BASE_PORT;
    while left > 0 {
        let count = left.min(CONNECTIONS_PER_HOLDER);
        let mut command = NetnsSet::command(ns.first(), &ctx.loader);
        command.args(["bench-load", "established", "--count", &count.to_string()]);
        command.args(["--port", &port.to_string(), "--max-seconds", "3600"]);
        holders.push(hold(
            "connection holder",
            command,
            count,
            Duration::from_secs(600),
        )?);
        left -= count;
        port += 1;
    }

    let mut tracer = Tracer::start(variant, &ctx.tools, ns.first(), tag)?
        .context("the start-up workload needs a tracer")?;
    let mut sample = Sample::new(Workload::Startup { connections }, variant, round);
    sample.startup_s = Some(tracer.startup_s);
    sample.rss_start_kib = Some(tracer.rss_start_kib);
    sample.startup_cpu_s = Some(tracer.cpu_seconds()?);
    interrupt::sleep(ctx.settle)?;
    sample.hwm_kib = Some(tracer.hwm_kib()?);
    for h in &mut holders {
        h.ensure_running()?;
    }
    sample.finished = Some(tracer.stop(Duration::from_secs(IDLE_STOP_SECONDS), false)?);
    sample.events = connections;
    drop(holders);
    drop(ns);
    Ok(sample)
}
