//! The agent-level lines: started, stats, and the doctor report.
use std::{collections::BTreeMap, string::String, vec::Vec};

use serde::{Deserialize, Serialize};

use super::{Counts, EventId, Host, LineMeta};
use crate::cause::Cause;

/// `rst_trace.started`: what the agent attached and what it can observe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Started {
    pub time: String,
    pub event: EventId,
    pub version: String,
    /// `uname -r`.
    pub kernel: Option<String>,
    /// The namespace watched (`--netns`), or null for all.
    pub netns: Option<u32>,
    /// The port watched (`--port`), or null for all.
    pub port: Option<u16>,
    /// Every program, by name: where it attached, and why not.
    pub hooks: BTreeMap<String, HookStatus>,
    /// Causes no attached hook serves.
    pub unavailable: Vec<Cause>,
    /// Tracepoints whose format could be read, by `category:name`.
    pub tracepoint_formats: Vec<String>,
    pub memory: StartupMemory,
    /// How each cause is observed on this kernel (as in the doctor report).
    pub causes: BTreeMap<Cause, Observability>,
    pub host: Host,
    pub rst_trace: LineMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HookStatus {
    pub status: HookState,
    pub attached: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// What became of one kernel program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HookState {
    Attached,
    /// Left out: the kernel reports the same events another way (`errors` says which).
    NotNeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StartupMemory {
    pub startup_peak_kib: Option<u64>,
    pub rss_after_start_kib: Option<u64>,
}

/// How one cause is observed, or why it cannot be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Observability {
    pub observable: bool,
    /// The ways that work here, joined with `; `.
    pub via: Option<String>,
    pub note: Option<String>,
    pub ways: Vec<Way>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Way {
    pub how: String,
    pub works: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// `rst-trace doctor --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Doctor {
    pub kernel: Option<String>,
    pub causes: BTreeMap<Cause, Observability>,
    pub hooks: BTreeMap<String, HookStatus>,
    pub warnings: Vec<String>,
}

/// `rst_trace.stats`: totals since start (exact), and the agent's own health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Stats {
    pub time: String,
    pub event: EventId,
    /// The last stats line, written at exit.
    #[serde(rename = "final")]
    pub last: bool,
    /// Incidents per cause.
    pub causes: BTreeMap<Cause, u64>,
    pub resets_sent: ResetsSent,
    pub records: RecordCounts,
    pub kernel: KernelCounts,
    pub sockets: SocketCounts,
    /// Every bounded table, in the kernel and in the agent, by name.
    pub tables: BTreeMap<String, TableOccupancy>,
    /// The agent process's own resources.
    pub process: ProcessResources,
    /// The output's own counters (JSON output only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputCounts>,
    pub host: Host,
    pub rst_trace: LineMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResetsSent {
    /// Reconciles with Tcp.OutRsts.
    pub tcp_stack: u64,
    /// Sent by netfilter REJECT rules (TCP does not count those).
    pub netfilter: u64,
    pub by_cause: BTreeMap<Cause, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RecordCounts {
    pub delivered: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub suppressed: u64,
}

/// The kernel programs' exact counters, by family and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KernelCounts {
    pub resets_sent: Counts,
    pub resets_sent_linger_zero: Counts,
    pub resets_received: Counts,
    pub drops: Counts,
    pub accept: Counts,
    pub connect_errors: Counts,
    pub lost_records: Counts,
    pub foreign_resets: u64,
    /// Runs of a program the kernel skipped, by program, where there were any: an interrupt
    /// brought an event while the program was running on that CPU, and the kernel counted the
    /// run instead of making it (5.12 and later). Those events are in no record and no counter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_runs: Counts,
}

/// How full one bounded table is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TableOccupancy {
    pub entries: u64,
    pub capacity: u64,
    /// Inserts the full table turned away (tables that refuse rather than evict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// Entries pushed out to make room (LRU tables; an upper bound, see docs/agent-interface.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<u64>,
}

/// The agent's resident memory, threads and open fds (null where /proc/self did not say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessResources {
    pub rss_kib: Option<u64>,
    pub threads: Option<u64>,
    pub fds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SocketCounts {
    pub listener_ports: u64,
    pub table_overflow: u64,
    pub owners: OwnerTableCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OwnerTableCounts {
    pub capacity: u64,
    pub stored: u64,
    pub full: u64,
    pub timewait_capacity: u64,
    pub timewait_stored: u64,
    pub lookups: Lookups,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Lookups {
    pub found: u64,
    pub not_found: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OutputCounts {
    pub lines: u64,
    pub file: Option<String>,
    pub rotations: u64,
    pub reopens: u64,
}
