//! Writing events: one line each, written with a single write(2) as soon as it is made, so a
//! log shipper sees it at once and never half of it.
//!
//! The target is standard output, or `--output-file PATH` rotated by size (PATH → PATH.1 → …
//! → PATH.K, only ever between two whole lines) and reopened on SIGHUP for logrotate.
//!
//! A write that fails (the reader went away: EPIPE; the disk is full: ENOSPC; EIO) is not
//! retried and nothing more is written: the output records a [`Failure`], and the run loop in
//! agent.rs checks [`Output::failure`] on every turn, stops, detaches and exits non-zero with
//! one line on stderr. When standard output is a pipe or a socket, its reader going away is
//! also noticed with nothing to write ([`Output::attention`]), so `rst-trace run | head -1`
//! ends when `head` does, not at the next event.
use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use bytes::{BufMut, BytesMut};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout},
};
use serde_json::Value;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::oneshot,
};

use crate::{
    cli::{Format, RunArgs},
    diagnosis::Diagnosis,
};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `None`: standard output.
    pub file: Option<PathBuf>,
    /// Rotate before a line would take the file past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept: PATH.1 (newest) … PATH.K. 0 keeps none (the file restarts empty).
    pub keep: u32,
}

impl Target {
    pub fn stdout() -> Self {
        Self {
            file: None,
            max_bytes: u64::MAX,
            keep: 0,
        }
    }

    pub fn from_args(args: &RunArgs) -> Self {
        Self {
            file: args.output_file.clone(),
            max_bytes: args.output_max_bytes,
            keep: args.output_keep,
        }
    }
}

/// The output failed; nothing more is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("output to {target} failed: {message}; stopped and detached after {lines} line(s)")]
pub struct Failure {
    /// "standard output" or the file's path.
    pub target: String,
    /// The OS error, e.g. "Broken pipe (os error 32)".
    pub message: String,
    pub errno: Option<i32>,
    /// Lines written before the failure.
    pub lines: u64,
}

/// Something the run loop must let the output handle ([`Output::attend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// SIGHUP: reopen the output file.
    Hangup,
    /// Standard output's reader went away (POLLERR/POLLHUP on the pipe or socket).
    ReaderGone,
    /// The watcher of standard output stopped without seeing that; nothing to do.
    WatchEnded,
}

enum Sink {
    /// Standard output, or in tests any pipe.
    Stream {
        fd: Box<dyn AsFd + Send>,
        name: String,
    },
    File(RotatingFile),
}

pub struct Output {
    format: Format,
    buf: BytesMut,
    sink: Sink,
    failure: Option<Failure>,
    lines: u64,
    hangup: Option<Signal>,
    reader_gone: Option<oneshot::Receiver<()>>,
}

impl Output {
    /// Standard output, without the watch for its reader: for callers outside the run loop.
    pub fn new(format: Format) -> Self {
        Self::with_sink(
            format,
            Sink::Stream {
                fd: Box::new(io::stdout()),
                name: "standard output".into(),
            },
        )
    }

    fn with_sink(format: Format, sink: Sink) -> Self {
        Self {
            format,
            buf: BytesMut::with_capacity(4096),
            sink,
            failure: None,
            lines: 0,
            hangup: None,
            reader_gone: None,
        }
    }

    /// Opens the target for the run loop: a file is opened (appending) and reopened on SIGHUP;
    /// a pipe or socket on standard output is watched for its reader going away. Must run
    /// inside the tokio runtime (signal registration).
    pub fn open(format: Format, target: &Target) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        match &target.file {
            Some(path) => {
                let file = RotatingFile::open(path, target.max_bytes, target.keep)
                    .with_context(|| format!("opening the output file {}", path.display()))?;
                let mut out = Self::with_sink(format, Sink::File(file));
                // Registering replaces SIGHUP's default action (terminate) with a reopen.
                out.hangup =
                    Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?);
                Ok(out)
            }
            None => {
                let mut out = Self::new(format);
                out.reader_gone = watch_stdout_reader();
                Ok(out)
            }
        }
    }

    /// Writes to `fd` (a pipe in tests) instead of standard output.
    #[cfg(test)]
    fn to_fd(format: Format, fd: OwnedFd) -> Self {
        Self::with_sink(
            format,
            Sink::Stream {
                fd: Box::new(fd),
                name: "test pipe".into(),
            },
        )
    }

    pub fn diagnosis(&mut self, d: &Diagnosis) {
        match self.format {
            Format::Json => self.json(&d.to_json()),
            Format::Text => self.line(&d.to_text()),
        }
    }

    /// Agent-level records (start, statistics): JSON with the log-backend fields
    /// ([`crate::schema`]) and, on statistics lines, the output's own counters; or a text
    /// rendering.
    pub fn record(&mut self, v: &Value, text: impl FnOnce() -> String) {
        match self.format {
            Format::Json => {
                let mut v = v.clone();
                crate::schema::stamp(&mut v);
                let is_stats = v
                    .pointer("/event/name")
                    .is_some_and(|n| n == "rst_trace.stats");
                if let (true, Some(obj)) = (is_stats, v.as_object_mut()) {
                    obj.insert("output".into(), self.stats_json());
                }
                self.json(&v)
            }
            Format::Text => self.line(&text()),
        }
    }

    /// `output` on statistics lines: lines written before this one, and the file's rotations
    /// and reopens (what a shipper's count can be checked against).
    fn stats_json(&self) -> Value {
        let (file, rotations, reopens) = match &self.sink {
            Sink::File(f) => (Some(f.path.display().to_string()), f.rotations, f.reopens),
            Sink::Stream { .. } => (None, 0, 0),
        };
        serde_json::to_value(rst_trace_common::event::OutputCounts {
            lines: self.lines,
            file,
            rotations,
            reopens,
        })
        .unwrap_or_default()
    }

    /// Lines written so far.
    /// Whether lines are JSON (for a program), not text (for a person reading them already).
    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    pub fn lines_written(&self) -> u64 {
        self.lines
    }

    /// The failure that stopped the output, if any: the run loop stops on it.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// `Err` if the output failed at any point.
    pub fn finish(&self) -> Result<(), Failure> {
        self.failure.clone().map_or(Ok(()), Err)
    }

    /// Resolves when the output needs the run loop: SIGHUP (file output) or standard output's
    /// reader gone. Pending forever when neither can happen. Cancel-safe: dropping it (another
    /// branch of the loop won) loses nothing.
    pub async fn attention(&mut self) -> Attention {
        let hangup = &mut self.hangup;
        let gone = &mut self.reader_gone;
        let hup = async {
            match hangup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let gone = async {
            match gone {
                Some(rx) => rx.await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // `None`: the signal stream ended (the runtime is shutting down); nothing to reopen.
            r = hup => if r.is_some() { Attention::Hangup } else { Attention::WatchEnded },
            g = gone => if g { Attention::ReaderGone } else { Attention::WatchEnded },
        }
    }

    /// Acts on what [`Self::attention`] returned.
    pub fn attend(&mut self, a: Attention) {
        match a {
            Attention::Hangup => {
                if let Sink::File(f) = &mut self.sink {
                    match f.reopen() {
                        Ok(()) => {
                            f.reopens += 1;
                            log::info!("SIGHUP: reopened {}", f.path.display());
                        }
                        Err(e) => self.fail(&e),
                    }
                }
            }
            Attention::ReaderGone => {
                // A completed oneshot must not be awaited again.
                self.reader_gone = None;
                self.fail(&io::Error::from_raw_os_error(libc::EPIPE));
            }
            Attention::WatchEnded => {
                // Whichever source ended is not polled again; a failed write still stops the
                // agent.
                if self.reader_gone.as_mut().is_some_and(|rx| {
                    !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                }) {
                    self.reader_gone = None;
                }
            }
        }
    }

    fn json(&mut self, v: &Value) {
        self.buf.clear();
        if serde_json::to_writer((&mut self.buf).writer(), v).is_ok() {
            self.buf.put_u8(b'\n');
            self.write_buf();
        }
    }

    fn line(&mut self, s: &str) {
        self.buf.clear();
        self.buf.put_slice(s.as_bytes());
        self.buf.put_u8(b'\n');
        self.write_buf();
    }

    fn write_buf(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let result = match &mut self.sink {
            Sink::Stream { fd, .. } => write_stream(fd.as_fd(), &self.buf),
            Sink::File(f) => f.write_line(&self.buf),
        };
        match result {
            Ok(()) => self.lines += 1,
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, e: &io::Error) {
        if self.failure.is_some() {
            return;
        }
        let target = match &self.sink {
            Sink::Stream { name, .. } => name.clone(),
            Sink::File(f) => f.path.display().to_string(),
        };
        self.failure = Some(Failure {
            target,
            message: e.to_string(),
            errno: e.raw_os_error(),
            lines: self.lines,
        });
    }
}

/// Writes all of `line` to a pipe, socket or terminal. A pipe takes up to PIPE_BUF bytes in one
/// piece; a longer line may take several write(2) calls, each continuing where the last stopped.
fn write_stream(fd: BorrowedFd<'_>, line: &[u8]) -> io::Result<()> {
    let mut rest = line;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            // Someone else made the shared descriptor non-blocking: wait until it takes more.
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// When standard output is a pipe or a socket, a thread waits in poll(2) for its reader to go
/// away (the kernel reports POLLERR on a pipe without readers, POLLHUP on a socket whose peer
/// closed); the receiver then completes. `None` for files, terminals and /dev/null, where
/// there is no reader to lose (a failed write is still noticed).
fn watch_stdout_reader() -> Option<oneshot::Receiver<()>> {
    // A duplicate: poll(2) sees the same pipe, and the watcher owns what it polls.
    let fd = io::stdout().as_fd().try_clone_to_owned().ok()?;
    let kind = File::from(fd.try_clone().ok()?)
        .metadata()
        .ok()?
        .file_type();
    if !(kind.is_fifo() || kind.is_socket()) {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || wait_for_reader_gone(&fd, tx))
        .ok()?;
    Some(rx)
}

fn wait_for_reader_gone(fd: &OwnedFd, tx: oneshot::Sender<()>) {
    // With no events requested poll(2) returns only for POLLERR, POLLHUP or POLLNVAL, so this
    // loop turns only when a signal interrupts the wait.
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let gone = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
                if fds[0].revents().is_some_and(|r| r.intersects(gone)) {
                    let _ = tx.send(());
                    return;
                }
            }
            Err(Errno::EINTR) => {}
            // Cannot watch; dropping `tx` says so.
            Err(_) => return,
        }
    }
}

/// `--output-file`: appended to, one write(2) per line, rotated by size between lines.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    /// Bytes in the current file, as far as this process knows (see `write_line`).
    size: u64,
    rotations: u64,
    reopens: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        // Events name processes, ports and cgroups: readable by the owner and its group
        // (a shipper's group), not by everyone.
        .mode(0o640)
        .open(path)
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            keep,
            file,
            size,
            rotations: 0,
            reopens: 0,
        })
    }

    /// PATH.n
    fn numbered(&self, n: u32) -> PathBuf {
        let mut s: OsString = self.path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            // Someone may have truncated the file (logrotate's copytruncate): ask the disk
            // before rotating a file that is in fact small.
            self.size = self.file.metadata()?.len();
            if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
                self.rotate()?;
            }
        }
        let mut written = 0usize;
        while let Some(rest) = line.get(written..).filter(|r| !r.is_empty()) {
            // One call for the whole line: O_APPEND puts it at the end in one piece. A regular
            // file takes less only when it cannot grow (ENOSPC, RLIMIT_FSIZE); the next call
            // then reports why.
            match self.file.write(rest) {
                Ok(0) => {
                    self.undo_partial(written);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.undo_partial(written);
                    return Err(e);
                }
            }
        }
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    /// A line that could not be written whole is cut off again, so a shipper never reads half
    /// a JSON object.
    fn undo_partial(&mut self, written: usize) {
        if written == 0 {
            return;
        }
        let written = u64::try_from(written).unwrap_or(u64::MAX);
        if let Ok(m) = self.file.metadata() {
            let _ = self.file.set_len(m.len().saturating_sub(written));
        }
    }

    /// PATH.{K-1} → PATH.K, …, PATH → PATH.1 (rename replaces the oldest), then a fresh PATH.
    fn rotate(&mut self) -> io::Result<()> {
        let ignore_missing = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            for n in (1..self.keep).rev() {
                ignore_missing(std::fs::rename(self.numbered(n), self.numbered(n + 1)))?;
            }
            ignore_missing(std::fs::rename(&self.path, self.numbered(1)))?;
        }
        self.reopen()?;
        self.rotations += 1;
        Ok(())
    }

    /// Opens PATH anew (after our rotation, or logrotate's rename and SIGHUP).
    fn reopen(&mut self) -> io::Result<()> {
        let file = open_append(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = file;
        Ok(())
    }
}

/// `--output-max-bytes`: a number of bytes, optionally with a binary suffix K, M or G
/// (KiB, MiB, GiB), e.g. `100M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M or G)")),
            };
            (t.get(..i).unwrap_or_default(), mult)
        }
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1048576, 64K, 100M)"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err("the size must be at least 1 byte".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::fs::PermissionsExt as _};

    use super::*;
    use serde_json::json;

    fn line_of(n: usize) -> Value {
        json!({"event": {"name": "rst_trace.test"}, "n": n})
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "rst-trace-output-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read_lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_closed_pipe_is_a_failure_the_caller_sees() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut out = Output::to_fd(Format::Json, w);
        out.record(&line_of(1), String::new);
        assert_eq!(out.failure(), None);
        let mut got = vec![0u8; 4096];
        let n = File::from(r.try_clone().expect("dup"))
            .read(&mut got)
            .expect("read");
        let first: Value = serde_json::from_slice(&got[..n]).expect("one JSON line");
        assert_eq!(first["n"], 1);
        assert_eq!(
            first["rst_trace"]["schema_version"],
            crate::schema::SCHEMA_VERSION
        );
        assert_eq!(first["host"]["name"], crate::schema::host_name());
        drop(r); // the reader goes away, as `head -1` does
        out.record(&line_of(2), String::new);
        let f = out.failure().expect("EPIPE must be reported").clone();
        assert_eq!(f.errno, Some(libc::EPIPE));
        assert_eq!(f.lines, 1);
        assert!(f.to_string().contains("Broken pipe"), "{f}");
        assert!(!f.to_string().contains('\n'), "one line: {f}");
        // Nothing more is attempted, and the failure stays the first one.
        out.record(&line_of(3), String::new);
        assert_eq!(out.finish(), Err(f));
        assert_eq!(out.lines_written(), 1);
    }

    #[test]
    fn stats_lines_carry_the_output_counters() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut out = Output::to_fd(Format::Json, w);
        out.record(&line_of(1), String::new);
        out.record(
            &json!({"event": {"name": "rst_trace.stats", "kind": "metric"}, "final": true}),
            String::new,
        );
        drop(out);
        let mut text = String::new();
        File::from(r).read_to_string(&mut text).expect("read");
        let last: Value =
            serde_json::from_str(text.lines().last().expect("two lines")).expect("json");
        assert_eq!(last["output"]["lines"], 1);
        assert_eq!(last["output"]["file"], Value::Null);
    }

    #[test]
    fn rotation_keeps_whole_lines_and_k_files() {
        let dir = TempDir::new("rotate");
        let path = dir.0.join("events.jsonl");
        let target = Target {
            file: Some(path.clone()),
            max_bytes: 200,
            keep: 3,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let mut out = Output::open(Format::Json, &target).expect("open");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        for n in 0..60 {
            out.record(&line_of(n), String::new);
        }
        assert_eq!(out.failure(), None);
        let Sink::File(f) = &out.sink else {
            panic!("file sink")
        };
        assert!(f.rotations >= 4, "rotations: {}", f.rotations);
        // Every kept file holds whole JSON lines, none over the limit unless one line is.
        let mut seen = Vec::new();
        for p in [path.clone(), f.numbered(1), f.numbered(2), f.numbered(3)] {
            let text = std::fs::read_to_string(&p).expect("kept file");
            assert!(text.ends_with('\n'), "{} ends mid-line", p.display());
            assert!(text.len() <= 200, "{} is {} bytes", p.display(), text.len());
            for l in text.lines() {
                let v: Value = serde_json::from_str(l).expect("whole JSON line");
                seen.push(v["n"].as_u64().expect("n"));
            }
        }
        assert!(!f.numbered(4).exists(), "only K rotated files are kept");
        // The newest lines are all there, in order, with none twice.
        seen.sort_unstable();
        let newest: Vec<u64> = (60 - seen.len() as u64..60).collect();
        assert_eq!(seen, newest);
    }

    #[test]
    fn keep_zero_restarts_the_file() {
        let dir = TempDir::new("keep0");
        let path = dir.0.join("e.jsonl");
        let mut f = RotatingFile::open(&path, 10, 0).expect("open");
        f.write_line(b"0123456789\n").expect("write");
        f.write_line(b"abc\n").expect("write");
        assert_eq!(read_lines(&path), ["abc"]);
        assert!(!f.numbered(1).exists());
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_a_file_of_its_own() {
        let dir = TempDir::new("long");
        let path = dir.0.join("e.jsonl");
        let mut f = RotatingFile::open(&path, 8, 2).expect("open");
        f.write_line(b"ab\n").expect("write");
        f.write_line(b"0123456789abcdef\n").expect("write");
        f.write_line(b"cd\n").expect("write");
        assert_eq!(read_lines(&path), ["cd"]);
        assert_eq!(read_lines(&f.numbered(1)), ["0123456789abcdef"]);
        assert_eq!(read_lines(&f.numbered(2)), ["ab"]);
    }

    #[test]
    fn reopen_follows_a_rename_and_copytruncate_is_noticed() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("e.jsonl");
        let mut f = RotatingFile::open(&path, 10, 1).expect("open");
        f.write_line(b"one\n").expect("write");
        // logrotate (create mode) renames, then sends SIGHUP.
        std::fs::rename(&path, dir.0.join("e.jsonl.old")).expect("rename");
        f.write_line(b"two\n").expect("write"); // still the old file until reopened
        f.reopen().expect("reopen");
        f.write_line(b"three\n").expect("write");
        assert_eq!(read_lines(&dir.0.join("e.jsonl.old")), ["one", "two"]);
        assert_eq!(read_lines(&path), ["three"]);
        // copytruncate: the file is emptied behind our back. The next line would not fit by
        // our own count (6 + 5 > 10) but fits by the disk's: no needless rotation.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|h| h.set_len(0))
            .expect("truncate");
        f.write_line(b"four\n").expect("write");
        assert_eq!(read_lines(&path), ["four"]);
        assert!(
            !f.numbered(1).exists(),
            "rotated although the file was empty"
        );
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("100m"), Ok(100 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("-1").is_err());
    }
}
