//! rst-trace-vmcheck: the cause scenarios, run inside a QEMU guest by `cargo xtask integration-test vm`.
//!
//! std + libc (for kill) + serde_json only: it runs from an initramfs with nothing but busybox, the
//! agent and rst-trace-peer. Everything happens in the guest's root network namespace: the VM is
//! isolated, so the MIB counters move only because of the scenarios, which run one after another.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Under TCG the guest is 10-50x slower than the host: every bound here is generous.
const STARTED_TIMEOUT: Duration = Duration::from_secs(240);
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// After the expected events arrived: how long extra (duplicate, wrong) events may still come.
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

// ---------------------------------------------------------------------------------------------
// JSON accessors (dotted paths, as in docs/agent-interface.md)

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

fn s<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path)?.as_str()
}

fn u(v: &Value, path: &str) -> Option<u64> {
    get(v, path)?.as_u64()
}

fn is_cause(v: &Value, cause: &str) -> bool {
    s(v, "event.kind") == Some("cause") && s(v, "cause") == Some(cause)
}

fn is_final_stats(v: &Value) -> bool {
    s(v, "event.name") == Some("rst_trace.stats") && get(v, "final") == Some(&Value::Bool(true))
}

// ---------------------------------------------------------------------------------------------
// MIB: /proc/net/snmp and /proc/net/netstat as "Tcp.OutRsts", "TcpExt.ListenOverflows", …

type Mib = BTreeMap<String, i64>;

fn mib() -> Mib {
    let mut m = Mib::new();
    for path in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = fs::read_to_string(path).unwrap_or_default();
        m.extend(rst_trace_common::mib::parse_lenient(&text));
    }
    m
}

fn delta(before: &Mib, after: &Mib, key: &str) -> i64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

fn changes(before: &Mib, after: &Mib) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0);
        if d != 0 && (k.starts_with("Tcp.") || k.starts_with("TcpExt.")) {
            out.insert(k.clone(), json!(d));
        }
    }
    Value::Object(out)
}

/// Waits until the TCP MIB stops moving (clients gone, no retransmissions left).
fn settled_mib() -> Mib {
    let mut last = mib();
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(500));
        let now = mib();
        if changes(&last, &now)
            .as_object()
            .is_some_and(|o| o.is_empty())
        {
            return now;
        }
        last = now;
    }
    note("the TCP MIB kept changing for 60 s");
    last
}

// ---------------------------------------------------------------------------------------------
// The agent

struct Agent {
    child: Child,
    out_path: String,
    err_path: String,
    consumed: usize,
    lines: Vec<Value>,
    started: Value,
    startup_secs: f64,
    /// Bytes of stderr already printed.
    err_printed: usize,
}

impl Agent {
    fn start(cfg: &Config) -> Result<Agent, String> {
        let out_path = format!("{}/agent.out", cfg.workdir);
        let err_path = format!("{}/agent.err", cfg.workdir);
        let out = File::create(&out_path).map_err(|e| format!("create {out_path}: {e}"))?;
        let err = File::create(&err_path).map_err(|e| format!("create {err_path}: {e}"))?;
        let t0 = Instant::now();
        let child = Command::new(&cfg.agent)
            .args(["run", "--format", "json", "--duration"])
            .arg(AGENT_DURATION_SECS.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", cfg.agent))?;
        let mut agent = Agent {
            child,
            out_path,
            err_path,
            consumed: 0,
            lines: Vec::new(),
            started: Value::Null,
            startup_secs: 0.0,
            err_printed: 0,
        };
        loop {
            agent.refresh();
            if let Some(v) = agent
                .lines
                .iter()
                .find(|v| s(v, "event.name") == Some("rst_trace.started"))
            {
                agent.started = v.clone();
                agent.startup_secs = t0.elapsed().as_secs_f64();
                return Ok(agent);
            }
            if let Ok(Some(st)) = agent.child.try_wait() {
                agent.print_stderr("start");
                return Err(format!(
                    "the agent exited ({st}) before its rst_trace.started line"
                ));
            }
            if t0.elapsed() > STARTED_TIMEOUT {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                agent.print_stderr("start");
                return Err(format!(
                    "no rst_trace.started line within {} s",
                    STARTED_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Parses the complete lines written since the last call.
    fn refresh(&mut self) {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.out_path) {
            let _ = f.read_to_end(&mut buf);
        }
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        if end < self.consumed {
            return;
        }
        for line in String::from_utf8_lossy(&buf[self.consumed..=end]).lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) => self.lines.push(v),
                Err(_) => self.lines.push(json!({"unparsed": line})),
            }
        }
        self.consumed = end + 1;
    }

    /// Where a scenario's events begin.
    fn mark(&mut self) -> usize {
        self.refresh();
        self.lines.len()
    }

    fn since(&mut self, mark: usize) -> Vec<Value> {
        self.refresh();
        self.lines[mark..].to_vec()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `n` lines since `mark` match (or the agent exits, or `timeout`).
    fn wait_for(
        &mut self,
        mark: usize,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh();
            let got = self.lines[mark..].iter().filter(|v| pred(v)).count();
            if got >= n || Instant::now() >= deadline || !self.alive() {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM: the agent drains its ring buffer, polls once more and prints the final stats.
    fn stop(&mut self) -> Value {
        if self.alive() {
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let exit = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st.code().map_or(json!(st.to_string()), |c| json!(c)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break json!("killed: no exit within 60 s of SIGTERM");
                }
            }
        };
        self.refresh();
        let final_stats = self.lines.iter().find(|v| is_final_stats(v)).cloned();
        json!({"exit": exit, "final_stats": final_stats, "lines": self.lines.len()})
    }

    /// Prints the stderr written since the last call, verifier logs shortened.
    fn print_stderr(&mut self, phase: &str) {
        let text = fs::read(&self.err_path).unwrap_or_default();
        if text.len() <= self.err_printed {
            return;
        }
        let new = String::from_utf8_lossy(&text[self.err_printed..]).into_owned();
        self.err_printed = text.len();
        for l in shorten_verifier_logs(&new) {
            say(&format!("RST-AGENT-STDERR {phase} {l}"));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

fn causes_seen(lines: &[Value]) -> Value {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for v in lines {
        if s(v, "event.kind") == Some("cause") {
            *m.entry(s(v, "cause").unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    json!(m)
}

fn port_of(v: &Value) -> Option<u64> {
    u(v, "network.local.port")
}

// ---------------------------------------------------------------------------------------------
// Peers

struct Peer {
    child: Child,
    pid: u32,
    stdout: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
}

impl Peer {
    /// Spawns a peer and waits for its `ready <pid>` line.
    fn spawn(cfg: &Config, args: &[&str]) -> Result<Peer, String> {
        let mut child = Command::new(&cfg.peer)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {} {args:?}: {e}", cfg.peer))?;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("peer {args:?} did not print `ready <pid>`: {line:?}"))?;
        if pid != child.id() {
            return Err(format!(
                "peer says pid {pid}, but we spawned {}",
                child.id()
            ));
        }
        Ok(Peer {
            child,
            pid,
            stdout,
            stdin,
        })
    }

    /// `listen --addr ADDR --port PORT` and `extra`: a server peer.
    fn listen(cfg: &Config, addr: &str, port: &str, extra: &[&str]) -> Result<Peer, String> {
        Peer::spawn(
            cfg,
            &[&["listen", "--addr", addr, "--port", port][..], extra].concat(),
        )
    }

    /// `connect --addr 127.0.0.1 --port PORT` and `extra`: a client peer.
    fn connect(cfg: &Config, port: &str, extra: &[&str]) -> Result<Peer, String> {
        Peer::spawn(
            cfg,
            &[
                &["connect", "--addr", "127.0.0.1", "--port", port][..],
                extra,
            ]
            .concat(),
        )
    }

    /// Reads up to `n` output lines. A line that does not come within `timeout` ends the wait
    /// early; the peers bound their own waits, so a read never blocks past their timeouts.
    fn lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let mut line = String::new();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => got.push(line.trim_end().to_owned()),
            }
        }
        got
    }

    /// Waits (bounded) for exit; returns (exit code, remaining output lines).
    fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        // Read while waiting: a peer that prints more than a pipe holds would block forever.
        let mut stdout = self.stdout;
        let reader = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
            rest
        });
        let code = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Ok(st.code()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break Err(());
                }
            }
        };
        // The pipe closes with the child (the peers start no children of their own).
        let rest = reader.join().unwrap_or_default();
        match code {
            Ok(code) => (code, rest.lines().map(str::to_owned).collect()),
            Err(()) => (None, vec!["killed: did not exit in time".into()]),
        }
    }

    /// Closing stdin (a pipe) makes a serving peer exit on its own.
    fn stop(mut self) -> (Option<i32>, Vec<String>) {
        self.stdin.take();
        self.wait_exit(Duration::from_secs(20))
    }
}

/// Runs a client peer to completion; returns its output lines after `ready`.
fn run_client(cfg: &Config, args: &[&str], timeout: Duration) -> Result<Vec<String>, String> {
    let p = Peer::spawn(cfg, args)?;
    let (code, lines) = p.wait_exit(timeout);
    match code {
        Some(0) | Some(1) => Ok(lines),
        other => Err(format!("client {args:?} exited {other:?}: {lines:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Outcome {
    checks: Vec<Value>,
    info: serde_json::Map<String, Value>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            checks: Vec::new(),
            info: serde_json::Map::new(),
        }
    }

    fn check(&mut self, what: &str, want: Value, got: Value) {
        let ok = want == got;
        self.checks
            .push(json!({"check": what, "want": want, "got": got, "ok": ok}));
    }

    fn check_true(&mut self, what: &str, ok: bool, got: Value) {
        self.checks
            .push(json!({"check": what, "want": true, "got": got, "ok": ok}));
    }

    fn info(&mut self, k: &str, v: Value) {
        self.info.insert(k.to_owned(), v);
    }

    fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c["ok"] == json!(true))
    }
}

/// Fields that say how a cause was recognised on this kernel.
fn how(v: &Value) -> Value {
    json!({
        "cause": get(v, "cause"),
        "reason": get(v, "reason"),
        "inferred": get(v, "inferred"),
        "origin": get(v, "origin"),
        "state": get(v, "tcp.state"),
        "owner_pid": get(v, "owner.process.pid"),
        "local_port": get(v, "network.local.port"),
        "count": get(v, "count"),
    })
}

/// Connections to ports with no listener. The first port had a listener a moment ago (a
/// restart): its events name that process as the last listener. Each client's refused
/// connect is the receiving side of the same RST, owned by the client.
fn no_listener(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    let ports: [u64; 3] = [40101, 40202, 40303];
    let mark = agent.mark();
    let before = mib();
    let first = ports[0].to_string();
    let restarted = Peer::listen(cfg, "127.0.0.1", &first, &[])?;
    let restarted_pid = restarted.pid;
    let _ = restarted.stop();
    let mut clients = Vec::new();
    let mut client_pids = BTreeSet::new();
    for p in ports {
        let port = p.to_string();
        let client = Peer::connect(cfg, &port, &["--timeout-ms", "5000"])?;
        client_pids.insert((client.pid as u64, p));
        let (_, lines) = client.wait_exit(Duration::from_secs(30));
        clients.push(json!({"port": p, "result": lines}));
    }
    o.info("clients", json!(clients));
    agent.wait_for(
        mark,
        |v| is_cause(v, "no_listener") || is_cause(v, "connection_refused"),
        2 * ports.len(),
        EVENT_TIMEOUT,
    );
    std::thread::sleep(GRACE);
    let after = mib();
    let lines = agent.since(mark);
    let evs = with_cause(&lines, "no_listener");
    let got_ports: BTreeSet<u64> = evs.iter().filter_map(|v| port_of(v)).collect();
    o.check("no_listener events", json!(ports.len()), json!(evs.len()));
    o.check(
        "ports of the events",
        json!(ports),
        json!(got_ports.iter().collect::<Vec<_>>()),
    );
    o.check(
        "no_listener has no owner",
        json!([null]),
        json!(evs
            .iter()
            .map(|v| u(v, "owner.process.pid"))
            .collect::<BTreeSet<_>>()),
    );
    o.check(
        "evidence.last_listener.process.pid on the restarted port",
        json!([restarted_pid]),
        json!(evs
            .iter()
            .filter(|v| port_of(v) == Some(ports[0]))
            .map(|v| u(v, "evidence.last_listener.process.pid"))
            .collect::<Vec<_>>()),
    );
    let refused = with_cause(&lines, "connection_refused");
    o.check(
        "connection_refused: (owner pid, peer port) per client",
        json!(client_pids),
        json!(refused
            .iter()
            .map(|v| (
                u(v, "owner.process.pid").unwrap_or(0),
                u(v, "network.peer.port").unwrap_or(0)
            ))
            .collect::<BTreeSet<_>>()),
    );
    o.check(
        "Tcp.OutRsts delta",
        json!(ports.len()),
        json!(delta(&before, &after, "Tcp.OutRsts")),
    );
    o.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(delta(&before, &after, "Tcp.OutRsts")),
        json!(tcp_sent_total(&lines)),
    );
    o.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

fn overflow_total(lines: &[Value], port: u64) -> u64 {
    lines
        .iter()
        .filter(|v| is_cause(v, "accept_queue_overflow") && port_of(v) == Some(port))
        .filter(|v| s(v, "direction") == Some("dropped"))
        .filter_map(|v| u(v, "count"))
        .sum()
}

/// Sets a sysctl of the guest (a throwaway VM, but scenarios run one after another) and
/// restores the old value when dropped, whatever the scenario's outcome.
struct Sysctl {
    path: String,
    old: String,
}

impl Sysctl {
    fn set(name: &str, value: &str) -> Result<Sysctl, String> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let old = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        fs::write(&path, value).map_err(|e| format!("{path} = {value}: {e}"))?;
        Ok(Sysctl {
            path,
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.old);
    }
}

/// One row of /proc/net/tcp or tcp6: ports, `st`, `rx_queue` (a listener's accept queue
/// length) and the timer code (`tr`; 3 = a timewait socket).
struct TcpRow {
    local_port: u64,
    remote_port: u64,
    state: String,
    rx_queue: u64,
    timer: String,
}

fn tcp_rows(v6: bool) -> Vec<TcpRow> {
    let table = if v6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let text = fs::read_to_string(table).unwrap_or_default();
    let hex = |f: &str| u64::from_str_radix(f, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = |i: usize| f.get(i).and_then(|a| a.rsplit(':').next()).and_then(hex);
            Some(TcpRow {
                local_port: port(1)?,
                remote_port: port(2)?,
                state: (*f.get(3)?).to_owned(),
                rx_queue: f.get(4)?.rsplit(':').next().and_then(hex)?,
                timer: f.get(5)?.split(':').next()?.to_owned(),
            })
        })
        .collect()
}

/// Accept queue length of the listener on `port` (state 0A).
fn listen_queue(port: u64, v6: bool) -> Option<u64> {
    tcp_rows(v6)
        .into_iter()
        .find(|r| r.local_port == port && r.state == "0A")
        .map(|r| r.rx_queue)
}

/// Overflow when the handshake's ACK asks for a place in a full accept queue, the case the
/// per-packet `tcp_v*_syn_recv_sock` hooks exist for (fexit, or kprobe where the trampoline
/// cannot take the function). The listener defers accept, so two early handshakes stay request
/// sockets; four more clients send data at once and fill the queue (backlog 3 holds 4); then
/// the two early clients send, and each of their segments (retransmissions included) is
/// refused by tcp_v*_syn_recv_sock. Nothing here is dropped at SYN time.
///
/// With `listen_addr` "::" and IPv4 clients the listener is IPv6 and the peers v4-mapped:
/// tcp_v6_syn_recv_sock hands those to tcp_v4_syn_recv_sock, and each drop must still be
/// reported once.
fn ack_time_overflow(
    cfg: &Config,
    o: &mut Outcome,
    agent: &mut Agent,
    listen_addr: &str,
    port: u64,
    abort_on_overflow: bool,
) -> Result<(), String> {
    const BACKLOG: u64 = 3;
    let v6 = listen_addr.contains(':');
    // With tcp_abort_on_overflow=1 the listener answers each refused segment with an RST.
    let _abort = Sysctl::set(
        "net.ipv4.tcp_abort_on_overflow",
        if abort_on_overflow { "1" } else { "0" },
    )?;
    let port_s = port.to_string();
    let backlog_s = BACKLOG.to_string();
    let fill_s = (BACKLOG + 1).to_string();
    let go = format!("{}/ack_time_overflow.go", cfg.workdir);
    let _ = fs::remove_file(&go);
    let mark = agent.mark();
    let before = mib();
    let server = Peer::listen(
        cfg,
        listen_addr,
        &port_s,
        &["--backlog", &backlog_s, "--defer-accept", "30"],
    )?;
    let server_pid = server.pid;
    let mut early = Peer::connect(
        cfg,
        &port_s,
        &[
            "--count",
            "2",
            "--nonblocking",
            "--timeout-ms",
            "60000",
            "--send-bytes",
            "1",
            "--go-file",
            &go,
            "--hold-ms",
            "120000",
        ],
    )?;
    let early_results = early.lines(2, Duration::from_secs(60));
    o.info("early_clients", json!(early_results));
    let mut fill = Peer::connect(
        cfg,
        &port_s,
        &[
            "--count",
            &fill_s,
            "--timeout-ms",
            "10000",
            "--send-bytes",
            "1",
            "--hold-ms",
            "120000",
        ],
    )?;
    // `connected attempt=I`, then `sent attempt=I`, per client.
    let fill_results = fill.lines(2 * (BACKLOG as usize + 1), Duration::from_secs(60));
    o.info("filling_clients", json!(fill_results));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut queue = listen_queue(port, v6);
    while queue != Some(BACKLOG + 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        queue = listen_queue(port, v6);
    }
    o.check(
        "accept queue full before the early clients send",
        json!(BACKLOG + 1),
        json!(queue),
    );
    let mid = mib();
    fs::write(&go, b"go").map_err(|e| format!("write {go}: {e}"))?;
    // The early clients send, and without tcp_abort_on_overflow retransmit: wait for a
    // retransmission of each to be refused as well. Then the listener closes before the
    // clients do: a client's FIN retransmitted to a full queue for minutes would keep the
    // counters moving.
    let refusals = if abort_on_overflow { 2 } else { 4 };
    let deadline = Instant::now() + Duration::from_secs(30);
    while delta(&mid, &mib(), "TcpExt.ListenOverflows") < refusals && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.stop();
    let (_, early_rest) = early.stop();
    o.info("early_clients_after_go", json!(early_rest));
    let _ = fill.stop();
    let after = settled_mib();
    let overflows = delta(&before, &after, "TcpExt.ListenOverflows");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let reported = overflow_total(&agent.since(mark), port);
        if reported as i64 >= overflows || Instant::now() >= deadline || !agent.alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);

    let evs: Vec<&Value> = lines
        .iter()
        .filter(|v| is_cause(v, "accept_queue_overflow") && port_of(v) == Some(port))
        .filter(|v| s(v, "direction") == Some("dropped"))
        .collect();
    let reported = overflow_total(&lines, port);
    let set = |path: &str| -> Vec<String> {
        evs.iter()
            .map(|v| s(v, path).unwrap_or("-").to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let owners: BTreeSet<u64> = evs
        .iter()
        .map(|v| u(v, "owner.process.pid").unwrap_or(0))
        .collect();
    o.check_true(
        "TcpExt.ListenOverflows rose after the queue was full (ACK-time overflow happened)",
        delta(&mid, &after, "TcpExt.ListenOverflows") >= 2,
        json!(delta(&mid, &after, "TcpExt.ListenOverflows")),
    );
    o.check(
        "agent accept_queue_overflow dropped total == TcpExt.ListenOverflows delta",
        json!(overflows),
        json!(reported),
    );
    o.check(
        "evidence.stage of every event",
        json!(["ack"]),
        json!(set("evidence.stage")),
    );
    o.check(
        "evidence.observed_by of every event",
        json!(["per packet at tcp_v*_syn_recv_sock"]),
        json!(set("evidence.observed_by")),
    );
    o.check(
        "owner pid of every event (0 = none)",
        json!([server_pid]),
        json!(owners.iter().collect::<Vec<_>>()),
    );
    if abort_on_overflow {
        let rsts: Vec<&Value> = lines
            .iter()
            .filter(|v| is_cause(v, "accept_queue_overflow") && port_of(v) == Some(port))
            .filter(|v| s(v, "direction") == Some("sent"))
            .collect();
        o.check(
            "RSTs sent by the listener (accept_queue_overflow, sent) == TcpExt.ListenOverflows delta",
            json!(overflows),
            json!(rsts.iter().filter_map(|v| u(v, "count")).sum::<u64>()),
        );
        o.check(
            "owner pid and evidence.tcp_abort_on_overflow of every RST",
            json!([[server_pid, 1]]),
            json!(rsts
                .iter()
                .map(|v| (
                    u(v, "owner.process.pid").unwrap_or(0),
                    u(v, "evidence.tcp_abort_on_overflow").unwrap_or(0)
                ))
                .collect::<BTreeSet<_>>()),
        );
        o.check(
            "RSTs TCP sent (agent) == Tcp.OutRsts delta",
            json!(delta(&before, &after, "Tcp.OutRsts")),
            json!(tcp_sent_total(&lines)),
        );
    }
    o.info("server_pid", json!(server_pid));
    o.info(
        "TCPDeferAcceptDrop",
        json!(delta(&before, &after, "TcpExt.TCPDeferAcceptDrop")),
    );
    o.info(
        "events",
        json!(evs
            .iter()
            .map(|v| {
                let mut h = how(v);
                h["stage"] = get(v, "evidence.stage").cloned().unwrap_or(Value::Null);
                h["queue"] = get(v, "evidence.accept_queue")
                    .cloned()
                    .unwrap_or(Value::Null);
                h["peer_port"] = get(v, "network.peer.port").cloned().unwrap_or(Value::Null);
                h
            })
            .collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

/// accept() at RLIMIT_NOFILE: EMFILE reported with the accepting server as owner, its port and
/// limit; the server's own "accept_error EMFILE" lines are the ground truth for the count.
fn fd_exhaustion(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    let port = 41003u64;
    let port_s = port.to_string();
    let mark = agent.mark();
    let server = Peer::listen(
        cfg,
        "127.0.0.1",
        &port_s,
        &["--backlog", "2", "--accept", "--nofile", "6"],
    )?;
    let server_pid = server.pid;
    let _ = run_client(
        cfg,
        &[
            "connect",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--count",
            "8",
            "--nonblocking",
            "--timeout-ms",
            "2500",
        ],
        Duration::from_secs(60),
    )?;
    // Stop the server first so no accept() fails after the count is taken.
    let (_, server_lines) = server.stop();
    let emfile = server_lines
        .iter()
        .filter(|l| l.starts_with("accept_error EMFILE"))
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = agent
            .since(mark)
            .iter()
            .filter(|v| is_cause(v, "fd_exhaustion"))
            .filter_map(|v| u(v, "count"))
            .sum();
        if n >= emfile || Instant::now() >= deadline || !agent.alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    let evs: Vec<&Value> = lines
        .iter()
        .filter(|v| is_cause(v, "fd_exhaustion"))
        .collect();
    let reported: u64 = evs.iter().filter_map(|v| u(v, "count")).sum();
    let owners: BTreeSet<u64> = evs
        .iter()
        .map(|v| u(v, "owner.process.pid").unwrap_or(0))
        .collect();
    let ports: BTreeSet<u64> = evs
        .iter()
        .map(|v| u(v, "evidence.listening_port").unwrap_or(0))
        .collect();
    let limits: BTreeSet<u64> = evs
        .iter()
        .map(|v| u(v, "evidence.rlimit_nofile.soft").unwrap_or(0))
        .collect();
    o.check_true("the server hit EMFILE", emfile > 0, json!(emfile));
    o.check(
        "agent fd_exhaustion total == the server's EMFILE failures",
        json!(emfile),
        json!(reported),
    );
    o.check(
        "owner pid (the accepting server)",
        json!([server_pid]),
        json!(owners.iter().collect::<Vec<_>>()),
    );
    o.check(
        "listening port",
        json!([port]),
        json!(ports.iter().collect::<Vec<_>>()),
    );
    o.check(
        "RLIMIT_NOFILE soft limit",
        json!([6]),
        json!(limits.iter().collect::<Vec<_>>()),
    );
    Ok(())
}

fn accept_queue_overflow(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    let port = 41001u64;
    let port_s = port.to_string();
    let mark = agent.mark();
    let before = mib();
    // listen(1) and never accept: the accept queue holds two connections, the rest drop.
    let server = Peer::listen(cfg, "127.0.0.1", &port_s, &["--backlog", "1"])?;
    let server_pid = server.pid;
    let client = run_client(
        cfg,
        &[
            "connect",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--count",
            "20",
            "--nonblocking",
            "--timeout-ms",
            "2500",
        ],
        Duration::from_secs(60),
    )?;
    let mut results: BTreeMap<String, u64> = BTreeMap::new();
    for l in &client {
        *results
            .entry(l.split_whitespace().next().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    o.info("client_results", json!(results));
    // SYN-time drops may be found by polling the listener's drop counter: wait, with the
    // listener still there, until the agent has reported what the counters show so far.
    let so_far = delta(&before, &settled_mib(), "TcpExt.ListenOverflows");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reported = overflow_total(&agent.since(mark), port);
        if reported as i64 >= so_far || Instant::now() >= deadline || !agent.alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Clients whose handshake the server dropped at ACK time still believe they are connected:
    // their retransmitted ACKs and FINs overflow the queue again for as long as the listener
    // exists. Only once it is closed are the counters final, and only then are both sides
    // compared over the same window.
    let _ = server.stop();
    let after = settled_mib();
    let overflows = delta(&before, &after, "TcpExt.ListenOverflows");
    let deadline = Instant::now() + Duration::from_secs(20);
    while (overflow_total(&agent.since(mark), port) as i64) < overflows
        && Instant::now() < deadline
        && agent.alive()
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);

    let evs: Vec<&Value> = lines
        .iter()
        .filter(|v| is_cause(v, "accept_queue_overflow") && port_of(v) == Some(port))
        .collect();
    let reported = overflow_total(&lines, port);
    let owners: BTreeSet<u64> = evs
        .iter()
        .map(|v| u(v, "owner.process.pid").unwrap_or(0))
        .collect();
    o.check_true(
        "TcpExt.ListenOverflows delta > 0 (the scenario overflowed)",
        overflows > 0,
        json!(overflows),
    );
    o.check(
        "agent accept_queue_overflow dropped total == TcpExt.ListenOverflows delta",
        json!(overflows),
        json!(reported),
    );
    o.check(
        "owner pid of every accept_queue_overflow event (0 = none)",
        json!([server_pid]),
        json!(owners.iter().collect::<Vec<_>>()),
    );
    o.info("server_pid", json!(server_pid));
    o.info(
        "ListenDrops",
        json!(delta(&before, &after, "TcpExt.ListenDrops")),
    );
    o.info(
        "TCPReqQFullDrop",
        json!(delta(&before, &after, "TcpExt.TCPReqQFullDrop")),
    );
    o.info(
        "stages",
        json!(evs
            .iter()
            .filter(|v| s(v, "direction") == Some("dropped"))
            .map(|v| s(v, "evidence.stage").unwrap_or("-").to_owned())
            .collect::<BTreeSet<_>>()),
    );
    o.info(
        "events",
        json!(evs
            .iter()
            .map(|v| {
                let mut h = how(v);
                h["direction"] = get(v, "direction").cloned().unwrap_or(Value::Null);
                h["stage"] = get(v, "evidence.stage").cloned().unwrap_or(Value::Null);
                h["peer_port"] = get(v, "network.peer.port").cloned().unwrap_or(Value::Null);
                h["time"] = get(v, "time").cloned().unwrap_or(Value::Null);
                h["queue"] = get(v, "evidence.accept_queue")
                    .cloned()
                    .unwrap_or(Value::Null);
                h
            })
            .collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

/// connect() with the local port range narrowed to four ports: the fifth connection to the
/// same destination fails with EADDRNOTAVAIL in the client, which the agent names.
fn ephemeral_port_exhaustion(
    cfg: &Config,
    o: &mut Outcome,
    agent: &mut Agent,
) -> Result<(), String> {
    let port = 41310u64;
    let port_s = port.to_string();
    let _range = Sysctl::set("net.ipv4.ip_local_port_range", "41320 41323")?;
    let mark = agent.mark();
    let server = Peer::listen(cfg, "127.0.0.1", &port_s, &["--accept"])?;
    let client = Peer::connect(cfg, &port_s, &["--count", "7", "--timeout-ms", "10000"])?;
    let client_pid = client.pid;
    let (_, results) = client.wait_exit(Duration::from_secs(90));
    o.info("client", json!(results));
    let failed = results
        .iter()
        .filter(|l| l.starts_with("EADDRNOTAVAIL"))
        .count();
    o.check_true(
        "the client ran out of local ports (EADDRNOTAVAIL)",
        failed > 0,
        json!(failed),
    );
    agent.wait_for(
        mark,
        |v| is_cause(v, "ephemeral_port_exhaustion"),
        failed,
        EVENT_TIMEOUT,
    );
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    let _ = server.stop();
    let evs = with_cause(&lines, "ephemeral_port_exhaustion");
    o.check(
        "ephemeral_port_exhaustion total == the client's EADDRNOTAVAIL failures",
        json!(failed),
        json!(evs.iter().filter_map(|v| u(v, "count")).sum::<u64>()),
    );
    o.check(
        "owner pid and destination port of every event",
        json!([[client_pid as u64, port]]),
        json!(evs
            .iter()
            .map(|v| (
                u(v, "owner.process.pid").unwrap_or(0),
                u(v, "network.peer.port").unwrap_or(0)
            ))
            .collect::<BTreeSet<_>>()),
    );
    o.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    Ok(())
}

/// Thousands of refused connects as fast as the guest runs: more events per second than the
/// agent prints (200 per cause by default), so it folds them into summaries, and the totals
/// must still match the kernel's counters and the client's own results exactly.
fn rst_storm(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    const CONNECTS: usize = 3000;
    let port = 41401u64;
    let port_s = port.to_string();
    let count_s = CONNECTS.to_string();
    let mark = agent.mark();
    let before = mib();
    let started = Instant::now();
    let results = run_client(
        cfg,
        &[
            "connect",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--count",
            &count_s,
            "--timeout-ms",
            "5000",
        ],
        Duration::from_secs(240),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let refused = results.iter().filter(|l| l.starts_with("refused")).count() as u64;
    let after = settled_mib();
    let rsts = delta(&before, &after, "Tcp.OutRsts");
    let sum = |lines: &[Value], cause: &str| -> u64 {
        lines
            .iter()
            .filter(|v| {
                is_cause(v, cause)
                    && (port_of(v) == Some(port) || u(v, "network.peer.port") == Some(port))
            })
            .filter_map(|v| u(v, "count"))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = agent.since(mark);
        if sum(&lines, "no_listener") as i64 >= rsts || Instant::now() >= deadline || !agent.alive()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    o.info(
        "connects_per_second",
        json!((CONNECTS as f64 / secs).round()),
    );
    o.check("every connect was refused", json!(CONNECTS), json!(refused));
    o.check(
        "no_listener total (sum of count) == Tcp.OutRsts delta",
        json!(rsts),
        json!(sum(&lines, "no_listener")),
    );
    o.check(
        "connection_refused total == the client's refused connects",
        json!(refused),
        json!(sum(&lines, "connection_refused")),
    );
    let folded = lines
        .iter()
        .filter(|v| is_cause(v, "no_listener") && u(v, "count").is_some_and(|c| c > 1))
        .count();
    o.check_true(
        "the agent folded events into summaries (the storm outran its print rate)",
        folded > 0,
        json!(folded),
    );
    o.info("lines", json!(lines.len()));
    o.info("causes_seen", causes_seen(&lines));
    Ok(())
}

/// An iptables rule in the guest's INPUT chain (legacy iptables, carried in the initramfs),
/// deleted again when dropped.
struct Rule {
    spec: Vec<String>,
}

impl Rule {
    fn append(spec: &[&str]) -> Result<Rule, String> {
        let spec: Vec<String> = spec.iter().map(|s| (*s).to_owned()).collect();
        iptables(
            &[
                &["-A", "INPUT"][..],
                &spec.iter().map(String::as_str).collect::<Vec<_>>(),
            ]
            .concat(),
        )?;
        Ok(Rule { spec })
    }

    /// Packets the rule matched so far (`iptables -L -v -x` counts them).
    fn packets(&self, needle: &str) -> Result<u64, String> {
        let listing = iptables(&["-L", "INPUT", "-v", "-x", "-n"])?;
        listing
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no rule with {needle:?} in:\n{listing}"))
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let spec: Vec<&str> = self.spec.iter().map(String::as_str).collect();
        let _ = iptables(&[&["-D", "INPUT"][..], &spec].concat());
    }
}

fn iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .args(["-w"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// REJECT (tcp-reset) and DROP rules in front of two listeners. netfilter's RSTs are reported
/// as firewall_reject with the intended listener's owner and reconcile with the rule's packet
/// counter, not with Tcp.OutRsts (which stays put); the clients' refusals are linked to them.
/// Dropped SYNs are reported per packet where the kernel gives a drop reason (6.1 and later);
/// where the agent says it cannot see them, it must report none.
fn firewall(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    const REJECTS: u64 = 3;
    let (rej_port, drop_port) = (41501u64, 41502u64);
    let (rej_s, drop_s) = (rej_port.to_string(), drop_port.to_string());
    let mark = agent.mark();
    let rej_srv = Peer::listen(cfg, "127.0.0.1", &rej_s, &["--accept"])?;
    let drop_srv = Peer::listen(cfg, "127.0.0.1", &drop_s, &["--accept"])?;
    let (rej_pid, drop_pid) = (rej_srv.pid as u64, drop_srv.pid as u64);
    let reject = Rule::append(&[
        "-p",
        "tcp",
        "--dport",
        &rej_s,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ])?;
    let drop_rule = Rule::append(&["-p", "tcp", "--dport", &drop_s, "-j", "DROP"])?;
    let m0 = settled_mib();
    let client = Peer::connect(
        cfg,
        &rej_s,
        &["--count", &REJECTS.to_string(), "--timeout-ms", "5000"],
    )?;
    let client_pid = client.pid as u64;
    let (_, results) = client.wait_exit(Duration::from_secs(60));
    o.info("reject_client", json!(results));
    let lports: BTreeSet<u64> = results
        .iter()
        .filter(|l| l.starts_with("refused"))
        .filter_map(|l| field(l, "lport").and_then(|p| p.parse().ok()))
        .collect();
    let m1 = settled_mib();
    let reject_pkts = reject.packets(&format!("dpt:{rej_port}"))?;
    let dclient = Peer::connect(
        cfg,
        &drop_s,
        &["--count", "2", "--nonblocking", "--timeout-ms", "2500"],
    )?;
    let (_, dresults) = dclient.wait_exit(Duration::from_secs(60));
    o.info("drop_client", json!(dresults));
    let m2 = settled_mib();
    let drop_pkts = drop_rule.packets(&format!("dpt:{drop_port}"))?;
    let drop_observable = agent.started["causes"]["firewall_drop"]["observable"] == json!(true);
    agent.wait_for(
        mark,
        |v| is_cause(v, "firewall_reject"),
        reject_pkts as usize,
        EVENT_TIMEOUT,
    );
    if drop_observable {
        agent.wait_for(
            mark,
            |v| is_cause(v, "firewall_drop"),
            drop_pkts as usize,
            EVENT_TIMEOUT,
        );
    }
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    drop(reject);
    drop(drop_rule);
    let _ = rej_srv.stop();
    let _ = drop_srv.stop();

    let total = |evs: &[&Value]| -> u64 { evs.iter().filter_map(|v| u(v, "count")).sum() };
    let rejects = with_cause(&lines, "firewall_reject");
    o.check(
        "REJECT rule packets (one per connect)",
        json!(REJECTS),
        json!(reject_pkts),
    );
    o.check(
        "firewall_reject total == REJECT rule packets",
        json!(reject_pkts),
        json!(total(&rejects)),
    );
    o.check(
        "firewall_reject: (origin, owner pid, local port) of every event",
        json!([["netfilter", rej_pid, rej_port]]),
        json!(rejects
            .iter()
            .map(|v| (
                s(v, "origin").unwrap_or("-").to_owned(),
                u(v, "owner.process.pid").unwrap_or(0),
                port_of(v).unwrap_or(0)
            ))
            .collect::<BTreeSet<_>>()),
    );
    o.check(
        "firewall_reject peer ports == the refused clients' ports",
        json!(lports),
        json!(rejects
            .iter()
            .filter_map(|v| u(v, "network.peer.port"))
            .collect::<BTreeSet<_>>()),
    );
    o.check(
        "Tcp.OutRsts delta while rejecting (netfilter's RSTs are not TCP's)",
        json!(0),
        json!(delta(&m0, &m1, "Tcp.OutRsts")),
    );
    let refused = with_cause(&lines, "connection_refused");
    o.check(
        "connection_refused: (owner pid, related.cause) of every event",
        json!([[client_pid, "firewall_reject"]]),
        json!(refused
            .iter()
            .filter(|v| u(v, "network.peer.port") == Some(rej_port))
            .map(|v| (
                u(v, "owner.process.pid").unwrap_or(0),
                s(v, "related.cause").unwrap_or("-").to_owned()
            ))
            .collect::<BTreeSet<_>>()),
    );
    let drops = with_cause(&lines, "firewall_drop");
    o.check_true(
        "the DROP rule saw the SYNs",
        drop_pkts >= 2,
        json!(drop_pkts),
    );
    if drop_observable {
        o.check(
            "firewall_drop total == DROP rule packets",
            json!(drop_pkts),
            json!(total(&drops)),
        );
        o.check(
            "firewall_drop: (reason, owner pid, local port) of every event",
            json!([["NETFILTER_DROP", drop_pid, drop_port]]),
            json!(drops
                .iter()
                .map(|v| (
                    s(v, "reason").unwrap_or("-").to_owned(),
                    u(v, "owner.process.pid").unwrap_or(0),
                    port_of(v).unwrap_or(0)
                ))
                .collect::<BTreeSet<_>>()),
        );
    } else {
        o.check(
            "firewall_drop events where the agent says it cannot see them",
            json!(0),
            json!(drops.len()),
        );
    }
    o.info("firewall_drop_observable", json!(drop_observable));
    o.info("drop_phase_mib", changes(&m1, &m2));
    o.info(
        "events",
        json!(rejects
            .iter()
            .chain(drops.iter())
            .map(|v| how(v))
            .collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    Ok(())
}

/// A client with keepalive (1 s idle, 1 s interval, 2 probes) whose server stops answering
/// (a DROP rule on the server's port): the client's kernel gives up and sends an RST, reported
/// as keepalive_timeout with the client as owner, once per TCPAbortOnTimeout.
fn keepalive_timeout(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    let port = 41503u64;
    let port_s = port.to_string();
    let mark = agent.mark();
    let server = Peer::listen(cfg, "127.0.0.1", &port_s, &["--accept"])?;
    let before = settled_mib();
    let mut client = Peer::spawn(
        cfg,
        &[
            "keepalive",
            "--addr",
            "127.0.0.1",
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
        ],
    )?;
    let client_pid = client.pid as u64;
    let first = client.lines(1, Duration::from_secs(30));
    let lport: Option<u64> = first
        .first()
        .and_then(|l| field(l, "lport"))
        .and_then(|p| p.parse().ok());
    let lport = lport.ok_or_else(|| format!("client did not connect: {first:?}"))?;
    // The server goes silent: everything the client sends to it is dropped.
    let silence = Rule::append(&["-p", "tcp", "--dport", &port_s, "-j", "DROP"])?;
    let (_, rest) = client.wait_exit(Duration::from_secs(90));
    o.info("client", json!(rest));
    o.check_true(
        "the client's connection timed out (ETIMEDOUT)",
        rest.iter().any(|l| l.starts_with("error ETIMEDOUT")),
        json!(rest.last()),
    );
    agent.wait_for(mark, |v| is_cause(v, "keepalive_timeout"), 1, EVENT_TIMEOUT);
    let after = settled_mib();
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    drop(silence);
    let _ = server.stop();
    let ka = with_cause(&lines, "keepalive_timeout");
    o.check(
        "keepalive_timeout total == TcpExt.TCPAbortOnTimeout delta",
        json!(delta(&before, &after, "TcpExt.TCPAbortOnTimeout")),
        json!(ka.iter().filter_map(|v| u(v, "count")).sum::<u64>()),
    );
    o.check("keepalive_timeout events", json!(1), json!(ka.len()));
    if let Some(v) = ka.first() {
        o.check(
            "owner pid (the client)",
            json!(client_pid),
            json!(u(v, "owner.process.pid")),
        );
        o.check("local port", json!(lport), json!(port_of(v)));
        o.check("peer port", json!(port), json!(u(v, "network.peer.port")));
    }
    o.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(delta(&before, &after, "Tcp.OutRsts")),
        json!(tcp_sent_total(&lines)),
    );
    o.info(
        "events",
        json!(ka.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

/// `key=value` token of a peer's output line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The events of `lines` with `cause`.
fn with_cause<'a>(lines: &'a [Value], cause: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| is_cause(v, cause)).collect()
}

/// Sum of `count` over events that TCP itself sent (the agent's side of Tcp.OutRsts).
fn tcp_sent_total(lines: &[Value]) -> u64 {
    lines
        .iter()
        .filter(|v| s(v, "event.kind") == Some("cause"))
        .filter(|v| s(v, "direction") == Some("sent") && s(v, "origin") == Some("tcp_stack"))
        .filter_map(|v| u(v, "count"))
        .sum()
}

/// A connection idle for 3 s, then reset by the server (SO_LINGER 0): the client's received
/// RST carries its idle time (from `tcp_sock` members at BTF offsets, jiffies at the HZ the
/// agent measured) and is linked to the server's abort; each end names its own process.
fn reset_after_idle(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    let port = 41201u64;
    let port_s = port.to_string();
    let mark = agent.mark();
    let before = mib();
    let server = Peer::spawn(
        cfg,
        &["idle-linger0", "--port", &port_s, "--idle-ms", "3000"],
    )?;
    let server_pid = server.pid;
    let client = Peer::spawn(
        cfg,
        &[
            "send",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--bytes",
            "5",
            "--wait-close",
            "--timeout-ms",
            "60000",
        ],
    )?;
    let client_pid = client.pid;
    let (_, client_lines) = client.wait_exit(Duration::from_secs(90));
    let (_, server_lines) = server.wait_exit(Duration::from_secs(90));
    o.info("client", json!(client_lines));
    o.info("server", json!(server_lines));
    let lport: Option<u64> = client_lines
        .iter()
        .find(|l| l.starts_with("connected "))
        .and_then(|l| field(l, "lport"))
        .and_then(|p| p.parse().ok());
    let idle_real = server_lines
        .iter()
        .find(|l| l.starts_with("closed linger=0"))
        .and_then(|l| field(l, "idle_ms"))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|ms| ms / 1000.0);
    o.check_true(
        "the client saw the reset",
        client_lines.iter().any(|l| l == "reset"),
        json!(client_lines.last()),
    );
    agent.wait_for(mark, |v| is_cause(v, "reset_by_peer"), 1, EVENT_TIMEOUT);
    let after = settled_mib();
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    let aborts = with_cause(&lines, "abort_by_application");
    let received = with_cause(&lines, "reset_by_peer");
    o.check("abort_by_application events", json!(1), json!(aborts.len()));
    o.check("reset_by_peer events", json!(1), json!(received.len()));
    if let Some(a) = aborts.first() {
        o.check(
            "abort: owner pid",
            json!(server_pid),
            json!(u(a, "owner.process.pid")),
        );
        o.check("abort: local port", json!(port), json!(port_of(a)));
        o.check(
            "abort: peer port",
            json!(lport),
            json!(u(a, "network.peer.port")),
        );
    }
    if let Some(r) = received.first() {
        o.check(
            "reset_by_peer: owner pid",
            json!(client_pid),
            json!(u(r, "owner.process.pid")),
        );
        o.check("reset_by_peer: local port", json!(lport), json!(port_of(r)));
        o.check(
            "reset_by_peer: related.cause (the RST this host sent)",
            json!("abort_by_application"),
            json!(s(r, "related.cause")),
        );
        let idle = get(r, "evidence.idle_seconds").and_then(Value::as_f64);
        o.check_true(
            "reset_by_peer: evidence.idle_seconds within 10 % of the server's idle time",
            matches!((idle, idle_real), (Some(i), Some(real)) if (i - real).abs() <= 0.1 * real),
            json!({"idle_seconds": idle, "real": idle_real}),
        );
    }
    o.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(delta(&before, &after, "Tcp.OutRsts")),
        json!(tcp_sent_total(&lines)),
    );
    o.check(
        "Tcp.OutRsts delta",
        json!(1),
        json!(delta(&before, &after, "Tcp.OutRsts")),
    );
    o.info(
        "events",
        json!(aborts
            .iter()
            .chain(received.iter())
            .map(|v| how(v))
            .collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

/// TCP state and timer of the IPv4 socket `local_port` -> `remote_port`.
fn tcp_row(local_port: u64, remote_port: u64) -> Option<(String, String)> {
    tcp_rows(false)
        .into_iter()
        .find(|r| r.local_port == local_port && r.remote_port == remote_port)
        .map(|r| (r.state, r.timer))
}

/// A segment to a socket the server already closed: the server's orphan becomes a timewait
/// socket (FIN_WAIT2 sub-state), the client writes to it, TCP answers with an RST that has no
/// owner; the agent names the server as the socket's last owner.
fn timewait_segment(cfg: &Config, o: &mut Outcome, agent: &mut Agent) -> Result<(), String> {
    let port = 41202u64;
    let port_s = port.to_string();
    // tcp_fin_timeout > 60 s keeps the orphan a full socket for 3 s, then a timewait socket
    // for 3 s (tcp_time_wait with FIN_WAIT2, timeout - 60 s): a window the test can hit.
    let _fin_timeout = Sysctl::set("net.ipv4.tcp_fin_timeout", "63")?;
    let go = format!("{}/timewait_segment.go", cfg.workdir);
    let _ = fs::remove_file(&go);
    let mark = agent.mark();
    let before = mib();
    let server = Peer::listen(cfg, "127.0.0.1", &port_s, &["--accept", "--hold-ms", "300"])?;
    let server_pid = server.pid;
    let mut client = Peer::spawn(
        cfg,
        &[
            "late-send",
            "--addr",
            "127.0.0.1",
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
        ],
    )?;
    let client_pid = client.pid;
    // `connected lport=P`, `sent 10`, `eof`.
    let first = client.lines(3, Duration::from_secs(60));
    o.info("client_before_go", json!(first));
    let lport: Option<u64> = first
        .iter()
        .find(|l| l.starts_with("connected"))
        .and_then(|l| field(l, "lport"))
        .and_then(|p| p.parse().ok());
    let lport = lport.ok_or_else(|| format!("client did not connect: {first:?}"))?;
    // Writing before the orphan is a timewait socket would hit the full socket instead.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut row = tcp_row(port, lport);
    while row.as_ref().map(|(st, tr)| (st.as_str(), tr.as_str())) != Some(("05", "03"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        row = tcp_row(port, lport);
    }
    o.check(
        "server's socket is a FIN_WAIT2 timewait socket (st 05, timer 03) before the write",
        json!(["05", "03"]),
        json!(row),
    );
    fs::write(&go, b"go").map_err(|e| format!("write {go}: {e}"))?;
    let (_, rest) = client.wait_exit(Duration::from_secs(90));
    o.info("client_after_go", json!(rest));
    agent.wait_for(mark, |v| is_cause(v, "timewait_segment"), 1, EVENT_TIMEOUT);
    let after = settled_mib();
    std::thread::sleep(GRACE);
    let lines = agent.since(mark);
    let _ = server.stop();
    let tw = with_cause(&lines, "timewait_segment");
    o.check("timewait_segment events", json!(1), json!(tw.len()));
    if let Some(v) = tw.first() {
        o.check("local port", json!(port), json!(port_of(v)));
        o.check("peer port", json!(lport), json!(u(v, "network.peer.port")));
        o.check(
            "no owner: a timewait socket belongs to no process (the client was on the CPU)",
            json!(null),
            json!(u(v, "owner.process.pid")),
        );
        o.check(
            "evidence.last_owner is the server that closed the socket",
            json!(server_pid),
            json!(u(v, "evidence.last_owner.process.pid")),
        );
    }
    o.info("client_pid", json!(client_pid));
    o.check(
        "RSTs TCP sent (agent) == Tcp.OutRsts delta",
        json!(delta(&before, &after, "Tcp.OutRsts")),
        json!(tcp_sent_total(&lines)),
    );
    o.info(
        "events",
        json!(tw.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

/// abort-close / linger0 server + `send --wait-close` client; the server's close sends the RST.
fn connection_abort(
    cfg: &Config,
    o: &mut Outcome,
    agent: &mut Agent,
    mode: &str,
    port: u64,
    want_cause: &str,
    mib_key: &str,
) -> Result<(), String> {
    let port_s = port.to_string();
    let mark = agent.mark();
    let before = mib();
    let mut server_args = vec![mode, "--port", &port_s];
    if mode == "linger0" {
        server_args.push("--wait-data");
    }
    let server = Peer::spawn(cfg, &server_args)?;
    let server_pid = server.pid;
    let client = Peer::spawn(
        cfg,
        &[
            "send",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--bytes",
            "1000",
            "--wait-close",
        ],
    )?;
    let client_pid = client.pid;
    let (ccode, cout) = client.wait_exit(Duration::from_secs(60));
    let (scode, sout) = server.wait_exit(Duration::from_secs(60));
    o.info(
        "peers",
        json!({"server": {"pid": server_pid, "exit": scode, "out": sout},
               "client": {"pid": client_pid, "exit": ccode, "out": cout}}),
    );
    let mine = |v: &Value| is_cause(v, want_cause) && port_of(v) == Some(port);
    agent.wait_for(mark, mine, 1, EVENT_TIMEOUT);
    // The client's side of the same RST, for the record.
    agent.wait_for(
        mark,
        |v| is_cause(v, "reset_by_peer"),
        1,
        Duration::from_secs(5),
    );
    std::thread::sleep(GRACE);
    let after = mib();
    let lines = agent.since(mark);
    let evs: Vec<&Value> = lines.iter().filter(|v| mine(v)).collect();
    o.check(
        &format!("{want_cause} events on :{port}"),
        json!(1),
        json!(evs.len()),
    );
    o.check(
        "owner pid is the closing server",
        json!(server_pid),
        json!(evs.first().and_then(|v| u(v, "owner.process.pid"))),
    );
    let first = evs.first().map(|v| how(v)).unwrap_or(Value::Null);
    o.info("reason", first["reason"].clone());
    o.info("inferred", first["inferred"].clone());
    o.info(
        "events",
        json!(evs.iter().map(|v| how(v)).collect::<Vec<_>>()),
    );
    // What the agent said instead, if it said something else about this connection.
    o.info(
        "port_events",
        json!(lines
            .iter()
            .filter(|v| s(v, "event.kind") == Some("cause")
                && (port_of(v) == Some(port) || u(v, "network.peer.port") == Some(port)))
            .map(how)
            .collect::<Vec<_>>()),
    );
    let sent = lines
        .iter()
        .filter(|v| s(v, "event.kind") == Some("cause") && s(v, "direction") == Some("sent"))
        .count();
    o.info(
        "sent_rst_events_vs_Tcp.OutRsts",
        json!([sent, delta(&before, &after, "Tcp.OutRsts")]),
    );
    o.info(mib_key, json!(delta(&before, &after, mib_key)));
    o.info("causes_seen", causes_seen(&lines));
    o.info("mib_changes", changes(&before, &after));
    Ok(())
}

fn run_scenario(cfg: &Config, name: &str, agent: &mut Result<Agent, String>) -> bool {
    note(&format!("scenario {name}"));
    let mut o = Outcome::new();
    let mark = agent.as_mut().map_or(0, |a| a.mark());
    let result = match agent {
        Err(e) => Err(format!("no agent: {e}")),
        Ok(agent) => match name {
            _ if !agent.alive() => Err("the agent exited before this scenario".to_owned()),
            "no_listener" => no_listener(cfg, &mut o, agent),
            "accept_queue_overflow" => accept_queue_overflow(cfg, &mut o, agent),
            "ack_time_overflow" => ack_time_overflow(cfg, &mut o, agent, "127.0.0.1", 41004, false),
            "ack_time_overflow_v4_mapped" => {
                ack_time_overflow(cfg, &mut o, agent, "::", 41005, false)
            }
            "ack_time_overflow_abort" => {
                ack_time_overflow(cfg, &mut o, agent, "127.0.0.1", 41006, true)
            }
            "ephemeral_port_exhaustion" => ephemeral_port_exhaustion(cfg, &mut o, agent),
            "rst_storm" => rst_storm(cfg, &mut o, agent),
            "firewall" => firewall(cfg, &mut o, agent),
            "keepalive_timeout" => keepalive_timeout(cfg, &mut o, agent),
            "reset_after_idle" => reset_after_idle(cfg, &mut o, agent),
            "timewait_segment" => timewait_segment(cfg, &mut o, agent),
            "fd_exhaustion" => fd_exhaustion(cfg, &mut o, agent),
            "abort_on_close" => connection_abort(
                cfg,
                &mut o,
                agent,
                "abort-close",
                41101,
                "abort_on_close",
                "TcpExt.TCPAbortOnClose",
            ),
            "abort_by_application" => connection_abort(
                cfg,
                &mut o,
                agent,
                "linger0",
                41102,
                "abort_by_application",
                "TcpExt.TCPAbortOnData",
            ),
            other => Err(format!("unknown scenario {other}")),
        },
    };
    let pass = result.is_ok() && o.passed();
    let mut detail = json!({"checks": o.checks, "info": o.info});
    if let Err(e) = &result {
        detail["error"] = json!(e);
    }
    if !pass {
        // Everything the agent said during the scenario, verbatim: what it saw instead.
        if let Ok(a) = agent {
            let events: Vec<Value> = a
                .since(mark)
                .into_iter()
                .filter(|v| s(v, "event.kind") == Some("cause"))
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
    note("starting the agent");
    let mut agent = Agent::start(&cfg);
    match &mut agent {
        Ok(a) => {
            say(&format!("RST-AGENT-READY {:.1}", a.startup_secs));
            say(&format!("RST-AGENT-STARTED {}", a.started));
            a.print_stderr("start");
        }
        Err(e) => note(&format!("the agent did not start: {e}")),
    }
    let mut all = agent.is_ok();
    for name in SCENARIOS.iter() {
        if cfg.only.as_ref().is_some_and(|o| !o.contains(*name)) {
            continue;
        }
        all &= run_scenario(&cfg, name, &mut agent);
    }
    if let Ok(a) = &mut agent {
        note("stopping the agent");
        let fin = a.stop();
        all &= fin["exit"] == json!(0);
        say(&format!("RST-AGENT-FINAL {fin}"));
        a.print_stderr("run");
    }
    std::process::exit(if all { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

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
