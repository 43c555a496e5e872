//! Command line.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// rst-trace tells you, live, why TCP connections on this host are being reset or dropped:
/// the cause (accept-queue overflow, no listener, FD exhaustion, aborts, peer resets,
/// firewall rejects, ...), the process that owns the socket, and the port.
///
/// It loads eBPF programs on the kernel's TCP tracepoints and writes one JSON object per
/// event to standard output (for a log shipper), or one line of text per event for a person.
#[derive(Debug, Parser)]
#[command(name = "rst-trace", version, about, long_about, after_long_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// What the agent logs on stderr, as an env_logger filter ("info", "warn,rst_trace=debug").
    /// The kernel programs' own diagnostics (a full ring buffer, a faulting kernel read) have
    /// the target rst_trace_kernel and are off unless the filter names a level for them or for
    /// everything ("debug", "warn,rst_trace_kernel=debug"). Default: warn, kernel off.
    #[arg(long, global = true, value_name = "FILTER", env = "RUST_LOG")]
    pub log_level: Option<String>,
}

/// The log filter without --log-level or RUST_LOG.
pub const DEFAULT_LOG_FILTER: &str = "warn,rst_trace_kernel=off";

const EXAMPLES: &str = "EXAMPLES:
    rst-trace run                          every namespace, JSON lines on stdout
    rst-trace run --format text            human-readable lines
    rst-trace run --netns blue --port 8080 one named network namespace, one port
    rst-trace run --duration 60 > rst.json run for a minute, then exit 0
    rst-trace run --output-file /var/log/rst-trace/events.jsonl --output-max-bytes 100M --output-keep 5
                                           a file for a log shipper, rotated by size;
                                           SIGHUP reopens it (logrotate)
    rst-trace run --metrics-addr 9464      also serve Prometheus metrics at http://127.0.0.1:9464/metrics
    rst-trace top --netns blue             a live view: causes ranked by rate, q quits

EXIT STATUS:
    0  clean exit (--duration elapsed, SIGINT or SIGTERM)
    1  cannot run here (missing capabilities, no BPF or BTF support), or the output failed
       (its reader went away, the disk is full, an I/O error): the agent detaches and says
       why in one line on stderr
    2  invalid command line

PRIVILEGES:
    Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); mounts tracefs at /sys/kernel/tracing if it is not mounted.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace resets and drops until interrupted (or for --duration seconds).
    Run(RunArgs),
    /// Show, for every cause, how this kernel lets rst-trace observe it (or why it cannot).
    Doctor(DoctorArgs),
    /// A live view for a terminal: causes ranked by rate over the last 10 s and 1 min, with
    /// port, owner, count and advice, redrawn every second. q quits. Without a terminal on
    /// stdin it runs until stdin ends (or a q, SIGINT, SIGTERM) and prints a summary.
    Top(TopArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Only this network namespace: a name under /run/netns, a path to a namespace file,
    /// or a namespace inode number.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Option<String>,
    /// Only events whose local or remote port is PORT.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line (OpenTelemetry attribute names).
    Json,
    /// One human-readable line per event.
    Text,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Only this network namespace: a name under /run/netns, a path to a namespace file,
    /// or a namespace inode number.
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Option<String>,
    /// Only events whose local or remote port is PORT.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Exit cleanly after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Seconds between statistics lines (0: only the final one).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub stats_interval: u64,
    /// Milliseconds between reads of a namespace's listeners and drop counters while the kernel
    /// says one of its listeners needs a look (a queue near its cap, SYN-ACK retransmits, a
    /// drop); a namespace without such a signal is not read at all.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=1000))]
    pub poll_interval_ms: u64,
    /// Events per second per cause before events are folded into per-second summaries
    /// (counts stay exact). 0 disables folding.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_events_per_sec: u64,
    /// Append lines to PATH instead of standard output. Each line is written whole in one
    /// write; the file is rotated by size (PATH -> PATH.1 -> ... -> PATH.K, only between
    /// lines) and reopened on SIGHUP (for logrotate's rename-and-signal rotation).
    #[arg(long, value_name = "PATH")]
    pub output_file: Option<PathBuf>,
    /// Rotate --output-file before a line would take it past BYTES (suffixes K, M, G: KiB,
    /// MiB, GiB).
    #[arg(long, value_name = "BYTES", default_value = "100M", value_parser = crate::output::parse_size, requires = "output_file")]
    pub output_max_bytes: u64,
    /// Rotated files of --output-file to keep (PATH.1 newest ... PATH.K oldest); 0 keeps none.
    #[arg(long, value_name = "K", default_value_t = 5, requires = "output_file")]
    pub output_keep: u32,
    /// Serve Prometheus metrics at http://[HOST:]PORT/metrics (OpenMetrics when the scraper
    /// asks for it, the Prometheus text format otherwise). A bare PORT binds 127.0.0.1. Off
    /// unless given.
    #[arg(long, value_name = "[HOST:]PORT", value_parser = crate::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Per listener-side cause, how many (port, process) pairs get their own
    /// rst_trace_listener_events_total series; the rest are summed under port="other".
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000), requires = "metrics_addr")]
    pub metrics_top_n: u64,
}
