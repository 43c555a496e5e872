//! The load generator: `xtask bench-load …`, a hidden subcommand the bench runs inside its
//! namespaces (`ip netns exec NS <xtask> bench-load …`). std sockets only, so what it measures
//! is the kernel's TCP path plus whatever tracer is attached, not a client library.
//!
//! Every loop is bounded by a count and by `--max-seconds`. The timed workloads print one JSON
//! line with what they did and the namespace's `Tcp: OutRsts` delta (read from /proc/net/snmp,
//! which shows the netns of the reader), so the harness can check the counts add up. The
//! holding workloads print `ready N` once set up and keep their sockets until stdin closes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

/// A port nothing listens on in a fresh namespace (discard).
pub const CLOSED_PORT: u16 = 9;
/// The healthy churn's and the idle listeners' port.
pub const SERVICE_PORT: u16 = 8080;

#[derive(clap::Subcommand, Debug)]
pub enum Load {
    /// connect → accept → close on 127.0.0.1, COUNT times (no RST: nothing is left unread).
    Churn {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        max_seconds: u64,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// connect() to a closed port on 127.0.0.1, COUNT times (one RST each).
    Storm {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        max_seconds: u64,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// getppid() COUNT times: the cheapest syscall, so what a tracer adds to every syscall of
    /// every process (a syscall tracepoint routes them all through the slow path) shows whole.
    Syscalls {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        max_seconds: u64,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// One listener on 127.0.0.1:PORT in each namespace named in FILE (one name under
    /// /run/netns per line; a file, since a thousand names make an unwieldy command line),
    /// held until stdin closes.
    Listeners {
        #[arg(long)]
        max_seconds: u64,
        #[arg(long, default_value_t = SERVICE_PORT)]
        port: u16,
        #[arg(long, value_name = "FILE")]
        names: std::path::PathBuf,
    },
    /// COUNT established connections to a listener on 127.0.0.1:PORT (both ends held in this
    /// process), held until stdin closes.
    Established {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        max_seconds: u64,
    },
}

pub fn run(load: Load) -> Result<u8> {
    match load {
        Load::Churn {
            count,
            max_seconds,
            cpu,
        } => pin(cpu).and_then(|()| churn(count, Duration::from_secs(max_seconds))),
        Load::Storm {
            count,
            max_seconds,
            cpu,
        } => pin(cpu).and_then(|()| storm(count, Duration::from_secs(max_seconds))),
        Load::Syscalls {
            count,
            max_seconds,
            cpu,
        } => pin(cpu).and_then(|()| syscalls(count, Duration::from_secs(max_seconds))),
        Load::Listeners {
            max_seconds,
            port,
            names,
        } => {
            let names = std::fs::read_to_string(&names)
                .with_context(|| format!("reading {}", names.display()))?;
            let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
            listeners(&names, port, Duration::from_secs(max_seconds))
        }
        Load::Established {
            count,
            port,
            max_seconds,
        } => established(count, port, Duration::from_secs(max_seconds)),
    }?;
    Ok(0)
}

/// Keeps this process on one CPU: a workload measured on one core, as an operator's service
/// would be, with the tracer's own threads left where the scheduler puts them.
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for cpu < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is beyond what an affinity mask holds");
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// What a timed workload did, as the harness reads it back.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub completed: u64,
    pub refused: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    pub out_rsts: u64,
}

impl Outcome {
    pub fn parse(line: &str) -> Result<Outcome> {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("load output {line:?}"))?;
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Ok(Outcome {
            completed: n("completed"),
            refused: n("refused"),
            errors: n("errors"),
            first_error: v
                .get("first_error")
                .and_then(|e| e.as_str())
                .map(str::to_owned),
            elapsed_s: v
                .get("elapsed_s")
                .and_then(serde_json::Value::as_f64)
                .context("load output without elapsed_s")?,
            out_rsts: n("out_rsts"),
        })
    }

    fn print(&self) {
        let line = json!({
            "completed": self.completed,
            "refused": self.refused,
            "errors": self.errors,
            "first_error": self.first_error,
            "elapsed_s": self.elapsed_s,
            "out_rsts": self.out_rsts,
        });
        println!("{line}");
    }

    fn error(&mut self, e: &std::io::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn churn(count: u64, max: Duration) -> Result<()> {
    let listener = TcpListener::bind(localhost(SERVICE_PORT)).context("binding the listener")?;
    let rsts = out_rsts()?;
    let mut o = Outcome::default();
    let start = Instant::now();
    while o.completed + o.errors < count && start.elapsed() < max {
        // On loopback the handshake completes inside connect(), so accept() returns at once
        // and the accept queue never holds more than one connection: no overflow, no RST.
        match TcpStream::connect(localhost(SERVICE_PORT)) {
            Ok(client) => {
                let server = listener.accept();
                // The client closes first (FIN, TIME_WAIT on the client side), then the server.
                drop(client);
                match server {
                    Ok((server, _)) => {
                        drop(server);
                        o.completed += 1;
                    }
                    Err(e) => o.error(&e),
                }
            }
            Err(e) => o.error(&e),
        }
    }
    o.elapsed_s = start.elapsed().as_secs_f64();
    o.out_rsts = out_rsts()?.saturating_sub(rsts);
    o.print();
    Ok(())
}

fn storm(count: u64, max: Duration) -> Result<()> {
    let rsts = out_rsts()?;
    let mut o = Outcome::default();
    let start = Instant::now();
    while o.refused + o.completed + o.errors < count && start.elapsed() < max {
        match TcpStream::connect(localhost(CLOSED_PORT)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => o.refused += 1,
            Err(e) => o.error(&e),
            // Something listens on the closed port: the harness fails the run on this count.
            Ok(_) => o.completed += 1,
        }
    }
    o.elapsed_s = start.elapsed().as_secs_f64();
    o.out_rsts = out_rsts()?.saturating_sub(rsts);
    o.print();
    Ok(())
}

fn syscalls(count: u64, max: Duration) -> Result<()> {
    /// Calls between two looks at the clock, so the clock is not what is measured.
    const BATCH: u64 = 10_000;
    let mut o = Outcome::default();
    let start = Instant::now();
    while o.completed < count && start.elapsed() < max {
        for _ in 0..BATCH.min(count - o.completed) {
            // SAFETY: getppid takes no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        o.completed += BATCH.min(count - o.completed);
    }
    o.elapsed_s = start.elapsed().as_secs_f64();
    o.print();
    Ok(())
}

fn listeners(names: &[&str], port: u16, max: Duration) -> Result<()> {
    let home = File::open("/proc/self/ns/net").context("opening our own network namespace")?;
    let mut held = Vec::with_capacity(names.len());
    for &name in names {
        let path = format!("/run/netns/{name}");
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        // setns changes only this thread's namespace; the socket is created in it and stays
        // there after we move on.
        enter(&ns).with_context(|| format!("entering {path}"))?;
        held.push(
            TcpListener::bind(localhost(port))
                .with_context(|| format!("listening on 127.0.0.1:{port} in {name}"))?,
        );
    }
    enter(&home).context("returning to our own network namespace")?;
    ready_then_hold(held.len(), max)
}

fn established(count: u64, port: u16, max: Duration) -> Result<()> {
    // Both ends of every connection live here: two descriptors each, plus a few spare.
    raise_nofile(count * 2 + 64)?;
    let listener =
        TcpListener::bind(localhost(port)).with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let start = Instant::now();
    let mut held = Vec::new();
    for i in 0..count {
        if start.elapsed() > max {
            bail!("only {i} of {count} connections established within {max:?}");
        }
        let client = TcpStream::connect(localhost(port))
            .with_context(|| format!("connection {i} to 127.0.0.1:{port}"))?;
        let (server, _) = listener
            .accept()
            .with_context(|| format!("accepting connection {i}"))?;
        held.push((client, server));
    }
    ready_then_hold(held.len(), max)
}

/// Prints `ready N`, then waits for stdin to close (the harness dropped us) or `max`.
fn ready_then_hold(n: usize, max: Duration) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {n}")?;
    stdout.flush()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    // Either way we exit, and the kernel closes every socket.
    let _ = rx.recv_timeout(max);
    Ok(())
}

/// Reads the `ready N` line of a holding workload.
pub fn read_ready(line: &str) -> Option<u64> {
    line.trim().strip_prefix("ready ")?.parse().ok()
}

fn enter(ns: &File) -> Result<()> {
    // SAFETY: setns on a file descriptor we own, for a network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard one (allowed without CAP_SYS_RESOURCE) and checks
/// it covers `needed`.
fn raise_nofile(needed: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    if lim.rlim_cur < needed {
        bail!(
            "RLIMIT_NOFILE hard limit {} is below the {needed} descriptors needed",
            lim.rlim_cur
        );
    }
    Ok(())
}

/// `Tcp: OutRsts` of the namespace this process is in.
fn out_rsts() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    let mib = rst_trace_common::mib::parse(&snmp).context("parsing /proc/net/snmp")?;
    mib.get("Tcp.OutRsts")
        .and_then(|v| u64::try_from(*v).ok())
        .context("/proc/net/snmp has no Tcp OutRsts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_round_trips() {
        let o = Outcome::parse(
            r#"{"completed":5,"refused":2,"errors":1,"first_error":"x","elapsed_s":0.5,"out_rsts":2}"#,
        )
        .unwrap();
        assert_eq!((o.completed, o.refused, o.errors, o.out_rsts), (5, 2, 1, 2));
        assert_eq!(o.first_error.as_deref(), Some("x"));
        assert_eq!(read_ready("ready 12\n"), Some(12));
        assert_eq!(read_ready("readyx"), None);
    }
}
