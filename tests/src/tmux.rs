//! A program in a detached tmux session of a private tmux server (`tmux -L rsttest-…`), so its
//! screen can be read (`capture-pane`) and keys sent to it. The pane stays after the program
//! exits (remain-on-exit) so its last screen can be read. The session and the private server
//! are killed on drop; no other tmux server is touched.
//!
//! The exit status is not taken from tmux (`#{pane_dead_status}`): when a pane's terminal
//! closes, tmux runs libutempter's helper, which sets SIGCHLD to SIG_DFL around its own
//! fork and wait. A program whose exit lands in that window has its SIGCHLD discarded, and tmux
//! never reaps it nor learns its status (seen about once in ten runs of `rst-trace top`, whose
//! exit closes the terminal a few ms before it ends). The shell tmux starts waits for the
//! program itself and writes the status to a file.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);
const SESSION: &str = "t";

pub struct Tmux {
    socket: String,
    /// Where the shell writes the program's exit status.
    status_path: std::path::PathBuf,
    /// The server's socket file, removed on drop (kill-server leaves it).
    socket_path: Option<std::path::PathBuf>,
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {cmd:?} ({e}): install tmux (cargo xtask setup does) — this test must not be skipped")
        })
}

impl Tmux {
    /// Starts `command` (a shell command line) in a `width`×`height` session.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        let socket = format!(
            "rsttest-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let status_path = std::env::temp_dir().join(format!("{socket}.status"));
        let _ = std::fs::remove_file(&status_path);
        let command = format!("{command}; echo $? > {}", status_path.display());
        let mut t = Tmux {
            socket,
            status_path,
            socket_path: None,
        };
        // One tmux invocation: the option is set before the program can exit, and no user
        // configuration is read (-f /dev/null).
        let out = run(t.cmd().args([
            "-f",
            "/dev/null",
            "start-server",
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &command,
        ]));
        assert!(
            out.status.success(),
            "tmux new-session failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(t.cmd().args(["display-message", "-p", "#{socket_path}"]));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        t.socket_path = (!path.is_empty()).then(|| path.into());
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// The visible screen, one string per line.
    pub fn screen(&self) -> String {
        let out = run(self.cmd().args(["capture-pane", "-p", "-t", SESSION]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen and the lines that scrolled off it (tmux's "Pane is dead" line scrolls the
    /// screen by one).
    pub fn scrollback(&self) -> String {
        let out = run(self
            .cmd()
            .args(["capture-pane", "-p", "-S", "-", "-t", SESSION]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn send_keys(&self, keys: &str) {
        let out = run(self.cmd().args(["send-keys", "-t", SESSION, keys]));
        assert!(
            out.status.success(),
            "tmux send-keys failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `Some(exit status)` once the program in the pane has exited (128 + n for signal n, as
    /// the shell reports it).
    pub fn exit_status(&self) -> Option<i32> {
        // Written by one echo; a read before its write lands finds nothing to parse.
        std::fs::read_to_string(&self.status_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Polls the screen (bounded) until `pred` holds; returns the last screen either way.
    pub fn wait_screen(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> (bool, String) {
        let mut last = String::new();
        let ok = crate::poll_until(timeout, Duration::from_millis(250), || {
            last = self.screen();
            pred(&last).then_some(())
        })
        .is_some();
        (ok, last)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Our own private server only (-L): its session, then the server itself.
        let _ = self
            .cmd()
            .args(["kill-session", "-t", SESSION])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self
            .cmd()
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(&self.status_path);
    }
}
