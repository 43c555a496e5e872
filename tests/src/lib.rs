//! Test harness for rst-trace's end-to-end tests.
//!
//! * [`Netns`]: a throw-away network namespace (`rsttest-…`), deleted on drop.
//! * [`Mib`]: per-netns kernel counters (/proc/net/netstat + /proc/net/snmp), the ground truth.
//! * [`Peer`]: the `rst-trace-peer` program running inside a netns, killed and reaped on drop.
//! * [`Agent`]: the `rst-trace` agent under test, its JSON lines collected on a thread.
//! * [`event`]: accessors for the JSON fields of docs/agent-interface.md.
//! * [`prometheus`]: Debian's `prometheus` scraping the agent; [`http`]: a minimal GET.
//! * [`tmux`]: a program in a private tmux server, its screen read and keys sent.
//! * [`scenarios`]: the cause scenarios, written once and run by the host tests
//!   (tests/scenarios.rs, each in its own netns) and by the QEMU guest runner (rst-trace-vmcheck).
//!
//! Scenario tests need root (they create namespaces and load BPF); they call [`require_root`], which
//! panics rather than skips: a test that cannot run must fail loudly.

pub mod agent;
pub mod deploy;
pub mod event;
pub mod http;
pub mod mib;
pub mod netns;
pub mod peer;
pub mod prometheus;
pub mod scenarios;
pub mod tmux;
pub mod veth;

pub use agent::{agent_binary, Agent, Stopped};
pub use mib::Mib;
pub use netns::Netns;
pub use peer::{ConnectResult, Peer, PeerExit};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The ephemeral port range of every namespace the tests create (and of the guests): above
/// every port a test listens on or connects to (≤ 43,503). In the default range (32768–60999)
/// a connect() to a closed test port could be given that same port as its source and connect
/// to itself (TCP simultaneous open): no RST, and a scenario that expects one fails.
pub const EPHEMERAL_PORTS: &str = "45000 60999";

/// Panic (never skip) when the test does not run as root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (network namespaces, BPF): run `sudo -E cargo test -p rst-trace-tests` \
             — it must not be skipped"
        );
    }
}

/// The workspace root (the directory holding the workspace Cargo.toml).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Path of the peer program. Integration tests should pass `env!("CARGO_BIN_EXE_rst-trace-peer")`
/// instead; this fallback serves unit tests and tools.
pub fn peer_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RST_TRACE_PEER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/rst-trace-peer
    let mut dir = exe.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("rst-trace-peer")
}

/// Poll `cond` every `step` until it returns Some or `timeout` passes (bounded; no fixed sleeps as
/// synchronisation).
pub fn poll_until<T>(
    timeout: Duration,
    step: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(step.min(deadline - now));
    }
}

/// Packet counter of the one INPUT rule of `tool` (`iptables` or `ip6tables`) in `ns` with
/// `target` whose `-L -v -x -n` row has the whitespace-separated token `token` (e.g.
/// "dpt:41204", or a source address).
pub fn rule_packets(ns: &Netns, tool: &str, target: &str, token: &str) -> u64 {
    let out = ns.exec(tool, &["-L", "INPUT", "-v", "-x", "-n"]);
    rule_packets_in(&out, target, token)
        .unwrap_or_else(|e| panic!("{e} in {} ({tool}):\n{out}", ns.name()))
}

/// [`rule_packets`] on a listing already read (`iptables -L INPUT -v -x -n`).
pub fn rule_packets_in(listing: &str, target: &str, token: &str) -> Result<u64, String> {
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(2) == Some(&target) && f.contains(&token))
        .collect();
    if rows.len() != 1 {
        return Err(format!(
            "expected one {target} rule matching {token:?}, found {}",
            rows.len()
        ));
    }
    rows[0][0]
        .parse()
        .map_err(|_| format!("bad packet counter in {:?}", rows[0]))
}
