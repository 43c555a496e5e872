//! The agent's output for log shippers, end to end:
//! * its reader going away (`rst-trace run | head -1`) or a full disk under `--output-file` ends
//!   the run within a second: exit 1, one stderr line naming the failure, nothing half-written;
//! * `--output-file` rotation and SIGHUP reopen lose no line and split none;
//! * a real shipper (Debian's rsyslogd: imfile → omfwd TCP) delivers every line across three
//!   rotations to a listener of the test's own.
//!
//! Events come from connects to closed ports inside the test's namespace (each gives a
//! `no_listener` and a `connection_refused` line).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rst_trace_tests::{agent_binary, event, poll_until, require_root, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");
/// How long the agent may take to load and attach, as in the harness.
const START: Duration = Duration::from_secs(60);
/// The documented bound between an output failure and the agent's exit.
const EXIT_BOUND: Duration = Duration::from_secs(1);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A scratch directory of this test process, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "rsttest-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small tmpfs of our own, unmounted (and its mount point removed) on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new("tmpfs");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "rsttest",
            ])
            .arg(&dir.0)
            .stdin(Stdio::null())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} on {}: {}",
            dir.0.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Runs before TempDir's drop removes the (then empty) mount point.
        let ok = Command::new("umount")
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "umount {} failed; detaching it lazily",
                self.dir.0.display()
            );
            let _ = Command::new("umount").arg("-l").arg(&self.dir.0).status();
        }
    }
}

/// The agent started with explicit stdout, its stderr collected; killed and reaped on drop
/// unless it exited.
struct Spawned {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Spawned {
    fn start(args: &[String], stdout: Stdio) -> Spawned {
        let bin = agent_binary();
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {} {args:?}: {e}", bin.display()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let st = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => st
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Spawned {
            child,
            stderr,
            stderr_thread: Some(stderr_thread),
            status: None,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Polls every 5 ms until the agent exits or `deadline` passes.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        poll_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(5),
            || self.exited(),
        )
    }

    /// Everything the agent wrote on stderr; complete once it has exited.
    fn stderr_text(&mut self) -> String {
        if self.status.is_some() {
            if let Some(t) = self.stderr_thread.take() {
                let _ = t.join();
            }
        }
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // Our own child, not yet reaped: its pid cannot have been reused.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent's own stderr lines after its start-up report ("rst-trace: observing on …" and its
/// indented per-cause lines): what it said about how the run ended.
fn closing_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("rst-trace: ") && !l.starts_with("rst-trace: observing on"))
        .collect()
}

/// Exit 1 and exactly one closing stderr line, naming `target` and `error`; no panic.
fn assert_failed_cleanly(status: ExitStatus, stderr: &str, target: &str, error: &str) -> String {
    assert_eq!(
        status.code(),
        Some(1),
        "exit status after an output failure: {status}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the agent panicked:\n{stderr}"
    );
    let closing = closing_lines(stderr);
    assert_eq!(
        closing.len(),
        1,
        "want one stderr line naming the failure, got {closing:?}; stderr:\n{stderr}"
    );
    let line = closing[0];
    assert!(
        line.contains(target) && line.contains(error),
        "the stderr line must name {target:?} and {error:?}: {line:?}"
    );
    line.to_owned()
}

fn base_args(ns: &Netns) -> Vec<String> {
    ["run", "--format", "json", "--netns", ns.name()]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `count` connects to a closed port in `ns`: each is refused (two event lines in the agent).
fn refused_connects(ns: &Netns, port: u16, count: u32) {
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

/// Every line of `path` (which must end with a newline) as a JSON object.
fn json_lines(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in the middle of a line: …{:?}",
        path.display(),
        &text[text.len().saturating_sub(80)..]
    );
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("{}: not a JSON object: {l:?}", path.display()))
        })
        .collect()
}

/// Waits (bounded) for the agent's `rst_trace.started` line in `path`.
fn wait_started_in_file(agent: &mut Spawned, path: &Path) {
    let deadline = Instant::now() + START;
    loop {
        let first = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned));
        if let Some(v) = first.and_then(|l| serde_json::from_str::<Value>(&l).ok()) {
            assert!(
                event::is_started(&v),
                "first line of {}: {v}",
                path.display()
            );
            return;
        }
        if let Some(s) = agent.exited() {
            panic!(
                "agent exited ({s}) before writing rst_trace.started to {}; stderr:\n{}",
                path.display(),
                agent.stderr_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no rst_trace.started in {} within {START:?}; stderr:\n{}",
            path.display(),
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rst-trace run | head -1` through a real pipe: the read end closes after the first line; the
/// agent must stop, detach and exit 1 within a second, naming the broken pipe on one line.
#[test]
fn reader_gone_after_one_line_exits_within_a_second() {
    require_root();
    let ns = Netns::new();
    let mut agent = Spawned::start(&base_args(&ns), Stdio::piped());
    let stdout: ChildStdout = agent.child.stdout.take().expect("stdout piped");
    // The reader: one line, then it goes away, closing the only read end (as head -1 does).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let first = match rx.recv_timeout(START) {
        Ok(l) => l,
        Err(e) => panic!(
            "no first line from the agent within {START:?} ({e}); stderr:\n{}",
            agent.stderr_text()
        ),
    };
    let closed_at = Instant::now();
    let v: Value = serde_json::from_str(first.trim_end())
        .unwrap_or_else(|e| panic!("first line is not JSON ({e}): {first:?}"));
    assert!(event::is_started(&v), "first line: {v}");
    assert!(
        event::str_at(&v, "host.name").is_some_and(|h| !h.is_empty())
            && event::str_at(&v, "rst_trace.schema_version").is_some(),
        "agent-level lines carry host.name and rst_trace.schema_version: {v}"
    );

    // Something to write: a connect to a closed port in the agent's namespace, from another
    // thread, while this one watches (every 5 ms) for the agent's exit.
    let (status, exited_after) = std::thread::scope(|s| {
        let provoke = s.spawn(|| refused_connects(&ns, 40611, 1));
        let status = agent.wait_until(closed_at + EXIT_BOUND);
        let exited_after = closed_at.elapsed();
        if let Err(p) = provoke.join() {
            std::panic::resume_unwind(p);
        }
        (status, exited_after)
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "agent still running {EXIT_BOUND:?} after its reader went away (and an event was \
             provoked); stderr:\n{}",
            agent.stderr_text()
        )
    });
    let stderr = agent.stderr_text();
    let line = assert_failed_cleanly(status, &stderr, "standard output", "Broken pipe");
    eprintln!("agent exited {exited_after:?} after its reader went away: {line}");
    assert!(
        !stderr.contains("totals:"),
        "no final totals after an output failure (there is nowhere to write them):\n{stderr}"
    );
}

/// `--output-file` on a 64 KiB tmpfs, filled with events: on ENOSPC the agent exits 1 within a
/// second, names the file and the error on one line, and leaves only whole JSON lines behind.
#[test]
fn full_disk_exits_within_a_second_leaving_whole_lines() {
    require_root();
    let ns = Netns::new();
    let fs = Tmpfs::mount("64k");
    let path = fs.path().join("events.jsonl");
    let mut args = base_args(&ns);
    args.extend(
        ["--output-file", path.to_str().expect("utf-8 path")]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["--max-events-per-sec", "0"].iter().map(|s| s.to_string()));
    let mut agent = Spawned::start(&args, Stdio::null());
    wait_started_in_file(&mut agent, &path);

    // 64 KiB hold about a hundred event lines. Another thread connects, in batches of 10 (at
    // most 60 batches, ~1200 lines: far more than enough), until the agent has exited; this
    // one watches for the exit every 5 ms.
    let exited = AtomicBool::new(false);
    let (status, seen_exit) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            for batch in 0..60u16 {
                if exited.load(Ordering::SeqCst) {
                    return;
                }
                refused_connects(&ns, 40700 + batch, 10);
            }
        });
        let status = agent.wait_until(Instant::now() + Duration::from_secs(120));
        let seen_exit = SystemTime::now();
        exited.store(true, Ordering::SeqCst);
        if let Err(p) = load.join() {
            std::panic::resume_unwind(p);
        }
        (status, seen_exit)
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "agent still running after filling {} ({} bytes); stderr:\n{}",
            path.display(),
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            agent.stderr_text()
        )
    });
    // The file was last touched by the failed write (or the cut-off of its partial line).
    let last_write = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let gap = seen_exit.duration_since(last_write).unwrap_or_default();
    let stderr = agent.stderr_text();
    let line = assert_failed_cleanly(
        status,
        &stderr,
        path.to_str().expect("utf-8"),
        "No space left on device",
    );
    assert!(
        gap <= EXIT_BOUND,
        "agent exit seen {gap:?} after its last write to the full file (bound {EXIT_BOUND:?})"
    );
    eprintln!("agent exited {gap:?} after its last write: {line}");
    let lines = json_lines(&path);
    let said: usize = line
        .split("after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line count in {line:?}"));
    assert_eq!(
        lines.len(),
        said,
        "the file holds every line the agent says it wrote, and no partial one"
    );
    assert!(
        lines.len() > 10,
        "the tmpfs filled with events: {} lines",
        lines.len()
    );
    drop(agent);
}

/// logrotate's create mode: the file is renamed, SIGHUP follows; the agent goes on in a new file
/// at PATH, and nothing is lost between the two.
#[test]
fn sighup_reopens_the_output_file() {
    require_root();
    let ns = Netns::new();
    let dir = TempDir::new("sighup");
    let path = dir.0.join("events.jsonl");
    let moved = dir.0.join("events.jsonl.moved");
    let mut args = base_args(&ns);
    args.extend(
        [
            "--output-file",
            path.to_str().expect("utf-8"),
            "--max-events-per-sec",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut agent = Spawned::start(&args, Stdio::null());
    wait_started_in_file(&mut agent, &path);

    std::fs::rename(&path, &moved).expect("rename, as logrotate does");
    refused_connects(&ns, 40801, 1);
    // Still written to the renamed file: the agent has not been told yet.
    let in_moved = |n: usize| {
        poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            (json_lines(&moved).len() >= n).then_some(())
        })
    };
    assert!(
        in_moved(3).is_some(),
        "the two events did not reach the renamed file: {:?}",
        json_lines(&moved)
    );
    kill(agent.pid(), Signal::SIGHUP).expect("SIGHUP to the agent");
    assert!(
        poll_until(Duration::from_secs(5), Duration::from_millis(10), || path
            .exists()
            .then_some(()))
        .is_some(),
        "the agent did not reopen {} after SIGHUP; stderr:\n{}",
        path.display(),
        agent.stderr_text()
    );
    refused_connects(&ns, 40802, 1);
    assert!(
        poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            (json_lines(&path).len() >= 2).then_some(())
        })
        .is_some(),
        "events after SIGHUP did not reach the new file"
    );
    kill(agent.pid(), Signal::SIGTERM).expect("SIGTERM to the agent");
    let status = agent
        .wait_until(Instant::now() + Duration::from_secs(30))
        .expect("agent exits after SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(agent.exited().is_some(), "still running after SIGHUP");

    let old = json_lines(&moved);
    let new = json_lines(&path);
    let ports = |lines: &[Value]| -> Vec<u16> {
        lines
            .iter()
            .filter(|v| event::has_cause(v, "no_listener"))
            .filter_map(event::local_port)
            .collect()
    };
    assert!(event::is_started(&old[0]), "started line first: {}", old[0]);
    assert_eq!(ports(&old), [40801], "before SIGHUP, in the renamed file");
    assert_eq!(ports(&new), [40802], "after SIGHUP, in the new file");
    let last = new.last().expect("final stats");
    assert!(event::is_final_stats(last), "last line: {last}");
    assert_eq!(
        event::u64_at(last, "output.reopens"),
        Some(1),
        "stats count the reopen: {last}"
    );
    assert_eq!(
        event::u64_at(last, "output.lines"),
        Some((old.len() + new.len() - 1) as u64),
        "stats count every line before the final one: {last}"
    );
}

/// Lines received on a TCP listener of the test's own (what rsyslogd forwards).
struct LineSink {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl LineSink {
    fn start() -> LineSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded by `stop`: checked every 20 ms between accepts.
            while !s2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let l3 = l2.clone();
                        let _ = conn.set_nonblocking(false);
                        std::thread::spawn(move || {
                            for line in BufReader::new(conn).lines() {
                                let Ok(line) = line else { break };
                                if !line.trim().is_empty() {
                                    l3.lock().unwrap().push(line);
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        LineSink { port, lines, stop }
    }

    fn received(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A private rsyslogd: own config, work directory and pid file, no system configuration;
/// imfile follows PATH (inotify, from the beginning, across renames and truncation) and omfwd
/// forwards each line as is over TCP to `port`. Killed by pid on drop.
struct Rsyslogd {
    child: Child,
    log: PathBuf,
}

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

impl Rsyslogd {
    fn start(dir: &Path, watched: &Path, port: u16) -> Rsyslogd {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} is missing: install Debian's rsyslog (cargo xtask setup does)"
        );
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let conf = dir.join("rsyslog.conf");
        // maxMessageSize first: the started line is several KiB, above the 8 KiB default's
        // comfort; template "%msg%\n" forwards the line exactly as the agent wrote it.
        let text = format!(
            r#"global(workDirectory="{work}" maxMessageSize="256k")
module(load="imfile" mode="inotify")
template(name="asis" type="string" string="%msg%\n")
ruleset(name="ship") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="asis"
         action.resumeRetryCount="-1" queue.type="linkedList")
}}
input(type="imfile" file="{file}" tag="rst-trace" ruleset="ship"
      reopenOnTruncate="on" freshStartTail="off" addMetadata="off")
"#,
            work = work.display(),
            file = watched.display(),
        );
        std::fs::write(&conf, text).expect("write rsyslog.conf");
        let log = dir.join("rsyslogd.log");
        let log_file = std::fs::File::create(&log).expect("rsyslogd log");
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup"))
            .stderr(log_file)
            .spawn()
            .expect("spawn rsyslogd");
        let mut r = Rsyslogd { child, log };
        // Ready once it holds the watched file open: from then on a rename cannot hide lines
        // from it (imfile reads a renamed file to its end).
        let pid = r.child.id();
        let ready = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            fds.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == watched))
                .then_some(())
        });
        if ready.is_none() {
            let status = r.child.try_wait().ok().flatten();
            panic!(
                "rsyslogd (pid {pid}, status {status:?}) did not open {} within 20 s; its log:\n{}",
                watched.display(),
                r.log_text()
            );
        }
        r
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        // Our own child, by pid, not yet reaped.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let gone = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
                self.child.try_wait().ok().flatten()
            });
            if gone.is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Ships `--output-file` with rsyslog through at least three rotations: every line the agent
/// wrote (the kept files hold them all, and the agent's own count agrees) arrives at the
/// listener exactly once, each a JSON object with the log-backend fields.
#[test]
fn rsyslog_ships_every_line_across_rotations() {
    require_root();
    const MAX_BYTES: u64 = 16 * 1024;
    const KEEP: u32 = 5;
    let ns = Netns::new();
    let dir = TempDir::new("rsyslog");
    let path = dir.0.join("events.jsonl");
    let numbered = |n: u32| dir.0.join(format!("events.jsonl.{n}"));
    // The file exists before rsyslogd starts, so its readiness can be checked.
    std::fs::write(&path, "").expect("create the output file");
    let sink = LineSink::start();
    let rsyslogd = Rsyslogd::start(&dir.0, &path, sink.port);

    let mut args = base_args(&ns);
    args.extend(
        [
            "--output-file",
            path.to_str().expect("utf-8"),
            "--output-max-bytes",
            &MAX_BYTES.to_string(),
            "--output-keep",
            &KEEP.to_string(),
            "--max-events-per-sec",
            "0",
            "--stats-interval",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut agent = Spawned::start(&args, Stdio::null());
    wait_started_in_file(&mut agent, &path);

    // Batches of 4 refused connects (8 lines, well under MAX_BYTES) until the third rotation:
    // at most one rotation per batch, so the run stops between 3 and KEEP rotations and every
    // line stays in a kept file. 200 batches bound the loop.
    let mut batches = 0;
    while !numbered(3).exists() {
        assert!(
            batches < 200,
            "no third rotation after {batches} batches; files: {:?}",
            std::fs::read_dir(&dir.0)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        let port = 41000 + batches;
        refused_connects(&ns, port, 4);
        batches += 1;
        // The batch is written once its no_listener lines are in the current file or the one
        // before it (a batch is smaller than MAX_BYTES: it spans at most one rotation).
        let written = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            let text = std::fs::read_to_string(numbered(1)).unwrap_or_default()
                + &std::fs::read_to_string(&path).unwrap_or_default();
            let n = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| {
                    event::has_cause(v, "no_listener") && event::local_port(v) == Some(port)
                })
                .count();
            (n == 4).then_some(())
        });
        assert!(
            written.is_some(),
            "the agent did not write the 4 no_listener lines of port {port}; stderr:\n{}",
            agent.stderr_text()
        );
    }
    kill(agent.pid(), Signal::SIGTERM).expect("SIGTERM to the agent");
    let status = agent
        .wait_until(Instant::now() + Duration::from_secs(30))
        .unwrap_or_else(|| panic!("agent did not exit after SIGTERM"));
    let stderr = agent.stderr_text();
    assert!(status.success(), "agent exit {status}; stderr:\n{stderr}");

    // Everything the agent wrote, oldest file first.
    let mut files: Vec<PathBuf> = (1..=KEEP)
        .rev()
        .map(numbered)
        .filter(|p| p.exists())
        .collect();
    files.push(path.clone());
    assert!(files.len() >= 4, "want ≥ 3 rotations, have {files:?}");
    assert!(
        !numbered(KEEP + 1).exists(),
        "more than --output-keep rotated files"
    );
    let mut written: Vec<String> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read output file");
        if f != &path {
            assert!(
                text.len() as u64 <= MAX_BYTES,
                "{} is {} bytes, over --output-max-bytes",
                f.display(),
                text.len()
            );
        }
        let lines = json_lines(f); // whole JSON objects only
        assert_eq!(lines.len(), text.lines().count());
        written.extend(text.lines().map(str::to_owned));
    }
    let parsed: Vec<Value> = written
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(
        event::is_started(&parsed[0]),
        "oldest line is the started line"
    );
    let last = parsed.last().expect("lines");
    assert!(
        event::is_final_stats(last),
        "newest line is the final stats: {last}"
    );
    assert_eq!(
        event::u64_at(last, "output.lines"),
        Some(written.len() as u64 - 1),
        "the agent's own count of lines before its final one"
    );
    let rotations = event::u64_at(last, "output.rotations").expect("output.rotations");
    assert_eq!(
        rotations as usize,
        files.len() - 1,
        "one kept file per rotation"
    );
    for v in &parsed {
        assert!(
            event::str_at(v, "host.name").is_some()
                && event::str_at(v, "rst_trace.schema_version").is_some(),
            "host.name and rst_trace.schema_version on every line: {v}"
        );
        if event::has_cause(v, "no_listener") {
            assert!(
                event::str_at(v, "network.community_id").is_some_and(|c| c.starts_with("1:")),
                "a connection's event carries network.community_id: {v}"
            );
        }
    }

    // rsyslogd delivers them all (bounded wait), each once.
    let want = written.len();
    let arrived = poll_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let got = sink.received();
        (got.len() >= want).then_some(got)
    });
    let got = arrived.unwrap_or_else(|| {
        let got = sink.received();
        panic!(
            "rsyslog delivered {} of {want} lines within 60 s; rsyslogd log:\n{}",
            got.len(),
            rsyslogd.log_text()
        )
    });
    let count = |lines: &[String]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for l in lines {
            *m.entry(l.trim().to_owned()).or_default() += 1;
        }
        m
    };
    let (sent, received) = (count(&written), count(&got));
    let missing: Vec<&String> = sent.keys().filter(|k| !received.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} line(s) written but not delivered, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(
        sent, received,
        "every line delivered exactly once, unchanged"
    );
    for l in &got {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("delivered non-JSON ({e}): {l:?}"));
        assert!(v.is_object(), "delivered: {l}");
    }
    eprintln!(
        "rsyslog delivered all {want} lines across {rotations} rotations ({batches} batches)"
    );
    drop(rsyslogd);
}
