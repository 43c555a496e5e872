//! What the bench reads from the agent: its `rst_trace.started` line (which programs serve
//! which cause), its final `rst_trace.stats` line (records delivered, exact kernel counters),
//! and which BPF programs are its own (the program ids behind its file descriptors).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// The agent as production runs it: every namespace, JSON lines on stdout.
pub const RUN_ARGS: &[&str] = &["run", "--format", "json"];

/// The name of the started event, the agent's "ready" signal.
pub const STARTED: &str = "rst_trace.started";

/// The agent's `rst_trace.started` line.
#[derive(Debug, Clone)]
pub struct Started(Value);

impl Started {
    /// Finds the started line in the agent's stdout so far.
    pub fn find(stdout: &str) -> Option<Started> {
        stdout
            .lines()
            .filter(|l| l.contains(STARTED))
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"]["name"] == STARTED)
            .map(Started)
    }

    /// Programs (hook names, which are the BPF program names) whose hook serves `cause` on
    /// this kernel: those whose attached tracepoints appear in the cause's `via`. `via` names a
    /// tracepoint as "category:name" however it is attached; a raw one is attached as
    /// "raw_tp:name", a BTF one as "tp_btf:name".
    fn programs_serving(&self, cause: &str) -> BTreeSet<String> {
        let via = self.0["causes"][cause]["via"].as_str().unwrap_or("");
        let named = |at: &str| match at
            .strip_prefix("raw_tp:")
            .or_else(|| at.strip_prefix("tp_btf:"))
        {
            Some(name) => via
                .split(|c: char| c.is_whitespace() || c == ';' || c == '+')
                .any(|w| w.rsplit(':').next() == Some(name) && w.contains(':')),
            None => via.contains(at),
        };
        let mut out = BTreeSet::new();
        if let Some(hooks) = self.0["hooks"].as_object() {
            for (program, hook) in hooks {
                let attached = hook["attached"].as_array().into_iter().flatten();
                if attached
                    .filter_map(Value::as_str)
                    .any(|at| !at.is_empty() && named(at))
                {
                    out.insert(program.clone());
                }
            }
        }
        out
    }
}

/// The agent's final `rst_trace.stats` line (`"final": true`, printed on SIGTERM).
#[derive(Debug, Clone)]
pub struct FinalStats(Value);

impl FinalStats {
    pub fn find(stdout: &str) -> Option<FinalStats> {
        stdout
            .lines()
            .rev()
            .filter(|l| l.contains("rst_trace.stats"))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"]["name"] == "rst_trace.stats" && v["final"] == true)
            .map(FinalStats)
    }

    pub fn delivered(&self) -> u64 {
        self.0["records"]["delivered"].as_u64().unwrap_or(0)
    }

    pub fn lost(&self) -> u64 {
        self.0["records"]["lost"].as_u64().unwrap_or(0)
    }

    /// RSTs the kernel counted for a reason (e.g. NO_SOCKET): exact, even when records are lost.
    pub fn resets_sent(&self, reason: &str) -> u64 {
        self.0["kernel"]["resets_sent"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn causes(&self) -> BTreeMap<String, u64> {
        self.0["causes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Programs that emitted records in a workload of `events` events: those serving a cause the
/// agent counted at least once per hundred events. On a shared machine a few unrelated RSTs
/// elsewhere must not turn a program into an emitting one.
pub fn emitting_programs(started: &Started, stats: &FinalStats, events: u64) -> BTreeSet<String> {
    stats
        .causes()
        .into_iter()
        .filter(|(_, n)| n.saturating_mul(100) >= events && *n > 0)
        .flat_map(|(cause, _)| started.programs_serving(&cause))
        .collect()
}

/// Ids of the BPF programs process `pid` holds, read from /proc/PID/fdinfo: a program fd's
/// fdinfo carries `prog_type` and `prog_id`. bpftool on this distribution does not list owning
/// pids, and program names alone could match another copy of the agent on the machine.
pub fn program_ids(pid: u32) -> Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue; // the fd was closed meanwhile
        };
        if !info.lines().any(|l| l.starts_with("prog_type:")) {
            continue;
        }
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Reads the agent's stdout file (it may be mid-write: a partial last line is ignored by the
/// line parsers above).
pub fn read_output(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED_LINE: &str = r#"{"event":{"name":"rst_trace.started","kind":"state"},
        "hooks":{"tcp_send_reset":{"attached":["tp_btf:tcp_send_reset"]},
                 "tcp_receive_reset":{"attached":["tcp:tcp_receive_reset"]},
                 "tcp_retransmit_synack":{"attached":["raw_tp:tcp_retransmit"]},
                 "inet_csk_accept":{"attached":[],"errors":["x"]},
                 "kfree_skb":{"attached":["skb:kfree_skb"]}},
        "causes":{"no_listener":{"via":"tracepoint tcp:tcp_send_reset"},
                  "connection_refused":{"via":"tracepoint tcp:tcp_receive_reset"}}}"#;

    #[test]
    fn emitting_programs_follow_the_counted_causes() {
        let started = Started::find(&STARTED_LINE.replace('\n', "")).unwrap();
        let stats = FinalStats::find(
            r#"{"event":{"name":"rst_trace.stats"},"final":true,"causes":{"no_listener":1000,"connection_refused":3},"records":{"delivered":1003,"lost":0},"kernel":{"resets_sent":{"NO_SOCKET":1000}}}"#,
        )
        .unwrap();
        assert_eq!(stats.delivered(), 1003);
        assert_eq!(stats.resets_sent("NO_SOCKET"), 1000);
        let hot = emitting_programs(&started, &stats, 1000);
        assert_eq!(hot.into_iter().collect::<Vec<_>>(), ["tcp_send_reset"]);
    }

    #[test]
    fn only_the_final_stats_line_counts() {
        let out = "{\"event\":{\"name\":\"rst_trace.stats\"},\"final\":false,\"records\":{\"delivered\":1}}\n";
        assert!(FinalStats::find(out).is_none());
    }
}
