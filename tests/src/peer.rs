//! The `rst-trace-peer` program running inside a namespace, as a guard: killed and reaped on drop.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Netns;

/// How long a peer may take to print `ready <pid>`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Peer {
    child: Child,
    pid: u32,
    args: Vec<String>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    reaped: Option<ExitStatus>,
}

/// How a peer ended.
#[derive(Debug, Clone)]
pub struct PeerExit {
    pub status: ExitStatus,
    /// stdout lines after `ready <pid>`
    pub lines: Vec<String>,
    pub stderr: String,
}

/// One line of `connect`: `<result> attempt=I lport=P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResult {
    /// connected | refused | timeout | in_progress | an errno name
    pub result: String,
    pub attempt: u32,
    /// the client's local (ephemeral) port, 0 if unknown
    pub lport: u16,
}

impl ConnectResult {
    pub fn parse(line: &str) -> Option<ConnectResult> {
        let mut it = line.split_whitespace();
        let result = it.next()?.to_string();
        let mut attempt = None;
        let mut lport = None;
        for kv in it {
            match kv.split_once('=') {
                Some(("attempt", v)) => attempt = v.parse().ok(),
                Some(("lport", v)) => lport = v.parse().ok(),
                _ => {}
            }
        }
        Some(ConnectResult {
            result,
            attempt: attempt?,
            lport: lport?,
        })
    }
}

impl Peer {
    /// `<peer> listen --addr ADDR --port PORT extra…` inside `ns`, ready.
    pub fn listen(
        ns: &Netns,
        bin: impl AsRef<Path>,
        addr: &str,
        port: u16,
        extra: &[&str],
    ) -> Peer {
        let port = port.to_string();
        let mut args = vec!["listen", "--addr", addr, "--port", &port];
        args.extend_from_slice(extra);
        Peer::spawn(ns, bin, &args)
    }

    /// Start `<peer> args…` inside `ns` and wait (bounded) for its `ready <pid>` line. Panics, with
    /// the peer's stderr, if it does not get ready.
    pub fn spawn(ns: &Netns, bin: impl AsRef<Path>, args: &[&str]) -> Peer {
        let bin = bin.as_ref();
        assert!(
            bin.exists(),
            "peer binary {} does not exist (cargo builds it with the tests)",
            bin.display()
        );
        Peer::spawn_command(ns.command(bin, args), args)
    }

    /// Start a prepared peer command (`args` are its arguments, for messages) and wait like
    /// [`Peer::spawn`]. The spawned process must be the peer itself (no wrapper that forks).
    pub fn spawn_command(mut cmd: std::process::Command, args: &[&str]) -> Peer {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr_pipe = child.stderr.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let st = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr_pipe);
            let mut buf = [0u8; 4096];
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
        let child_pid = child.id();
        let mut peer = Peer {
            child,
            pid: child_pid,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin,
            lines: rx,
            stderr,
            stderr_thread: Some(stderr_thread),
            reaped: None,
        };
        // From here on, a panic drops `peer`, which kills and reaps the child.
        let first = match peer.lines.recv_timeout(READY_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let status = peer.reap_within(Duration::from_secs(2));
                panic!(
                    "peer {:?} did not print 'ready <pid>' ({}); status {:?}; stderr: {}",
                    peer.args,
                    if e == RecvTimeoutError::Timeout {
                        "timeout"
                    } else {
                        "stdout closed"
                    },
                    status,
                    peer.stderr_text()
                );
            }
        };
        let reported: u32 = first
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "peer {:?}: first line is not 'ready <pid>': {first:?}",
                    peer.args
                )
            });
        // `ip netns exec` execs the program: the pid we spawned must be the peer's own pid.
        assert_eq!(
            reported, child_pid,
            "peer pid {reported} differs from the spawned pid {child_pid}: a wrapper forked?"
        );
        peer
    }

    /// The peer's own pid (the same as the spawned `ip netns exec` pid, verified at start).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Next stdout line within `timeout` (None on timeout or EOF).
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Read lines until one satisfies `pred` (bounded). Returns the matching line.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    fn reap_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.reaped {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.reaped = Some(s);
                    return Some(s);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (bounded) for the peer to exit on its own; collects its remaining stdout. Panics on
    /// timeout (the guard then kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> PeerExit {
        let status = self.reap_within(timeout).unwrap_or_else(|| {
            panic!(
                "peer {:?} (pid {}) did not exit within {timeout:?}; stderr: {}",
                self.args,
                self.pid,
                self.stderr_text()
            )
        });
        self.finish(status)
    }

    /// Ask the peer to stop (SIGTERM), wait (bounded) and collect its output.
    pub fn stop(&mut self, timeout: Duration) -> PeerExit {
        if self.reaped.is_none() {
            self.stdin.take();
            if let Ok(None) = self.child.try_wait() {
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            }
        }
        self.wait_exit(timeout)
    }

    fn finish(&mut self, status: ExitStatus) -> PeerExit {
        // The process is gone; its stdout reaches EOF unless a grandchild holds it (bounded anyway).
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        PeerExit {
            status,
            lines,
            stderr: self.stderr_text(),
        }
    }

    /// `<peer> connect --addr ADDR --port PORT --count COUNT extra…` inside `ns`, ready: its
    /// results come as its lines.
    pub fn connecting(
        ns: &Netns,
        bin: impl AsRef<Path>,
        addr: &str,
        port: u16,
        count: u32,
        extra: &[&str],
    ) -> Peer {
        let port_s = port.to_string();
        let count_s = count.to_string();
        let mut args = vec![
            "connect", "--addr", addr, "--port", &port_s, "--count", &count_s,
        ];
        args.extend_from_slice(extra);
        Peer::spawn(ns, bin, &args)
    }

    /// Run `connect` inside `ns` to completion: one result per attempt.
    pub fn connect(
        ns: &Netns,
        bin: impl AsRef<Path>,
        addr: &str,
        port: u16,
        count: u32,
        extra: &[&str],
    ) -> Vec<ConnectResult> {
        let mut p = Peer::connecting(ns, bin, addr, port, count, extra);
        let what = format!("connect {addr} port {port} count {count} {extra:?}");
        let ex = p.wait_exit(Duration::from_secs(60));
        assert!(
            ex.status.success(),
            "peer {what} failed: {:?}, stderr: {}",
            ex.status,
            ex.stderr
        );
        let res: Vec<ConnectResult> = ex
            .lines
            .iter()
            .map(|l| ConnectResult::parse(l).unwrap_or_else(|| panic!("bad connect line {l:?}")))
            .collect();
        assert_eq!(
            res.len(),
            count as usize,
            "peer {what} printed {:?}",
            ex.lines
        );
        res
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.reaped.is_some() {
            return;
        }
        // Only our own child, by pid, and only while it has not been reaped (no pid reuse risk).
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            if self.reap_within(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(
            ConnectResult::parse("refused attempt=3 lport=51234"),
            Some(ConnectResult {
                result: "refused".into(),
                attempt: 3,
                lport: 51234
            })
        );
        assert_eq!(
            ConnectResult::parse("EADDRNOTAVAIL attempt=0 lport=0")
                .unwrap()
                .result,
            "EADDRNOTAVAIL"
        );
        assert!(ConnectResult::parse("ready 42").is_none());
        assert!(ConnectResult::parse("").is_none());
    }
}
