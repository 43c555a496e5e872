//! The evidence of a cause event: one type per cause family, each with exactly the keys the
//! agent may write for that family (unknown keys are an error when reading).
use std::{collections::BTreeMap, string::String, vec::Vec};

use serde::{Deserialize, Serialize};

use super::{nullable, Nullable, ProcessRef, Sampled};
use crate::cause::Cause;

/// Evidence, by the family of the event's cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Evidence {
    NoListener(NoListenerEvidence),
    ListenQueue(ListenQueueEvidence),
    FdExhaustion(FdExhaustionEvidence),
    EphemeralPorts(EphemeralPortEvidence),
    Connection(ConnectionEvidence),
    Firewall(FirewallEvidence),
}

/// The cause families: which evidence type each cause has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    NoListener,
    ListenQueue,
    FdExhaustion,
    EphemeralPorts,
    Connection,
    Firewall,
}

impl Family {
    /// The name of the family's evidence type (its name in the JSON Schema).
    pub fn type_name(self) -> &'static str {
        match self {
            Family::NoListener => "NoListenerEvidence",
            Family::ListenQueue => "ListenQueueEvidence",
            Family::FdExhaustion => "FdExhaustionEvidence",
            Family::EphemeralPorts => "EphemeralPortEvidence",
            Family::Connection => "ConnectionEvidence",
            Family::Firewall => "FirewallEvidence",
        }
    }

    pub fn of(cause: Cause) -> Family {
        match cause {
            Cause::NoListener => Family::NoListener,
            Cause::AcceptQueueOverflow | Cause::SynQueueOverflow => Family::ListenQueue,
            Cause::FdExhaustion => Family::FdExhaustion,
            Cause::EphemeralPortExhaustion => Family::EphemeralPorts,
            Cause::FirewallReject | Cause::FirewallDrop => Family::Firewall,
            Cause::ConnectionRefused
            | Cause::AbortOnClose
            | Cause::AbortByApplication
            | Cause::AbortOnMemory
            | Cause::KeepaliveTimeout
            | Cause::AbortOnTimeout
            | Cause::TimewaitSegment
            | Cause::ProtocolViolation
            | Cause::ResetByPeer
            | Cause::Unclassified => Family::Connection,
        }
    }
}

impl Evidence {
    /// Empty evidence of the family of `cause`.
    pub fn empty(cause: Cause) -> Evidence {
        match Family::of(cause) {
            Family::NoListener => Evidence::NoListener(Default::default()),
            Family::ListenQueue => Evidence::ListenQueue(Default::default()),
            Family::FdExhaustion => Evidence::FdExhaustion(Default::default()),
            Family::EphemeralPorts => Evidence::EphemeralPorts(Default::default()),
            Family::Connection => Evidence::Connection(Default::default()),
            Family::Firewall => Evidence::Firewall(Default::default()),
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Evidence::NoListener(_) => Family::NoListener,
            Evidence::ListenQueue(_) => Family::ListenQueue,
            Evidence::FdExhaustion(_) => Family::FdExhaustion,
            Evidence::EphemeralPorts(_) => Family::EphemeralPorts,
            Evidence::Connection(_) => Family::Connection,
            Evidence::Firewall(_) => Family::Firewall,
        }
    }

    /// Reads the evidence of an event whose cause is `cause`.
    pub fn from_value(cause: Cause, v: serde_json::Value) -> Result<Evidence, serde_json::Error> {
        Ok(match Family::of(cause) {
            Family::NoListener => Evidence::NoListener(serde_json::from_value(v)?),
            Family::ListenQueue => Evidence::ListenQueue(serde_json::from_value(v)?),
            Family::FdExhaustion => Evidence::FdExhaustion(serde_json::from_value(v)?),
            Family::EphemeralPorts => Evidence::EphemeralPorts(serde_json::from_value(v)?),
            Family::Connection => Evidence::Connection(serde_json::from_value(v)?),
            Family::Firewall => Evidence::Firewall(serde_json::from_value(v)?),
        })
    }

    /// The fields every family has: the storm summary and why the owner is unknown.
    fn common_mut(&mut self) -> (&mut Option<Sampled>, &mut Option<String>) {
        match self {
            Evidence::NoListener(e) => (&mut e.sampled, &mut e.owner_unavailable),
            Evidence::ListenQueue(e) => (&mut e.sampled, &mut e.owner_unavailable),
            Evidence::FdExhaustion(e) => (&mut e.sampled, &mut e.owner_unavailable),
            Evidence::EphemeralPorts(e) => (&mut e.sampled, &mut e.owner_unavailable),
            Evidence::Connection(e) => (&mut e.sampled, &mut e.owner_unavailable),
            Evidence::Firewall(e) => (&mut e.sampled, &mut e.owner_unavailable),
        }
    }

    /// The storm summary this event is, if it is one.
    pub fn sampled(&self) -> Option<&Sampled> {
        match self {
            Evidence::NoListener(e) => e.sampled.as_ref(),
            Evidence::ListenQueue(e) => e.sampled.as_ref(),
            Evidence::FdExhaustion(e) => e.sampled.as_ref(),
            Evidence::EphemeralPorts(e) => e.sampled.as_ref(),
            Evidence::Connection(e) => e.sampled.as_ref(),
            Evidence::Firewall(e) => e.sampled.as_ref(),
        }
    }

    /// Marks the event as a storm summary.
    pub fn set_sampled(&mut self, s: Sampled) {
        *self.common_mut().0 = Some(s);
    }

    /// Says why the event has no owner.
    pub fn set_owner_unavailable(&mut self, why: &str) {
        *self.common_mut().1 = Some(why.into());
    }
}

/// `no_listener`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NoListenerEvidence {
    /// The listener on this port that closed most recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_listener: Option<LastListener>,
    /// `address:port` of listeners on this port bound to another address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_elsewhere: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Why the owner is unknown where one could have been named (/proc hides processes from
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unavailable: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LastListener {
    pub process: ProcessRef,
    pub address: String,
    pub closed_seconds_ago: f64,
}

/// `accept_queue_overflow` and `syn_queue_overflow`: a listener's queues.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ListenQueueEvidence {
    /// `syn` (the SYN was dropped) or `ack` (the handshake's final ACK was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// How the drop was seen (per packet at a hook, or by polling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_by: Option<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub accept_queue: Nullable<QueueFill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_queue_length: Option<u64>,
    /// Processes that called accept() on this port recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepting_processes: Option<Vec<ProcessRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_group: Option<ListenerGroup>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen_backlog_requested: Nullable<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_address: Option<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub somaxconn: Nullable<u32>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_abort_on_overflow: Nullable<u32>,
    /// The final ACK of a SYN-cookie handshake found the listener full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syncookie_handshake: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_cookies_sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syns_dropped: Option<u64>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_max_syn_backlog: Nullable<u32>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_syncookies: Nullable<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_sources: Option<Vec<SynSource>>,
    /// `flood from few sources`, `burst from many sources` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `dropped` or `syn cookie sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// A saturation warning (80 % full), before drops start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Why the owner is unknown where one could have been named (/proc hides processes from
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unavailable: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct QueueFill {
    pub length: u32,
    pub cap: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ListenerGroup {
    pub sockets_on_port: u64,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SynSource {
    pub address: String,
    pub syn_recv: u64,
}

/// `fd_exhaustion`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FdExhaustionEvidence {
    /// `EMFILE` or `ENFILE`.
    pub errno: Option<String>,
    pub listen_fd: i64,
    pub listening_port: u16,
    pub rlimit_nofile: Option<Rlimit>,
    pub open_fds: Option<u64>,
    pub file_nr: Option<FileNr>,
    pub accept_queue: QueueFill,
    pub incident: IncidentCount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Why the owner is unknown where one could have been named (/proc hides processes from
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unavailable: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub soft: Limit,
    pub hard: Limit,
}

/// A resource limit: a number, or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Limit {
    Value(u64),
    Named(Unlimited),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Unlimited {
    #[serde(rename = "unlimited")]
    Unlimited,
}

impl Limit {
    pub fn of(v: u64) -> Limit {
        if v == u64::MAX {
            Limit::Named(Unlimited::Unlimited)
        } else {
            Limit::Value(v)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FileNr {
    pub allocated: u64,
    pub free: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IncidentCount {
    pub id: String,
    pub failures: u64,
}

/// `ephemeral_port_exhaustion`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EphemeralPortEvidence {
    /// net.ipv4.ip_local_port_range, verbatim.
    pub ip_local_port_range: Option<String>,
    /// Sockets to the destination, by TCP state name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets_to_destination: Option<BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_ports: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Why the owner is unknown where one could have been named (/proc hides processes from
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unavailable: Option<String>,
}

/// Resets on a connection: sent by this host's stack or received from the peer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionEvidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_age_seconds: Option<f64>,
    /// The owner of a socket that closed (TIME_WAIT, or closed a while ago).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_owner: Option<LastOwner>,
    /// How the owner was found when the kernel had not recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_found_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_defaults: Option<KeepaliveDefaults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_reason: Option<String>,
    /// The socket cookie of a received RST's socket, when it had one: the kernel gives a socket
    /// its cookie the first time something asks for it (sock_diag, SO_COOKIE, a BPF program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_cookie: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Why the owner is unknown where one could have been named (/proc hides processes from
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unavailable: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LastOwner {
    pub process: ProcessRef,
    pub closed_seconds_ago: f64,
}

/// The namespace's keepalive sysctls (a socket may override them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KeepaliveDefaults {
    pub time_seconds: Option<u64>,
    pub interval_seconds: Option<u64>,
    pub probes: Option<u64>,
}

/// `firewall_reject` and `firewall_drop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FirewallEvidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A listener exists for the rejected segment's destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_listener: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_segment_seen: Option<bool>,
    /// False where the kernel frees packets without a reason (before 5.17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_segment_observable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_segment_flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<Sampled>,
    /// Why the owner is unknown where one could have been named (/proc hides processes from
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_unavailable: Option<String>,
}
