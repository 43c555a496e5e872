//! The systemd unit as shipped (deploy/systemd/rst-trace.service):
//! * `systemd-analyze verify` accepts it without a single warning,
//! * `systemd-analyze security --offline` rates its exposure at most 4.5 of 10, so hardening
//!   removed by a later edit fails here,
//! * the agent tells `$NOTIFY_SOCKET` READY=1 once its `rst_trace.started` line is out, which
//!   is what `Type=notify` waits for, and a SIGTERM sent right after READY=1 is a clean stop
//!   (exit 0, final stats line last).
//!
//! systemd is not PID 1 on the development machines, so the unit itself cannot be started here;
//! the capability set it grants is measured by deploy_capabilities.rs.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rst_trace_tests::agent::{START_TIMEOUT, STOP_TIMEOUT};
use rst_trace_tests::deploy::{dist_binary, unit_path};
use rst_trace_tests::{event, require_root, Netns};

/// Exposure ×10, as `systemd-analyze security --threshold` takes it.
const MAX_EXPOSURE: u32 = 45;

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("rsttest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The unit with ExecStart pointing at the static agent just built: `verify` checks that the
/// executable exists, and /usr/local/bin/rst-trace is not installed on a build machine.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_path())
        .unwrap_or_else(|e| panic!("read {}: {e}", unit_path().display()));
    let installed = "ExecStart=/usr/local/bin/rst-trace ";
    assert!(
        text.contains(installed),
        "the unit must start /usr/local/bin/rst-trace (the README's install path)"
    );
    let here = format!("ExecStart={} ", dist_binary().display());
    let path = dir.join("rst-trace.service");
    std::fs::write(&path, text.replace(installed, &here))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install Debian's systemd package (cargo xtask setup does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = Scratch::new("unit");
    let unit = unit_for_this_build(&dir.0);
    let (ok, text) = systemd_analyze(&["verify"], &unit);
    assert!(
        ok,
        "systemd-analyze verify {} failed:\n{text}",
        unit.display()
    );
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify {} warns:\n{text}",
        unit.display()
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_low_exposure() {
    let dir = Scratch::new("unit-security");
    let unit = unit_for_this_build(&dir.0);
    let threshold = format!("--threshold={MAX_EXPOSURE}");
    let (ok, text) = systemd_analyze(&["security", "--offline=yes", &threshold], &unit);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall exposure line)");
    assert!(
        ok,
        "exposure above {}.{}: {overall}\n{text}",
        MAX_EXPOSURE / 10,
        MAX_EXPOSURE % 10
    );
    eprintln!("{overall}");
}

#[test]
fn the_agent_notifies_ready_after_its_started_line() {
    require_root();
    let dir = Scratch::new("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)
        .unwrap_or_else(|e| panic!("bind {}: {e}", socket_path.display()));
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("socket timeout");
    let ns = Netns::new();

    // Not the Agent harness: its reader thread empties stdout at once, and this test must
    // look at stdout only after READY=1 arrived.
    let mut child = Command::new(dist_binary())
        .args(["run", "--format", "json", "--netns", ns.name()])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let guard = KillOnDrop(&mut child);

    let mut buf = [0u8; 4096];
    let mut got = String::new();
    let deadline = Instant::now() + START_TIMEOUT;
    while !got.lines().any(|l| l == "READY=1") && Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv on {}: {e}", socket_path.display()),
        }
    }
    assert!(
        got.lines().any(|l| l == "READY=1"),
        "no READY=1 on NOTIFY_SOCKET within {START_TIMEOUT:?}; got {got:?}"
    );
    assert!(
        got.lines().any(|l| l.starts_with("STATUS=")),
        "a STATUS= line tells `systemctl status` what the agent does: {got:?}"
    );

    // READY=1 is here, so the started line must already be in the pipe: read without waiting.
    let stdout = guard.0.stdout.take().expect("stdout");
    let fd = stdout.as_raw_fd();
    // SAFETY: fcntl on a pipe we own; only the status flags change.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    let read = reader.read_line(&mut first);
    assert!(
        read.as_ref().is_ok_and(|n| *n > 0),
        "READY=1 arrived before the agent wrote anything on stdout ({read:?})"
    );
    let v: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("first stdout line is not JSON ({e}): {first:?}"));
    assert!(
        event::is_started(&v),
        "READY=1 arrived, yet the first line is not rst_trace.started: {first}"
    );

    // Keep reading: a closed stdout is an output failure, which ends the agent with status 1.
    // SAFETY: as above; back to blocking reads, on a thread that ends at EOF (agent exit).
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        rest
    });

    // A clean stop, as systemd does it, right after READY=1.
    kill(Pid::from_raw(guard.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = wait_bounded(&mut *guard.0, STOP_TIMEOUT);
    let rest = drain.join().unwrap_or_default();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        rest.lines()
            .last()
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .is_some_and(|v| event::is_final_stats(&v)),
        "a SIGTERM right after READY=1 still ends with the final stats line; stdout after the started line:\n{rest}"
    );
}

/// Kills and reaps our own child if the test panics before it exits.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit within {timeout:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
