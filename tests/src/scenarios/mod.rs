//! The cause scenarios, each written once and run in two places:
//!
//! * on the host by tests/tests/scenarios.rs, each scenario in a fresh namespace with its own
//!   agent ([`host::HostEnv`]);
//! * in a QEMU guest by rst-trace-vmcheck, one after another in the guest's root namespace with
//!   one agent for all (its `GuestEnv`), on the kernels of `cargo xtask integration-test vm`.
//!
//! A scenario is a function of a [`Run`]: the [`Env`] (what differs between host and guest: how
//! peers and tools are started, where the counters are read, the agent, how slow the machine
//! is) and the address [`Family`]. It records every comparison as a check (want, got) rather
//! than asserting, so the guest can report all of them; the host test fails on the first
//! scenario whose checks do not all hold, printing them.
//!
//! Every scenario ends with [`Run::claims`]: no event names a cause the scenario did not provoke
//! and no event blames a process the scenario did not start.

pub mod connection;
pub mod firewall;
pub mod host;
pub mod listener;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::{event, Agent, ConnectResult, Mib, Peer};

/// The address family a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The suffix of the scenario's name: `_v4` or `_v6`.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "_v4",
            Family::V6 => "_v6",
        }
    }

    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1",
            Family::V6 => "::1",
        }
    }

    /// `network.type` of the events.
    pub fn network_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// The firewall tool whose rules see this family's packets.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The kernel's socket table of this family.
    pub fn proc_tcp(self) -> &'static str {
        match self {
            Family::V4 => "/proc/net/tcp",
            Family::V6 => "/proc/net/tcp6",
        }
    }

    /// The port a scenario uses for its `base` port. IPv6 runs 2000 above IPv4, so that both
    /// variants can run one after the other in one namespace (the guest) without meeting each
    /// other's leftovers (timewait sockets, late retransmissions).
    pub fn port(self, base: u16) -> u16 {
        match self {
            Family::V4 => base,
            Family::V6 => base + 2000,
        }
    }
}

/// What differs between the host and the guest.
pub trait Env {
    /// True when the agent sees only this scenario (its own namespace and agent): every event is
    /// the scenario's. False in the guest, where events are told apart by the scenario's ports.
    fn isolated(&self) -> bool;
    /// A command running `program` where the scenario runs (inside its namespace on the host).
    fn command(&self, program: &str, args: &[&str]) -> Command;
    /// The rst-trace-peer program.
    fn peer_program(&self) -> PathBuf;
    /// The namespace's MIB counters now.
    fn mib(&self) -> Mib;
    /// The MIB counters once they stopped moving (bounded).
    fn settled_mib(&self) -> Mib;
    /// A file of the namespace (/proc/net/tcp6, …).
    fn read(&self, path: &str) -> String;
    fn sysctl_get(&self, key: &str) -> String;
    fn sysctl_set(&self, key: &str, value: &str);
    /// The agent under test.
    fn agent(&mut self) -> &mut Agent;
    /// The namespace's inode, as the agent reports it in `network.netns`.
    fn netns_inode(&self) -> u64;
    /// A directory for the peers' go-files.
    fn workdir(&self) -> PathBuf;
    /// Ends the scenario's watch: its events since `mark`, and the final stats line where the
    /// agent served this scenario alone (the host stops it; the guest's agent goes on).
    fn finish(&mut self, mark: usize) -> (Vec<Value>, Option<Value>);
    /// Factor on every bound (the guest under emulation is slower).
    fn slowness(&self) -> u32;
}

/// A scenario's body.
pub type Body = fn(&mut Run);

/// A scenario: its name (the family's suffix appended where it runs on both) and body.
pub struct Scenario {
    pub name: &'static str,
    /// One family only for a scenario that is its own mix of families (v4-mapped clients of a
    /// v6 listener): it runs once, under its own name.
    pub families: &'static [Family],
    pub body: Body,
}

const BOTH: &[Family] = &Family::ALL;
const ONE: &[Family] = &[Family::V6];

/// Every shared scenario, in the order the guest runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no_listener",
        families: BOTH,
        body: listener::no_listener,
    },
    Scenario {
        name: "accept_queue_overflow",
        families: BOTH,
        body: listener::accept_queue_overflow,
    },
    Scenario {
        name: "reuseport_group",
        families: BOTH,
        body: listener::reuseport_group,
    },
    Scenario {
        name: "ack_time_overflow",
        families: BOTH,
        body: listener::ack_time_overflow,
    },
    Scenario {
        name: "ack_time_overflow_v4_mapped",
        families: ONE,
        body: listener::ack_time_overflow_v4_mapped,
    },
    Scenario {
        name: "ack_time_overflow_abort",
        families: BOTH,
        body: listener::ack_time_overflow_abort,
    },
    Scenario {
        name: "abort_on_overflow_burst",
        families: BOTH,
        body: listener::abort_on_overflow_burst,
    },
    Scenario {
        name: "fd_exhaustion",
        families: BOTH,
        body: listener::fd_exhaustion,
    },
    Scenario {
        name: "ephemeral_port_exhaustion",
        families: BOTH,
        body: connection::ephemeral_port_exhaustion,
    },
    Scenario {
        name: "reset_after_idle",
        families: BOTH,
        body: connection::reset_after_idle,
    },
    Scenario {
        name: "timewait_segment",
        families: BOTH,
        body: connection::timewait_segment,
    },
    Scenario {
        name: "firewall",
        families: BOTH,
        body: firewall::firewall,
    },
    Scenario {
        name: "keepalive_timeout",
        families: BOTH,
        body: connection::keepalive_timeout,
    },
    Scenario {
        name: "rst_storm",
        families: BOTH,
        body: connection::rst_storm,
    },
    Scenario {
        name: "abort_on_close",
        families: BOTH,
        body: connection::abort_on_close,
    },
    Scenario {
        name: "abort_by_application",
        families: BOTH,
        body: connection::abort_by_application,
    },
];

/// Every runnable name (`no_listener_v4`, `no_listener_v6`, …, `ack_time_overflow_v4_mapped`)
/// with its family and body, in order.
pub fn all() -> Vec<(String, Family, Body)> {
    let mut out = Vec::new();
    for s in SCENARIOS {
        if s.families.len() == 1 {
            out.push((s.name.to_owned(), s.families[0], s.body));
        } else {
            for f in s.families {
                out.push((format!("{}{}", s.name, f.suffix()), *f, s.body));
            }
        }
    }
    out
}

/// The scenario called `name` (as listed by [`all`]).
pub fn find(name: &str) -> Option<(Family, Body)> {
    all()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, f, b)| (f, b))
}

/// What to undo when the scenario ends, whatever its outcome.
enum Undo {
    Sysctl(String, String),
    Command(String, Vec<String>),
}

/// One scenario's run: its environment, family, checks and the processes and ports it owns.
pub struct Run<'a> {
    pub env: &'a mut dyn Env,
    pub family: Family,
    checks: Vec<Value>,
    info: Map<String, Value>,
    /// Processes the scenario started: the only ones an event may blame.
    pids: BTreeSet<u32>,
    /// The scenario's server ports: in a shared namespace, its events are those on these ports.
    ports: BTreeSet<u16>,
    /// The pid of the peer started last.
    last_pid: u32,
    undo: Vec<Undo>,
}

impl<'a> Run<'a> {
    pub fn new(env: &'a mut dyn Env, family: Family) -> Run<'a> {
        // Checked first, and by name: a refused program otherwise shows only as events that
        // never come.
        let rejected = env.agent().verifier_rejections();
        let mut run = Run {
            env,
            family,
            checks: Vec::new(),
            info: Map::new(),
            pids: BTreeSet::new(),
            ports: BTreeSet::new(),
            last_pid: 0,
            undo: Vec::new(),
        };
        run.check("programs the verifier refused", json!([]), json!(rejected));
        run
    }

    /// The family's port for `base`, taken as one of the scenario's ports.
    pub fn port(&mut self, base: u16) -> u16 {
        let p = self.family.port(base);
        self.ports.insert(p);
        p
    }

    pub fn addr(&self) -> &'static str {
        self.family.loopback()
    }

    /// `d` scaled to the environment's speed.
    pub fn bound(&self, d: Duration) -> Duration {
        d * self.env.slowness()
    }

    /// How long an expected event may take to arrive.
    pub fn event_timeout(&self) -> Duration {
        self.bound(Duration::from_secs(20))
    }

    // -- peers -------------------------------------------------------------------------------

    /// Starts rst-trace-peer with `args` (waiting for `ready <pid>`); its pid may be blamed.
    pub fn peer(&mut self, args: &[&str]) -> Peer {
        let cmd = self
            .env
            .command(&self.env.peer_program().to_string_lossy(), args);
        let p = Peer::spawn_command(cmd, args);
        self.pids.insert(p.pid());
        self.last_pid = p.pid();
        p
    }

    /// The pid of the peer started last (the client of [`Run::connect`]).
    pub fn last_pid(&self) -> u32 {
        self.last_pid
    }

    /// `listen --addr ADDR --port PORT extra…`
    pub fn listen(&mut self, addr: &str, port: u16, extra: &[&str]) -> Peer {
        let port = port.to_string();
        let args = [&["listen", "--addr", addr, "--port", &port][..], extra].concat();
        self.peer(&args)
    }

    /// `connect --addr ADDR --port PORT --count N extra…` to completion: one result per attempt.
    pub fn connect(&mut self, addr: &str, port: u16, count: u32, extra: &[&str]) -> Vec<String> {
        let (port, count_s) = (port.to_string(), count.to_string());
        let args = [
            &[
                "connect", "--addr", addr, "--port", &port, "--count", &count_s,
            ][..],
            extra,
        ]
        .concat();
        let mut p = self.peer(&args);
        let ex = p.wait_exit(self.bound(Duration::from_secs(120)));
        assert!(
            ex.status.success(),
            "peer {args:?} failed: {:?}, stderr: {}",
            ex.status,
            ex.stderr
        );
        assert_eq!(
            ex.lines.len(),
            count as usize,
            "peer {args:?} printed {:?}",
            ex.lines
        );
        ex.lines
    }

    /// Up to `n` output lines of `p`, each within `timeout` of the previous.
    pub fn lines(&self, p: &mut Peer, n: usize, timeout: Duration) -> Vec<String> {
        let timeout = self.bound(timeout);
        (0..n).map_while(|_| p.next_line(timeout)).collect()
    }

    // -- the namespace -----------------------------------------------------------------------

    /// Sets a sysctl of the namespace, restored when the run ends.
    pub fn sysctl(&mut self, key: &str, value: &str) {
        let old = self.env.sysctl_get(key);
        self.undo.push(Undo::Sysctl(key.to_owned(), old));
        self.env.sysctl_set(key, value);
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .env
            .command(tool, args)
            .output()
            .map_err(|e| format!("{tool} {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} {args:?} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Appends `spec` to the INPUT chain of the family's firewall (iptables or ip6tables);
    /// deleted when the run ends.
    pub fn rule(&mut self, spec: &[&str]) {
        let tool = self.family.iptables();
        let add = [&["-w", "-A", "INPUT"][..], spec].concat();
        self.tool(tool, &add)
            .unwrap_or_else(|e| panic!("adding a rule: {e}"));
        let del = [&["-w", "-D", "INPUT"][..], spec].concat();
        self.undo.push(Undo::Command(
            tool.to_owned(),
            del.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }

    /// Deletes a rule [`Run::rule`] added, before the run ends.
    pub fn delete_rule(&mut self, spec: &[&str]) {
        let tool = self.family.iptables();
        let del: Vec<String> = [&["-w", "-D", "INPUT"][..], spec]
            .concat()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let args: Vec<&str> = del.iter().map(String::as_str).collect();
        self.tool(tool, &args)
            .unwrap_or_else(|e| panic!("deleting a rule: {e}"));
        self.undo
            .retain(|u| !matches!(u, Undo::Command(t, a) if t == tool && *a == del));
    }

    /// Packets matched so far by the family's one INPUT rule with `target` and `token`.
    pub fn rule_packets(&self, target: &str, token: &str) -> u64 {
        let tool = self.family.iptables();
        let listing = self
            .tool(tool, &["-w", "-L", "INPUT", "-v", "-x", "-n"])
            .unwrap_or_else(|e| panic!("listing rules: {e}"));
        crate::rule_packets_in(&listing, target, token)
            .unwrap_or_else(|e| panic!("{e} ({tool}):\n{listing}"))
    }

    /// The socket table of `family` (`/proc/net/tcp` or `tcp6`).
    pub fn tcp_rows(&self, family: Family) -> Vec<TcpRow> {
        TcpRow::parse(&self.env.read(family.proc_tcp()))
    }

    /// Accept queue length of the `family` listener on `port` (state 0A).
    pub fn listen_queue(&self, family: Family, port: u16) -> Option<u64> {
        self.tcp_rows(family)
            .into_iter()
            .find(|r| r.local_port == port && r.state == "0A")
            .map(|r| r.rx_queue)
    }

    /// Writes a peer's go-file.
    pub fn go_file(&self, name: &str) -> String {
        let p = self.env.workdir().join(format!("{name}.go"));
        let _ = std::fs::remove_file(&p);
        p.to_string_lossy().into_owned()
    }

    // -- the agent ---------------------------------------------------------------------------

    /// Where this scenario's events begin.
    pub fn mark(&mut self) -> usize {
        self.env.agent().mark()
    }

    /// Waits (bounded by [`Run::event_timeout`] times `factor`) for `n` matching lines since
    /// `mark`; returns how many came.
    pub fn wait(&mut self, mark: usize, pred: impl Fn(&Value) -> bool, n: usize) -> usize {
        let t = self.event_timeout();
        self.env.agent().wait_since(mark, pred, n, t)
    }

    /// Waits (bounded) until `total(events since mark) >= want`.
    pub fn wait_total(&mut self, mark: usize, want: i64, total: impl Fn(&[Value]) -> u64) {
        let deadline = Instant::now() + self.event_timeout();
        loop {
            let lines = self.env.agent().since(mark);
            if total(&lines) as i64 >= want
                || Instant::now() >= deadline
                || !self.env.agent().alive()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The scenario's events (and the final stats where the agent served it alone), after
    /// giving late or wrong extra events a moment to show up.
    pub fn finish(&mut self, mark: usize) -> (Vec<Value>, Option<Value>) {
        let (lines, stats) = self.env.finish(mark);
        // What the kernel programs counted, lost and skipped: where a total falls short, these
        // say whether the event never reached a program, or reached it and went missing later.
        if let Some(s) = &stats {
            self.info("agent_kernel_counters", s["kernel"].clone());
            self.info("agent_records", s["records"].clone());
        }
        (lines, stats)
    }

    /// `reason` where the kernel's reset tracepoint carries reasons, None where the agent's
    /// started line says it has none (5.10: causes are inferred from socket state).
    pub fn reset_reason(&mut self, reason: &'static str) -> Option<&'static str> {
        let note = self.env.agent().started()["causes"]["no_listener"]["note"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (!note.contains("no reason field")).then_some(reason)
    }

    // -- checks ------------------------------------------------------------------------------

    pub fn check(&mut self, what: &str, want: Value, got: Value) {
        let ok = want == got;
        self.checks
            .push(json!({"check": what, "want": want, "got": got, "ok": ok}));
    }

    pub fn check_true(&mut self, what: &str, ok: bool, got: Value) {
        self.checks
            .push(json!({"check": what, "want": true, "got": got, "ok": ok}));
    }

    /// `got == want`, the kernel's count. Where the kernel skipped `skipped` runs of the
    /// programs that report these events (an interrupt brought one while the program was
    /// running on that CPU: the kernel counts the run instead of making it, and the agent
    /// reports that count), the events of those runs cannot be in `got`: then
    /// `want - skipped <= got <= want`, and the check says so.
    pub fn check_count(&mut self, what: &str, want: u64, got: u64, skipped: u64) {
        if skipped == 0 {
            self.check(what, json!(want), json!(got));
            return;
        }
        let ok = got <= want && got + skipped >= want;
        self.checks.push(json!({
            "check": format!("{what}, less runs the kernel skipped"),
            "want": {"at_most": want, "at_least": want.saturating_sub(skipped)},
            "got": got,
            "skipped_runs": skipped,
            "ok": ok,
        }));
    }

    pub fn info(&mut self, k: &str, v: Value) {
        self.info.insert(k.to_owned(), v);
    }

    /// Whether an event is this scenario's: everything in its own namespace, else an event on
    /// one of its ports.
    fn is_mine(&self, v: &Value) -> bool {
        if self.env.isolated() {
            return true;
        }
        let on = |path: &str| {
            event::u64_at(v, path)
                .and_then(|p| u16::try_from(p).ok())
                .is_some_and(|p| self.ports.contains(&p))
        };
        on("network.local.port") || on("network.peer.port") || on("evidence.listening_port")
    }

    /// The claim check: no cause event names a cause outside `allowed`, none names the wrong
    /// family or namespace, and none blames (as owner, other owner or acceptor) a process the
    /// scenario did not start, or a null one.
    pub fn claims(&mut self, lines: &[Value], allowed: &[&str]) {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|v| event::is_cause_event(v) && self.is_mine(v))
            .collect();
        let phantoms: BTreeSet<String> = mine
            .iter()
            .filter_map(|v| event::cause(v))
            .filter(|c| !allowed.contains(c))
            .map(str::to_owned)
            .collect();
        self.check(
            "no phantom causes (causes the scenario did not provoke)",
            json!([]),
            json!(phantoms),
        );
        let mut strangers = BTreeSet::new();
        for v in &mine {
            let mut blamed: Vec<Option<u64>> = Vec::new();
            if event::owner(v).is_some_and(|o| !o.is_null()) {
                blamed.push(event::u64_at(v, "owner.process.pid"));
            }
            for list in ["other_owners", "evidence.accepting_processes"] {
                for o in event::get(v, list)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    blamed.push(event::u64_at(o, "process.pid").or(event::u64_at(o, "pid")));
                }
            }
            for pid in blamed {
                let known = pid
                    .and_then(|p| u32::try_from(p).ok())
                    .is_some_and(|p| self.pids.contains(&p));
                if !known {
                    strangers.insert(format!(
                        "{} blames pid {pid:?}",
                        event::cause(v).unwrap_or("?")
                    ));
                }
            }
        }
        self.check(
            "no event blames a process the scenario did not start (nor a null one)",
            json!([]),
            json!(strangers),
        );
        let netns = self.env.netns_inode();
        let wrong_ns = mine
            .iter()
            .filter(|v| event::netns(v).is_some_and(|n| n != netns))
            .count();
        self.check(
            "events in another namespace than the scenario's",
            json!(0),
            json!(wrong_ns),
        );
    }

    /// Checks that every event of `evs` has `network.type` of `family`.
    pub fn check_network_type(&mut self, evs: &[&Value], family: Family) {
        let types: BTreeSet<Option<&str>> = evs
            .iter()
            .map(|v| event::str_at(v, "network.type"))
            .collect();
        let want: Vec<Option<&str>> = if evs.is_empty() {
            vec![]
        } else {
            vec![Some(family.network_type())]
        };
        self.check("network.type of the events", json!(want), json!(types));
    }

    /// Whether every check held (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c["ok"] == json!(true))
    }

    /// `{"checks": […], "info": {…}}`
    pub fn detail(&self) -> Value {
        json!({"checks": self.checks, "info": self.info})
    }

    /// The checks that failed, one per line, for a test's panic message.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| c["ok"] != json!(true))
            .map(|c| format!("{}: want {} got {}", c["check"], c["want"], c["got"]))
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Sysctl(k, v) => {
                    // A panic while already unwinding would abort: restore on a best-effort basis.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.env.sysctl_set(&k, &v)
                    }));
                }
                Undo::Command(tool, args) => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let _ = self.tool(&tool, &args);
                }
            }
        }
    }
}

/// One row of /proc/net/tcp or tcp6: ports, `st`, `rx_queue` (a listener's accept queue
/// length) and the timer code (`tr`; 3 = a timewait socket).
pub struct TcpRow {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: String,
    pub rx_queue: u64,
    pub timer: String,
}

impl TcpRow {
    pub fn parse(text: &str) -> Vec<TcpRow> {
        let hex = |f: &str| u64::from_str_radix(f, 16).ok();
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = |i: usize| {
                    f.get(i)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                };
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
}

// -- event helpers shared by the scenarios -----------------------------------------------------

/// The cause events of `lines` with `cause`.
pub fn with_cause<'v>(lines: &'v [Value], cause: &str) -> Vec<&'v Value> {
    lines
        .iter()
        .filter(|v| event::has_cause(v, cause))
        .collect()
}

/// Sum of `count` (aggregated events stand for several).
pub fn total(evs: &[&Value]) -> u64 {
    evs.iter().filter_map(|v| event::count(v)).sum()
}

/// Sum of `count` over the RSTs TCP itself sent (the agent's side of Tcp.OutRsts).
pub fn tcp_sent_total(lines: &[Value]) -> u64 {
    lines
        .iter()
        .filter(|v| event::is_cause_event(v))
        .filter(|v| event::direction(v) == Some("sent") && event::origin(v) == Some("tcp_stack"))
        .filter_map(event::count)
        .sum()
}

/// Number of events per cause, for the record.
pub fn causes_seen(lines: &[Value]) -> Value {
    let mut m = std::collections::BTreeMap::<String, u64>::new();
    for v in lines.iter().filter(|v| event::is_cause_event(v)) {
        *m.entry(event::cause(v).unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    json!(m)
}

/// Fields that say how a cause was recognised on this kernel.
pub fn how(v: &Value) -> Value {
    let at = |p: &str| event::get(v, p).cloned().unwrap_or(Value::Null);
    json!({
        "cause": at("cause"),
        "direction": at("direction"),
        "reason": at("reason"),
        "inferred": at("inferred"),
        "origin": at("origin"),
        "state": at("tcp.state"),
        "owner_pid": at("owner.process.pid"),
        "local_port": at("network.local.port"),
        "peer_port": at("network.peer.port"),
        "count": at("count"),
        "stage": at("evidence.stage"),
    })
}

/// `key=value` token of a peer's output line.
pub fn field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The `lport=` of a peer line starting with `prefix`.
pub fn lport_of(lines: &[String], prefix: &str) -> Option<u16> {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| field(l, "lport"))
        .and_then(|p| p.parse().ok())
}

/// Counts of connect results by their first word (`connected`, `refused`, …).
pub fn results(lines: &[String]) -> Value {
    let mut m = std::collections::BTreeMap::<String, u64>::new();
    for l in lines {
        if let Some(r) = ConnectResult::parse(l) {
            *m.entry(r.result).or_default() += 1;
        }
    }
    json!(m)
}

/// Every event of `evs` as the set of values at `path` ("-" where absent).
pub fn set_of(evs: &[&Value], path: &str) -> BTreeSet<String> {
    evs.iter()
        .map(|v| match event::get(v, path) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".to_owned(),
            Some(other) => other.to_string(),
        })
        .collect()
}

/// The owner pid of every event (0 for none).
pub fn owner_pids(evs: &[&Value]) -> BTreeSet<u64> {
    evs.iter()
        .map(|v| event::u64_at(v, "owner.process.pid").unwrap_or(0))
        .collect()
}

/// The distinct values of `it`, as a JSON array in a stable order (for "of every event" checks:
/// one element when all agree).
pub fn distinct(it: impl IntoIterator<Item = Value>) -> Value {
    let m: std::collections::BTreeMap<String, Value> =
        it.into_iter().map(|v| (v.to_string(), v)).collect();
    Value::Array(m.into_values().collect())
}
