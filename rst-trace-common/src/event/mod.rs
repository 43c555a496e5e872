//! Every line rst-trace writes, as serde types (docs/agent-interface.md): cause events with one
//! evidence type per cause family, the started line, the stats line and the doctor report.
//! The agent writes these types, the tests and xtask read them back through the same types,
//! and docs/events.schema.json is generated from them, so a change of shape is a compile error
//! or a stale-schema test failure, not a silent drift.
//!
//! Fields that the agent writes as `null` are `Option<T>`; fields it leaves out when it has
//! nothing to say are skipped when `None`; the few that can be either are [`Nullable`].
use std::{collections::BTreeMap, string::String, vec::Vec};

use serde::{Deserialize, Deserializer, Serialize};

use crate::cause::{Cause, Direction, Origin};

mod evidence;
mod lines;
#[cfg(feature = "schema")]
pub mod schema;

pub use evidence::*;
pub use lines::*;

/// Written out when `Some` (as `null` for `Some(None)`), left out when `None`.
pub type Nullable<T> = Option<Option<T>>;

/// Reads a present key into `Some`, even when its value is `null` (serde would make it `None`).
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Nullable<T>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `event`: which line this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EventId {
    /// `rst_trace.<what happened>`, e.g. `rst_trace.reset_sent`.
    pub name: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Cause,
    State,
    Metric,
}

/// `host`: which host wrote the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// `uname -n` of the agent's UTS namespace.
    pub name: String,
}

/// `rst_trace`: which shape of line this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LineMeta {
    /// `MAJOR.MINOR` of docs/agent-interface.md.
    pub schema_version: String,
}

/// A cause event: one explained reset, drop or failed syscall.
pub type CauseEvent = CauseEventOf<Evidence>;

/// A line that is not what the types say.
#[derive(Debug)]
pub struct ReadError(pub String);

impl core::fmt::Display for ReadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadError {}

impl From<serde_json::Error> for ReadError {
    fn from(e: serde_json::Error) -> Self {
        ReadError(std::format!("{e}"))
    }
}

impl CauseEvent {
    /// Reads a cause event; its evidence must be the type of its cause's family.
    pub fn from_value(v: serde_json::Value) -> Result<CauseEvent, ReadError> {
        let raw: CauseEventOf<serde_json::Value> = serde_json::from_value(v)?;
        let evidence = Evidence::from_value(raw.cause, raw.evidence.clone())
            .map_err(|e| ReadError(std::format!("evidence of {}: {e}", raw.cause.as_str())))?;
        Ok(raw.with_evidence(evidence))
    }
}

impl<E> CauseEventOf<E> {
    fn with_evidence<F>(self, evidence: F) -> CauseEventOf<F> {
        CauseEventOf {
            time: self.time,
            event: self.event,
            cause: self.cause,
            direction: self.direction,
            origin: self.origin,
            reason: self.reason,
            inferred: self.inferred,
            count: self.count,
            network: self.network,
            tcp: self.tcp,
            owner: self.owner,
            other_owners: self.other_owners,
            evidence,
            advice: self.advice,
            related: self.related,
            host: self.host,
            rst_trace: self.rst_trace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "CauseEvent", transform = schema::evidence_by_cause))]
#[serde(deny_unknown_fields)]
pub struct CauseEventOf<E> {
    /// UTC RFC 3339 with nanoseconds.
    pub time: String,
    pub event: EventId,
    pub cause: Cause,
    pub direction: Direction,
    pub origin: Origin,
    /// The kernel's own reason name, verbatim, when it gave one.
    pub reason: Option<String>,
    /// The cause was derived from state and code path rather than given by the kernel.
    pub inferred: bool,
    /// How many occurrences this one event stands for.
    pub count: u64,
    pub network: Network,
    pub tcp: Tcp,
    pub owner: Option<OwnerJson>,
    /// Further owners of the same socket (forked workers, SO_REUSEPORT groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_owners: Vec<OwnerJson>,
    pub evidence: E,
    pub advice: String,
    pub related: Option<Related>,
    pub host: Host,
    pub rst_trace: LineMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Always `tcp`.
    pub transport: String,
    /// `ipv4` or `ipv6`; null without endpoints.
    #[serde(rename = "type")]
    pub family: Option<String>,
    pub netns: u32,
    pub local: Option<SocketAddress>,
    pub peer: Option<SocketAddress>,
    /// Community ID of the connection, when both ends are known.
    pub community_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    /// TCP state name (`ESTABLISHED`, `LISTEN`, ...).
    pub state: Option<String>,
}

/// The process that owns the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OwnerJson {
    pub process: OwnerProcess,
    pub thread: Thread,
    pub container: Option<Container>,
    /// How the owner was learnt: listen, accept, connect, syscall, procfs.
    pub learned_from: String,
    pub learned_at: Option<String>,
    /// Present only for Kubernetes pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8s>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OwnerProcess {
    pub pid: u32,
    pub executable: Executable,
    pub linux: Linux,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Executable {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Linux {
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Thread {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct K8s {
    pub pod: Pod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub uid: String,
}

/// A process named in evidence: pid and name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessRef {
    pub pid: u32,
    pub executable: Executable,
}

impl ProcessRef {
    pub fn new(pid: u32, name: &str) -> Self {
        Self {
            pid,
            executable: Executable { name: name.into() },
        }
    }
}

/// Another event this one belongs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Related {
    /// The fd_exhaustion incident that explains an accept-queue overflow.
    FdIncident(FdIncidentRef),
    /// The RST this host sent that a received one is.
    SentReset(SentResetRef),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FdIncidentRef {
    pub cause: Cause,
    pub incident: String,
    pub process: ProcessRef,
    pub accept_failures: u64,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SentResetRef {
    pub cause: Cause,
    pub direction: Direction,
    pub origin: Origin,
    pub netns: u32,
    pub owner_pid: Option<u32>,
    pub note: String,
}

/// A storm summary: one event stands for this many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Sampled {
    pub note: String,
    pub events: u64,
}

/// Any line rst-trace writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Line {
    Cause(std::boxed::Box<CauseEvent>),
    Started(std::boxed::Box<Started>),
    Stats(std::boxed::Box<Stats>),
}

impl Line {
    /// Reads one JSON line, by its `event` section.
    pub fn from_value(v: serde_json::Value) -> Result<Line, ReadError> {
        let kind = v
            .pointer("/event/kind")
            .and_then(|k| k.as_str())
            .map(String::from);
        let name = v
            .pointer("/event/name")
            .and_then(|k| k.as_str())
            .map(String::from);
        match (kind.as_deref(), name.as_deref()) {
            (Some("cause"), _) => Ok(Line::Cause(CauseEvent::from_value(v)?.into())),
            (_, Some("rst_trace.started")) => Ok(Line::Started(serde_json::from_value(v)?)),
            (_, Some("rst_trace.stats")) => Ok(Line::Stats(serde_json::from_value(v)?)),
            _ => Err(ReadError(std::format!(
                "not an rst-trace line: event {kind:?} {name:?}"
            ))),
        }
    }

    pub fn parse(line: &str) -> Result<Line, ReadError> {
        Self::from_value(serde_json::from_str(line)?)
    }
}

/// Counts by name (cause, reason, state, ...).
pub type Counts = BTreeMap<String, u64>;
