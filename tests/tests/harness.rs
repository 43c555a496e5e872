//! Self-checks of the harness and of rst-trace-peer, without the agent: each scenario's kernel
//! behaviour (MIB counters, errno results) as the agent tests rely on it. Needs root (netns).

use std::time::Duration;

use rst_trace_tests::{mib, require_root, Mib, Netns, Peer};

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

#[test]
fn netns_guard_inode_and_per_netns_sysctl() {
    require_root();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_abort_on_overflow").unwrap();
    let name;
    {
        let ns = Netns::new();
        name = ns.name().to_string();
        assert!(ns.path().exists());
        // The inode the agent reports is the nsfs inode, as seen by a process inside.
        let inside = ns.exec("stat", &["-L", "-c", "%i", "/proc/self/ns/net"]);
        assert_eq!(inside.trim().parse::<u64>().unwrap(), ns.inode());
        let host_ns = std::fs::metadata("/proc/self/ns/net").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        assert_ne!(host_ns.unwrap(), ns.inode(), "a new netns, not the host's");
        // lo is up
        let link = ns.exec("ip", &["-o", "link", "show", "lo"]);
        assert!(link.contains("UP"), "lo not up: {link}");
        ns.sysctl("net.ipv4.tcp_abort_on_overflow", "1");
        assert_eq!(ns.sysctl_get("net.ipv4.tcp_abort_on_overflow"), "1");
        ns.sysctl("net.ipv4.ip_local_port_range", "40000 40009");
    }
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "netns {name} not deleted on drop"
    );
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_abort_on_overflow").unwrap();
    assert_eq!(host_before, host_after, "host sysctl changed");
}

#[test]
fn peer_pid_is_the_programs_own_pid_and_drop_reaps_it() {
    require_root();
    let ns = Netns::new();
    let pid;
    {
        let p = Peer::spawn(
            &ns,
            PEER,
            &[
                "listen",
                "--addr",
                "127.0.0.1",
                "--port",
                "9000",
                "--backlog",
                "4",
            ],
        );
        pid = p.pid();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.ends_with("rst-trace-peer"),
            "pid {pid} is {exe:?}, not the peer"
        );
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "rst-trace-peer");
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "peer {pid} still exists after drop"
    );
}

#[test]
fn refused_connects_match_out_rsts() {
    require_root();
    let ns = Netns::new();
    let before = Mib::snapshot(&ns);
    let res = Peer::connect(&ns, PEER, "127.0.0.1", 40001, 3, &[]);
    assert!(
        res.iter().all(|r| r.result == "refused" && r.lport != 0),
        "{res:?}"
    );
    let res = Peer::connect(&ns, PEER, "127.0.0.1", 40002, 2, &["--nonblocking"]);
    assert!(
        res.iter().all(|r| r.result == "refused" && r.lport != 0),
        "{res:?}"
    );
    let after = Mib::snapshot(&ns);
    assert_eq!(
        mib::delta(&before, &after, "Tcp.OutRsts"),
        5,
        "{:?}",
        Mib::changes(&before, &after)
    );
    assert_eq!(mib::delta(&before, &after, "Tcp.AttemptFails"), 5);
}

#[test]
fn listen_accept_and_connect() {
    require_root();
    let ns = Netns::new();
    let mut srv = Peer::spawn(
        &ns,
        PEER,
        &[
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            "9001",
            "--backlog",
            "16",
            "--accept",
        ],
    );
    let res = Peer::connect(&ns, PEER, "127.0.0.1", 9001, 3, &[]);
    assert!(res.iter().all(|r| r.result == "connected"), "{res:?}");
    for r in &res {
        let want = format!("accepted peer=127.0.0.1:{}", r.lport);
        assert!(
            srv.wait_line(Duration::from_secs(5), |l| l == want)
                .is_some(),
            "server did not print {want:?}"
        );
    }
    let ex = srv.stop(Duration::from_secs(5));
    assert!(ex.status.success(), "{ex:?}");
}

#[test]
fn backlog_overflow_counts_listen_drops() {
    require_root();
    let ns = Netns::new();
    let _srv = Peer::spawn(
        &ns,
        PEER,
        &[
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            "9002",
            "--backlog",
            "1",
        ],
    );
    let before = Mib::snapshot(&ns);
    let res = Peer::connect(
        &ns,
        PEER,
        "127.0.0.1",
        9002,
        10,
        &["--nonblocking", "--timeout-ms", "500"],
    );
    let after = Mib::snapshot(&ns);
    let connected = res.iter().filter(|r| r.result == "connected").count();
    let timeouts = res.iter().filter(|r| r.result == "timeout").count();
    assert_eq!(connected + timeouts, 10, "{res:?}");
    assert!(connected >= 1 && timeouts >= 1, "{res:?}");
    assert!(
        mib::delta(&before, &after, "TcpExt.ListenOverflows") >= timeouts as i64,
        "{:?}",
        Mib::changes(&before, &after)
    );
}

#[test]
fn fd_limit_makes_accept_fail_with_emfile() {
    require_root();
    let ns = Netns::new();
    // fds 0,1,2 + the listener: a soft limit of 4 leaves nothing for accept().
    let mut srv = Peer::spawn(
        &ns,
        PEER,
        &[
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            "9003",
            "--backlog",
            "8",
            "--accept",
            "--nofile",
            "4",
        ],
    );
    let res = Peer::connect(&ns, PEER, "127.0.0.1", 9003, 1, &[]);
    assert_eq!(
        res[0].result, "connected",
        "the handshake completes; accept() fails later"
    );
    assert!(
        srv.wait_line(Duration::from_secs(5), |l| l == "accept_error EMFILE")
            .is_some(),
        "no EMFILE; stderr {}",
        srv.stderr_text()
    );
}

#[test]
fn abort_close_and_linger0_send_one_rst_each() {
    require_root();
    let ns = Netns::new();
    for (mode, extra) in [("abort-close", None), ("linger0", Some("--wait-data"))] {
        let before = Mib::snapshot(&ns);
        let port = if mode == "linger0" { "9005" } else { "9004" };
        let mut args = vec![mode, "--port", port];
        args.extend(extra);
        let mut srv = Peer::spawn(&ns, PEER, &args);
        let mut cli = Peer::spawn(
            &ns,
            PEER,
            &[
                "send",
                "--addr",
                "127.0.0.1",
                "--port",
                port,
                "--bytes",
                "1000",
                "--wait-close",
            ],
        );
        let c = cli.wait_exit(Duration::from_secs(15));
        let s = srv.wait_exit(Duration::from_secs(15));
        assert!(
            c.status.success() && s.status.success(),
            "{mode}: client {c:?} server {s:?}"
        );
        assert_eq!(
            c.lines.last().map(String::as_str),
            Some("reset"),
            "{mode}: client {:?}",
            c.lines
        );
        let closed = s
            .lines
            .iter()
            .find(|l| l.starts_with("closed"))
            .cloned()
            .unwrap_or_default();
        if mode == "abort-close" {
            assert_eq!(closed, "closed unread=1000", "{:?}", s.lines);
        } else {
            assert_eq!(closed, "closed linger=0 drained=1000", "{:?}", s.lines);
        }
        let after = Mib::snapshot(&ns);
        assert_eq!(
            mib::delta(&before, &after, "Tcp.OutRsts"),
            1,
            "{mode}: {:?}",
            Mib::changes(&before, &after)
        );
        assert_eq!(
            mib::delta(&before, &after, "Tcp.EstabResets"),
            2,
            "{mode}: both ends reset"
        );
    }
}
