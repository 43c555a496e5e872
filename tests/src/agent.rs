//! The agent under test (`rst-trace run --format json …`) as a guard: its stdout lines are read on a
//! background thread, it is stopped with SIGTERM by [`Agent::stop`] and killed on drop otherwise.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::{event, Netns};

/// How long the agent may take to attach every hook and print `rst_trace.started`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to exit after SIGTERM (drain, final poll, final stats line).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent binary: $RST_TRACE_BIN, else <workspace>/target/release/rst-trace, else
/// <workspace>/target/debug/rst-trace. Panics when none exists.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RST_TRACE_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RST_TRACE_BIN={} does not exist; build it with cargo xtask build",
            p.display()
        );
        return p;
    }
    let root = crate::workspace_root();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("rst-trace");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no rst-trace agent binary: looked at $RST_TRACE_BIN, {root}/target/release/rst-trace and \
         {root}/target/debug/rst-trace — build it with cargo xtask build",
        root = root.display()
    );
}

/// What a stopped agent left behind.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub status: ExitStatus,
    /// Every JSON line the agent printed, in order (the started line included).
    pub lines: Vec<Value>,
    /// The last stats line, the one with `"final": true`.
    pub final_stats: Value,
    pub stderr: String,
}

impl Stopped {
    /// Cause events (`event.kind == "cause"`) matching `pred`, over the agent's whole run.
    pub fn causes(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.lines
            .iter()
            .filter(|v| event::is_cause_event(v) && pred(v))
            .cloned()
            .collect()
    }
}

enum Line {
    Json(Value),
    Bad(String),
    /// JSON that the schema or the types reject, and why.
    Invalid(Value, String),
}

pub struct Agent {
    child: Child,
    pid: u32,
    args: Vec<String>,
    rx: Receiver<Line>,
    stdout_eof: bool,
    history: Vec<Value>,
    bad_lines: Vec<String>,
    started: Value,
    stderr: Arc<Mutex<String>>,
    reaped: Option<ExitStatus>,
}

impl Agent {
    /// `rst-trace run --format json --netns NS [--port P]`, waiting for `rst_trace.started`.
    pub fn start(ns: &Netns, port: Option<u16>) -> Agent {
        Agent::start_with_env(ns, port, &[])
    }

    /// [`Agent::start`] with `env` set in the agent's environment
    /// (`rst_trace_common::names::RAW_TRACEPOINTS_ENV`, ...).
    pub fn start_with_env(ns: &Netns, port: Option<u16>, env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(agent_binary());
        cmd.args(["run", "--format", "json", "--netns", ns.name()])
            .envs(env.iter().copied());
        if let Some(p) = port {
            cmd.args(["--port", &p.to_string()]);
        }
        Agent::start_command(cmd)
    }

    /// Start the agent with explicit arguments (they must make it print JSON), waiting (bounded)
    /// for its `rst_trace.started` line. Panics, with the agent's stderr, if it exits or times
    /// out first: a test that cannot load BPF fails, it never skips.
    pub fn start_args(args: &[String]) -> Agent {
        let mut cmd = Command::new(agent_binary());
        cmd.args(args);
        Agent::start_command(cmd)
    }

    /// Start the agent from a prepared command (another binary, a wrapper such as `setpriv`,
    /// extra environment), waiting like [`Agent::start_args`]. Its arguments must make the
    /// agent print JSON.
    pub fn start_command(cmd: Command) -> Agent {
        Agent::start_command_within(cmd, START_TIMEOUT)
    }

    /// [`Agent::start_command`] with another bound on the start-up (a guest under emulation
    /// needs minutes for BTF and the verifier).
    pub fn start_command_within(mut cmd: Command, start_timeout: Duration) -> Agent {
        let bin = PathBuf::from(cmd.get_program());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let args = args.as_slice();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let msg = match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => match event::check(&v) {
                        Ok(_) => Line::Json(v),
                        Err(e) => Line::Invalid(v, e),
                    },
                    _ => Line::Bad(line),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let st = stderr.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr_pipe);
            let mut buf = [0u8; 8192];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => st
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        let pid = child.id();
        let mut agent = Agent {
            child,
            pid,
            args: args.to_vec(),
            rx,
            stdout_eof: false,
            history: Vec::new(),
            bad_lines: Vec::new(),
            started: Value::Null,
            stderr,
            reaped: None,
        };
        // From here on a panic drops `agent`, which kills and reaps it.
        let deadline = Instant::now() + start_timeout;
        loop {
            if let Some(v) = agent.history.iter().find(|v| event::is_started(v)) {
                agent.started = v.clone();
                break;
            }
            if agent.stdout_eof {
                let status = agent.reap_within(Duration::from_secs(5));
                panic!(
                    "agent {} {:?} exited before printing rst_trace.started (status {:?})\n\
                     stdout: {:?}\nstderr:\n{}",
                    bin.display(),
                    agent.args,
                    status,
                    agent.history_and_bad(),
                    agent.stderr_text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "agent {} {:?} did not print rst_trace.started within {start_timeout:?}\n\
                     stdout: {:?}\nstderr:\n{}",
                    bin.display(),
                    agent.args,
                    agent.history_and_bad(),
                    agent.stderr_text()
                );
            }
            agent.pump_until(deadline.min(Instant::now() + Duration::from_millis(200)));
        }
        assert!(
            event::is_started(&agent.history[0]) && agent.bad_lines.is_empty(),
            "rst_trace.started must be the agent's first stdout line; got {:?}",
            agent.history_and_bad()
        );
        agent
    }

    fn history_and_bad(&self) -> Vec<String> {
        self.history
            .iter()
            .map(|v| v.to_string())
            .chain(self.bad_lines.iter().map(|l| format!("NOT JSON: {l}")))
            .collect()
    }

    /// Receive lines until `deadline` or stdout EOF.
    fn pump_until(&mut self, deadline: Instant) {
        while !self.stdout_eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Line::Json(v)) => self.history.push(v),
                Ok(Line::Bad(l)) => self.bad_lines.push(l),
                // Kept for the scenario, and failed at stop like a non-JSON line.
                Ok(Line::Invalid(v, e)) => {
                    self.bad_lines.push(format!("{e}: {v}"));
                    self.history.push(v);
                }
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => self.stdout_eof = true,
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The `rst_trace.started` line.
    pub fn started(&self) -> &Value {
        &self.started
    }

    /// The hooks whose program the verifier refused (`hooks.<name>.errors` in the started
    /// line), each with the end of the verifier's log. A refusal is a bug in the eBPF object; a
    /// kernel that lacks an attach point (no kprobes, no trampolines) is not one.
    pub fn verifier_rejections(&self) -> Vec<String> {
        let Some(hooks) = self.started.get("hooks").and_then(Value::as_object) else {
            return Vec::new();
        };
        hooks
            .iter()
            .flat_map(|(hook, status)| {
                status
                    .get("errors")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    // A refusal with EACCES says "verifier rejected", one with EINVAL "failed to
                    // load"; both carry the verifier's log. A tier refused and its fallback
                    // attached is still a program of ours the verifier refused.
                    .filter(|e| e.contains("verifier rejected") || e.contains("the verifier's log"))
                    .map(move |e| {
                        let lines: Vec<&str> = e.lines().collect();
                        let end = &lines[lines.len().saturating_sub(4).max(1)..];
                        format!("{hook}: {} … {}", lines[0], end.join(" | "))
                    })
            })
            .collect()
    }

    /// The agent's stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every JSON line received so far.
    pub fn lines(&self) -> &[Value] {
        &self.history
    }

    /// Cause events received so far that match `pred`.
    pub fn causes(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.history
            .iter()
            .filter(|v| event::is_cause_event(v) && pred(v))
            .cloned()
            .collect()
    }

    /// Wait (bounded) until at least `count` cause events matching `pred` have arrived (counting
    /// from the agent's start), and return all of them — possibly fewer than `count` on timeout,
    /// so the caller's assertion can show what did arrive. Panics if the agent dies meanwhile.
    pub fn wait_for(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.causes(&pred);
            if m.len() >= count || Instant::now() >= deadline {
                return m;
            }
            if self.stdout_eof {
                let status = self.reap_within(Duration::from_secs(5));
                panic!(
                    "agent exited (status {status:?}) while waiting for {count} events; had {}:\n  {}\nstderr:\n{}",
                    m.len(),
                    event::summarize(&m),
                    self.stderr_text()
                );
            }
            self.pump_until(deadline.min(Instant::now() + Duration::from_millis(100)));
        }
    }

    /// Where the lines of a scenario begin: the number of lines received so far.
    pub fn mark(&mut self) -> usize {
        self.pump_until(Instant::now());
        self.history.len()
    }

    /// Every line received since `mark` (see [`Agent::mark`]).
    pub fn since(&mut self, mark: usize) -> Vec<Value> {
        self.pump_until(Instant::now());
        self.history.get(mark..).unwrap_or_default().to_vec()
    }

    /// Whether the agent still runs (its stdout open, not exited).
    pub fn alive(&mut self) -> bool {
        self.pump_until(Instant::now());
        !self.stdout_eof && matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether the agent's stdout is still open (no new lines read: see [`Agent::alive`]).
    pub fn is_running(&self) -> bool {
        !self.stdout_eof
    }

    /// Wait (bounded) until `n` lines since `mark` match `pred`, or the agent ends, or `timeout`
    /// passes; returns how many matched. Never panics: the caller's checks say what is missing.
    pub fn wait_since(
        &mut self,
        mark: usize,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self
                .history
                .get(mark..)
                .unwrap_or_default()
                .iter()
                .filter(|v| pred(v))
                .count();
            if got >= n || Instant::now() >= deadline || self.stdout_eof {
                return got;
            }
            self.pump_until(deadline.min(Instant::now() + Duration::from_millis(100)));
        }
    }

    /// Let lines arrive for `d` (bounded), e.g. to give a wrong extra event the chance to show up
    /// before asserting it did not.
    pub fn settle(&mut self, d: Duration) {
        self.pump_until(Instant::now() + d);
    }

    fn reap_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.reaped {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.reaped = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait (bounded) for exit status 0, collect the remaining lines up to stdout EOF and
    /// the final stats line. Panics (with stderr) on any deviation from the documented clean exit.
    pub fn stop(&mut self) -> Stopped {
        if let Some(s) = self.reaped.or_else(|| self.child.try_wait().ok().flatten()) {
            self.reaped = Some(s);
            panic!(
                "agent exited on its own before stop() (status {s}); stderr:\n{}",
                self.stderr_text()
            );
        }
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).expect("SIGTERM to the agent");
        let Some(status) = self.reap_within(STOP_TIMEOUT) else {
            panic!(
                "agent did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr_text()
            );
        };
        // Drain stdout to EOF (bounded: a leftover grandchild could hold the pipe).
        self.pump_until(Instant::now() + Duration::from_secs(10));
        let stderr = self.stderr_text();
        assert!(
            status.success(),
            "agent exit status after SIGTERM: {status} (want 0); stderr:\n{stderr}"
        );
        assert!(
            self.stdout_eof,
            "agent's stdout not closed 10 s after it exited"
        );
        assert!(
            self.bad_lines.is_empty(),
            "agent printed lines that are not JSON or not of the schema (docs/events.schema.json) on stdout: {:?}",
            self.bad_lines
        );
        let final_stats = self
            .history
            .iter()
            .rev()
            .find(|v| event::is_final_stats(v))
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no final stats line (\"final\":true) before exit; last lines: {:?}\nstderr:\n{stderr}",
                    self.history.iter().rev().take(5).map(|v| v.to_string()).collect::<Vec<_>>()
                )
            });
        assert!(
            event::is_final_stats(self.history.last().unwrap()),
            "the final stats line must be the last line; last is {}",
            self.history.last().unwrap()
        );
        if let Some(dir) = std::env::var_os("RST_TRACE_EVENT_LOG") {
            // Real events from real scenarios, kept for `cargo xtask examples`.
            let name = std::thread::current()
                .name()
                .unwrap_or("agent")
                .replace("::", "-");
            let path = std::path::Path::new(&dir).join(format!("{name}-{}.jsonl", self.pid));
            let text: String = self.history.iter().map(|v| format!("{v}\n")).collect();
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text))
            {
                eprintln!("could not keep the event log {}: {e}", path.display());
            }
        }
        Stopped {
            status,
            lines: self.history.clone(),
            final_stats,
            stderr,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        // Our own child, by pid, not yet reaped: no pid-reuse risk.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
