//! Faults the agent must ride out without growing, crashing or losing count:
//! * a spoofed-source SYN flood and a storm of distinct 4-tuples, 60 s each, over a veth from
//!   a namespace of their own: every table (kernel maps and the agent's own) stays within its
//!   bound on every stats line, refusals and evictions are counted in the stats line and the
//!   metrics, per-cause totals equal the namespace's MIB, and the agent's peak RSS stays
//!   under 64 MiB;
//! * 2,000 network namespaces created and destroyed while the agent runs, each with a
//!   listener and an RST, the listener's owner exiting right after: every RST reported in its
//!   namespace, and fds, threads, RSS and tables back to their baseline;
//! * thousands of healthy active closes in one namespace: every TIME_WAIT socket's last owner
//!   is in the kernel's cache, live, and none was evicted;
//! * /proc mounted with hidepid=2 in the agent's own mount namespace: events still come, and
//!   what /proc could not tell is said in the event, not as an error.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rst_trace_tests::{
    agent_binary, event, http, mib, poll_until, require_root, veth, Agent, Mib, Netns, Peer,
};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");
/// The cost issue's bound on the agent's resident memory.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// What the agent's bounded caches may add to its RSS over the namespace churn.
const RSS_CACHE_GROWTH_KIB: u64 = 16 * 1024;
const FLOOD: Duration = Duration::from_secs(60);

/// A kill-on-drop guard for a load generator (hping3) we started.
struct Load(Child);

impl Load {
    fn start(ns: &Netns, args: &[&str]) -> Load {
        let child = ns
            .command("hping3", args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("hping3 {args:?}: {e} (cargo xtask setup installs it)"));
        Load(child)
    }

    /// Stops it (SIGINT, then kill) and reaps it.
    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            if let Ok(None) = self.0.try_wait() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        }
        let stopped = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
            self.0.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `VmKey:` of a process's status, in kB (or a count, for Threads).
fn status_field(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// The peak entries of every table over the stats lines seen, checked against its capacity on
/// every line.
#[derive(Debug, Default)]
struct Peaks {
    tables: BTreeMap<String, (u64, u64)>,
    lines: usize,
}

impl Peaks {
    fn take(&mut self, lines: &[Value]) {
        for v in lines.iter().filter(|v| event::is_stats(v)).skip(self.lines) {
            self.lines += 1;
            let tables = v
                .get("tables")
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("stats line without tables: {v}"));
            for (name, t) in tables {
                let entries = t["entries"].as_u64().expect("tables.*.entries");
                let cap = t["capacity"].as_u64().expect("tables.*.capacity");
                assert!(
                    entries <= cap,
                    "table {name} holds {entries} entries, over its bound {cap}: {v}"
                );
                let e = self.tables.entry(name.clone()).or_insert((0, cap));
                e.0 = e.0.max(entries);
            }
        }
    }

    fn report(&self) -> String {
        self.tables
            .iter()
            .map(|(n, (p, c))| format!("{n} peak {p} of {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs the agent on `ns` (JSON, stats every 2 s, metrics on loopback) while `load` runs for
/// [`FLOOD`]; returns the stopped agent, the table peaks and the last scrape.
fn flood(
    ns: &Netns,
    attacker: &Netns,
    hping: &[&str],
) -> (rst_trace_tests::Stopped, Peaks, String, Mib, Mib, u64) {
    let maddr: SocketAddr = format!("127.0.0.1:{}", http::free_port())
        .parse()
        .expect("addr");
    let args: Vec<String> = [
        "run",
        "--format",
        "json",
        "--netns",
        ns.name(),
        "--stats-interval",
        "2",
        "--max-events-per-sec",
        "50",
        "--metrics-addr",
        &maddr.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let before = Mib::snapshot(ns);
    let mut agent = Agent::start_args(&args);
    let pid = agent.pid();
    let load = Load::start(attacker, hping);
    let mut peaks = Peaks::default();
    let end = Instant::now() + FLOOD;
    while Instant::now() < end {
        agent.settle(Duration::from_secs(2));
        peaks.take(agent.lines());
    }
    load.stop();
    let after = Mib::settled(ns);
    // One stats line after the kernel settled, so the last figures cover the whole flood.
    let seen = agent.lines().iter().filter(|v| event::is_stats(v)).count();
    let _ = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        agent.settle(Duration::from_millis(100));
        (agent.lines().iter().filter(|v| event::is_stats(v)).count() > seen).then_some(())
    });
    let scrape = http::get(maddr, "/metrics", None)
        .unwrap_or_else(|e| panic!("scraping {maddr}: {e}"))
        .body;
    let hwm = status_field(pid, "VmHWM:");
    let stopped = agent.stop();
    peaks.take(&stopped.lines);
    (stopped, peaks, scrape, before, after, hwm)
}

/// Every table of the stats line is in the metrics too, with its refusals and evictions.
fn assert_tables_in_metrics(stats: &Value, scrape: &str) {
    let tables = stats["tables"].as_object().expect("tables");
    for (name, t) in tables {
        let series = format!("rst_trace_table_entries{{table=\"{name}\"}}");
        assert!(scrape.contains(&series), "{series} missing from the scrape");
        if t.get("refused").is_some() {
            let s = format!("rst_trace_table_refused_total{{table=\"{name}\"}}");
            assert!(scrape.contains(&s), "{s} missing from the scrape");
        }
        if t.get("evicted").is_some() {
            let s = format!("rst_trace_table_evicted_total{{table=\"{name}\"}}");
            assert!(scrape.contains(&s), "{s} missing from the scrape");
        }
    }
    for kernel_map in [
        "RST_OWNERS",
        "RST_TW_OWNERS",
        "RST_TW_IDS",
        "RST_ACCEPTORS",
        "RST_HOT_SENT",
    ] {
        assert!(
            tables.contains_key(kernel_map),
            "the stats line lacks kernel map {kernel_map}: {stats}"
        );
    }
}

/// Server namespace with a default route back over the veth (so answers to spoofed sources
/// leave), and the attacker's namespace discarding them silently: an ICMP unreachable coming
/// back would abort a request socket, which the kernel counts as a listen drop of its own.
fn pair() -> (Netns, Netns, veth::Veth) {
    let attacker = Netns::new();
    let server = Netns::new();
    let v = veth::link(&attacker, &server);
    server.exec("ip", &["route", "add", "default", "via", &v.a.to_string()]);
    attacker.exec("ip", &["route", "add", "blackhole", "default"]);
    (server, attacker, v)
}

#[test]
fn spoofed_syn_flood_keeps_every_table_bounded() {
    require_root();
    let (server, attacker, v) = pair();
    let port = 41401u16;
    let addr = v.b.to_string();
    let mut listener = Peer::spawn(
        &server,
        PEER,
        &[
            "listen",
            "--addr",
            &addr,
            "--port",
            &port.to_string(),
            "--accept",
        ],
    );
    let (stopped, peaks, scrape, before, after, hwm) = flood(
        &server,
        &attacker,
        &[
            "-q",
            "-S",
            "--rand-source",
            "-p",
            &port.to_string(),
            "-i",
            "u200",
            &addr,
        ],
    );
    let _ = listener.stop(Duration::from_secs(5));
    let d = |k: &str| mib::delta(&before, &after, k);
    let fin = &stopped.final_stats;
    eprintln!(
        "spoofed SYN flood: MIB {:?}\ntables: {}\nVmHWM {hwm} KiB\nfinal stats: {fin}",
        Mib::changes(&before, &after),
        peaks.report()
    );
    let cookies = d("TcpExt.TCPReqQFullDoCookies").min(d("TcpExt.SyncookiesSent"));
    let reqq = d("TcpExt.TCPReqQFullDrop");
    let other = (d("TcpExt.ListenDrops") - d("TcpExt.ListenOverflows") - reqq).max(0);
    assert!(
        cookies + reqq > 1000,
        "the flood did not fill the SYN queue"
    );
    assert_eq!(
        d("Icmp.InMsgs"),
        0,
        "no ICMP error may abort a request socket"
    );
    assert_eq!(
        event::stats_cause(fin, "syn_queue_overflow") as i64,
        cookies + reqq + other,
        "syn_queue_overflow vs cookies sent + SYNs dropped for the SYN queue"
    );
    assert_eq!(
        event::stats_cause(fin, "accept_queue_overflow") as i64,
        d("TcpExt.ListenOverflows"),
        "accept_queue_overflow vs TcpExt.ListenOverflows"
    );
    assert_eq!(
        fin["resets_sent"]["tcp_stack"].as_i64(),
        Some(d("Tcp.OutRsts")),
        "RSTs sent vs Tcp.OutRsts"
    );
    assert!(hwm <= RSS_BOUND_KIB, "agent peak RSS {hwm} KiB over 64 MiB");
    assert_tables_in_metrics(fin, &scrape);
}

#[test]
fn distinct_tuple_storm_keeps_every_table_bounded() {
    require_root();
    let (server, attacker, v) = pair();
    // Nothing listens: every SYN, from a random address and port, is answered by an RST.
    let port = 41402u16;
    let addr = v.b.to_string();
    let (stopped, peaks, scrape, before, after, hwm) = flood(
        &server,
        &attacker,
        &[
            "-q",
            "-S",
            "--rand-source",
            "-s",
            "1024",
            "-p",
            &port.to_string(),
            "-i",
            "u200",
            &addr,
        ],
    );
    let fin = &stopped.final_stats;
    let rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    eprintln!(
        "distinct 4-tuple storm: MIB {:?}\ntables: {}\nVmHWM {hwm} KiB\nfinal stats: {fin}",
        Mib::changes(&before, &after),
        peaks.report()
    );
    assert!(rsts > 10_000, "the storm was too small: OutRsts {rsts}");
    let total = event::stats_cause(fin, "no_listener");
    assert_eq!(total as i64, rsts, "no_listener vs Tcp.OutRsts");
    assert_eq!(fin["resets_sent"]["tcp_stack"].as_i64(), Some(rsts));
    let summed: u64 = stopped
        .causes(|v| event::has_cause(v, "no_listener"))
        .iter()
        .filter_map(event::count)
        .sum();
    let lost = event::stats_lost(fin).expect("records.lost");
    assert_eq!(
        summed + lost,
        total,
        "events (with folded counts) + lost records account for every RST"
    );
    assert!(hwm <= RSS_BOUND_KIB, "agent peak RSS {hwm} KiB over 64 MiB");
    assert_tables_in_metrics(fin, &scrape);
}

/// A field of the TCP line of the namespace's /proc/net/sockstat: `inuse` (full sockets,
/// listeners included), `orphan`, `tw` (TIME_WAIT sockets, both substates), ….
fn sockstat_tcp(ns: &Netns, field: &str) -> u64 {
    let text = ns.exec("cat", &["/proc/net/sockstat"]);
    text.lines()
        .find_map(|l| l.strip_prefix("TCP: "))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.windows(2)
                .find(|w| w[0] == field)
                .and_then(|w| w[1].parse().ok())
        })
        .unwrap_or_else(|| panic!("no TCP {field} in sockstat: {text}"))
}

/// An agent writing stats every `stats_interval` seconds ("0": only at its end), a fresh
/// namespace, and a server there accepting on 127.0.0.1:`port` with room for thousands of
/// connections.
fn agent_and_server(stats_interval: &str, port: u16) -> (Agent, Netns, Peer) {
    let args: Vec<String> = [
        "run",
        "--format",
        "json",
        "--stats-interval",
        stats_interval,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::start_args(&args);
    let ns = Netns::new();
    let server = Peer::listen(
        &ns,
        PEER,
        "127.0.0.1",
        port,
        &["--accept", "--backlog", "1024", "--nofile", "8192"],
    );
    (agent, ns, server)
}

const TW_ROUNDS: u32 = 4;
const TW_PER_ROUND: u32 = 800;
const TW_PORT: u16 = 41430;

/// Every healthy active close stores its last owner in the kernel's TIME_WAIT cache, an array
/// placed by hash: thousands of them in one namespace are all there and live, and none took
/// another's slot. A placement that piled keys into a few sets would show as evictions.
#[test]
fn time_wait_owners_are_all_kept() {
    require_root();
    let (mut agent, ns, mut server) = agent_and_server("0", TW_PORT);
    // Each round's client holds its connections, then exits: it closes first, so its side of
    // every connection becomes a TIME_WAIT socket once the server answers the FIN.
    for round in 0..TW_ROUNDS {
        let res = Peer::connect(&ns, PEER, "127.0.0.1", TW_PORT, TW_PER_ROUND, &[]);
        let connected = res.iter().filter(|r| r.result == "connected").count();
        assert_eq!(connected, TW_PER_ROUND as usize, "round {round}: {res:?}");
    }
    // Loopback lets a new connection reuse a TIME_WAIT socket's port (tcp_tw_reuse=2), so
    // fewer remain than were closed: the count is final once only the listener is left.
    let closes = u64::from(TW_ROUNDS * TW_PER_ROUND);
    let settled = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        (sockstat_tcp(&ns, "inuse") <= 1 && sockstat_tcp(&ns, "orphan") == 0)
            .then(|| sockstat_tcp(&ns, "tw"))
    });
    let _ = server.stop(Duration::from_secs(5));
    let stopped = agent.stop();
    let fin = &stopped.final_stats;
    let tw = settled.unwrap_or_else(|| {
        panic!(
            "connections still open 20 s after the clients exited: inuse {}, orphan {}",
            sockstat_tcp(&ns, "inuse"),
            sockstat_tcp(&ns, "orphan")
        )
    });
    let table = &fin["tables"]["RST_TW_OWNERS"];
    eprintln!(
        "{tw} TIME_WAIT sockets; RST_TW_OWNERS {table}; owners {}",
        fin["sockets"]["owners"]
    );
    let entries = table["entries"]
        .as_u64()
        .expect("tables.RST_TW_OWNERS.entries");
    let stored = fin["sockets"]["owners"]["timewait_stored"]
        .as_u64()
        .expect("sockets.owners.timewait_stored");
    assert!(
        tw > u64::from(TW_PER_ROUND) && entries >= tw && stored >= closes,
        "{tw} TIME_WAIT sockets after {closes} active closes, but {entries} live last owners \
         ({stored} stored)"
    );
    assert_eq!(
        table["evicted"].as_u64(),
        Some(0),
        "a last owner took a live one's slot with {entries} of {} live",
        table["capacity"]
    );
}

const HELD_CLIENTS: u32 = 4;
const HELD_PER_CLIENT: u32 = 800;
const HELD_PORT: u16 = 41440;

/// Every open socket's owner is kept in the kernel's owner cache, an array placed by the
/// socket's address: thousands of connections held open in one namespace (both ends, each
/// learnt at connect() and at accept()) all have their owner there while they last, and none
/// was turned away. A placement that piled addresses into a few sets would show as `full`.
#[test]
fn open_socket_owners_are_all_kept() {
    require_root();
    let (mut agent, ns, mut server) = agent_and_server("1", HELD_PORT);
    let mut clients: Vec<Peer> = (0..HELD_CLIENTS)
        .map(|_| {
            Peer::connecting(
                &ns,
                PEER,
                "127.0.0.1",
                HELD_PORT,
                HELD_PER_CLIENT,
                &["--hold-ms", "60000"],
            )
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for n in 0..HELD_PER_CLIENT {
            let line = c.wait_line(Duration::from_secs(20), |l| l.contains("attempt="));
            assert!(
                line.as_deref().is_some_and(|l| l.starts_with("connected")),
                "client {i}, connection {n}: {line:?}"
            );
        }
    }
    // Both ends of every connection, and the listener.
    let want = u64::from(2 * HELD_CLIENTS * HELD_PER_CLIENT + 1);
    let held = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        agent.settle(Duration::from_millis(200));
        table_entries(agent.lines(), "RST_OWNERS").filter(|&n| n >= want)
    });
    for c in &mut clients {
        let _ = c.stop(Duration::from_secs(5));
    }
    let _ = server.stop(Duration::from_secs(5));
    let stopped = agent.stop();
    let owners = &stopped.final_stats["sockets"]["owners"];
    eprintln!("RST_OWNERS entries while held: {held:?} (want >= {want}); owners {owners}");
    assert!(
        held.is_some(),
        "fewer than {want} open sockets' owners in RST_OWNERS while the connections were held \
         (at most {:?}); owners {owners}",
        stopped
            .lines
            .iter()
            .filter(|v| event::is_stats(v))
            .filter_map(|v| v["tables"]["RST_OWNERS"]["entries"].as_u64())
            .max()
    );
    assert_eq!(
        owners["full"].as_u64(),
        Some(0),
        "an owner found no slot with {held:?} of {} open",
        owners["capacity"]
    );
}

/// The agent's resources now.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: u64,
    threads: u64,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    Usage {
        fds: fd_count(pid),
        threads: status_field(pid, "Threads:"),
        rss_kib: status_field(pid, "VmRSS:"),
    }
}

/// Entries of `table` in the latest stats line.
fn table_entries(lines: &[Value], table: &str) -> Option<u64> {
    lines
        .iter()
        .rev()
        .find(|v| event::is_stats(v))
        .and_then(|v| v["tables"][table]["entries"].as_u64())
}

const CHURN_NAMESPACES: usize = 2000;
const CHURN_PORT: u16 = 41410;
const CHURN_WORKERS: usize = 4;

/// One namespace's life: a listener, an RST from a connect to a closed port (another
/// process), the listener's owner gone, the namespace gone.
#[derive(Debug, Clone, Copy)]
struct Life {
    inode: u64,
    /// RSTs its kernel counted.
    rsts: i64,
    /// The refused client's port: with the inode, what names this namespace's RST.
    lport: u16,
}

/// Runs of the agent's programs the kernel skipped because the program was already running on
/// that CPU (`recursion_misses`, from bpftool): the one loss no counter of the agent's own
/// holds, which the agent reports from the kernel as `kernel.skipped_runs`.
fn recursion_misses(pid: u32) -> u64 {
    let ids: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("prog_id:"))
                        .and_then(|v| v.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(!ids.is_empty(), "no eBPF programs among the agent's fds");
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("bpftool: {e} (cargo xtask setup installs it)"));
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool -j prog show");
    progs
        .as_array()
        .expect("a list of programs")
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["recursion_misses"].as_u64())
        .sum()
}

fn one_namespace(port: u16) -> Life {
    let ns = Netns::new();
    let inode = ns.inode();
    let before = Mib::snapshot(&ns);
    let mut listener = Peer::spawn(
        &ns,
        PEER,
        &["listen", "--addr", "127.0.0.1", "--port", &port.to_string()],
    );
    let res = Peer::connect(&ns, PEER, "127.0.0.1", port + 1, 1, &[]);
    assert_eq!(res[0].result, "refused", "{res:?}");
    let after = Mib::snapshot(&ns);
    // The owner exits while the agent may still be reading about it; then the namespace goes.
    let _ = listener.stop(Duration::from_secs(5));
    drop(ns);
    Life {
        inode,
        rsts: mib::delta(&before, &after, "Tcp.OutRsts"),
        lport: res[0].lport,
    }
}

#[test]
fn namespace_churn_leaves_nothing_behind() {
    require_root();
    // All namespaces: the agent must notice each one, and forget it once it is gone.
    let args: Vec<String> = ["run", "--format", "json", "--stats-interval", "5"]
        .iter()
        .chain(&["--max-events-per-sec", "1000"])
        .map(|s| s.to_string())
        .collect();
    let mut agent = Agent::start_args(&args);
    let pid = agent.pid();
    // Warm-up: the first namespaces bring the agent's caches and threads to their working set.
    // Their RSTs count too: a later namespace may reuse one of their inodes.
    let warm_up: Vec<Life> = (0..20).map(|_| one_namespace(CHURN_PORT)).collect();
    agent.settle(Duration::from_secs(6));
    let base = usage(pid);
    let base_accounts = table_entries(agent.lines(), "netns_accounts").expect("netns_accounts");
    let base_listeners = table_entries(agent.lines(), "listeners").expect("listeners");

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(CHURN_NAMESPACES));
    let mut peaks = Peaks::default();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CHURN_WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= CHURN_NAMESPACES {
                    break;
                }
                let r = one_namespace(CHURN_PORT);
                results.lock().expect("results").push(r);
            });
        }
        // The agent's lines keep flowing meanwhile (and every stats line is bounded).
        while next.load(Ordering::SeqCst) < CHURN_NAMESPACES + CHURN_WORKERS
            && started.elapsed() < Duration::from_secs(900)
        {
            agent.settle(Duration::from_secs(1));
            peaks.take(agent.lines());
        }
    });
    let results = results.into_inner().expect("results");
    assert_eq!(results.len(), CHURN_NAMESPACES);
    assert!(
        results.iter().all(|l| l.rsts == 1),
        "each namespace's kernel counts one RST"
    );
    // Back to baseline, as a condition (bounded): namespaces are forgotten on the agent's sweep.
    let settled = poll_until(Duration::from_secs(60), Duration::from_secs(1), || {
        agent.settle(Duration::from_millis(500));
        let u = usage(pid);
        let accounts = table_entries(agent.lines(), "netns_accounts")?;
        let listeners = table_entries(agent.lines(), "listeners")?;
        (u.fds <= base.fds + 2
            && u.threads <= base.threads + 2
            && accounts <= base_accounts + 8
            && listeners <= base_listeners + 8)
            .then_some((u, accounts, listeners))
    });
    let now = usage(pid);
    let skipped = recursion_misses(pid);
    let stopped = agent.stop();
    // The agent reports the kernel's count itself, read later than bpftool's, from the same
    // counters: never less.
    let reported_skips: u64 = event::skipped_runs(&stopped.final_stats).values().sum();
    assert!(
        reported_skips >= skipped,
        "the agent's kernel.skipped_runs ({reported_skips}) is below bpftool's recursion_misses \
         read earlier ({skipped})"
    );
    peaks.take(&stopped.lines);
    eprintln!(
        "namespace churn: {CHURN_NAMESPACES} namespaces in {:?}; before {base:?}, after {now:?}\n\
         tables: {}\nfinal stats: {}",
        started.elapsed(),
        peaks.report(),
        stopped.final_stats
    );
    let Some((u, accounts, listeners)) = settled else {
        panic!(
            "not back to baseline 60 s after the churn: {now:?} vs {base:?}; netns_accounts {:?} \
             (was {base_accounts}), listeners {:?} (was {base_listeners})",
            table_entries(&stopped.lines, "netns_accounts"),
            table_entries(&stopped.lines, "listeners")
        );
    };
    // The agent's caches (processes, owners, recent RSTs) fill towards their bounds over the
    // churn and whatever else the host does meanwhile: bounded growth, never past the cost bound.
    assert!(
        u.rss_kib <= base.rss_kib + RSS_CACHE_GROWTH_KIB && u.rss_kib <= RSS_BOUND_KIB,
        "RSS grew from {} to {} KiB over the churn",
        base.rss_kib,
        u.rss_kib
    );
    eprintln!("back to baseline: {u:?}, netns_accounts {accounts}, listeners {listeners}");

    // Every namespace's RST, reported in that namespace while it lived (its inode may be
    // reused by a later namespace, ours or anyone's).
    let lives: Vec<Life> = results.iter().chain(&warm_up).copied().collect();
    let ours: HashSet<u64> = lives.iter().map(|l| l.inode).collect();
    let mut got = vec![0u64; lives.len()];
    let mut unmatched = 0u64;
    let events = stopped.causes(|v| {
        event::has_cause(v, "no_listener")
            && event::netns(v).is_some_and(|n| ours.contains(&n))
            && event::local_port(v) == Some(CHURN_PORT + 1)
    });
    let (summaries, singles): (Vec<&Value>, Vec<&Value>) = events
        .iter()
        .partition(|v| event::get(v, "evidence.sampled").is_some());
    // Single events first, each to the namespace whose client port it names; then the storm
    // summaries (when other traffic folded ours, a summary names one client port but stands
    // for several), one each for that many namespaces of its inode still unaccounted for.
    // Event times are not used: they are converted from the kernel's clock.
    for v in singles {
        let n = event::netns(v);
        let candidates = |strict: bool| {
            lives.iter().enumerate().position(|(i, l)| {
                Some(l.inode) == n
                    && event::peer_port(v) == Some(l.lport)
                    && (!strict || got[i] == 0)
            })
        };
        match candidates(true).or_else(|| candidates(false)) {
            Some(i) => got[i] += 1,
            None => unmatched += 1,
        }
    }
    for v in summaries {
        let n = event::netns(v);
        let mut left = event::count(v).unwrap_or(1);
        for (i, l) in lives.iter().enumerate() {
            if left > 0 && Some(l.inode) == n && got[i] == 0 {
                got[i] = 1;
                left -= 1;
            }
        }
        unmatched += left;
    }
    let lost = event::stats_lost(&stopped.final_stats).expect("records.lost");
    let missing = got.iter().filter(|g| **g == 0).count() as u64;
    let unreported: Vec<(&Life, Vec<String>)> = lives
        .iter()
        .zip(&got)
        .filter(|(_, g)| **g == 0)
        .take(5)
        .map(|(l, _)| {
            let near = stopped
                .lines
                .iter()
                .filter(|v| {
                    event::netns(v) == Some(l.inode)
                        && event::str_at(v, "network.peer.address").is_some()
                        && event::local_port(v) == Some(CHURN_PORT + 1)
                })
                .map(|v| v.to_string())
                .collect();
            (l, near)
        })
        .collect();
    // Every namespace's RST is reported, or its loss counted: records lost (the agent's count)
    // or program runs the kernel skipped (its count, for every namespace: an upper bound).
    assert!(
        missing <= lost + skipped,
        "{missing} namespaces' RSTs not reported, {lost} records counted lost, {skipped} \
         program runs skipped: {unreported:#?}"
    );
    let extra: u64 = got.iter().map(|g| g.saturating_sub(1)).sum();
    eprintln!(
        "RSTs: {} namespaces, {missing} unreported ({lost} records lost, {skipped} program runs \
         skipped), {unmatched} events not matched to one",
        lives.len()
    );
    assert_eq!(extra, 0, "RSTs reported twice in churned namespaces");
}

#[test]
fn hidden_proc_degrades_evidence_not_the_agent() {
    require_root();
    let ns = Netns::new();
    let port = 41420u16;
    // A listener older than the agent: only /proc can name its owner, and /proc hides it.
    let mut old = Peer::listen(&ns, PEER, "127.0.0.1", port, &["--backlog", "1"]);
    // The agent in a mount namespace of its own with /proc remounted hidepid=2, without
    // CAP_SYS_PTRACE (with it, hidepid hides nothing from root): the host's /proc is untouched.
    let agent_cmd = format!(
        "mount -t proc -o hidepid=2 proc /proc && exec setpriv --bounding-set=-sys_ptrace \
         --inh-caps=-sys_ptrace -- {} run --format json --netns {} --max-events-per-sec 1000",
        agent_binary().display(),
        ns.name()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &agent_cmd,
    ]);
    let mut agent = Agent::start_command(cmd);
    let before = Mib::snapshot(&ns);
    // Overflow the old listener; an RST on a closed port; a process that exits right away.
    let _ = Peer::connect(
        &ns,
        PEER,
        "127.0.0.1",
        port,
        6,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    let _ = Peer::connect(&ns, PEER, "127.0.0.1", port + 1, 3, &[]);
    let after = Mib::settled(&ns);
    agent.wait_for(
        |v| event::has_cause(v, "no_listener"),
        3,
        Duration::from_secs(20),
    );
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    let _ = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        agent.settle(Duration::from_millis(200));
        let n: u64 = agent
            .causes(|v| event::has_cause(v, "accept_queue_overflow"))
            .iter()
            .filter_map(event::count)
            .sum();
        (n as i64 >= overflows).then_some(())
    });
    let _ = old.stop(Duration::from_secs(5));
    let stopped = agent.stop();
    eprintln!("hidepid: stderr:\n{}", stopped.stderr);
    let fin = &stopped.final_stats;
    assert_eq!(
        event::stats_cause(fin, "no_listener") as i64,
        mib::delta(&before, &after, "Tcp.OutRsts"),
        "no_listener vs Tcp.OutRsts with /proc hidden"
    );
    assert!(overflows > 0, "the old listener did not overflow");
    assert_eq!(
        event::stats_cause(fin, "accept_queue_overflow") as i64,
        overflows,
        "accept_queue_overflow vs TcpExt.ListenOverflows with /proc hidden"
    );
    let aqo = stopped.causes(|v| event::has_cause(v, "accept_queue_overflow"));
    for v in &aqo {
        // Either the owner is known (learnt from the kernel) or the event says /proc hid it.
        let said = event::str_at(v, "evidence.owner_unavailable");
        assert!(
            event::owner_pid(v).is_some() || said.is_some(),
            "an overflow without owner must say why: {v}"
        );
    }
    assert!(
        aqo.iter()
            .any(|v| event::str_at(v, "evidence.owner_unavailable")
                .is_some_and(|s| s.contains("hidepid"))),
        "the listener older than the agent cannot be named with /proc hidden, and an event \
         must say so:\n{}",
        event::summarize(&aqo)
    );
    assert!(
        !stopped.stderr.contains("ERROR") && !stopped.stderr.contains("panicked"),
        "errors on stderr with /proc hidden:\n{}",
        stopped.stderr
    );
}
