//! Reading the guest's console protocol into results, the summary table and the JSON summary.

use serde_json::{json, Value};

use crate::vm::qemu::Console;

/// The guest's scenarios, in order: the list rst-trace-vmcheck itself runs.
pub static SCENARIOS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    include_str!("../../../tests/vm-scenarios.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

pub struct Scenario {
    pub name: String,
    pub pass: bool,
    pub detail: Value,
}

#[derive(Default)]
pub struct KernelResult {
    pub series: String,
    pub package: String,
    pub release: String,
    /// `uname -r` as the guest printed it.
    pub guest_release: Option<String>,
    pub scenarios: Vec<Scenario>,
    /// The agent's `rst_trace.started` line.
    pub started: Option<Value>,
    /// Seconds from spawning the agent to its started line (BTF + verifier, under TCG).
    pub agent_ready_secs: Option<f64>,
    /// The agent's exit status and final stats line, after SIGTERM.
    pub agent_final: Option<Value>,
    pub agent_stderr: Vec<String>,
    /// Cause events seen during failed scenarios: {"scenario", "event"}.
    pub failure_events: Vec<Value>,
    pub modules: Vec<String>,
    pub notes: Vec<String>,
    pub dmesg: Vec<String>,
    pub done: bool,
    pub timed_out: bool,
    pub qemu_exit: Option<String>,
    /// Seconds from QEMU start to /init's first line.
    pub boot_secs: Option<f64>,
    pub qemu_secs: f64,
    /// Fetch + initramfs + QEMU.
    pub total_secs: f64,
    pub log: String,
    /// Set when the kernel could not even be booted (download, initramfs).
    pub error: Option<String>,
}

impl KernelResult {
    pub fn read_console(&mut self, console: &Console, wanted: &[&str]) {
        self.done = console.done;
        self.timed_out = console.timed_out;
        self.qemu_exit = console.exit.map(|s| s.to_string());
        self.qemu_secs = console.secs;
        for (t, line) in &console.lines {
            if line.contains("Kernel panic") {
                self.notes.push(line.trim().to_owned());
            }
            let Some(at) = line.find("RST-") else {
                continue;
            };
            let line = &line[at..];
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            match tag {
                "RST-KERNEL" => {
                    self.guest_release = Some(rest.trim().to_owned());
                    self.boot_secs.get_or_insert((t * 10.0).round() / 10.0);
                }
                "RST-MODULE" => self.modules.push(rest.trim().to_owned()),
                "RST-NOTE" => self.notes.push(rest.trim().to_owned()),
                "RST-DMESG" => self.dmesg.push(rest.to_owned()),
                "RST-AGENT-STDERR" => self.agent_stderr.push(rest.to_owned()),
                "RST-SCENARIO-EVENT" => {
                    let (scenario, event) = rest.split_once(' ').unwrap_or((rest, ""));
                    self.failure_events.push(json!({
                        "scenario": scenario,
                        "event": serde_json::from_str::<Value>(event)
                            .unwrap_or_else(|_| json!({"unparsed": event})),
                    }));
                }
                "RST-AGENT-READY" => self.agent_ready_secs = rest.trim().parse().ok(),
                "RST-AGENT-FINAL" => {
                    self.agent_final = Some(
                        serde_json::from_str(rest).unwrap_or_else(|_| json!({"unparsed": rest})),
                    )
                }
                "RST-AGENT-STARTED" => {
                    self.started = Some(
                        serde_json::from_str(rest).unwrap_or_else(|_| json!({"unparsed": rest})),
                    )
                }
                "RST-SCENARIO" => {
                    let mut parts = rest.splitn(3, ' ');
                    let name = parts.next().unwrap_or("").to_owned();
                    let verdict = parts.next().unwrap_or("");
                    let detail = parts.next().unwrap_or("");
                    self.scenarios.push(Scenario {
                        name,
                        pass: verdict == "PASS",
                        detail: serde_json::from_str(detail)
                            .unwrap_or_else(|_| json!({"unparsed": detail})),
                    });
                }
                _ => {}
            }
        }
        // A scenario that never reported is a failure, not an absence.
        for &name in wanted {
            if !self.scenarios.iter().any(|s| s.name == name) {
                let why = if self.timed_out {
                    "no result: the VM timed out"
                } else if !self.done {
                    "no result: the VM stopped before RST-VM-DONE"
                } else {
                    "no result line"
                };
                self.scenarios.push(Scenario {
                    name: name.to_owned(),
                    pass: false,
                    detail: json!({"error": why}),
                });
            }
        }
    }

    /// Every scenario passed, the agent exited cleanly, and every hook the agent wanted on
    /// this kernel attached: the matrix exists to prove the function-hook tiers, so a tier
    /// that silently fell back to polling is a failure, not a footnote.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.done
            && !self.scenarios.is_empty()
            && self.scenarios.iter().all(|s| s.pass)
            && self.agent_exit_ok()
            && self
                .hooks()
                .is_none_or(|(_, _, failed, _)| failed.is_empty())
    }

    /// A clean exit after SIGTERM (status 0) is part of the contract; no agent at all is
    /// already a failure of every scenario.
    fn agent_exit_ok(&self) -> bool {
        self.agent_final
            .as_ref()
            .is_none_or(|f| f.get("exit") == Some(&json!(0)))
    }

    fn scenario(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// (attached hooks, hooks wanted on this kernel, hooks attached nowhere, hooks attached
    /// after an error). A hook the agent left out because the kernel reports the same events
    /// another way (`"status": "not_needed"`) is not wanted.
    fn hooks(&self) -> Option<(usize, usize, Vec<String>, Vec<String>)> {
        let hooks = self.started.as_ref()?.get("hooks")?.as_object()?;
        let attached = hooks
            .values()
            .filter(|h| {
                h.get("attached")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            })
            .count();
        let is_attached = |h: &Value| {
            h.get("attached")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        let not_needed = |h: &Value| h.get("status").and_then(Value::as_str) == Some("not_needed");
        let failed = hooks
            .iter()
            .filter(|(_, h)| !is_attached(h) && !not_needed(h))
            .map(|(k, _)| k.clone())
            .collect();
        let wanted = hooks.values().filter(|h| !not_needed(h)).count();
        let fell_back = hooks
            .iter()
            .filter(|(_, h)| is_attached(h) && h.get("errors").is_some())
            .map(|(k, h)| format!("{k} (attached: {})", h["attached"]))
            .collect();
        Some((attached, wanted, failed, fell_back))
    }

    pub fn to_json(&self) -> Value {
        // The started line verbatim, except that a rejected program's verifier log (it can run
        // to hundreds of KB) is cut to its head and tail; the console log has it whole.
        let started = self.started.clone().map(|mut s| {
            if let Some(hooks) = s.get_mut("hooks").and_then(Value::as_object_mut) {
                for hook in hooks.values_mut() {
                    if let Some(errors) = hook.get_mut("errors").and_then(Value::as_array_mut) {
                        for e in errors.iter_mut() {
                            if let Some(text) = e.as_str() {
                                *e = json!(head_tail(text, 400, 1200));
                            }
                        }
                    }
                }
            }
            s
        });
        let started = started.as_ref();
        json!({
            "series": self.series,
            "package": self.package,
            "release": self.release,
            "guest_release": self.guest_release,
            "passed": self.passed(),
            "error": self.error,
            "done": self.done,
            "timed_out": self.timed_out,
            "qemu_exit": self.qemu_exit,
            "boot_secs": self.boot_secs,
            "agent_ready_secs": self.agent_ready_secs,
            "agent_final": self.agent_final,
            "qemu_secs": round1(self.qemu_secs),
            "total_secs": round1(self.total_secs),
            "modules": self.modules,
            "hooks": started.and_then(|s| s.get("hooks")),
            "unavailable": started.and_then(|s| s.get("unavailable")),
            "tracepoint_formats": started.and_then(|s| s.get("tracepoint_formats")),
            "agent_started": started,
            "scenarios": self.scenarios.iter().map(|s| json!({
                "name": s.name,
                "result": if s.pass { "PASS" } else { "FAIL" },
                "how": how(s),
                "detail": s.detail,
            })).collect::<Vec<_>>(),
            "agent_stderr": self.agent_stderr,
            "failure_events": self.failure_events,
            "notes": self.notes,
            "dmesg": self.dmesg,
            "log": self.log,
        })
    }
}

fn head_tail(text: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= head + tail + 40 {
        return text.to_owned();
    }
    let h: String = chars[..head].iter().collect();
    let t: String = chars[chars.len() - tail..].iter().collect();
    format!(
        "{h} […{} characters left out…] {t}",
        chars.len() - head - tail
    )
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A short note for the table: the kernel reason the cause came from, or "inferred".
fn how(s: &Scenario) -> Value {
    let info = &s.detail["info"];
    // The scenario's name without its address family.
    let base = s
        .name
        .strip_suffix("_v4")
        .or_else(|| s.name.strip_suffix("_v6"))
        .unwrap_or(&s.name);
    match base {
        "abort_on_close" | "abort_by_application" | "no_listener" | "timewait_segment" => {
            match info["events"].as_array().and_then(|e| e.first()) {
                Some(e) if e["inferred"] == json!(true) => json!("inferred"),
                Some(e) => e["reason"]
                    .as_str()
                    .map_or(Value::Null, |r| json!(format!("reason {r}"))),
                None => Value::Null,
            }
        }
        "accept_queue_overflow" => info["stages"].as_array().map_or(Value::Null, |st| {
            json!(format!(
                "stage {}",
                st.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("+")
            ))
        }),
        // Any event the agent had to infer makes the scenario's cell say so.
        _ => match info["events"].as_array() {
            Some(evs) if evs.iter().any(|e| e["inferred"] == json!(true)) => json!("inferred"),
            _ => Value::Null,
        },
    }
}

/// One column's text for a kernel.
type Cell = dyn Fn(&KernelResult) -> String;

/// The human summary (stderr): scenario × kernel (a row per scenario: with both address
/// families the list is long), the passes per family, hooks, times, and why each failure failed.
// Long on purpose: a text template written top to bottom, section after section.
pub fn table(results: &[KernelResult], wanted: &[&str]) -> String {
    let mut out = String::new();
    let nw = wanted.iter().map(|n| n.len()).max().unwrap_or(8).max(8);
    let kw: Vec<usize> = results.iter().map(|r| r.release.len().max(16)).collect();
    let row = |out: &mut String, label: &str, cells: Vec<String>| {
        out.push_str(&format!("{label:<nw$}"));
        for (c, w) in cells.iter().zip(&kw) {
            out.push_str(&format!("  {c:<w$}"));
        }
        out.push('\n');
    };
    row(
        &mut out,
        "scenario",
        results.iter().map(|r| r.release.clone()).collect(),
    );
    for n in wanted {
        let cells = results
            .iter()
            .map(|r| match r.scenario(n) {
                Some(s) => {
                    let v = if s.pass { "PASS" } else { "FAIL" };
                    match how(s).as_str() {
                        Some("inferred") => format!("{v} (inferred)"),
                        _ => v.to_owned(),
                    }
                }
                None => "-".to_owned(),
            })
            .collect();
        row(&mut out, n, cells);
    }
    for (label, suffix) in [("passed v4", "_v4"), ("passed v6", "_v6")] {
        let cells = results
            .iter()
            .map(|r| {
                let of: Vec<&Scenario> = r
                    .scenarios
                    .iter()
                    .filter(|s| s.name.ends_with(suffix))
                    .collect();
                format!("{}/{}", of.iter().filter(|s| s.pass).count(), of.len())
            })
            .collect();
        row(&mut out, label, cells);
    }
    fn secs(x: Option<f64>) -> String {
        x.map_or("-".to_owned(), |b| format!("{b:.0}s"))
    }
    let lines: [(&str, &Cell); 4] = [
        ("hooks", &|r| {
            r.hooks()
                .map_or("-".to_owned(), |(a, n, _, _)| format!("{a}/{n}"))
        }),
        ("boot", &|r| secs(r.boot_secs)),
        ("agent start", &|r| secs(r.agent_ready_secs)),
        ("total", &|r| format!("{:.0}s", r.total_secs)),
    ];
    for (label, f) in lines {
        row(&mut out, label, results.iter().map(f).collect());
    }
    for r in results {
        let mut lines = Vec::new();
        if let Some(e) = &r.error {
            lines.push(format!("error: {e}"));
        }
        if r.timed_out {
            lines.push("the VM timed out".to_owned());
        } else if !r.done && r.error.is_none() {
            lines.push("RST-VM-DONE never came".to_owned());
        }
        if !r.agent_exit_ok() {
            lines.push(format!(
                "the agent did not exit cleanly after SIGTERM: {}",
                r.agent_final
                    .as_ref()
                    .map_or(Value::Null, |f| f["exit"].clone())
            ));
        }
        if let Some((_, _, failed, fell_back)) = r.hooks() {
            if !failed.is_empty() {
                lines.push(format!("hooks not attached: {}", failed.join(", ")));
            }
            if !fell_back.is_empty() {
                lines.push(format!(
                    "hooks attached after an error (fallback): {}",
                    fell_back.join(", ")
                ));
            }
        }
        if let Some(u) = r.started.as_ref().and_then(|s| s.get("unavailable")) {
            if u.as_array().is_some_and(|a| !a.is_empty()) {
                lines.push(format!("unavailable causes: {u}"));
            }
        }
        for s in r.scenarios.iter().filter(|s| !s.pass) {
            let failed: Vec<String> = s.detail["checks"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter(|c| c["ok"] != json!(true))
                        .map(|c| {
                            format!(
                                "{}: want {} got {}",
                                c["check"].as_str().unwrap_or("?"),
                                c["want"],
                                c["got"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut why = failed.join("; ");
            if let Some(e) = s.detail["error"].as_str() {
                why = if why.is_empty() {
                    e.to_owned()
                } else {
                    format!("{e}; {why}")
                };
            }
            lines.push(format!("{} FAIL: {why}", s.name));
        }
        if !lines.is_empty() {
            out.push_str(&format!("\n{} ({}):\n", r.release, r.log));
            for l in lines {
                out.push_str(&format!("  {l}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lines: &[&str], done: bool) -> Console {
        Console {
            lines: lines.iter().map(|l| (1.0, (*l).to_owned())).collect(),
            done,
            timed_out: false,
            exit: None,
            secs: 10.0,
        }
    }

    #[test]
    fn reads_the_console_protocol() {
        let c = console(
            &[
                "\x1b[2JRST-KERNEL 6.1.0-56-cloud-amd64",
                "RST-AGENT-READY 3.5",
                r#"RST-AGENT-STARTED {"hooks":{"a":{"attached":["x:y"]},"b":{"attached":[],"errors":["no"]}},"unavailable":["fd_exhaustion"]}"#,
                r#"RST-SCENARIO no_listener PASS {"checks":[],"info":{"events":[{"reason":"NO_SOCKET","inferred":false}]}}"#,
                r#"[   12.0] noise RST-SCENARIO abort_on_close FAIL {"checks":[{"check":"n","want":1,"got":0,"ok":false}],"info":{}}"#,
                r#"RST-SCENARIO-EVENT abort_on_close {"cause":"reset_by_peer"}"#,
                r#"RST-AGENT-FINAL {"exit":0}"#,
                "RST-VM-DONE",
            ],
            true,
        );
        let mut r = KernelResult::default();
        r.read_console(&c, &["no_listener", "abort_on_close", "linger0"]);
        assert_eq!(r.guest_release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(r.agent_ready_secs, Some(3.5));
        assert_eq!(r.scenarios.len(), 3);
        assert!(r.scenarios[0].pass);
        assert_eq!(how(&r.scenarios[0]), json!("reason NO_SOCKET"));
        assert!(!r.scenarios[1].pass);
        assert!(
            !r.scenarios[2].pass,
            "a scenario without a result line fails"
        );
        assert_eq!(r.failure_events.len(), 1);
        assert_eq!(
            r.hooks(),
            Some((1, 2, vec!["b".to_owned()], Vec::<String>::new()))
        );
        assert!(!r.passed());
        let table = table(&[r], &["no_listener", "abort_on_close", "linger0"]);
        assert!(
            table.contains("abort_on_close FAIL: n: want 1 got 0"),
            "{table}"
        );
        assert!(table.contains("hooks not attached: b"), "{table}");
    }

    #[test]
    fn a_hook_that_did_not_attach_fails_the_kernel() {
        let lines = |hooks: &str| {
            console(
                &[
                    &format!("RST-AGENT-STARTED {{\"hooks\":{hooks}}}"),
                    r#"RST-SCENARIO no_listener PASS {"checks":[]}"#,
                    r#"RST-AGENT-FINAL {"exit":0}"#,
                    "RST-VM-DONE",
                ],
                true,
            )
        };
        let mut missing = KernelResult::default();
        missing.read_console(
            &lines(r#"{"tcp_syn_recv_sock":{"attached":[],"errors":["fexit: errno 524"]}}"#),
            &["no_listener"],
        );
        assert!(!missing.passed());
        let mut not_needed = KernelResult::default();
        not_needed.read_console(
            &lines(r#"{"tcp_v4_send_reset":{"status":"not_needed","attached":[],"errors":["not needed: tp"]},"tcp_send_reset":{"attached":["tcp:tcp_send_reset"]}}"#),
            &["no_listener"],
        );
        assert!(not_needed.passed());
    }

    #[test]
    fn no_done_line_is_a_failure() {
        let c = console(&[r#"RST-SCENARIO no_listener PASS {"checks":[]}"#], false);
        let mut r = KernelResult::default();
        r.read_console(&c, &["no_listener"]);
        assert!(!r.passed());
    }

    #[test]
    fn long_verifier_logs_are_cut() {
        let long = "x".repeat(5000);
        let cut = head_tail(&long, 10, 20);
        assert!(cut.len() < 100, "{cut}");
        assert_eq!(head_tail("short", 10, 20), "short");
    }
}
