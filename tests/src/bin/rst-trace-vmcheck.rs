//! rst-trace-vmcheck: the shared cause scenarios (rst_trace_tests::scenarios), run inside a
//! QEMU guest by `cargo xtask integration-test vm`.
//!
//! It runs from an initramfs with busybox, the agent, rst-trace-peer and iptables. Everything
//! happens in the guest's root network namespace: the VM is isolated, so the MIB counters move
//! only because of the scenarios, which run one after another. The scenario bodies are the
//! host tests' own (tests/tests/scenarios.rs); this file only provides the guest's [`Env`] and
//! the console protocol.
//!
//! One agent (`rst-trace run --format json --duration N`) serves all scenarios: under QEMU's
//! software emulation its start-up (BTF, the verifier) takes from seconds to minutes, too long to
//! pay per scenario. Each scenario uses its own ports and only looks at the events that arrived
//! after it began; the agent is stopped with SIGTERM at the end (clean exit, final stats line).
//!
//! ```text
//! rst-trace-vmcheck [--agent PATH] [--peer PATH] [--workdir DIR] [--only NAME[,NAME…]]
//! ```
//!
//! Console protocol (one line each, parsed by xtask/src/vm/report.rs):
//! * `RST-AGENT-STARTED {json}`: the agent's `rst_trace.started` line, verbatim
//! * `RST-AGENT-READY <secs>`: seconds from spawning the agent to its started line
//! * `RST-AGENT-STDERR <phase> <line>`: the agent's stderr (`start`: up to the started line,
//!   `run`: later); long verifier logs are shortened to their head and tail
//! * `RST-SCENARIO-EVENT <name> {json}`: on failure, each cause event of the scenario's window
//! * `RST-SCENARIO <name> PASS|FAIL {json detail}`: `detail.checks` lists what was compared
//! * `RST-AGENT-FINAL {json}`: the agent's exit status and final stats line
//! * `RST-NOTE <text>`: progress with the guest's uptime, for the log only
//!
//! Exit status: 0 if every scenario passed, 1 otherwise.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rst_trace_tests::scenarios::{self, Env, Run};
use rst_trace_tests::{event, Agent, Mib};
use serde_json::{json, Value};

/// Under TCG the guest is 10-50x slower than the host: the agent's start-up bound is generous.
const STARTED_TIMEOUT: Duration = Duration::from_secs(240);
/// After a scenario: how long extra (duplicate, wrong) events may still come.
const GRACE: Duration = Duration::from_secs(2);
/// Safety bound for the agent; it is normally stopped with SIGTERM long before.
const AGENT_DURATION_SECS: u64 = 900;

/// The scenarios, in order (shared with xtask, which builds its report from the same file).
static SCENARIOS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    include_str!("../../vm-scenarios.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

struct Config {
    agent: String,
    peer: String,
    workdir: String,
    only: Option<BTreeSet<String>>,
}

fn parse_args() -> Config {
    let mut cfg = Config {
        agent: "/bin/rst-trace".into(),
        peer: "/bin/rst-trace-peer".into(),
        workdir: "/tmp".into(),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next().unwrap_or_else(|| {
                eprintln!("rst-trace-vmcheck: {a} needs a value");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--agent" => cfg.agent = val(),
            "--peer" => cfg.peer = val(),
            "--workdir" => cfg.workdir = val(),
            "--only" => cfg.only = Some(val().split(',').map(str::to_owned).collect()),
            _ => {
                eprintln!("usage: rst-trace-vmcheck [--agent PATH] [--peer PATH] [--workdir DIR] [--only NAME,…]");
                std::process::exit(2)
            }
        }
    }
    cfg
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn note(text: &str) {
    let up = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let up = up.split_whitespace().next().unwrap_or("?");
    say(&format!("RST-NOTE [{up}] {text}"));
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic without a message".to_owned())
}

/// The guest: one agent for every scenario, the root namespace, files read directly.
struct GuestEnv {
    agent: Agent,
    peer: PathBuf,
    workdir: PathBuf,
    /// Bytes of the agent's stderr already printed.
    err_printed: usize,
}

impl Env for GuestEnv {
    fn isolated(&self) -> bool {
        false
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args);
        c
    }

    fn peer_program(&self) -> PathBuf {
        self.peer.clone()
    }

    fn mib(&self) -> Mib {
        Mib::local()
    }

    fn settled_mib(&self) -> Mib {
        Mib::settle(Mib::local, Duration::from_millis(500), 120).unwrap_or_else(|last| {
            note("the TCP MIB kept changing for 60 s");
            last
        })
    }

    fn read(&self, path: &str) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    fn sysctl_get(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    }

    fn sysctl_set(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        fs::write(&path, value).unwrap_or_else(|e| panic!("{path} = {value}: {e}"));
    }

    fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }

    fn netns_inode(&self) -> u64 {
        fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
    }

    fn workdir(&self) -> PathBuf {
        self.workdir.clone()
    }

    fn finish(&mut self, mark: usize) -> (Vec<Value>, Option<Value>) {
        // The agent goes on serving the next scenarios: no final stats of this one's own.
        std::thread::sleep(GRACE);
        (self.agent.since(mark), None)
    }

    fn slowness(&self) -> u32 {
        2
    }
}

impl GuestEnv {
    /// Prints the agent's stderr written since the last call, verifier logs shortened.
    fn print_stderr(&mut self, phase: &str) {
        let text = self.agent.stderr_text();
        if text.len() <= self.err_printed {
            return;
        }
        let new = text.get(self.err_printed..).unwrap_or_default().to_owned();
        self.err_printed = text.len();
        for l in shorten_verifier_logs(&new) {
            say(&format!("RST-AGENT-STDERR {phase} {l}"));
        }
    }
}

fn start_agent(cfg: &Config) -> Result<(GuestEnv, f64), String> {
    let t0 = Instant::now();
    let mut cmd = Command::new(&cfg.agent);
    cmd.args(["run", "--format", "json", "--duration"])
        .arg(AGENT_DURATION_SECS.to_string());
    let agent = catch_unwind(AssertUnwindSafe(|| {
        Agent::start_command_within(cmd, STARTED_TIMEOUT)
    }))
    .map_err(|p| panic_text(&*p))?;
    let env = GuestEnv {
        agent,
        peer: PathBuf::from(&cfg.peer),
        workdir: PathBuf::from(&cfg.workdir),
        err_printed: 0,
    };
    Ok((env, t0.elapsed().as_secs_f64()))
}

fn run_scenario(name: &str, env: &mut Result<GuestEnv, String>) -> bool {
    note(&format!("scenario {name}"));
    let mut detail = json!({"checks": [], "info": {}});
    let mut pass = false;
    let mut mark = 0;
    match (scenarios::find(name), env.as_mut()) {
        (_, Err(e)) => detail["error"] = json!(format!("no agent: {e}")),
        (None, _) => detail["error"] = json!(format!("unknown scenario {name}")),
        (Some(_), Ok(g)) if !g.agent.is_running() => {
            detail["error"] = json!("the agent exited before this scenario")
        }
        (Some((family, body)), Ok(g)) => {
            mark = g.agent.mark();
            let mut run = Run::new(g, family);
            let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut run)));
            pass = outcome.is_ok() && run.passed();
            detail = run.detail();
            if let Err(p) = outcome {
                detail["error"] = json!(panic_text(&*p));
            }
        }
    }
    if !pass {
        // Everything the agent said during the scenario, verbatim: what it saw instead.
        if let Ok(g) = env {
            let events: Vec<Value> = g
                .agent
                .since(mark)
                .into_iter()
                .filter(event::is_cause_event)
                .collect();
            for v in events.iter().take(30) {
                say(&format!("RST-SCENARIO-EVENT {name} {v}"));
            }
            if events.len() > 30 {
                note(&format!(
                    "{name}: {} more cause events left out",
                    events.len() - 30
                ));
            }
        }
    }
    say(&format!(
        "RST-SCENARIO {name} {} {detail}",
        if pass { "PASS" } else { "FAIL" }
    ));
    pass
}

fn main() {
    let cfg = parse_args();
    // A broken console must not kill us halfway.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let _ = fs::create_dir_all(&cfg.workdir);
    // The guest is ours alone: its range, not a namespace's.
    if let Err(e) = fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        rst_trace_tests::EPHEMERAL_PORTS,
    ) {
        note(&format!("cannot set ip_local_port_range: {e}"));
    }
    note("starting the agent");
    let mut env = match start_agent(&cfg) {
        Ok((mut g, secs)) => {
            say(&format!("RST-AGENT-READY {secs:.1}"));
            say(&format!("RST-AGENT-STARTED {}", g.agent.started()));
            g.print_stderr("start");
            Ok(g)
        }
        Err(e) => {
            for l in shorten_verifier_logs(&e) {
                say(&format!("RST-AGENT-STDERR start {l}"));
            }
            note("the agent did not start");
            Err(e.lines().next().unwrap_or("").to_owned())
        }
    };
    let mut all = env.is_ok();
    for name in SCENARIOS.iter() {
        if cfg.only.as_ref().is_some_and(|o| !o.contains(*name)) {
            continue;
        }
        all &= run_scenario(name, &mut env);
    }
    if let Ok(g) = &mut env {
        note("stopping the agent");
        let fin = match catch_unwind(AssertUnwindSafe(|| g.agent.stop())) {
            Ok(st) => {
                json!({"exit": st.status.code(), "final_stats": st.final_stats, "lines": st.lines.len()})
            }
            Err(p) => json!({"exit": panic_text(&*p), "final_stats": null}),
        };
        all &= fin["exit"] == json!(0);
        say(&format!("RST-AGENT-FINAL {fin}"));
        g.print_stderr("run");
    }
    std::process::exit(if all { 0 } else { 1 });
}

/// The agent prints the verifier's log indented by four spaces; a rejected program's log can run
/// to thousands of lines. Keeps the head and the tail (where the verdict is) of every block.
fn shorten_verifier_logs(text: &str) -> Vec<String> {
    const HEAD: usize = 4;
    const TAIL: usize = 16;
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let flush = |block: &mut Vec<&str>, out: &mut Vec<String>| {
        if block.len() > HEAD + TAIL + 1 {
            out.extend(block[..HEAD].iter().map(|l| l.to_string()));
            out.push(format!(
                "    […{} verifier log lines left out…]",
                block.len() - HEAD - TAIL
            ));
            out.extend(block[block.len() - TAIL..].iter().map(|l| l.to_string()));
        } else {
            out.extend(block.iter().map(|l| l.to_string()));
        }
        block.clear();
    };
    for line in text.lines() {
        if line.starts_with("    ") {
            block.push(line);
        } else {
            flush(&mut block, &mut out);
            out.push(line.to_owned());
        }
    }
    flush(&mut block, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_runs_every_shared_scenario_and_nothing_else() {
        let shared: Vec<String> = scenarios::all().into_iter().map(|(n, _, _)| n).collect();
        let listed: Vec<String> = SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            listed, shared,
            "tests/vm-scenarios.txt vs tests/src/scenarios"
        );
    }

    #[test]
    fn verifier_logs_keep_head_and_tail() {
        let mut text = String::from("[WARN ] hook x: verifier rejected x\n");
        for i in 0..100 {
            text.push_str(&format!("    {i}: (bf) r1 = r2\n"));
        }
        text.push_str("rst-trace: observing\n");
        let out = shorten_verifier_logs(&text);
        assert_eq!(out.first().unwrap(), "[WARN ] hook x: verifier rejected x");
        assert_eq!(out.last().unwrap(), "rst-trace: observing");
        assert!(out
            .iter()
            .any(|l| l.contains("80 verifier log lines left out")));
        assert!(out.iter().any(|l| l == "    99: (bf) r1 = r2"));
        assert_eq!(out.len(), 1 + 4 + 1 + 16 + 1);
    }
}
