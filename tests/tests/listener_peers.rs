//! Listener-side causes driven by real peers, reconciled exactly with the netns MIB counters:
//!
//! 1. `tcp_abort_on_overflow=1`: the RSTs a full accept queue makes the kernel send.
//! 2. ACK-time accept-queue overflow, forced deterministically: a raw-socket client (the peer's
//!    `delayed-ack`) in a second netns sends SYNs, holds the handshakes half-open, and sends the
//!    final ACKs only once real connections from another process have filled the accept queue.
//! 3. SYN floods with hping3 (spoofed random sources), syncookies on and off.
//! 4. A real nginx (small backlog, tiny RLIMIT_NOFILE) under wrk.
//!
//! Servers, clients and the agent are separate processes. Two-host scenarios use a veth pair
//! between two throw-away namespaces; the client netns drops its own RSTs (iptables OUTPUT), so
//! its kernel does not answer the raw client's SYN-ACKs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rst_trace_tests::{event, mib, poll_until, require_root, Agent, Mib, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

static VETH_SEQ: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// Helpers

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): stdout={:?} stderr={:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair between two of our namespaces; deleted on drop (deleting either end deletes both;
/// the namespaces' own deletion would remove it too).
struct Veth {
    ns: String,
    dev: String,
}

impl Veth {
    /// `a_cidr` on the end in `a`, `b_cidr` on the end in `b`, both up.
    fn new(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> Veth {
        let n = VETH_SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let (da, db) = (format!("rlpa{tag}"), format!("rlpb{tag}"));
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &da,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &db,
            "netns",
            b.name(),
        ]));
        let v = Veth {
            ns: a.name().to_string(),
            dev: da.clone(),
        };
        for (ns, dev, cidr) in [(a, &da, a_cidr), (b, &db, b_cidr)] {
            run_ok(Command::new("ip").args(["-n", ns.name(), "addr", "add", cidr, "dev", dev]));
            run_ok(Command::new("ip").args(["-n", ns.name(), "link", "set", dev, "up"]));
        }
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.dev])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// In `ns`: drop every outgoing TCP RST (the client host must not answer SYN-ACKs it did not
/// ask for through a socket), and every ICMP destination-unreachable: SYN-ACKs to the spoofed
/// sources of a flood reach this host, which does not forward, and its kernel answers some of
/// them (about one a second) with host-unreachable; the server then drops that request socket
/// and counts it in ListenDrops, which the floods' kernel checks do not expect. Only that
/// namespace's own ruleset; it goes with the namespace.
fn drop_own_rsts(ns: &Netns) {
    ns.exec(
        "iptables",
        &[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--tcp-flags",
            "RST",
            "RST",
            "-j",
            "DROP",
        ],
    );
    ns.exec(
        "iptables",
        &[
            "-A",
            "OUTPUT",
            "-p",
            "icmp",
            "--icmp-type",
            "destination-unreachable",
            "-j",
            "DROP",
        ],
    );
}

/// Waits (bounded) until `keys` of the netns MIB have not moved for `quiet`.
fn settle(ns: &Netns, keys: &[&str], quiet: Duration, timeout: Duration) -> Mib {
    let deadline = Instant::now() + timeout;
    let mut last = Mib::snapshot(ns);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Mib::snapshot(ns);
        if keys.iter().any(|k| now.get(k) != last.get(k)) {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "MIB counters {keys:?} of {} kept moving for {timeout:?}",
            ns.name()
        );
    }
}

/// (Recv-Q, Send-Q) of the listener on `port` in `ns`: queue length and cap.
fn listen_queue(ns: &Netns, port: u16) -> Option<(u32, u32)> {
    let out = ns.exec("ss", &["-ltnH", &format!("sport = :{port}")]);
    let line = out.lines().next()?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?))
}

fn wait_queue_full(ns: &Netns, port: u16) -> (u32, u32) {
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        listen_queue(ns, port).filter(|(q, c)| q > c)
    })
    .unwrap_or_else(|| {
        panic!(
            "the accept queue of :{port} did not fill; ss: {:?}",
            listen_queue(ns, port)
        )
    })
}

fn json_lines(events: &[Value]) -> String {
    events
        .iter()
        .map(|v| format!("  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count_sum(events: &[&Value]) -> u64 {
    events.iter().map(|v| event::count(v).unwrap_or(1)).sum()
}

fn u64_sum(events: &[&Value], path: &str) -> u64 {
    events
        .iter()
        .map(|v| event::u64_at(v, path).unwrap_or(0))
        .sum()
}

fn is_aqo_dropped(v: &Value) -> bool {
    event::has_cause(v, "accept_queue_overflow") && event::direction(v) == Some("dropped")
}

/// The pids an event names: owner, other_owners, evidence.accepting_processes.
fn named_pids(v: &Value) -> BTreeSet<u32> {
    let mut s = BTreeSet::new();
    if let Some(p) = event::owner_pid(v) {
        s.insert(p);
    }
    for path in ["other_owners", "evidence.accepting_processes"] {
        if let Some(arr) = event::get(v, path).and_then(Value::as_array) {
            for o in arr {
                let pid = event::u64_at(o, "process.pid").or_else(|| event::u64_at(o, "pid"));
                if let Some(p) = pid {
                    s.insert(p as u32);
                }
            }
        }
    }
    s
}

/// Run `cmd` to completion within `timeout` (killed otherwise); returns (status ok, stdout+stderr).
fn run_bounded(mut cmd: Command, timeout: Duration) -> (bool, String) {
    let dir = tempdir("run");
    let (o, e) = (dir.0.join("stdout"), dir.0.join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot spawn {cmd:?}: {err}"));
    let status = poll_until(timeout, Duration::from_millis(50), || {
        child.try_wait().ok().flatten()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not finish within {timeout:?}; output: {}{}",
            fs::read_to_string(&o).unwrap_or_default(),
            fs::read_to_string(&e).unwrap_or_default()
        );
    };
    let text = format!(
        "{}{}",
        fs::read_to_string(&o).unwrap_or_default(),
        fs::read_to_string(&e).unwrap_or_default()
    );
    (status.success(), text)
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

fn tempdir(what: &str) -> TempDir {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "rst-trace-{what}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    TempDir(p)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Two namespaces joined by a veth: `srv` 10.201.N.1/24, `cli` 10.201.N.2/24; the client netns
/// drops its own RSTs.
struct TwoHosts {
    // Field order is drop order: the veth goes before the namespaces.
    _veth: Veth,
    srv: Netns,
    cli: Netns,
    srv_addr: String,
    cli_addr: String,
}

fn two_hosts(net: u8) -> TwoHosts {
    let srv = Netns::new();
    let cli = Netns::new();
    let srv_addr = format!("10.201.{net}.1");
    let cli_addr = format!("10.201.{net}.2");
    let veth = Veth::new(
        &srv,
        &format!("{srv_addr}/24"),
        &cli,
        &format!("{cli_addr}/24"),
    );
    drop_own_rsts(&cli);
    TwoHosts {
        _veth: veth,
        srv,
        cli,
        srv_addr,
        cli_addr,
    }
}

/// The raw-socket client: sends `n` SYNs to `addr:port` from `src`, returns once every SYN-ACK
/// came back (the handshakes are then half-open on the server: n requests in its SYN queue).
fn delayed_ack(ns: &Netns, addr: &str, src: &str, port: u16, n: u32, linger_ms: u32) -> Peer {
    let (port_s, n_s, linger_s) = (port.to_string(), n.to_string(), linger_ms.to_string());
    let mut p = Peer::spawn(
        ns,
        PEER,
        &[
            "delayed-ack",
            "--addr",
            addr,
            "--src",
            src,
            "--port",
            &port_s,
            "--count",
            &n_s,
            "--linger-ms",
            &linger_s,
            "--timeout-ms",
            "60000",
            "--sport-base",
            &RAW_SPORT.to_string(),
        ],
    );
    let line = p
        .wait_line(Duration::from_secs(15), |l| l.starts_with("synacks"))
        .unwrap_or_else(|| panic!("delayed-ack: no SYN-ACKs; stderr: {}", p.stderr_text()));
    assert_eq!(line, format!("synacks {n}"), "delayed-ack: {line}");
    p
}

/// SIGUSR1 to the raw client: it sends the final ACKs. Returns the RSTs it saw in --linger-ms.
fn send_final_acks(p: &mut Peer, n: u32, linger_ms: u32) -> u32 {
    kill(Pid::from_raw(p.pid() as i32), Signal::SIGUSR1).expect("SIGUSR1 to delayed-ack");
    let acked = p
        .wait_line(Duration::from_secs(10), |l| l.starts_with("acked"))
        .unwrap_or_else(|| panic!("delayed-ack did not send its ACKs: {}", p.stderr_text()));
    assert!(acked.starts_with(&format!("acked {n} ")), "{acked}");
    let done = p
        .wait_line(Duration::from_millis(u64::from(linger_ms) + 10_000), |l| {
            l.starts_with("done")
        })
        .unwrap_or_else(|| panic!("delayed-ack did not finish: {}", p.stderr_text()));
    done.strip_prefix("done rsts=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad line {done:?}"))
}

fn listen_peer(ns: &Netns, port: u16, backlog: u32) -> Peer {
    Peer::spawn(
        ns,
        PEER,
        &[
            "listen",
            "--addr",
            "0.0.0.0",
            "--port",
            &port.to_string(),
            "--backlog",
            &backlog.to_string(),
        ],
    )
}

/// Fills the accept queue of a never-accepting listener with exactly backlog + 1 connections
/// (the kernel queues while length <= cap), from a client process.
fn fill_accept_queue(ns: &Netns, port: u16, backlog: u32) {
    let res = Peer::connect(
        ns,
        PEER,
        "127.0.0.1",
        port,
        backlog + 1,
        &["--timeout-ms", "3000"],
    );
    assert!(
        res.iter().all(|r| r.result == "connected"),
        "filling the accept queue: {res:?}"
    );
    let (q, c) = wait_queue_full(ns, port);
    assert_eq!((q, c), (backlog + 1, backlog), "accept queue length/cap");
}

const DROP_KEYS: [&str; 6] = [
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "TcpExt.SyncookiesSent",
    "Tcp.OutRsts",
];

/// Collects failed checks, so one run reports every discrepancy (reconciliation first), then
/// panics with all of them.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn ok(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.failed.push(msg());
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        left: T,
        right: T,
        msg: impl FnOnce() -> String,
    ) {
        if left != right {
            self.failed
                .push(format!("{} (left: {left:?}, right: {right:?})", msg()));
        }
    }

    /// Per-event field checks: one failure line per distinct message, with the first event.
    fn each(&mut self, events: &[Value], what: &str, pred: impl Fn(&Value) -> bool) {
        let bad: Vec<&Value> = events.iter().filter(|v| !pred(v)).collect();
        if let Some(first) = bad.first() {
            self.failed.push(format!(
                "{what}: {} of {} events fail, e.g. {first}",
                bad.len(),
                events.len()
            ));
        }
    }

    fn finish(self, context: &str) {
        if !self.failed.is_empty() {
            panic!(
                "{} check(s) failed:\n- {}\n{context}",
                self.failed.len(),
                self.failed.join("\n- ")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. tcp_abort_on_overflow=1

const RAW_SPORT: u16 = 30000;

#[test]
fn abort_on_overflow_rsts_are_accept_queue_overflow_sent_by_the_listener() {
    require_root();
    let h = two_hosts(1);
    let ns = &h.srv;
    let (port, backlog, n_raw) = (41101u16, 4u32, 3u32);
    ns.sysctl("net.ipv4.tcp_abort_on_overflow", "1");
    let before = Mib::snapshot(ns);
    let mut agent = Agent::start(ns, None);
    let server = listen_peer(ns, port, backlog);
    let server_pid = server.pid();

    // Handshakes half-open while the queue still has room, then the queue fills with real
    // connections, then many more clients arrive (SYN-time drops: no RST, whatever the sysctl).
    let mut raw = delayed_ack(&h.cli, &h.srv_addr, &h.cli_addr, port, n_raw, 3000);
    fill_accept_queue(ns, port, backlog);
    let res = Peer::connect(
        ns,
        PEER,
        "127.0.0.1",
        port,
        20,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    assert!(
        res.iter().all(|r| r.result == "timeout"),
        "a full queue never completes these: {res:?}"
    );
    // The final ACKs meet the full queue: with tcp_abort_on_overflow=1 each is answered by an RST.
    let rsts_seen = send_final_acks(&mut raw, n_raw, 3000);
    let after = settle(
        ns,
        &DROP_KEYS,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    let sent_pred = |v: &Value| event::direction(v) == Some("sent");
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    agent.wait_for(sent_pred, out_rsts.max(0) as usize, Duration::from_secs(20));
    let stopped = agent.stop();
    drop(server);

    let changes = Mib::changes(&before, &after);
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    let sent = stopped.causes(sent_pred);
    let aqo = stopped.causes(is_aqo_dropped);
    let aqo_ref: Vec<&Value> = aqo.iter().collect();
    let context = format!(
        "MIB delta: {changes:?}\nraw client saw {rsts_seen} RSTs\nsent events:\n{}\ndropped accept_queue_overflow events:\n{}",
        json_lines(&sent),
        json_lines(&aqo)
    );
    eprintln!("abort_on_overflow: {context}");
    // The scenario itself (kernel facts).
    assert_eq!(rsts_seen, n_raw, "kernel: one RST per late ACK; {context}");
    assert_eq!(out_rsts, i64::from(n_raw), "kernel: Tcp.OutRsts; {context}");
    assert!(
        overflows > i64::from(n_raw),
        "SYN-time drops too; {context}"
    );

    let mut c = Checks::default();
    c.eq(sent.len() as i64, out_rsts, || {
        "number of direction=sent events vs Tcp.OutRsts delta".into()
    });
    c.eq(count_sum(&aqo_ref) as i64, overflows, || {
        "sum(count) of dropped accept_queue_overflow vs TcpExt.ListenOverflows delta".into()
    });
    c.each(&sent, "sent: cause accept_queue_overflow", |v| {
        event::cause(v) == Some("accept_queue_overflow")
    });
    c.each(
        &sent,
        &format!("sent: owner = listener pid {server_pid}"),
        |v| event::owner_pid(v) == Some(server_pid),
    );
    c.each(&sent, "sent: origin tcp_stack, evidence.stage ack", |v| {
        event::origin(v) == Some("tcp_stack") && event::str_at(v, "evidence.stage") == Some("ack")
    });
    c.each(&sent, &format!("sent: network.netns {}", ns.inode()), |v| {
        event::netns(v) == Some(ns.inode())
    });
    c.each(
        &sent,
        &format!("sent: network.local = {}:{port}", h.srv_addr),
        |v| {
            event::local_port(v) == Some(port)
                && event::local_address(v) == Some(h.srv_addr.as_str())
        },
    );
    c.each(
        &sent,
        &format!(
            "sent: network.peer = the reset client {}:{RAW_SPORT}..{}",
            h.cli_addr,
            u32::from(RAW_SPORT) + n_raw
        ),
        |v| {
            event::peer_address(v) == Some(h.cli_addr.as_str())
                && event::peer_port(v)
                    .is_some_and(|p| p >= RAW_SPORT && u32::from(p) < u32::from(RAW_SPORT) + n_raw)
        },
    );
    c.each(
        &aqo,
        &format!("dropped: owner = listener pid {server_pid}, port {port}"),
        |v| event::owner_pid(v) == Some(server_pid) && event::local_port(v) == Some(port),
    );
    c.each(&aqo, "dropped: evidence.tcp_abort_on_overflow = 1", |v| {
        event::u64_at(v, "evidence.tcp_abort_on_overflow") == Some(1)
    });
    // One incident, one count: each dropped connection is one accept_queue_overflow, SYN-time
    // or ACK-time, whether or not an RST followed; the RSTs are tallied apart.
    let stats = &stopped.final_stats;
    c.eq(
        event::stats_cause(stats, "accept_queue_overflow") as i64,
        overflows,
        || format!("final stats causes.accept_queue_overflow vs ListenOverflows: {stats}"),
    );
    c.eq(
        event::u64_at(stats, "resets_sent.tcp_stack").unwrap_or(0) as i64,
        out_rsts,
        || format!("final stats resets_sent.tcp_stack vs Tcp.OutRsts: {stats}"),
    );
    c.eq(
        event::u64_at(stats, "resets_sent.by_cause.accept_queue_overflow").unwrap_or(0) as i64,
        i64::from(n_raw),
        || format!("final stats resets_sent.by_cause.accept_queue_overflow: {stats}"),
    );
    c.finish(&context);
}

// ---------------------------------------------------------------------------------------------
// 2. ACK-time overflow, deterministic

/// The raw client's `n_raw` handshakes are held half-open, real connections fill the accept
/// queue (`backlog` + 1), `syn_time` more clients are dropped at SYN time, then the late ACKs
/// overflow the queue one by one. With `n_raw` > `backlog` + 1 some of the raw handshakes ride on
/// SYN cookies (the SYN queue holds `backlog` + 1 requests), so their ACK-time overflow goes
/// through cookie_v4_check instead of tcp_check_req.
fn ack_time_overflow(net: u8, port: u16, backlog: u32, n_raw: u32, syn_time: u32) {
    require_root();
    let h = two_hosts(net);
    let ns = &h.srv;
    ns.sysctl("net.ipv4.tcp_abort_on_overflow", "0");
    ns.sysctl("net.ipv4.tcp_syncookies", "1");
    let before = Mib::snapshot(ns);
    let mut agent = Agent::start(ns, None);
    let server = listen_peer(ns, port, backlog);
    let server_pid = server.pid();

    let mut raw = delayed_ack(&h.cli, &h.srv_addr, &h.cli_addr, port, n_raw, 500);
    let after_syns = Mib::snapshot(ns);
    fill_accept_queue(ns, port, backlog);
    if syn_time > 0 {
        // SYN-time drops as well, so the per-packet and the polled counts must add up.
        let res = Peer::connect(
            ns,
            PEER,
            "127.0.0.1",
            port,
            syn_time,
            &["--nonblocking", "--timeout-ms", "1500"],
        );
        assert!(res.iter().all(|r| r.result == "timeout"), "{res:?}");
    }
    let mid = settle(
        ns,
        &DROP_KEYS,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let rsts = send_final_acks(&mut raw, n_raw, 500);
    let after = settle(
        ns,
        &DROP_KEYS,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    let ack_drops = mib::delta(&mid, &after, "TcpExt.ListenOverflows");
    let is_ack = |v: &Value| {
        event::name(v) == Some("rst_trace.segment_dropped")
            && event::has_cause(v, "accept_queue_overflow")
    };
    agent.wait_for(is_ack, ack_drops.max(0) as usize, Duration::from_secs(20));
    let stopped = agent.stop();
    drop(server);

    let changes = Mib::changes(&before, &after);
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    let raw_cookies = mib::delta(&before, &after_syns, "TcpExt.SyncookiesSent");
    let per_packet = stopped.causes(is_ack);
    let aqo = stopped.causes(is_aqo_dropped);
    let aqo_ref: Vec<&Value> = aqo.iter().collect();
    let syn_stage: Vec<&Value> = aqo_ref
        .iter()
        .copied()
        .filter(|v| event::str_at(v, "evidence.stage") == Some("syn"))
        .collect();
    let sqo = stopped.causes(|v| event::has_cause(v, "syn_queue_overflow"));
    let sqo_ref: Vec<&Value> = sqo.iter().collect();
    let context = format!(
        "MIB delta: {changes:?}\nMIB delta over the late ACKs: {:?}\nraw handshakes on SYN cookies: {raw_cookies}\n\
         dropped accept_queue_overflow events:\n{}\nsyn_queue_overflow events:\n{}",
        Mib::changes(&mid, &after),
        json_lines(&aqo),
        json_lines(&sqo)
    );
    eprintln!("ack-time: {context}");
    // The scenario itself (kernel facts).
    assert_eq!(
        rsts, 0,
        "tcp_abort_on_overflow=0: no RST for a late ACK; {context}"
    );
    assert_eq!(
        ack_drops,
        i64::from(n_raw),
        "kernel: each late ACK overflows; {context}"
    );
    assert_eq!(
        mib::delta(&mid, &after, "TcpExt.ListenDrops"),
        ack_drops,
        "kernel: ACK-time overflows count in ListenDrops too; {context}"
    );
    assert_eq!(
        raw_cookies,
        i64::from(n_raw.saturating_sub(backlog + 1)),
        "kernel: the SYN queue holds backlog + 1 requests, the rest get cookies; {context}"
    );
    if syn_time > 0 {
        assert!(overflows > ack_drops, "SYN-time drops too; {context}");
    }
    assert_eq!(
        mib::delta(&before, &after, "Tcp.OutRsts"),
        0,
        "no RSTs; {context}"
    );

    let mut c = Checks::default();
    c.eq(per_packet.len() as i64, ack_drops, || {
        "rst_trace.segment_dropped accept_queue_overflow events vs ACK-time drops".into()
    });
    c.eq(count_sum(&aqo_ref) as i64, overflows, || {
        "all dropped accept_queue_overflow (per packet + polled) vs TcpExt.ListenOverflows".into()
    });
    c.eq(count_sum(&syn_stage) as i64, overflows - ack_drops, || {
        "evidence.stage=syn (polled) share vs SYN-time drops".into()
    });
    c.eq(
        count_sum(&sqo_ref) as i64,
        syn_queue_expected(&before, &after),
        || "syn_queue_overflow sum(count) vs cookies sent + SYNs dropped for the SYN queue".into(),
    );
    c.each(
        &per_packet,
        "per packet: direction dropped, count 1, stage ack",
        |v| {
            event::direction(v) == Some("dropped")
                && event::count(v) == Some(1)
                && event::str_at(v, "evidence.stage") == Some("ack")
        },
    );
    c.each(
        &per_packet,
        &format!("per packet: owner = listener pid {server_pid}"),
        |v| event::owner_pid(v) == Some(server_pid),
    );
    c.each(&per_packet, "per packet: 4-tuple and netns", |v| {
        event::local_port(v) == Some(port)
            && event::local_address(v) == Some(h.srv_addr.as_str())
            && event::peer_address(v) == Some(h.cli_addr.as_str())
            && event::peer_port(v)
                .is_some_and(|p| p >= RAW_SPORT && u32::from(p) < u32::from(RAW_SPORT) + n_raw)
            && event::netns(v) == Some(ns.inode())
    });
    c.each(
        &aqo,
        &format!("all overflow events: owner = listener pid {server_pid}"),
        |v| event::owner_pid(v) == Some(server_pid),
    );
    c.ok(
        stopped
            .causes(|v| event::direction(v) == Some("sent"))
            .is_empty(),
        || "no direction=sent events expected (no RST was sent)".into(),
    );
    c.finish(&context);
}

#[test]
fn ack_time_overflow_is_reported_per_packet() {
    ack_time_overflow(2, 41102, 8, 5, 6);
}

/// The same, with half of the late handshakes on SYN cookies (SYN queue full when their SYNs
/// came): an ACK-time overflow all the same, and it must be reported as one.
#[test]
fn ack_time_overflow_of_syncookie_handshakes_is_reported_per_packet() {
    ack_time_overflow(6, 41107, 2, 6, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. SYN floods (hping3, random spoofed sources)

struct Flood {
    before: Mib,
    after: Mib,
    events: Vec<Value>,
    server_pid: u32,
    hping: String,
}

impl Flood {
    fn d(&self, k: &str) -> i64 {
        mib::delta(&self.before, &self.after, k)
    }

    fn context(&self) -> String {
        format!(
            "MIB delta: {:?}\nhping3: {}\nsyn_queue_overflow events:\n{}",
            Mib::changes(&self.before, &self.after),
            self.hping.trim(),
            json_lines(&self.events)
        )
    }
}

/// hping3 in a client netns floods `port` with SYNs from random sources. The server netns routes
/// everything back over the veth to the client netns, whose kernel (forwarding off) silently
/// drops the SYN-ACKs: the requests stay in the SYN queue. (Over loopback alone the SYN-ACKs to
/// random sources have no route and the kernel drops those SYNs in tcp_conn_request, counted
/// only in ListenDrops and Ip.OutNoRoutes: the SYN queue does not fill.)
fn syn_flood(net: u8, port: u16, syncookies: &str, max_syn_backlog: &str, backlog: u32) -> Flood {
    let h = two_hosts(net);
    let ns = &h.srv;
    ns.exec("ip", &["route", "add", "default", "via", &h.cli_addr]);
    ns.sysctl("net.ipv4.tcp_syncookies", syncookies);
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", max_syn_backlog);
    let before = Mib::snapshot(ns);
    let mut agent = Agent::start(ns, None);
    let server = listen_peer(ns, port, backlog);
    let server_pid = server.pid();
    let port_s = port.to_string();
    let cmd = h.cli.command(
        "hping3",
        &[
            "-q",
            "-S",
            "-p",
            &port_s,
            "--rand-source",
            "-c",
            "300",
            "-i",
            "u2000",
            &h.srv_addr,
        ],
    );
    let (_, hping) = run_bounded(cmd, Duration::from_secs(30));
    let after = settle(
        ns,
        &DROP_KEYS,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    let expect = syn_queue_expected(&before, &after);
    let sqo = |v: &Value| event::has_cause(v, "syn_queue_overflow");
    // Polled: wait (bounded) for the counts to arrive; the final poll at stop catches the rest.
    poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        agent.settle(Duration::from_millis(50));
        let got = agent.causes(sqo);
        let r: Vec<&Value> = got.iter().collect();
        (count_sum(&r) as i64 >= expect).then_some(())
    });
    let stopped = agent.stop();
    drop(server);
    let f = Flood {
        before,
        after,
        events: stopped.causes(sqo),
        server_pid,
        hping,
    };
    eprintln!(
        "syn flood syncookies={syncookies} tcp_max_syn_backlog={max_syn_backlog} backlog={backlog}: {}",
        f.context()
    );
    f
}

fn check_syn_queue_events(c: &mut Checks, f: &Flood, port: u16, syncookies: u64) {
    c.ok(!f.events.is_empty(), || {
        "no syn_queue_overflow events".into()
    });
    c.each(
        &f.events,
        "event.name rst_trace.syn_queue_overflow, direction dropped",
        |v| {
            event::name(v) == Some("rst_trace.syn_queue_overflow")
                && event::direction(v) == Some("dropped")
        },
    );
    c.each(
        &f.events,
        &format!("owner = listener pid {}", f.server_pid),
        |v| event::owner_pid(v) == Some(f.server_pid),
    );
    c.each(&f.events, &format!("network.local.port {port}"), |v| {
        event::local_port(v) == Some(port)
    });
    c.each(
        &f.events,
        &format!("evidence.tcp_syncookies {syncookies}"),
        |v| event::u64_at(v, "evidence.tcp_syncookies") == Some(syncookies),
    );
    c.each(
        &f.events,
        "evidence.syn_cookies_sent and syns_dropped present",
        |v| {
            event::u64_at(v, "evidence.syn_cookies_sent").is_some()
                && event::u64_at(v, "evidence.syns_dropped").is_some()
        },
    );
    c.each(
        &f.events,
        "evidence.top_sources names the spoofed sources in the SYN queue",
        |v| {
            event::get(v, "evidence.top_sources")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        },
    );
}

/// The README's rule: SYN cookies actually sent because the SYN queue was full
/// (TCPReqQFullDoCookies also counts cookie-flagged SYNs the accept-queue check then drops,
/// which are accept_queue_overflow), plus SYNs dropped for the SYN queue (TCPReqQFullDrop,
/// and the tcp_max_syn_backlog drops that only ListenDrops shows).
fn syn_queue_expected(before: &Mib, after: &Mib) -> i64 {
    let d = |k: &str| mib::delta(before, after, k);
    let cookies = d("TcpExt.TCPReqQFullDoCookies").min(d("TcpExt.SyncookiesSent"));
    let reqq = d("TcpExt.TCPReqQFullDrop");
    let other = (d("TcpExt.ListenDrops") - d("TcpExt.ListenOverflows") - reqq).max(0);
    cookies + reqq + other
}

#[test]
fn syn_flood_with_syncookies_on() {
    require_root();
    let port = 41103u16;
    let f = syn_flood(3, port, "1", "16", 8);
    let ctx = f.context();
    // Kernel: with cookies on the SYN queue never drops; every SYN past it gets a cookie, and
    // tcp_max_syn_backlog plays no part.
    assert!(f.d("TcpExt.TCPReqQFullDoCookies") > 0, "no cookies; {ctx}");
    assert_eq!(f.d("TcpExt.TCPReqQFullDrop"), 0, "{ctx}");
    assert_eq!(f.d("TcpExt.ListenDrops"), 0, "{ctx}");
    assert_eq!(
        f.d("TcpExt.SyncookiesSent"),
        f.d("TcpExt.TCPReqQFullDoCookies"),
        "{ctx}"
    );
    let r: Vec<&Value> = f.events.iter().collect();
    let mut c = Checks::default();
    check_syn_queue_events(&mut c, &f, port, 1);
    c.eq(
        count_sum(&r) as i64,
        f.d("TcpExt.TCPReqQFullDoCookies") + f.d("TcpExt.TCPReqQFullDrop"),
        || "sum(count) vs TCPReqQFullDoCookies + TCPReqQFullDrop".into(),
    );
    c.eq(
        u64_sum(&r, "evidence.syn_cookies_sent") as i64,
        f.d("TcpExt.TCPReqQFullDoCookies"),
        || "sum(evidence.syn_cookies_sent) vs TCPReqQFullDoCookies".into(),
    );
    c.eq(u64_sum(&r, "evidence.syns_dropped"), 0, || {
        "sum(evidence.syns_dropped)".into()
    });
    c.finish(&ctx);
}

#[test]
fn syn_flood_with_syncookies_off_fills_the_syn_queue() {
    require_root();
    let port = 41104u16;
    // tcp_max_syn_backlog well above the backlog: the SYN queue is bounded by the backlog.
    let f = syn_flood(4, port, "0", "64", 8);
    let ctx = f.context();
    assert!(f.d("TcpExt.TCPReqQFullDrop") > 0, "no drops; {ctx}");
    assert_eq!(f.d("TcpExt.TCPReqQFullDoCookies"), 0, "{ctx}");
    assert_eq!(
        f.d("TcpExt.ListenDrops"),
        f.d("TcpExt.ListenOverflows") + f.d("TcpExt.TCPReqQFullDrop"),
        "kernel: ListenDrops = ListenOverflows + TCPReqQFullDrop; {ctx}"
    );
    let r: Vec<&Value> = f.events.iter().collect();
    let mut c = Checks::default();
    check_syn_queue_events(&mut c, &f, port, 0);
    c.eq(
        count_sum(&r) as i64,
        f.d("TcpExt.TCPReqQFullDoCookies") + f.d("TcpExt.TCPReqQFullDrop"),
        || "sum(count) vs TCPReqQFullDoCookies + TCPReqQFullDrop".into(),
    );
    c.eq(u64_sum(&r, "evidence.syn_cookies_sent"), 0, || {
        "sum(evidence.syn_cookies_sent)".into()
    });
    c.eq(
        u64_sum(&r, "evidence.syns_dropped") as i64,
        f.d("TcpExt.TCPReqQFullDrop"),
        || "sum(evidence.syns_dropped) vs TCPReqQFullDrop".into(),
    );
    c.finish(&ctx);
}

/// With syncookies off, tcp_conn_request also drops a SYN once fewer than a quarter of
/// tcp_max_syn_backlog remains free in the SYN queue (the "last quarter for proven peers"
/// clause) — before the backlog bound when tcp_max_syn_backlog < 4/3 × backlog. Those drops
/// count in ListenDrops only: no TCPReqQFullDrop, no ListenOverflows. They are SYN-queue
/// overflows all the same, and the agent's dropped counts must explain ListenDrops.
#[test]
fn syn_flood_with_syncookies_off_hits_tcp_max_syn_backlog() {
    require_root();
    let port = 41105u16;
    let f = syn_flood(5, port, "0", "8", 16);
    let ctx = f.context();
    // Kernel facts on this path.
    assert!(f.d("TcpExt.ListenDrops") > 0, "no drops; {ctx}");
    assert_eq!(f.d("TcpExt.TCPReqQFullDrop"), 0, "{ctx}");
    assert_eq!(f.d("TcpExt.ListenOverflows"), 0, "{ctx}");
    assert_eq!(f.d("TcpExt.TCPReqQFullDoCookies"), 0, "{ctx}");
    assert_eq!(f.d("Ip.OutNoRoutes"), 0, "every SYN-ACK had a route; {ctx}");
    let r: Vec<&Value> = f.events.iter().collect();
    let mut c = Checks::default();
    check_syn_queue_events(&mut c, &f, port, 0);
    c.eq(
        u64_sum(&r, "evidence.syns_dropped") as i64,
        f.d("TcpExt.ListenDrops"),
        || "sum(evidence.syns_dropped) vs ListenDrops (the only drop source here)".into(),
    );
    c.eq(count_sum(&r) as i64, f.d("TcpExt.ListenDrops"), || {
        "sum(count) vs ListenDrops".into()
    });
    c.each(&f.events, "evidence.tcp_max_syn_backlog 8", |v| {
        event::u64_at(v, "evidence.tcp_max_syn_backlog") == Some(8)
    });
    c.finish(&ctx);
}

// ---------------------------------------------------------------------------------------------
// 4. nginx under wrk

/// nginx (master + one worker) in a netns; stopped (SIGTERM to the master) on drop, and both
/// processes waited for.
struct Nginx {
    child: Child,
    master: u32,
    worker: Option<u32>,
    dir: TempDir,
    reaped: bool,
}

fn proc_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; count it as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Nginx {
    /// `host`: the listen address as nginx and URLs write it (`127.0.0.1`, `[::1]`).
    fn start(ns: &Netns, host: &str, port: u16) -> Nginx {
        let dir = tempdir("nginx");
        let d = dir.0.display().to_string();
        // The worker runs as nobody: it must reach nothing here but inherited fds.
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile 16;\n\
             user nobody nogroup;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen {host}:{port} backlog=4;\n\
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        fs::write(dir.0.join("nginx.conf"), conf).unwrap();
        let mut cmd = ns.command(
            "/usr/sbin/nginx",
            &[
                "-p",
                d.as_str(),
                "-c",
                &format!("{d}/nginx.conf"),
                "-e",
                &format!("{d}/error.log"),
            ],
        );
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.0.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.0.join("stderr")).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn nginx: {e}"));
        let master = child.id();
        let mut ng = Nginx {
            child,
            master,
            worker: None,
            dir,
            reaped: false,
        };
        // From here on a panic drops `ng`, which stops nginx.
        let worker = poll_until(Duration::from_secs(15), Duration::from_millis(50), || {
            if let Ok(Some(st)) = ng.child.try_wait() {
                ng.reaped = true;
                panic!("nginx exited at start ({st}): {}", ng.logs());
            }
            let kids = children(master);
            (kids.len() == 1 && comm(kids[0]) == "nginx" && listen_queue(ns, port).is_some())
                .then(|| kids[0])
        })
        .unwrap_or_else(|| {
            panic!(
                "nginx did not start a worker listening on :{port}: {}",
                ng.logs()
            )
        });
        ng.worker = Some(worker);
        assert_eq!(
            comm(master),
            "nginx",
            "master pid {master} is nginx (ip netns exec execs)"
        );
        ng
    }

    fn logs(&self) -> String {
        let r = |f: &str| fs::read_to_string(self.dir.0.join(f)).unwrap_or_default();
        format!(
            "stderr: {}\nerror.log: {}",
            r("stderr").trim(),
            r("error.log").trim()
        )
    }

    /// SIGTERM to the master, wait (bounded) for it and its worker. Panics if they linger.
    fn stop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = kill(Pid::from_raw(self.master as i32), Signal::SIGTERM);
        let st = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            self.child.try_wait().ok().flatten()
        });
        if st.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.reaped = true;
        let worker_gone = self.worker.is_none_or(|w| {
            poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
                (!proc_alive(w)).then_some(())
            })
            .is_some()
        });
        if !worker_gone {
            // Only if it is still our nginx worker (not a reused pid).
            let w = self.worker.unwrap();
            if comm(w) == "nginx" {
                let _ = kill(Pid::from_raw(w as i32), Signal::SIGKILL);
            }
        }
        assert!(
            st.is_some(),
            "nginx master did not exit within 10 s of SIGTERM"
        );
        assert!(worker_gone, "nginx worker outlived its master");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Never a double panic: stop quietly.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        } else {
            self.stop();
        }
    }
}

fn rlimit_nofile_soft(pid: u32) -> Option<u64> {
    let l = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = l.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn nginx_under_wrk_names_the_worker_ipv4() {
    nginx_under_wrk("127.0.0.1", 41106);
}

#[test]
fn nginx_under_wrk_names_the_worker_ipv6() {
    nginx_under_wrk("[::1]", 41107);
}

fn nginx_under_wrk(host: &str, port: u16) {
    require_root();
    assert!(
        Path::new("/usr/sbin/nginx").exists(),
        "nginx is not installed"
    );
    let ns = Netns::new();
    let before = Mib::snapshot(&ns);
    let mut agent = Agent::start(&ns, None);
    let mut nginx = Nginx::start(&ns, host, port);
    let (master, worker) = (nginx.master, nginx.worker.unwrap());
    assert_eq!(
        rlimit_nofile_soft(worker),
        Some(16),
        "worker_rlimit_nofile did not apply; {}",
        nginx.logs()
    );
    let url = format!("http://{host}:{port}/");
    let wrk = ns.command(
        "wrk",
        &["-t", "2", "-c", "200", "-d", "3s", "--timeout", "2s", &url],
    );
    let (_, wrk_out) = run_bounded(wrk, Duration::from_secs(30));
    let after = settle(
        &ns,
        &DROP_KEYS,
        Duration::from_millis(1500),
        Duration::from_secs(30),
    );
    let on_port = |v: &Value| {
        (event::has_cause(v, "accept_queue_overflow") || event::has_cause(v, "fd_exhaustion"))
            && event::local_port(v) == Some(port)
    };
    agent.wait_for(on_port, 1, Duration::from_secs(10));
    let stopped = agent.stop();
    nginx.stop();
    let logs = nginx.logs();
    drop(nginx);

    let changes = Mib::changes(&before, &after);
    let d = |k: &str| mib::delta(&before, &after, k);
    let fd = stopped.causes(|v| event::has_cause(v, "fd_exhaustion"));
    let aqo = stopped.causes(is_aqo_dropped);
    let sqo = stopped.causes(|v| event::has_cause(v, "syn_queue_overflow"));
    let aqo_ref: Vec<&Value> = aqo.iter().collect();
    let sqo_ref: Vec<&Value> = sqo.iter().collect();
    let context = format!(
        "nginx master={master} worker={worker}\nMIB delta: {changes:?}\nwrk: {}\nnginx: {}\n\
         fd_exhaustion events ({}), first 3:\n{}\ndropped accept_queue_overflow events:\n{}\n\
         syn_queue_overflow events:\n{}",
        wrk_out.trim(),
        logs.lines().take(6).collect::<Vec<_>>().join("\n"),
        fd.len(),
        json_lines(&fd[..fd.len().min(3)]),
        json_lines(&aqo),
        json_lines(&sqo)
    );
    eprintln!("nginx: {context}");
    // The scenario itself (kernel facts).
    assert!(
        d("TcpExt.ListenOverflows") > 0,
        "wrk did not overflow nginx's accept queue; {context}"
    );
    assert_eq!(
        d("TcpExt.ListenDrops"),
        d("TcpExt.ListenOverflows") + d("TcpExt.TCPReqQFullDrop"),
        "kernel: ListenDrops = ListenOverflows + TCPReqQFullDrop; {context}"
    );

    let mut c = Checks::default();
    c.ok(!fd.is_empty() || !aqo.is_empty(), || {
        "neither fd_exhaustion nor accept_queue_overflow reported".into()
    });
    c.eq(
        count_sum(&aqo_ref) as i64,
        d("TcpExt.ListenOverflows"),
        || "sum(count) of dropped accept_queue_overflow vs ListenOverflows delta".into(),
    );
    c.eq(
        (count_sum(&aqo_ref) + u64_sum(&sqo_ref, "evidence.syns_dropped")) as i64,
        d("TcpExt.ListenDrops"),
        || "accept_queue_overflow + dropped syn_queue_overflow vs ListenDrops delta".into(),
    );
    // The README's rule, as in the flood tests: under wrk some cookie-flagged SYNs are then
    // dropped by the accept-queue check (TCPReqQFullDoCookies 247, SyncookiesSent 233 in one
    // run); those are accept_queue_overflow, not cookies sent.
    c.eq(
        count_sum(&sqo_ref) as i64,
        syn_queue_expected(&before, &after),
        || "syn_queue_overflow sum(count) vs cookies sent + SYN-queue drops (README rule)".into(),
    );
    c.each(
        &fd,
        &format!("fd_exhaustion: owner = the worker {worker}"),
        |v| event::owner_pid(v) == Some(worker),
    );
    c.each(
        &fd,
        &format!("fd_exhaustion: port {port}, EMFILE, soft limit 16"),
        |v| {
            event::local_port(v) == Some(port)
                && event::u64_at(v, "evidence.listening_port") == Some(u64::from(port))
                && event::reason(v) == Some("EMFILE")
                && event::u64_at(v, "evidence.rlimit_nofile.soft") == Some(16)
        },
    );
    c.each(&aqo, &format!("overflow: network.local.port {port}"), |v| {
        event::local_port(v) == Some(port)
    });
    c.each(
        &aqo,
        &format!("overflow: the worker {worker} in owner, other_owners or accepting_processes"),
        |v| named_pids(v).contains(&worker),
    );
    c.each(
        &aqo,
        &format!("overflow: owner is nginx (worker {worker} or master {master}), never the client"),
        |v| matches!(event::owner_pid(v), Some(p) if p == worker || p == master),
    );
    c.finish(&context);
}
