//! `rst-trace top`: the agent of `rst-trace run`, in-process, with a live view instead of JSON
//! lines, for the operator who was just paged.
//!
//! Causes are ranked by their rate over the last 10 s, then the last minute, with the port
//! that matters (the listening port, or the remote one for a client), the owning process, the
//! count since start and the latest advice. Plain ANSI (clear and redraw once a second) so it
//! works over any ssh session. Keys are read in raw mode; the terminal is put back however
//! the program ends (q, SIGINT, SIGTERM, SIGHUP, an error, a panic).
use std::{
    collections::HashMap,
    io::{IsTerminal, Read, Write},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::{mpsc, oneshot},
};

use crate::{
    agent,
    cause::Cause,
    cli::{RunArgs, TopArgs},
    diagnosis::{rfc3339_nanos, Diagnosis},
    embed::{Embedding, Snapshot, Tap},
    owner::Learned,
};

const SHORT_WINDOW: u64 = 10;
const LONG_WINDOW: u64 = 60;
/// Rows remembered at most; past this the one quiet the longest is forgotten (the exact
/// totals of the summary do not depend on rows).
const MAX_ROWS: usize = 4096;
/// Rows listed in the summary printed at exit.
const SUMMARY_ROWS: usize = 50;
const REDRAW: Duration = Duration::from_secs(1);

/// What a row stands for: a cause, on a port, for one program (by process name: a thousand
/// short-lived clients of one kind are one row, not a thousand rows of one event each).
type RowKey = (Cause, Option<u16>, Option<String>);
/// Distinct pids remembered per row, to say how many processes a row stands for.
const MAX_PIDS: usize = 256;

#[derive(Debug, Clone)]
struct Row {
    cause: Cause,
    port: Option<u16>,
    /// Process name and the latest pid.
    owner: Option<(String, u32)>,
    pids: std::collections::HashSet<u32>,
    count: u64,
    /// Events per second, as (second since start, events) in a ring indexed by second.
    seconds: [(u64, u64); LONG_WINDOW as usize],
    last_sec: u64,
    advice: String,
}

impl Row {
    fn in_window(&self, now: u64, window: u64) -> u64 {
        self.seconds
            .iter()
            .filter(|(s, _)| *s <= now && now - *s < window)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Per-second rate over `window` seconds ending at second `now`, or over the seconds since
/// second `since` (watching started) when that is shorter.
fn rate(events: u64, now: u64, since: u64, window: u64) -> f64 {
    let span = window.min(now.saturating_sub(since) + 1).max(1);
    events as f64 / span as f64
}

/// What the rows are aggregated from: every diagnosis, before storm folding.
#[derive(Debug, Default)]
pub struct Board {
    rows: HashMap<RowKey, Row>,
    started: Option<Started>,
    /// Events seen, all rows together.
    events: u64,
}

#[derive(Debug, Clone)]
struct Started {
    at: SystemTime,
    /// Second (since `top` started) the hooks were attached at: rates count from there.
    sec: u64,
    hooks_attached: usize,
    hooks: usize,
    unavailable: Vec<String>,
}

/// The port an operator knows the problem by: the remote one when this host is the client.
fn service_port(d: &Diagnosis) -> Option<u16> {
    let e = d.endpoints?;
    let client = matches!(
        d.cause,
        Cause::ConnectionRefused | Cause::EphemeralPortExhaustion
    ) || d
        .owner
        .as_ref()
        .is_some_and(|o| o.learned == Learned::Connect);
    let port = if client { e.remote.port } else { e.local.port };
    (port != 0).then_some(port)
}

impl Board {
    pub fn observe(&mut self, d: &Diagnosis, sec: u64) {
        // Warnings (listener_saturated) stand for no event; an overflow's RST is the overflow.
        if d.count == 0 || !crate::stats::is_incident(d) {
            return;
        }
        let port = service_port(d);
        let owner = d.owner.as_ref().map(|o| (o.comm.clone(), o.pid));
        let key = (d.cause, port, owner.as_ref().map(|o| o.0.clone()));
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_ROWS {
            if let Some(k) = self
                .rows
                .iter()
                .min_by_key(|(_, r)| r.last_sec)
                .map(|(k, _)| k.clone())
            {
                self.rows.remove(&k);
            }
        }
        let row = self.rows.entry(key).or_insert_with(|| Row {
            cause: d.cause,
            port,
            owner: owner.clone(),
            pids: Default::default(),
            count: 0,
            seconds: [(0, 0); LONG_WINDOW as usize],
            last_sec: sec,
            advice: String::new(),
        });
        row.count += d.count;
        let slot = &mut row.seconds[(sec % LONG_WINDOW) as usize];
        if slot.0 == sec {
            slot.1 += d.count;
        } else {
            *slot = (sec, d.count);
        }
        row.last_sec = sec;
        if let Some(o) = owner {
            if row.pids.len() < MAX_PIDS {
                row.pids.insert(o.1);
            }
            row.owner = Some(o);
        }
        if !d.advice.is_empty() {
            row.advice.clone_from(&d.advice);
        }
        self.events += d.count;
    }

    pub fn started(&mut self, v: &Value, sec: u64) {
        let hooks = v["hooks"].as_object();
        self.started = Some(Started {
            at: SystemTime::now(),
            sec,
            hooks: hooks.map_or(0, |h| h.len()),
            hooks_attached: hooks.map_or(0, |h| {
                h.values()
                    .filter(|x| x["attached"].as_array().is_some_and(|a| !a.is_empty()))
                    .count()
            }),
            unavailable: v["unavailable"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }

    /// Rows by rate over 10 s, then over 1 min, then count.
    fn ranked(&self, now: u64) -> Vec<(&Row, u64, u64)> {
        let mut rows: Vec<_> = self
            .rows
            .values()
            .map(|r| {
                (
                    r,
                    r.in_window(now, SHORT_WINDOW),
                    r.in_window(now, LONG_WINDOW),
                )
            })
            .collect();
        rows.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(b.2.cmp(&a.2))
                .then(b.0.count.cmp(&a.0.count))
                .then(a.0.cause.cmp(&b.0.cause))
                .then(a.0.port.cmp(&b.0.port))
                .then(a.0.owner.cmp(&b.0.owner))
        });
        rows
    }

    /// Per cause, all rows together.
    fn by_cause(&self) -> Vec<(Cause, u64)> {
        let mut m: std::collections::BTreeMap<Cause, u64> = Default::default();
        for r in self.rows.values() {
            *m.entry(r.cause).or_insert(0) += r.count;
        }
        m.into_iter().collect()
    }
}

/// What the header says besides the board.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub netns: String,
    pub port: String,
    pub stopping: bool,
}

/// A name for a terminal column: no spaces (columns stay whitespace-separated) or controls.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `comm[pid]` (the latest), or `comm[pid,+N]` when N other processes of that name were seen.
fn owner_text(r: &Row) -> String {
    let Some((comm, pid)) = &r.owner else {
        return "-".to_owned();
    };
    let others = r.pids.len().saturating_sub(1);
    if others == 0 {
        format!("{}[{pid}]", clean(comm))
    } else {
        let more = if r.pids.len() >= MAX_PIDS { "+" } else { "" };
        format!("{}[{pid},+{others}{more}]", clean(comm))
    }
}

fn port_text(p: Option<u16>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

/// Cuts `s` to `width` characters, marking the cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

fn clock(t: SystemTime) -> String {
    let s = rfc3339_nanos(t);
    format!("{} UTC", s.get(11..19).unwrap_or(""))
}

const HEADER: &str = "CAUSE                      PORT   OWNER                       /s 10s     /s 1m     COUNT  ADVICE";

fn row_line(r: &Row, short: u64, long: u64, now: u64, since: u64) -> String {
    format!(
        "{:<26} {:>5}  {:<24} {:>9.2} {:>9.2} {:>9}  {}",
        r.cause.as_str(),
        port_text(r.port),
        fit(&owner_text(r), 24),
        rate(short, now, since, SHORT_WINDOW),
        rate(long, now, since, LONG_WINDOW),
        r.count,
        r.advice
    )
}

/// The screen at second `now`, as lines of at most `width` characters, at most `height` lines.
pub fn render(board: &Board, now: u64, view: &View, width: usize, height: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let state = if view.stopping {
        "stopping: draining the last records…".to_owned()
    } else {
        match &board.started {
            None => "starting: loading and attaching the kernel programs…".to_owned(),
            Some(s) => {
                let mut t = format!(
                    "watching since {} ({}/{} hooks attached)",
                    clock(s.at),
                    s.hooks_attached,
                    s.hooks
                );
                if !s.unavailable.is_empty() {
                    t.push_str(&format!("; unavailable here: {}", s.unavailable.join(" ")));
                }
                t
            }
        }
    };
    lines.push(format!(
        "rst-trace top  netns {}  port {}  {}  {}   q quits",
        view.netns,
        view.port,
        clock(SystemTime::now()),
        state
    ));
    let causes = board.by_cause();
    lines.push(if causes.is_empty() {
        "no resets or drops yet".to_owned()
    } else {
        let list: Vec<String> = causes
            .iter()
            .map(|(c, n)| format!("{}={n}", c.as_str()))
            .collect();
        format!("{} events since start: {}", board.events, list.join(" "))
    });
    lines.push(String::new());
    lines.push(HEADER.to_owned());
    let ranked = board.ranked(now);
    let room = height.saturating_sub(lines.len());
    let shown = if ranked.len() > room {
        room.saturating_sub(1)
    } else {
        ranked.len()
    };
    let since = board.started.as_ref().map_or(0, |s| s.sec);
    for (r, short, long) in ranked.iter().take(shown) {
        lines.push(row_line(r, *short, *long, now, since));
    }
    if ranked.len() > shown && room > 0 {
        lines.push(format!("… {} more rows", ranked.len() - shown));
    }
    lines.truncate(height);
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

/// What is printed at exit, on the ordinary screen: the exact totals and every row by count.
pub fn summary(board: &Board, last: &Snapshot, view: &View, watched: Duration) -> String {
    let mut s = format!(
        "rst-trace top: watched {:.0} s (netns {}, port {})\n",
        watched.as_secs_f64(),
        view.netns,
        view.port
    );
    let totals: Vec<String> = last
        .causes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{}={n}", c.as_str()))
        .collect();
    s.push_str(&format!(
        "totals (as the rst_trace.stats line counts them): {}\n",
        if totals.is_empty() {
            "no events".to_owned()
        } else {
            totals.join(" ")
        }
    ));
    s.push_str(&format!(
        "records: delivered={} lost={} undecodable={}\n",
        last.delivered, last.lost, last.undecodable
    ));
    let mut rows: Vec<&Row> = board.rows.values().collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.cause.cmp(&b.cause))
            .then(a.port.cmp(&b.port))
    });
    if !rows.is_empty() {
        s.push_str(
            "CAUSE                      PORT   OWNER                        COUNT  ADVICE\n",
        );
        for r in rows.iter().take(SUMMARY_ROWS) {
            s.push_str(&format!(
                "{:<26} {:>5}  {:<24} {:>9}  {}\n",
                r.cause.as_str(),
                port_text(r.port),
                fit(&owner_text(r), 24),
                r.count,
                r.advice
            ));
        }
        if rows.len() > SUMMARY_ROWS {
            s.push_str(&format!("… {} more rows\n", rows.len() - SUMMARY_ROWS));
        }
    }
    s
}

/// The board as the run loop's tap.
struct BoardTap {
    board: Arc<Mutex<Board>>,
    start: Instant,
}

impl Tap for BoardTap {
    fn diagnosis(&mut self, d: &Diagnosis) {
        let sec = self.start.elapsed().as_secs();
        lock(&self.board).observe(d, sec);
    }

    fn started(&mut self, v: &Value) {
        let sec = self.start.elapsed().as_secs();
        lock(&self.board).started(v, sec);
    }
}

fn lock(b: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    // A panic while drawing leaves a board that is still a board.
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// The terminal as it was before `top`, for every way out (including the panic hook).
static SAVED_TERMINAL: Mutex<Option<TerminalState>> = Mutex::new(None);

#[derive(Clone)]
struct TerminalState {
    termios: Option<nix::sys::termios::Termios>,
    alternate_screen: bool,
}

fn restore_terminal() {
    let saved = SAVED_TERMINAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(saved) = saved else { return };
    if saved.alternate_screen {
        let mut out = std::io::stdout().lock();
        // Show the cursor, leave the alternate screen: the shell's screen comes back.
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
    if let Some(t) = saved.termios {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
}

/// Raw keys on a terminal stdin (no line buffering, no echo; ^C still raises SIGINT), the
/// alternate screen on a terminal stdout. Put back on drop.
struct Terminal;

impl Terminal {
    fn enter(keys: bool, screen: bool) -> anyhow::Result<Self> {
        use nix::sys::termios::{
            tcgetattr, tcsetattr, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices,
        };
        let termios = if keys {
            Some(tcgetattr(std::io::stdin()).context("reading the terminal's settings")?)
        } else {
            None
        };
        *SAVED_TERMINAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(TerminalState {
            termios: termios.clone(),
            alternate_screen: screen,
        });
        let guard = Terminal;
        if let Some(mut raw) = termios {
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::IEXTEN);
            raw.input_flags.remove(InputFlags::IXON | InputFlags::ICRNL);
            raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
            raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw)
                .context("putting the terminal in raw mode")?;
        }
        if screen {
            let mut out = std::io::stdout().lock();
            out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")
                .and_then(|()| out.flush())
                .context("writing to the terminal")?;
        }
        Ok(guard)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The message must land on a usable terminal.
        restore_terminal();
        previous(info);
    }));
}

/// The terminal's size, or a usual one when stdout is not a terminal.
fn terminal_size() -> (usize, usize) {
    // SAFETY: winsize is plain data; TIOCGWINSZ only writes into the struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (120, 40)
    }
}

fn draw(lines: &[String]) {
    let mut s = String::from("\x1b[H");
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            s.push_str("\r\n");
        }
        s.push_str(l);
        s.push_str("\x1b[K");
    }
    s.push_str("\x1b[J");
    let mut out = std::io::stdout().lock();
    // A terminal that cannot be written to is gone; the run ends with SIGHUP or q anyway.
    let _ = out.write_all(s.as_bytes()).and_then(|()| out.flush());
}

/// Stdin, read on a thread of its own (a blocking read must not hold up the runtime, nor its
/// shutdown): any of q, Q, ^C, ^D, end of input, or a read error asks to quit.
fn watch_keys(quit: mpsc::UnboundedSender<()>) {
    let spawned = std::thread::Builder::new()
        .name("top-keys".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if buf[..n]
                            .iter()
                            .any(|c| matches!(c, b'q' | b'Q' | 0x03 | 0x04))
                        {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = quit.send(());
        });
    if let Err(e) = spawned {
        log::warn!("cannot read keys ({e}); quit with SIGINT or SIGTERM");
    }
}

struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Installed before the terminal changes, so a signal during start-up ends the run
    /// cleanly instead of killing the process with the terminal in raw mode.
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

async fn ui(
    board: Arc<Mutex<Board>>,
    mut view: View,
    start: Instant,
    screen: bool,
    mut quit: mpsc::UnboundedReceiver<()>,
    mut signals: Signals,
    stop: oneshot::Sender<()>,
) {
    let mut stop = Some(stop);
    let mut tick = tokio::time::interval(REDRAW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let waiting = stop.is_some();
        // Anything but the tick asks the run to end; once asked, only the tick is left.
        let quit_asked = tokio::select! {
            _ = tick.tick() => false,
            _ = quit.recv(), if waiting => true,
            _ = signals.int.recv(), if waiting => true,
            _ = signals.term.recv(), if waiting => true,
            _ = signals.hup.recv(), if waiting => true,
        };
        if quit_asked {
            if let Some(tx) = stop.take() {
                // The run loop may be gone already: nothing left to stop then.
                let _ = tx.send(());
            }
        }
        view.stopping = stop.is_none();
        if screen {
            let (w, h) = terminal_size();
            let now = start.elapsed().as_secs();
            let lines = render(&lock(&board), now, &view, w, h);
            draw(&lines);
        }
    }
}

/// `run`'s arguments for the embedded agent: the filters given, defaults for the rest, and
/// no line output to fold or count.
fn run_args(args: &TopArgs) -> anyhow::Result<RunArgs> {
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }
    let mut argv: Vec<String> = ["top", "--stats-interval", "0", "--max-events-per-sec", "0"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if let Some(n) = &args.netns {
        argv.extend(["--netns".to_owned(), n.clone()]);
    }
    if let Some(p) = args.port {
        argv.extend(["--port".to_owned(), p.to_string()]);
    }
    Ok(Run::try_parse_from(argv)
        .context("building the agent's arguments")?
        .run)
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let run_args = run_args(&args)?;
    let keys = std::io::stdin().is_terminal();
    let screen = std::io::stdout().is_terminal();
    let view = View {
        netns: args.netns.clone().unwrap_or_else(|| "all".to_owned()),
        port: args
            .port
            .map_or_else(|| "any".to_owned(), |p| p.to_string()),
        stopping: false,
    };
    let start = Instant::now();
    let board = Arc::new(Mutex::new(Board::default()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let (quit_tx, quit_rx) = mpsc::unbounded_channel();
    let signals = Signals::install()?;
    install_panic_hook();
    let terminal = Terminal::enter(keys, screen)?;
    watch_keys(quit_tx);
    let ui = tokio::spawn(ui(
        board.clone(),
        view.clone(),
        start,
        screen,
        quit_rx,
        signals,
        stop_tx,
    ));
    let ext = Embedding {
        lines: false,
        taps: vec![Box::new(BoardTap {
            board: board.clone(),
            start,
        })],
        stop: Some(stop_rx),
        ..Embedding::default()
    };
    let result = agent::run_with(run_args, ext).await;
    ui.abort();
    drop(terminal);
    let last = result?;
    let text = summary(&lock(&board), &last, &view, start.elapsed());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the summary")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        cause::{Direction, Origin},
        owner::Owner,
        records::{Endpoint, Endpoints, Task},
    };

    fn diag(
        cause: Cause,
        local: u16,
        remote: u16,
        owner: Option<(&str, u32, Learned)>,
    ) -> Diagnosis {
        let mut d = Diagnosis::new(
            SystemTime::UNIX_EPOCH,
            "rst_trace.reset_sent",
            cause,
            if cause == Cause::AcceptQueueOverflow {
                Direction::Dropped
            } else {
                Direction::Sent
            },
            Origin::TcpStack,
            1,
        );
        let ip = "127.0.0.1".parse().expect("ip");
        d.endpoints = Some(Endpoints {
            local: Endpoint {
                addr: ip,
                port: local,
            },
            remote: Endpoint {
                addr: ip,
                port: remote,
            },
        });
        d.owner = owner.map(|(comm, pid, learned)| {
            Arc::new(Owner::from_task(
                &Task {
                    pid,
                    tid: pid,
                    comm: comm.into(),
                    cgroup_id: 0,
                },
                learned,
                None,
            ))
        });
        d.advice = format!("advice for {}", cause.as_str());
        d
    }

    #[test]
    fn rows_are_ranked_by_recent_rate_and_name_the_port_that_matters() {
        let mut b = Board::default();
        // An old burst on 8080, long quiet; a steady trickle on 9090 now.
        for _ in 0..50 {
            b.observe(&diag(Cause::NoListener, 8080, 40000, None), 0);
        }
        for s in 95..100 {
            b.observe(
                &diag(
                    Cause::AcceptQueueOverflow,
                    9090,
                    41000,
                    Some(("nginx", 7, Learned::Accept)),
                ),
                s,
            );
        }
        // A client's refusal is known by the port it tried to reach.
        b.observe(
            &diag(
                Cause::ConnectionRefused,
                43210,
                8080,
                Some(("curl", 9, Learned::Connect)),
            ),
            99,
        );
        let view = View {
            netns: "42".into(),
            port: "any".into(),
            stopping: false,
        };
        let lines = render(&b, 99, &view, 200, 40);
        let rows: Vec<Vec<&str>> = lines[4..]
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0][..3],
            ["accept_queue_overflow", "9090", "nginx[7]"],
            "{lines:#?}"
        );
        assert_eq!(rows[0][3], "0.50");
        assert_eq!(rows[0][5], "5");
        assert_eq!(
            rows[1][..3],
            ["connection_refused", "8080", "curl[9]"],
            "{lines:#?}"
        );
        assert_eq!(rows[2][..3], ["no_listener", "8080", "-"], "{lines:#?}");
        assert_eq!(rows[2][3..6], ["0.00", "0.00", "50"], "{lines:#?}");
        assert!(lines[1].contains("56 events since start"), "{lines:#?}");
        assert!(lines[0].contains("starting"), "{lines:#?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 200));
    }

    #[test]
    fn processes_of_one_name_are_one_row() {
        let mut b = Board::default();
        for pid in [11, 12, 13, 13] {
            b.observe(
                &diag(
                    Cause::ConnectionRefused,
                    40000 + pid as u16,
                    5432,
                    Some(("psql", pid, Learned::Connect)),
                ),
                0,
            );
        }
        let lines = render(&b, 0, &View::default(), 200, 40);
        let row: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            row[..3],
            ["connection_refused", "5432", "psql[13,+2]"],
            "{lines:#?}"
        );
        assert_eq!(row[5], "4");
        assert_eq!(lines.len(), 5, "{lines:#?}");
    }

    #[test]
    fn rates_count_from_when_watching_started() {
        let mut b = Board::default();
        // Loading took 5 s; then 4 events in the first 2 s of watching: 2/s over both windows.
        b.started(&serde_json::json!({}), 5);
        for _ in 0..4 {
            b.observe(&diag(Cause::NoListener, 80, 1, None), 6);
        }
        let lines = render(&b, 6, &View::default(), 200, 40);
        let row: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(row[3..5], ["2.00", "2.00"], "{lines:#?}");
        // A minute later they are out of the 10 s window and 4/60 of the last minute.
        let lines = render(&b, 65, &View::default(), 200, 40);
        let row: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(row[3..5], ["0.00", "0.07"], "{lines:#?}");
    }

    #[test]
    fn the_screen_fits_the_terminal() {
        let mut b = Board::default();
        for port in 1..100u16 {
            b.observe(&diag(Cause::NoListener, port, 1, None), 0);
        }
        b.started(
            &serde_json::json!({"hooks": {"a": {"attached": ["x"]}, "b": {"attached": []}}, "unavailable": ["abort_on_timeout"]}),
            0,
        );
        let lines = render(&b, 0, &View::default(), 60, 10);
        assert_eq!(lines.len(), 10);
        assert!(
            lines[0].contains("watching since") || lines[0].ends_with('…'),
            "{lines:#?}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{lines:#?}");
        assert!(lines[9].starts_with("… 94 more rows"), "{lines:#?}");
        let wide = render(&b, 0, &View::default(), 300, 10);
        assert!(wide[0].contains("watching since") && wide[0].contains("(1/2 hooks attached)"));
    }

    #[test]
    fn summary_lists_exact_totals_and_rows() {
        let mut b = Board::default();
        b.observe(&diag(Cause::NoListener, 80, 1, None), 0);
        let last = Snapshot {
            causes: [(Cause::NoListener, 1), (Cause::FdExhaustion, 0)].into(),
            ..Snapshot::default()
        };
        let s = summary(&b, &last, &View::default(), Duration::from_secs(3));
        assert!(
            s.contains("totals (as the rst_trace.stats line counts them): no_listener=1\n"),
            "{s}"
        );
        assert!(s.contains("no_listener                   80  -"), "{s}");
    }

    #[test]
    fn run_args_keep_the_filters() {
        let a = run_args(&TopArgs {
            netns: Some("blue".into()),
            port: Some(8080),
        })
        .expect("args");
        assert_eq!(a.netns.as_deref(), Some("blue"));
        assert_eq!(a.port, Some(8080));
        assert_eq!(a.stats_interval, 0);
        assert!(a.metrics_addr.is_none());
    }
}
