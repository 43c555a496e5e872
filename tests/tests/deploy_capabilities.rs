//! The systemd unit's capability set, measured: the static agent runs as an unprivileged user
//! holding exactly the capabilities of deploy/systemd/rst-trace.service (bounding = ambient,
//! as `DynamicUser=yes` + `AmbientCapabilities=` give it), with the unit's own ExecStart
//! arguments, and must still
//! * report `no_listener` for a closed port,
//! * report `accept_queue_overflow` on a listener that existed before it started, naming the
//!   server (an owner only /proc/<pid>/fd of another user's process can tell),
//! * report it on a listener opened after it started, naming the server (learnt at listen()),
//! * count every dropped connection: the sum equals the namespace's TcpExt.ListenOverflows
//!   (the SYN-time drops are only seen by polling sock_diag inside the namespace).
//!
//! Then each capability is dropped in turn, and something above must break: the set is the
//! smallest that works. The outcome of every run is printed as a table (`--nocapture`), the
//! one README "Deploy" records.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rst_trace_tests::deploy::{
    dist_binary, unit_capabilities, unit_exec_args, with_exactly, PrivateCopy,
};
use rst_trace_tests::{event, mib, require_root, Agent, Mib, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");
const OLD_PORT: u16 = 41301;
const NEW_PORT: u16 = 41302;
const CLOSED_PORT: u16 = 41303;

fn overflow_on(v: &Value, ns: u64, port: u16) -> bool {
    event::has_cause(v, "accept_queue_overflow")
        && event::netns(v) == Some(ns)
        && event::local_port(v) == Some(port)
}

fn listen(ns: &Netns, port: u16) -> Peer {
    Peer::spawn(
        ns,
        PEER,
        &[
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--backlog",
            "1",
        ],
    )
}

fn flood(ns: &Netns, port: u16) {
    let _ = Peer::connect(
        ns,
        PEER,
        "127.0.0.1",
        port,
        10,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
}

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// One run of the agent with exactly `caps`. `Ok` when everything in the module header holds,
/// else what broke. Harness failures that are not about the agent (no netns, no peer) panic.
fn probe(caps: &[String]) -> Result<(), String> {
    let copy = PrivateCopy::new(&dist_binary(), "caps");
    let ns = Netns::new();
    let inode = ns.inode();
    let old_server = listen(&ns, OLD_PORT);
    let before = Mib::snapshot(&ns);

    // The unit watches every namespace; the test narrows the agent to its own (--netns), so
    // listeners of tests running alongside cannot interleave lines with its start. The same
    // capabilities serve both: setns() for polling, /proc/<pid>/fd for owners.
    let mut args = unit_exec_args();
    args.extend(["--netns".to_owned(), ns.name().to_owned()]);
    let cmd = with_exactly(caps, copy.path(), &args);
    let started = catch_unwind(AssertUnwindSafe(|| Agent::start_command(cmd)));
    let mut agent = match started {
        Ok(a) => a,
        Err(p) => {
            let msg = panic_text(&*p);
            // The agent's own one-line refusal is the interesting part.
            let why = msg
                .lines()
                .filter(|l| l.starts_with("rst-trace:") || l.contains("WARN"))
                .collect::<Vec<_>>()
                .join(" / ");
            return Err(format!("the agent does not start: {why}"));
        }
    };
    let new_server = listen(&ns, NEW_PORT);

    let refused = Peer::connect(
        &ns,
        PEER,
        "127.0.0.1",
        CLOSED_PORT,
        1,
        &["--timeout-ms", "3000"],
    );
    assert_eq!(refused[0].result, "refused", "{refused:?}");
    flood(&ns, OLD_PORT);
    flood(&ns, NEW_PORT);
    let after = Mib::settled(&ns);

    let mut broken = Vec::new();
    let nl = agent.wait_for(
        |v| event::has_cause(v, "no_listener") && event::netns(v) == Some(inode),
        1,
        Duration::from_secs(15),
    );
    if nl.is_empty() {
        broken.push("no no_listener event".to_owned());
    }
    agent.wait_for(
        |v| overflow_on(v, inode, OLD_PORT),
        1,
        Duration::from_secs(10),
    );
    agent.wait_for(
        |v| overflow_on(v, inode, NEW_PORT),
        1,
        Duration::from_secs(5),
    );
    // The last polls of the drops counted above.
    agent.settle(Duration::from_secs(2));
    let stopped = match catch_unwind(AssertUnwindSafe(|| agent.stop())) {
        Ok(s) => s,
        // Dropping `agent` kills it.
        Err(_) => {
            broken.push("does not stop cleanly on SIGTERM (exit 0 within 30 s)".to_owned());
            return Err(broken.join("; "));
        }
    };

    for (what, port, server) in [
        (
            "listener older than the agent (owner from /proc/<pid>/fd)",
            OLD_PORT,
            &old_server,
        ),
        (
            "listener opened after the agent (owner from listen())",
            NEW_PORT,
            &new_server,
        ),
    ] {
        let events = stopped.causes(|v| overflow_on(v, inode, port));
        if events.is_empty() {
            broken.push(format!("no accept_queue_overflow on the {what}"));
            continue;
        }
        let unowned = events
            .iter()
            .filter(|v| event::owner_pid(v) != Some(server.pid()))
            .count();
        if unowned > 0 {
            broken.push(format!(
                "{unowned} of {} accept_queue_overflow events on the {what} do not name the server",
                events.len()
            ));
        }
    }
    let reported: u64 = stopped
        .causes(|v| {
            event::has_cause(v, "accept_queue_overflow")
                && event::netns(v) == Some(inode)
                && event::direction(v) == Some("dropped")
        })
        .iter()
        .filter_map(event::count)
        .sum();
    let overflows = mib::delta(&before, &after, "TcpExt.ListenOverflows");
    if overflows <= 0 {
        panic!(
            "the floods overflowed nothing; MIB changes: {:?}",
            Mib::changes(&before, &after)
        );
    }
    if reported as i64 != overflows {
        broken.push(format!(
            "{reported} dropped connections reported, TcpExt.ListenOverflows says {overflows}"
        ));
    }
    drop(old_server);
    drop(new_server);
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken.join("; "))
    }
}

fn show(caps: &[String]) -> String {
    caps.join(" ")
}

#[test]
fn the_units_capabilities_are_enough() {
    require_root();
    let caps = unit_capabilities();
    if let Err(why) = probe(&caps) {
        panic!(
            "as uid nobody with exactly the unit's capabilities [{}], the agent falls short: {why}",
            show(&caps)
        );
    }
    eprintln!("| all of [{}] | works |", show(&caps));
}

#[test]
fn every_capability_of_the_unit_is_needed() {
    require_root();
    let caps = unit_capabilities();
    let mut table = vec![
        "| capabilities held (uid nobody) | outcome |".to_owned(),
        "|---|---|".to_owned(),
    ];
    let mut unneeded = Vec::new();
    for dropped in &caps {
        let held: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        match probe(&held) {
            Ok(()) => {
                unneeded.push(dropped.clone());
                table.push(format!(
                    "| without {dropped} | works: {dropped} is not needed |"
                ));
            }
            Err(why) => table.push(format!("| without {dropped} | {why} |")),
        }
    }
    // CAP_SYS_ADMIN is broad; the narrower capabilities that cover BPF and tracing instead
    // must fall short, or the unit should hold those.
    let narrow: Vec<String> = caps
        .iter()
        .filter(|c| *c != "CAP_SYS_ADMIN")
        .cloned()
        .chain(["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"].map(String::from))
        .collect();
    let narrow_result = probe(&narrow);
    table.push(format!(
        "| [{}] instead of CAP_SYS_ADMIN | {} |",
        show(&narrow),
        narrow_result.as_ref().err().map_or("works", String::as_str)
    ));
    eprintln!("{}", table.join("\n"));
    assert!(
        unneeded.is_empty(),
        "the unit grants capabilities the agent works without: {unneeded:?}\n{}",
        table.join("\n")
    );
    assert!(
        narrow_result.is_err(),
        "CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN suffice instead of CAP_SYS_ADMIN: narrow the unit\n{}",
        table.join("\n")
    );
}
