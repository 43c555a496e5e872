//! `rst-trace top`, end to end: under tmux (a real terminal) the screen must show `no_listener`
//! with its port and exact count after closed-port connects driven by the peer program, `q`
//! must end it with status 0 and a summary; without a terminal it must run until its input
//! ends and print the same summary. Counts are checked against the netns's Tcp.OutRsts.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rst_trace_tests::{agent_binary, mib, require_root, tmux::Tmux, Mib, Netns, Peer};

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");
const START_TIMEOUT: Duration = Duration::from_secs(90);

fn refused(ns: &Netns, port: u16, count: u32) {
    let res = Peer::connect(
        ns,
        PEER,
        "127.0.0.1",
        port,
        count,
        &["--timeout-ms", "5000"],
    );
    assert!(
        res.iter().all(|r| r.result == "refused"),
        "connects to closed port {port}: {res:?}"
    );
}

/// The row of `cause` on `port` on a `top` screen, as whitespace-separated columns:
/// CAUSE PORT OWNER RATE10 RATE60 COUNT ADVICE...
fn row<'a>(screen: &'a str, cause: &str, port: u16) -> Option<Vec<&'a str>> {
    let port = port.to_string();
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() >= 6 && cols[0] == cause && cols[1] == port)
}

#[test]
fn top_in_a_terminal_shows_causes_and_quits_on_q() {
    require_root();
    const PORT: u16 = 40711;
    const N: u32 = 3;
    let ns = Netns::new();
    let before = Mib::snapshot(&ns);
    let bin = agent_binary();
    let tmux = Tmux::start(
        &format!("{} top --netns {}", bin.display(), ns.name()),
        160,
        40,
    );

    let (ready, screen) = tmux.wait_screen(START_TIMEOUT, |s| s.contains("watching since"));
    assert!(
        ready,
        "top did not show 'watching since' within {START_TIMEOUT:?} (exit status {:?}); screen:\n{screen}",
        tmux.exit_status()
    );

    refused(&ns, PORT, N);
    let after = Mib::snapshot(&ns);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(
        out_rsts,
        i64::from(N),
        "Tcp.OutRsts delta; MIB changes: {:?}",
        Mib::changes(&before, &after)
    );

    let count = N.to_string();
    let (shown, screen) = tmux.wait_screen(Duration::from_secs(30), |s| {
        row(s, "no_listener", PORT).is_some_and(|c| c[2] == "-" && c[5] == count)
            && row(s, "connection_refused", PORT)
                .is_some_and(|c| c[2].starts_with("rst-trace-peer[") && c[5] == count)
    });
    assert!(
        shown,
        "want rows `no_listener {PORT} - … {N}` (no owner: nothing listens) and \
         `connection_refused {PORT} rst-trace-peer[pid] … {N}` (the client, by the port it tried); screen:\n{screen}"
    );
    assert!(
        screen.contains(&format!("no_listener={N}")),
        "the per-cause line; screen:\n{screen}"
    );

    tmux.send_keys("q");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = tmux.exit_status() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "top did not exit within 60 s of q; screen:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let screen = tmux.scrollback();
    assert_eq!(status, 0, "top's exit status after q; screen:\n{screen}");
    assert!(
        screen.contains(&format!("no_listener={out_rsts}")) && screen.contains("rst-trace top: watched"),
        "the summary after exit carries the exact totals (no_listener={out_rsts}); screen:\n{screen}"
    );
}

#[test]
fn top_without_a_terminal_runs_until_its_input_ends_and_prints_a_summary() {
    require_root();
    const PORT: u16 = 40722;
    const N: u32 = 2;
    let ns = Netns::new();
    let before = Mib::snapshot(&ns);
    let bin = agent_binary();
    let mut child = Command::new(&bin)
        .args(["top", "--netns", ns.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            // Our own child, by pid, not yet reaped.
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
            }
            let _ = self.0.wait();
        }
    }
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let child = Reap(child);

    // Hooks are attached once the agent says what it observes with (stderr).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut err = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let attached = l.contains("observing on");
                err.push(l);
                if attached {
                    break;
                }
            }
            Err(_) => panic!(
                "top printed no 'observing on' line within {START_TIMEOUT:?}; stderr: {err:?}"
            ),
        }
    }

    refused(&ns, PORT, N);
    let after = Mib::snapshot(&ns);
    let out_rsts = mib::delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(out_rsts, i64::from(N), "Tcp.OutRsts delta");

    // End of input ends the run.
    stdin.write_all(b"").expect("stdin");
    drop(stdin);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "top did not exit within 60 s of its input ending; stderr: {err:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    stdout.read_to_string(&mut out).expect("stdout");
    err.extend(rx.try_iter());
    assert!(
        status.success(),
        "top's exit status: {status}; stdout:\n{out}\nstderr: {err:?}"
    );
    assert!(
        !out.contains('\x1b'),
        "no terminal control sequences without a terminal:\n{out:?}"
    );
    assert!(
        out.contains(&format!("no_listener={out_rsts}")),
        "the summary's exact totals:\n{out}"
    );
    let cols = row(&out, "no_listener", PORT)
        .unwrap_or_else(|| panic!("no no_listener row for port {PORT} in the summary:\n{out}"));
    // CAUSE PORT OWNER COUNT ADVICE...
    assert_eq!(cols[2], "-", "no owner: nothing listens\n{out}");
    assert_eq!(cols[3], N.to_string(), "count\n{out}");
}
