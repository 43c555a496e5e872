//! The cause catalogue: every cause the agent can name, where the RST or drop came from,
//! and which side of the host it concerns.
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    NoListener,
    AcceptQueueOverflow,
    SynQueueOverflow,
    FdExhaustion,
    EphemeralPortExhaustion,
    ConnectionRefused,
    AbortOnClose,
    AbortByApplication,
    AbortOnMemory,
    KeepaliveTimeout,
    AbortOnTimeout,
    TimewaitSegment,
    ProtocolViolation,
    ResetByPeer,
    FirewallReject,
    FirewallDrop,
    /// The kernel gave a reason the catalogue does not cover; the reason is reported verbatim.
    Unclassified,
}

impl Cause {
    pub const ALL: [Cause; 17] = [
        Cause::NoListener,
        Cause::AcceptQueueOverflow,
        Cause::SynQueueOverflow,
        Cause::FdExhaustion,
        Cause::EphemeralPortExhaustion,
        Cause::ConnectionRefused,
        Cause::AbortOnClose,
        Cause::AbortByApplication,
        Cause::AbortOnMemory,
        Cause::KeepaliveTimeout,
        Cause::AbortOnTimeout,
        Cause::TimewaitSegment,
        Cause::ProtocolViolation,
        Cause::ResetByPeer,
        Cause::FirewallReject,
        Cause::FirewallDrop,
        Cause::Unclassified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoListener => "no_listener",
            Cause::AcceptQueueOverflow => "accept_queue_overflow",
            Cause::SynQueueOverflow => "syn_queue_overflow",
            Cause::FdExhaustion => "fd_exhaustion",
            Cause::EphemeralPortExhaustion => "ephemeral_port_exhaustion",
            Cause::ConnectionRefused => "connection_refused",
            Cause::AbortOnClose => "abort_on_close",
            Cause::AbortByApplication => "abort_by_application",
            Cause::AbortOnMemory => "abort_on_memory",
            Cause::KeepaliveTimeout => "keepalive_timeout",
            Cause::AbortOnTimeout => "abort_on_timeout",
            Cause::TimewaitSegment => "timewait_segment",
            Cause::ProtocolViolation => "protocol_violation",
            Cause::ResetByPeer => "reset_by_peer",
            Cause::FirewallReject => "firewall_reject",
            Cause::FirewallDrop => "firewall_drop",
            Cause::Unclassified => "unclassified",
        }
    }
}

/// Whether the RST/segment left this host, arrived, or was dropped here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
    Dropped,
    /// A syscall failed; no segment was involved.
    None,
}

/// Which part of the system produced the RST or the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    TcpStack,
    Netfilter,
    Peer,
    Syscall,
}
