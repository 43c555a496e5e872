//! The report: targets with pass/miss read from the figures, one markdown document (printed
//! and written to docs/performance.md) and a JSON summary for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::figures::{Cell, Key};
use super::tracer::{Variant, BPFTRACE_PROGRAM, TCPDUMP_FILTER};
use super::workload::{Profile, Sample, Workload, IDLE_STOP_SECONDS, TIMED_STOP_SECONDS};

/// Where and how the figures were taken.
pub struct Meta {
    pub date: String,
    pub command: String,
    pub commit: String,
    pub kernel: String,
    pub cpus: usize,
    /// The CPU the timed loads were pinned to, if any.
    pub load_cpu: Option<usize>,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub rounds: usize,
    /// Rounds of the RST storm, when it ran.
    pub storm_rounds: Option<usize>,
    pub short: bool,
    pub idle_seconds: u64,
    pub wall_s: f64,
}

/// One target and what was measured against it.
pub struct Target {
    pub what: String,
    pub goal: String,
    pub figure: String,
    /// None: not measured in this run.
    pub pass: Option<bool>,
}

const MIB: f64 = 1024.0;
/// Records per healthy connection still read as "0": the agent counts records from every
/// process on the (shared) machine, not only from the workload's.
const ZERO_RECORDS: f64 = 0.001;
/// A program is hot in a workload when it ran at least once per hundred events.
const HOT_RUNS_PER_EVENT: f64 = 0.01;
const QUIET_PROGRAM_NS: f64 = 150.0;
const EMITTING_PROGRAM_NS: f64 = 600.0;

fn find(
    cells: &BTreeMap<Key, Cell>,
    v: Variant,
    f: impl Fn(Workload) -> bool,
) -> Option<(Workload, &Cell)> {
    cells
        .iter()
        .find(|((w, var), _)| *var == v && f(*w))
        .map(|((w, _), c)| (*w, c))
}

fn is_hot(p: &Profile, runs: u64) -> bool {
    p.events > 0 && runs as f64 >= HOT_RUNS_PER_EVENT * p.events as f64
}

/// Long on purpose: one entry per target of the performance issue, in the order
/// docs/performance.md lists them.
pub fn targets(cells: &BTreeMap<Key, Cell>, profiles: &[Profile]) -> Vec<Target> {
    let mut t = Vec::new();
    let churn = find(cells, Variant::RstTrace, |w| {
        matches!(w, Workload::Churn { .. })
    });
    t.push(Target {
        what: "Healthy churn rate".into(),
        goal: "≥ 97 % of untraced".into(),
        figure: pct(churn.and_then(|(_, c)| c.vs_untraced)),
        pass: churn.and_then(|(_, c)| c.vs_untraced).map(|r| r >= 0.97),
    });
    t.push(Target {
        what: "Records per healthy connection".into(),
        goal: "0".into(),
        figure: churn
            .and_then(|(w, c)| {
                Some(format!(
                    "{:.3} ({} records, {} connections)",
                    c.delivered_per_event?,
                    thousands(c.delivered?),
                    thousands(w.events() as f64)
                ))
            })
            .unwrap_or_else(|| "–".into()),
        pass: churn
            .and_then(|(_, c)| c.delivered_per_event)
            .map(|r| r < ZERO_RECORDS),
    });
    let storm = find(cells, Variant::RstTrace, |w| {
        matches!(w, Workload::Storm { .. })
    });
    t.push(Target {
        what: "RST storm rate".into(),
        goal: "≥ 95 % of untraced".into(),
        figure: pct(storm.and_then(|(_, c)| c.vs_untraced)),
        pass: storm.and_then(|(_, c)| c.vs_untraced).map(|r| r >= 0.95),
    });
    t.push(Target {
        what: "RST storm rate against tcpdump (same rounds)".into(),
        goal: "faster than tcpdump".into(),
        figure: storm
            .and_then(|(_, c)| c.vs_tcpdump)
            .map_or_else(|| "–".into(), |r| format!("{r:.2} × tcpdump's rate")),
        pass: storm.and_then(|(_, c)| c.vs_tcpdump).map(|r| r > 1.0),
    });
    for ((w, v), c) in cells {
        if let (Workload::Idle { namespaces }, Variant::RstTrace) = (w, v) {
            let limit = if *namespaces <= 200 { 1.0 } else { 3.0 };
            t.push(Target {
                what: format!("Idle agent CPU, {namespaces} namespaces"),
                goal: format!("≤ {limit:.0} % of one core"),
                figure: c
                    .tracer_cpu_pct
                    .map_or_else(|| "–".into(), |p| format!("{p:.1} %")),
                pass: c.tracer_cpu_pct.map(|p| p <= limit),
            });
        }
    }
    for (emitting, limit, what) in [
        (false, QUIET_PROGRAM_NS, "Hot programs that emit nothing"),
        (true, EMITTING_PROGRAM_NS, "Hot programs that emit a record"),
    ] {
        let worst = profiles
            .iter()
            .flat_map(|p| {
                p.costs
                    .iter()
                    .filter(|c| is_hot(p, c.runs) && p.emitting.contains(&c.name) == emitting)
                    .filter_map(move |c| Some((c.ns_per_run()?, c.name.clone(), p.workload)))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        t.push(Target {
            what: what.into(),
            goal: format!("≤ {limit:.0} ns/run"),
            figure: worst.as_ref().map_or_else(
                || "–".into(),
                |(ns, name, w)| format!("worst {ns:.0} ns (`{name}`, {})", w.key()),
            ),
            pass: worst.map(|(ns, _, _)| ns <= limit),
        });
    }
    for ((w, v), c) in cells {
        if let (Workload::Startup { connections }, Variant::RstTrace) = (w, v) {
            t.push(Target {
                what: format!(
                    "RSS right after start, {} established connections",
                    thousands(*connections as f64)
                ),
                goal: "≤ 40 MiB".into(),
                figure: mib(c.rss_start_kib),
                pass: c.rss_start_kib.map(|k| k as f64 / MIB <= 40.0),
            });
        }
    }
    t.push(Target {
        what: "Peak RSS under the RST storm".into(),
        goal: "≤ 64 MiB".into(),
        figure: mib(storm.and_then(|(_, c)| c.hwm_kib)),
        pass: storm
            .and_then(|(_, c)| c.hwm_kib)
            .map(|k| k as f64 / MIB <= 64.0),
    });
    let largest_idle = cells
        .iter()
        .filter_map(|((w, v), c)| match (w, v) {
            (Workload::Idle { namespaces }, Variant::RstTrace) => Some((*namespaces, c)),
            _ => None,
        })
        .max_by_key(|(n, _)| *n);
    t.push(Target {
        what: format!(
            "Peak RSS with {} namespaces",
            largest_idle.map_or_else(|| "1,000".into(), |(n, _)| thousands(n as f64))
        ),
        goal: "≤ 64 MiB".into(),
        figure: mib(largest_idle.and_then(|(_, c)| c.hwm_kib)),
        pass: largest_idle
            .and_then(|(_, c)| c.hwm_kib)
            .map(|k| k as f64 / MIB <= 64.0),
    });
    t
}

pub fn markdown(
    meta: &Meta,
    cells: &BTreeMap<Key, Cell>,
    profiles: &[Profile],
    targets: &[Target],
) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "<!-- Generated by `cargo xtask bench`: do not edit, re-run the command. -->"
    );
    let _ = writeln!(m, "# rst-trace performance\n");
    let _ = writeln!(
        m,
        "Generated by `cargo xtask bench` on {}; do not edit by hand, re-run the command to refresh.\n",
        meta.date
    );
    let _ = writeln!(m, "| | |\n|---|---|");
    let _ = writeln!(m, "| Command | `{}` |", meta.command);
    let _ = writeln!(
        m,
        "| Agent | `target/release/rst-trace` built from commit `{}` |",
        meta.commit
    );
    let _ = writeln!(m, "| Kernel | `{}` (`uname -r`) |", meta.kernel);
    let _ = writeln!(
        m,
        "| Machine | {} CPUs (`nproc`), {}, {:.1} GiB memory; shared with other jobs |",
        meta.cpus,
        meta.cpu_model,
        meta.memory_mib as f64 / 1024.0
    );
    let _ = writeln!(
        m,
        "| Method | {} interleaved round(s) per workload{} (A B C D A B C D …), medians; ratios taken within a round; {}{} |",
        meta.rounds,
        match meta.storm_rounds {
            Some(n) if n != meta.rounds => format!(", {n} for the RST storm"),
            _ => String::new(),
        },
        match meta.load_cpu {
            Some(cpu) => format!("each timed load on CPU {cpu} only, tracers unpinned"),
            None => "loads unpinned".to_owned(),
        },
        if meta.short { "; **short mode**: small counts, not for judging targets" } else { "" }
    );
    let _ = writeln!(m, "| Duration | {:.0} s |", meta.wall_s);

    let met = targets.iter().filter(|t| t.pass == Some(true)).count();
    let measured = targets.iter().filter(|t| t.pass.is_some()).count();
    let _ = writeln!(
        m,
        "\n## Targets\n\n{met} of {measured} measured targets met.\n"
    );
    let _ = writeln!(m, "| | target | measured | |\n|---|---|---|---|");
    for t in targets {
        let verdict = match t.pass {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "not measured",
        };
        let _ = writeln!(m, "| {} | {} | {} | {verdict} |", t.what, t.goal, t.figure);
    }

    section_churn(&mut m, cells);
    section_storm(&mut m, cells);
    section_syscalls(&mut m, cells);
    section_idle(&mut m, cells, meta.idle_seconds);
    section_startup(&mut m, cells);
    section_programs(&mut m, profiles);
    section_method(&mut m);
    m
}

/// The cells of the workloads `is` picks, once the section's heading (from the first of them)
/// and its table's header are written; nothing is written when none of them ran.
fn section_rows<'a>(
    m: &mut String,
    cells: &'a BTreeMap<Key, Cell>,
    is: fn(&Workload) -> bool,
    heading: impl Fn(&Workload) -> String,
    columns: &[&str],
) -> Vec<(&'a Key, &'a Cell)> {
    let rows: Vec<_> = cells.iter().filter(|((w, _), _)| is(w)).collect();
    let Some(((w, _), _)) = rows.first() else {
        return rows;
    };
    let _ = writeln!(m, "\n## {}\n", heading(w));
    let _ = writeln!(m, "| {} |", columns.join(" | "));
    let _ = writeln!(m, "|{}", "---|".repeat(columns.len()));
    rows
}

fn section_churn(m: &mut String, cells: &BTreeMap<Key, Cell>) {
    let rows = section_rows(
        m,
        cells,
        |w| matches!(w, Workload::Churn { .. }),
        |w| {
            format!(
                "Healthy churn: {} connect → accept → close on loopback, no RST",
                thousands(w.events() as f64)
            )
        },
        &[
            "variant",
            "conn/s",
            "vs untraced",
            "per round",
            "agent CPU",
            "agent CPU per conn",
            "records per conn",
            "RSS after start",
            "peak RSS",
        ],
    );
    for ((_, v), c) in rows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.key(),
            opt_thousands(c.rate),
            pct(c.vs_untraced),
            per_round(&c.rates),
            cpu(c),
            us(c.tracer_cpu_us_per_event),
            c.delivered_per_event
                .map_or_else(|| "–".into(), |r| format!("{r:.3}")),
            mib(c.rss_start_kib),
            mib(c.hwm_kib),
        );
    }
}

/// What every syscall of every other process pays while the agent runs: a syscall tracepoint,
/// whichever syscall it is for, sends all of them through the kernel's slow path.
fn section_syscalls(m: &mut String, cells: &BTreeMap<Key, Cell>) {
    let rows = section_rows(
        m,
        cells,
        |w| matches!(w, Workload::Syscalls { .. }),
        |w| {
            format!(
                "Every process's syscalls: {} getppid() calls",
                thousands(w.events() as f64)
            )
        },
        &[
            "variant",
            "calls/s",
            "ns per call",
            "vs untraced",
            "per round",
        ],
    );
    if rows.is_empty() {
        return;
    }
    for ((_, v), c) in rows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            v.key(),
            opt_thousands(c.rate),
            c.rate
                .filter(|r| *r > 0.0)
                .map_or_else(|| "–".into(), |r| format!("{:.0}", 1e9 / r)),
            pct(c.vs_untraced),
            per_round(&c.rates),
        );
    }
    let _ = writeln!(
        m,
        "\nThe cheapest syscall, so that what the agent adds to every syscall on the host shows whole. On kernels where BPF trampolines work the agent attaches no syscall tracepoint; where they do not (this kernel, if `sys_listen_accept4` failed in the started line), accept() is seen at its exit tracepoint, which sends every syscall of every process through the slow path (listen()'s and accept()'s arguments come from the saved registers where the kernel hands them over, so no entry tracepoint adds to that)."
    );
}

fn section_storm(m: &mut String, cells: &BTreeMap<Key, Cell>) {
    let rows = section_rows(
        m,
        cells,
        |w| matches!(w, Workload::Storm { .. }),
        |w| {
            format!(
                "RST storm: {} connect() to a closed loopback port, one RST each",
                thousands(w.events() as f64)
            )
        },
        &[
            "variant",
            "RST/s",
            "vs untraced",
            "vs tcpdump",
            "per round",
            "tracer CPU",
            "tracer CPU per RST",
            "delivered",
            "lost",
            "peak RSS",
        ],
    );
    if rows.is_empty() {
        return;
    }
    for ((_, v), c) in &rows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.key(),
            opt_thousands(c.rate),
            pct(c.vs_untraced),
            c.vs_tcpdump
                .map_or_else(|| "–".into(), |r| format!("{r:.2} ×")),
            per_round(&c.rates),
            cpu(c),
            us(c.tracer_cpu_us_per_event),
            if *v == Variant::Untraced {
                "–".into()
            } else {
                opt_thousands(c.delivered)
            },
            if *v == Variant::Untraced {
                "–".into()
            } else {
                opt_thousands(c.lost)
            },
            mib(c.hwm_kib),
        );
    }
    let _ = writeln!(
        m,
        "\n*delivered*: the agent's records (`records.delivered`; it folds what it prints past \
         `--max-events-per-sec`, its counts stay exact), bpftrace's output lines, tcpdump's \
         captured packets. *lost*: records the agent counted as \
         lost, bpftrace's `Lost N events`, tcpdump's `dropped by kernel`. tcpdump: \
         `tcpdump -Z root -i lo -w FILE '{TCPDUMP_FILTER}'` in the workload's namespace; \
         bpftrace: `{BPFTRACE_PROGRAM}` to a file."
    );
    for ((_, v), c) in rows.into_iter().filter(|(_, c)| c.stops_killed > 0) {
        let _ = writeln!(
            m,
            "\n{}: {} of {} rounds did not exit within {TIMED_STOP_SECONDS} s of its stop \
             signal and its repeat, and were killed; *delivered* and *lost* are of the other \
             rounds.",
            v.key(),
            c.stops_killed,
            c.rounds
        );
    }
}

fn section_idle(m: &mut String, cells: &BTreeMap<Key, Cell>, seconds: u64) {
    let rows = section_rows(
        m,
        cells,
        |w| matches!(w, Workload::Idle { .. }),
        |_| format!("Idle: namespaces with one listener each, no traffic, {seconds} s"),
        &[
            "namespaces",
            "variant",
            "agent CPU (% of one core)",
            "host CPU, every process (% of one core)",
            "agent start-up",
            "agent stop (SIGTERM → exit)",
            "RSS after start",
            "peak RSS",
        ],
    );
    for ((w, v), c) in rows {
        let Workload::Idle { namespaces } = w else {
            continue;
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(*namespaces as f64),
            v.key(),
            c.tracer_cpu_pct
                .map_or_else(|| "–".into(), |p| format!("{p:.1} %")),
            c.host_cpu_pct
                .map_or_else(|| "–".into(), |p| format!("{p:.1} %")),
            secs(c.startup_s),
            if *v == Variant::Untraced {
                "–".into()
            } else {
                stop(c)
            },
            mib(c.rss_start_kib),
            mib(c.hwm_kib),
        );
    }
}

fn section_startup(m: &mut String, cells: &BTreeMap<Key, Cell>) {
    let rows = section_rows(
        m,
        cells,
        |w| matches!(w, Workload::Startup { .. }),
        |_| "Start-up next to established connections (until `rst_trace.started`)".to_owned(),
        &[
            "established connections",
            "start-up time",
            "per round",
            "agent CPU to start",
            "RSS right after start",
            "peak RSS (0.5 s later)",
        ],
    );
    for ((w, _), c) in rows {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} |",
            thousands(w.events() as f64),
            secs(c.startup_s),
            c.startups
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            secs(c.startup_cpu_s),
            mib(c.rss_start_kib),
            mib(c.hwm_kib),
        );
    }
}

fn section_programs(m: &mut String, profiles: &[Profile]) {
    if profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        m,
        "\n## In-kernel cost per program\n\nSeparate agent runs with \
         `kernel.bpf_stats_enabled=1` (timing every run costs a little itself, so the rounds \
         above run without it), as many rounds per workload as the Method row gives first (the \
         storm too), interleaved: `run_cnt` and `run_time_ns` from `bpftool prog show -j`, \
         differences over the load; per program the round with the median ns/run. *Hot*: at least one run per hundred \
         events; the targets apply to hot programs. *Emits*: the program serves a cause the \
         agent counted in that workload (per its `rst_trace.started` line).\n"
    );
    let _ = writeln!(
        m,
        "| workload | program | runs | runs per event | ns/run | per round | hot | emits | target | |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|");
    for p in profiles {
        for c in &p.costs {
            let hot = is_hot(p, c.runs);
            let emits = p.emitting.contains(&c.name);
            let limit = if emits {
                EMITTING_PROGRAM_NS
            } else {
                QUIET_PROGRAM_NS
            };
            let verdict = match (hot, c.ns_per_run()) {
                (true, Some(ns)) if ns <= limit => "pass",
                (true, Some(_)) => "**miss**",
                _ => "",
            };
            let _ = writeln!(
                m,
                "| {} | `{}` | {} | {} | {} | {} | {} | {} | ≤ {limit:.0} ns | {verdict} |",
                p.workload.key(),
                c.name,
                thousands(c.runs as f64),
                if p.events > 0 {
                    format!("{:.2}", c.runs as f64 / p.events as f64)
                } else {
                    "–".into()
                },
                c.ns_per_run()
                    .map_or_else(|| "–".into(), |ns| format!("{ns:.0}")),
                p.per_round
                    .get(&c.name)
                    .map_or_else(String::new, |each| each
                        .iter()
                        .map(|ns| ns.map_or_else(|| "–".into(), |ns| format!("{ns:.0}")))
                        .collect::<Vec<_>>()
                        .join(" / ")),
                if hot { "hot" } else { "" },
                if emits { "yes" } else { "no" },
            );
        }
    }
}

fn section_method(m: &mut String) {
    let _ = writeln!(
        m,
        "\n## How the figures are taken\n\n\
         - Every run gets fresh network namespaces (`ip netns add`, `lo` up), deleted afterwards; \
         all traffic stays on their loopback. The load generator is `xtask bench-load` (std \
         sockets, one thread; bounded in count and time). A timed load runs on one CPU \
         (the last online one, as the Method row says), as a service measured on one core; \
         the tracer's threads go where the scheduler puts them, as they would in \
         production.\n\
         - Variants: *untraced*; *rst-trace*: `rst-trace run --format json`, stdout to a file, \
         no `--netns`, so it watches every namespace as in production; for the RST storm also \
         tcpdump and bpftrace. Each is ready (its own ready output) before the load starts.\n\
         - Rates are the load generator's own count over its own wall time. *vs untraced* is \
         the median over rounds of the variant's rate divided by the untraced rate of the \
         same round.\n\
         - CPU is utime+stime of the tracer process from `/proc/PID/stat`, from just before \
         the load until it has drained what the load produced; it does not include the \
         in-kernel cost of the programs, which shows in the rate and in the per-program table.\n\
         - RSS after start is `VmRSS` when the ready line appears, peak RSS is `VmHWM`; both \
         the highest of the rounds.\n\
         - Idle: one process holds a listener in every namespace; the agent's CPU is measured \
         over the window after its start-up scans. Host CPU covers every process on the \
         machine, other jobs included.\n\
         - Nothing here is asserted in absolute time: the targets are ratios, per-event or \
         per-run costs, CPU shares and memory."
    );
}

pub fn json(
    meta: &Meta,
    samples: &[Sample],
    cells: &BTreeMap<Key, Cell>,
    profiles: &[Profile],
    targets: &[Target],
) -> Value {
    json!({
        "generated_by": "cargo xtask bench",
        "date": meta.date,
        "command": meta.command,
        "commit": meta.commit,
        "kernel": meta.kernel,
        "machine": {"cpus": meta.cpus, "cpu_model": meta.cpu_model, "memory_mib": meta.memory_mib},
        "rounds": meta.rounds,
        "storm_rounds": meta.storm_rounds,
        "short": meta.short,
        "wall_seconds": meta.wall_s,
        "targets": targets.iter().map(|t| json!({
            "what": t.what, "goal": t.goal, "measured": t.figure, "pass": t.pass,
        })).collect::<Vec<_>>(),
        "cells": cells.iter().map(|((w, v), c)| json!({
            "workload": w.key(),
            "variant": v.key(),
            "rounds": c.rounds,
            "rate_per_s": c.rate,
            "rates_per_round": c.rates,
            "vs_untraced": c.vs_untraced,
            "vs_tcpdump": c.vs_tcpdump,
            "tracer_cpu_s": c.tracer_cpu_s,
            "tracer_cpu_pct_of_core": c.tracer_cpu_pct,
            "tracer_cpu_us_per_event": c.tracer_cpu_us_per_event,
            "host_cpu_pct_of_core": c.host_cpu_pct,
            "startup_s": c.startup_s,
            "startup_cpu_s": c.startup_cpu_s,
            "rss_start_kib": c.rss_start_kib,
            "peak_rss_kib": c.hwm_kib,
            "delivered": c.delivered,
            "delivered_per_event": c.delivered_per_event,
            "lost": c.lost,
            "stop_s": c.stop_s,
            "stops_killed": c.stops_killed,
        })).collect::<Vec<_>>(),
        "programs": profiles.iter().flat_map(|p| p.costs.iter().map(move |c| json!({
            "workload": p.workload.key(),
            "program": c.name,
            "runs": c.runs,
            "run_time_ns": c.run_time_ns,
            "ns_per_run": c.ns_per_run(),
            "ns_per_run_per_round": p.per_round.get(&c.name),
            "hot": is_hot(p, c.runs),
            "emits": p.emitting.contains(&c.name),
        }))).collect::<Vec<_>>(),
        "samples": samples.iter().map(|s| json!({
            "workload": s.workload.key(),
            "variant": s.variant.key(),
            "round": s.round,
            "events": s.events,
            "window_s": s.window_s,
            "rate_per_s": s.rate(),
            "tracer_cpu_s": s.tracer_cpu_s,
            "host_busy_s": s.host_busy_s,
            "startup_s": s.startup_s,
            "startup_cpu_s": s.startup_cpu_s,
            "rss_start_kib": s.rss_start_kib,
            "peak_rss_kib": s.hwm_kib,
            "delivered": s.finished.as_ref().and_then(|f| f.delivered),
            "lost": s.finished.as_ref().and_then(|f| f.lost),
            "stop_s": s.finished.as_ref().and_then(|f| f.stop_s),
        })).collect::<Vec<_>>(),
    })
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{:.1} %", 100.0 * r))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".into(), |k| format!("{:.1} MiB", k as f64 / MIB))
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "–".into(), |s| format!("{s:.2} s"))
}

fn us(u: Option<f64>) -> String {
    u.map_or_else(|| "–".into(), |u| format!("{u:.1} µs"))
}

/// Stop time, and how many rounds it did not stop in time.
fn stop(c: &Cell) -> String {
    let killed = match c.stops_killed {
        0 => String::new(),
        n => format!(
            "{n} of {} rounds: no exit within {IDLE_STOP_SECONDS} s of SIGTERM nor after a second one, killed",
            c.rounds
        ),
    };
    match (c.stop_s, killed.is_empty()) {
        (Some(s), true) => format!("{s:.2} s"),
        (Some(s), false) => format!("{s:.2} s; {killed}"),
        (None, _) => killed,
    }
}

fn cpu(c: &Cell) -> String {
    match (c.tracer_cpu_s, c.tracer_cpu_pct) {
        (Some(s), Some(p)) => format!("{s:.2} s ({p:.0} % of a core)"),
        _ => "–".into(),
    }
}

fn per_round(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| thousands(*r))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn opt_thousands(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), thousands)
}

/// 12345.6 → "12,346".
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::bpfstats::ProgCost;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn a_killed_storm_tracer_is_said_under_the_table() {
        let storm = Workload::Storm { connects: 1000 };
        let mut cells = BTreeMap::new();
        cells.insert(
            (storm, Variant::Bpftrace),
            Cell {
                rounds: 9,
                stops_killed: 1,
                delivered: Some(1000.0),
                ..Cell::default()
            },
        );
        cells.insert(
            (storm, Variant::Tcpdump),
            Cell {
                rounds: 9,
                ..Cell::default()
            },
        );
        let mut m = String::new();
        section_storm(&mut m, &cells);
        assert!(m.contains(&format!(
            "bpftrace: 1 of 9 rounds did not exit within {TIMED_STOP_SECONDS} s"
        )));
        assert_eq!(
            m.matches("rounds did not exit").count(),
            1,
            "only the tracer that was killed"
        );
    }

    #[test]
    fn targets_read_from_the_figures() {
        let mut cells = BTreeMap::new();
        let churn = Workload::Churn { connections: 1000 };
        cells.insert(
            (churn, Variant::RstTrace),
            Cell {
                vs_untraced: Some(0.98),
                delivered: Some(0.0),
                delivered_per_event: Some(0.0),
                ..Cell::default()
            },
        );
        cells.insert(
            (Workload::Idle { namespaces: 1000 }, Variant::RstTrace),
            Cell {
                tracer_cpu_pct: Some(2.5),
                hwm_kib: Some(70 * 1024),
                ..Cell::default()
            },
        );
        let profiles = [Profile {
            workload: churn,
            events: 1000,
            costs: vec![
                ProgCost {
                    name: "a".into(),
                    runs: 2000,
                    run_time_ns: 400_000,
                },
                // Ran once: not hot, not judged.
                ProgCost {
                    name: "b".into(),
                    runs: 1,
                    run_time_ns: 9_000,
                },
            ],
            per_round: [("a".to_owned(), vec![Some(200.0), None])].into(),
            emitting: Default::default(),
        }];
        let t = targets(&cells, &profiles);
        let get = |what: &str| t.iter().find(|t| t.what.starts_with(what)).unwrap();
        assert_eq!(get("Healthy churn rate").pass, Some(true));
        assert_eq!(get("Records per healthy").pass, Some(true));
        assert_eq!(get("RST storm rate").pass, None);
        assert_eq!(get("Idle agent CPU, 1000").pass, Some(true));
        assert_eq!(get("Hot programs that emit nothing").pass, Some(false));
        assert_eq!(get("Hot programs that emit a record").pass, None);
        assert_eq!(get("Peak RSS with 1,000").pass, Some(false));
        let md = markdown(
            &Meta {
                date: "d".into(),
                command: "cargo xtask bench".into(),
                commit: "c".into(),
                kernel: "k".into(),
                cpus: 2,
                load_cpu: Some(1),
                cpu_model: "m".into(),
                memory_mib: 1024,
                rounds: 3,
                storm_rounds: Some(9),
                short: false,
                idle_seconds: 10,
                wall_s: 1.0,
            },
            &cells,
            &profiles,
            &t,
        );
        assert!(md.contains("| Healthy churn rate | ≥ 97 % of untraced | 98.0 % | pass |"));
        assert!(md.contains(
            "| churn | `a` | 2,000 | 2.00 | 200 | 200 / – | hot | no | ≤ 150 ns | **miss** |"
        ));
    }
}
