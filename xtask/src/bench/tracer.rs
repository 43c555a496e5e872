//! The variants a workload runs under: nothing, the agent as production runs it, tcpdump in
//! the workload's namespace, and a bpftrace one-liner. Each is started, waited on until it is
//! really watching (its own "ready" output), measured (CPU, memory) and stopped the way its
//! user would stop it, so its final output is complete.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::agent::{self, FinalStats, Started};
use super::child::Process;
use super::interrupt;
use super::netns::NetnsSet;
use super::procfs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    Untraced,
    RstTrace,
    Tcpdump,
    Bpftrace,
}

impl Variant {
    pub fn key(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::RstTrace => "rst-trace",
            Variant::Tcpdump => "tcpdump",
            Variant::Bpftrace => "bpftrace",
        }
    }
}

/// The capture filter and one-liner the agent is compared with: what one would type to watch
/// RSTs without it (6.18's tcp_send_reset carries state and reason, no ports).
pub const TCPDUMP_FILTER: &str = "tcp[tcpflags] & tcp-rst != 0";
pub const BPFTRACE_PROGRAM: &str =
    r#"tracepoint:tcp:tcp_send_reset { printf("%d %d\n", args->state, args->reason); }"#;

/// Where the variants' programs and outputs are.
pub struct Tools {
    pub agent: PathBuf,
    pub logs: PathBuf,
}

/// A running tracer.
pub struct Tracer {
    variant: Variant,
    process: Process,
    stdout: PathBuf,
    stderr: PathBuf,
    /// tcpdump's pcap or bpftrace's output file.
    output: Option<PathBuf>,
    /// Spawn until its ready output appeared (polled every 5 ms).
    pub startup_s: f64,
    /// VmRSS when it became ready.
    pub rss_start_kib: u64,
    pub started: Option<Started>,
}

/// What a tracer reported when it stopped.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Signal to exit; `None`: it did not stop in time and was killed (nothing else is known
    /// then).
    pub stop_s: Option<f64>,
    /// Records the agent delivered, lines bpftrace printed, packets tcpdump captured.
    pub delivered: Option<u64>,
    /// Records or events the tracer itself says it lost or dropped.
    pub lost: Option<u64>,
    /// The agent's exact kernel counter of NO_SOCKET RSTs (whole machine).
    pub no_socket_rsts: Option<u64>,
    pub stats: Option<FinalStats>,
}

impl Tracer {
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Starts `variant` for a workload in namespace `netns`; `None` for the untraced variant.
    /// `tag` names its log files.
    pub fn start(
        variant: Variant,
        tools: &Tools,
        netns: &str,
        tag: &str,
    ) -> Result<Option<Tracer>> {
        let stdout = tools.logs.join(format!("{tag}.stdout"));
        let stderr = tools.logs.join(format!("{tag}.stderr"));
        let (mut command, output, ready_in, ready_text, timeout) = match variant {
            Variant::Untraced => return Ok(None),
            Variant::RstTrace => {
                let mut c = Command::new(&tools.agent);
                c.args(agent::RUN_ARGS);
                // Start-up scans every namespace and socket: generous, it is measured anyway.
                (c, None, stdout.clone(), agent::STARTED, 300)
            }
            Variant::Tcpdump => {
                let pcap = tools.logs.join(format!("{tag}.pcap"));
                let mut c = NetnsSet::command(netns, "tcpdump");
                // -Z root: tcpdump otherwise drops to its own user before creating the file,
                // which then cannot write into the root-owned target directory.
                c.args(["-Z", "root", "-i", "lo", "-w"])
                    .arg(&pcap)
                    .arg(TCPDUMP_FILTER);
                (c, Some(pcap), stderr.clone(), "listening on", 30)
            }
            Variant::Bpftrace => {
                let out = tools.logs.join(format!("{tag}.bpftrace"));
                let mut c = Command::new("bpftrace");
                c.arg("-o").arg(&out).args(["-e", BPFTRACE_PROGRAM]);
                // bpftrace compiles the one-liner with LLVM first: slow on a busy machine.
                (c, Some(out.clone()), out, "Attaching", 180)
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?);
        let spawned = Instant::now();
        let mut process = Process::spawn(variant.key(), &mut command)?;
        let deadline = spawned + Duration::from_secs(timeout);
        loop {
            interrupt::check()?;
            let text = std::fs::read_to_string(&ready_in).unwrap_or_default();
            if text.contains(ready_text) {
                break;
            }
            if process.try_exit()?.is_some() || Instant::now() > deadline {
                bail!(
                    "{} did not become ready within {timeout} s (no {ready_text:?} in {}); stderr:\n{}",
                    variant.key(),
                    ready_in.display(),
                    tail(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let startup_s = spawned.elapsed().as_secs_f64();
        let rss_start_kib = procfs::status_kib(process.pid(), "VmRSS")?;
        let started = if variant == Variant::RstTrace {
            Some(
                Started::find(&agent::read_output(&stdout)?)
                    .context("the agent's started line is not valid JSON")?,
            )
        } else {
            None
        };
        Ok(Some(Tracer {
            variant,
            process,
            stdout,
            stderr,
            output,
            startup_s,
            rss_start_kib,
            started,
        }))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn cpu_seconds(&mut self) -> Result<f64> {
        self.process.ensure_running()?;
        procfs::cpu_seconds(self.pid())
    }

    pub fn hwm_kib(&mut self) -> Result<u64> {
        self.process.ensure_running()?;
        procfs::status_kib(self.pid(), "VmHWM")
    }

    /// Waits until the tracer has worked through what the workload produced: its CPU time
    /// stops growing (two 200 ms looks in a row), at most 10 s. tcpdump first gets the 1 s its
    /// capture ring takes to hand over a partly filled block.
    pub fn drain(&mut self) -> Result<()> {
        let min = match self.variant {
            Variant::Tcpdump => Duration::from_millis(1200),
            _ => Duration::from_millis(300),
        };
        interrupt::sleep(min)?;
        let end = Instant::now() + Duration::from_secs(10);
        let mut last = self.cpu_seconds()?;
        let mut calm = 0;
        while calm < 2 && Instant::now() < end {
            interrupt::sleep(Duration::from_millis(200))?;
            let now = self.cpu_seconds()?;
            calm = if now > last { 0 } else { calm + 1 };
            last = now;
        }
        Ok(())
    }

    /// Stops the tracer as its user would (SIGTERM; SIGINT for bpftrace, which prints its
    /// summary on it) and reads its final output. One that does not stop within `timeout` is
    /// killed: an error when its final output is `needed`, else a finding (`stop_s: None`).
    pub fn stop(mut self, timeout: Duration, needed: bool) -> Result<Finished> {
        let signal = match self.variant {
            Variant::Bpftrace => libc::SIGINT,
            _ => libc::SIGTERM,
        };
        let asked = Instant::now();
        let Some(status) = self.process.stop(signal, timeout)? else {
            if needed {
                bail!(
                    "{} did not stop within {timeout:?} of signal {signal}, and its final output is needed",
                    self.process.name()
                );
            }
            return Ok(Finished::default());
        };
        let stop_s = Some(asked.elapsed().as_secs_f64());
        if !status.success() {
            bail!(
                "{} exited with {status} when stopped; stderr:\n{}",
                self.process.name(),
                tail(&self.stderr)
            );
        }
        match self.variant {
            Variant::Untraced => Ok(Finished {
                stop_s,
                ..Finished::default()
            }),
            Variant::RstTrace => {
                let out = agent::read_output(&self.stdout)?;
                let stats = FinalStats::find(&out).with_context(|| {
                    format!(
                        "the agent printed no final rst_trace.stats line ({})",
                        self.stdout.display()
                    )
                })?;
                Ok(Finished {
                    stop_s,
                    delivered: Some(stats.delivered()),
                    lost: Some(stats.lost()),
                    no_socket_rsts: Some(stats.resets_sent("NO_SOCKET")),
                    stats: Some(stats),
                })
            }
            Variant::Tcpdump => {
                let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                Ok(Finished {
                    stop_s,
                    delivered: Some(
                        count_before(&err, "packets captured")
                            .context("tcpdump printed no 'packets captured' line")?,
                    ),
                    lost: Some(count_before(&err, "packets dropped by kernel").unwrap_or(0)),
                    ..Finished::default()
                })
            }
            Variant::Bpftrace => {
                let path = self.output.as_deref().unwrap_or(Path::new(""));
                let out = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                let events = out
                    .lines()
                    .filter(|l| {
                        let mut f = l.split_whitespace();
                        matches!((f.next(), f.next(), f.next()), (Some(a), Some(b), None)
                            if a.parse::<i64>().is_ok() && b.parse::<i64>().is_ok())
                    })
                    .count() as u64;
                Ok(Finished {
                    stop_s,
                    delivered: Some(events),
                    lost: Some(lost_events(&out) + lost_events(&err)),
                    ..Finished::default()
                })
            }
        }
    }
}

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `N <label>` as tcpdump prints its totals.
fn count_before(text: &str, label: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_suffix(label))
        .and_then(|n| n.trim().parse().ok())
}

/// bpftrace's `Lost N events` lines, summed.
fn lost_events(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Lost "))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_totals() {
        let err = "tcpdump: listening on lo, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                   200 packets captured\n200 packets received by filter\n3 packets dropped by kernel\n";
        assert_eq!(count_before(err, "packets captured"), Some(200));
        assert_eq!(count_before(err, "packets dropped by kernel"), Some(3));
    }

    #[test]
    fn bpftrace_losses() {
        assert_eq!(
            lost_events("Attaching 1 probe...\nLost 12 events\n0 1\nLost 3 events\n"),
            15
        );
    }
}
