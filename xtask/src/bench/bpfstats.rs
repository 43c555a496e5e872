//! In-kernel cost per BPF program: `kernel.bpf_stats_enabled=1` makes the kernel time every
//! program run, and `bpftool prog show -j` reports `run_cnt` and `run_time_ns`; the bench
//! takes their difference over a workload.
//!
//! Timing every run costs a little itself, so the interleaved rounds run with stats off and the
//! per-program figures come from a separate pass. The sysctl is the only host setting the
//! bench changes: the guard puts back the value it found, on every exit path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Holds `kernel.bpf_stats_enabled=1` and restores the previous value when dropped.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn enable() -> Result<StatsEnabled> {
        let previous = fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}"))?
            .trim()
            .to_owned();
        fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        eprintln!("xtask: bench: kernel.bpf_stats_enabled=1 (was {previous})");
        Ok(StatsEnabled { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        match fs::write(SYSCTL, &self.previous) {
            Ok(()) => eprintln!(
                "xtask: bench: kernel.bpf_stats_enabled restored to {}",
                self.previous
            ),
            Err(e) => eprintln!(
                "xtask: bench: warning: could not restore kernel.bpf_stats_enabled={}: {e}",
                self.previous
            ),
        }
    }
}

/// Run counters of one program at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgCounters {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Counters of the programs with the given ids, by id.
pub fn snapshot(ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, ProgCounters>> {
    let mut bpftool = Command::new("bpftool");
    bpftool.args(["prog", "show", "-j"]);
    let out = cmd::probe(&mut bpftool)?.context("bpftool not found")?;
    if !out.status.success() {
        bail!(
            "`bpftool prog show -j` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout), ids)
}

fn parse(json: &str, ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, ProgCounters>> {
    let progs: serde_json::Value =
        serde_json::from_str(json).context("bpftool printed invalid JSON")?;
    let mut out = BTreeMap::new();
    for p in progs.as_array().context("bpftool: expected a JSON array")? {
        let Some(id) = p["id"].as_u64().filter(|id| ids.contains(id)) else {
            continue;
        };
        out.insert(
            id,
            ProgCounters {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                // Absent while stats are off: zero, and the difference says so.
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Runs and time per program between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgCost {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgCost {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

pub fn delta(
    before: &BTreeMap<u64, ProgCounters>,
    after: &BTreeMap<u64, ProgCounters>,
) -> Vec<ProgCost> {
    let mut costs: Vec<ProgCost> = after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id);
            ProgCost {
                name: a.name.clone(),
                runs: a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
            }
        })
        .collect();
    costs.sort_by(|x, y| y.runs.cmp(&x.runs).then_with(|| x.name.cmp(&y.name)));
    costs
}

/// Per program, the round whose ns/run is the median of the rounds' (the lower of the middle
/// two for an even count), so runs and time stay one round's own figures; rounds where the
/// program did not run count below every timed one. `rounds`: each round's costs.
pub fn median_round(rounds: &[Vec<ProgCost>]) -> Vec<ProgCost> {
    let mut names: Vec<&str> = Vec::new();
    for c in rounds.iter().flatten() {
        if !names.contains(&c.name.as_str()) {
            names.push(&c.name);
        }
    }
    let mut costs: Vec<ProgCost> = names
        .into_iter()
        .filter_map(|name| {
            let mut of: Vec<&ProgCost> = rounds
                .iter()
                .filter_map(|r| r.iter().find(|c| c.name == name))
                .collect();
            of.sort_by(|a, b| {
                a.ns_per_run()
                    .partial_cmp(&b.ns_per_run())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            of.get(of.len().saturating_sub(1) / 2).map(|c| (*c).clone())
        })
        .collect();
    costs.sort_by(|x, y| y.runs.cmp(&x.runs).then_with(|| x.name.cmp(&y.name)));
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(name: &str, runs: u64, ns: u64) -> ProgCost {
        ProgCost {
            name: name.into(),
            runs,
            run_time_ns: runs * ns,
        }
    }

    #[test]
    fn the_median_round_per_program() {
        let rounds = vec![
            vec![cost("a", 10, 300), cost("b", 5, 90)],
            vec![cost("a", 12, 800), cost("b", 0, 0)],
            vec![cost("a", 11, 500), cost("b", 6, 70)],
        ];
        let m = median_round(&rounds);
        assert_eq!(m, vec![cost("a", 11, 500), cost("b", 6, 70)]);
        let two = median_round(&rounds[..2]);
        assert_eq!(two[0], cost("a", 10, 300), "the lower middle");
    }

    #[test]
    fn counters_of_our_programs_only() {
        let json = r#"[{"id":1,"name":"tcp_send_reset","run_cnt":10,"run_time_ns":1000},
                       {"id":2,"name":"other","run_cnt":5,"run_time_ns":50},
                       {"id":3,"name":"kfree_skb"}]"#;
        let ids: BTreeSet<u64> = [1, 3].into();
        let before = parse(json, &ids).unwrap();
        assert_eq!(before.len(), 2);
        assert_eq!(before[&3].run_cnt, 0);
        let mut after = before.clone();
        after.get_mut(&1).unwrap().run_cnt = 110;
        after.get_mut(&1).unwrap().run_time_ns = 21_000;
        let d = delta(&before, &after);
        assert_eq!(d[0].name, "tcp_send_reset");
        assert_eq!(d[0].runs, 100);
        assert_eq!(d[0].ns_per_run(), Some(200.0));
        assert_eq!(d[1].ns_per_run(), None);
    }
}
