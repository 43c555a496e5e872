//! The cause catalogue (docs/causes.md): every cause the agent can name, where the RST or drop
//! came from, and which side of the host it concerns.
//!
//! Each cause's name is written once, in the `causes!` list below: the enum, its JSON name
//! (serde), [`Cause::ALL`] and [`Cause::as_str`] all come from it. Adding a cause is one line
//! here plus its module under `rst-trace/src/causes/`.

macro_rules! causes {
    ($( $(#[$doc:meta])* $variant:ident = $name:tt ),* $(,)?) => {
        /// A cause the agent can name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub enum Cause {
            $( $(#[$doc])* #[cfg_attr(feature = "serde", serde(rename = $name))] $variant, )*
        }

        impl Cause {
            /// Every cause, in catalogue order.
            pub const ALL: &'static [Cause] = &[$(Cause::$variant),*];

            /// The cause's name in events, metrics and reports.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Cause::$variant => $name,)*
                }
            }

            /// The cause called `name`, if any.
            pub fn from_name(name: &str) -> Option<Cause> {
                Self::ALL.iter().copied().find(|c| c.as_str() == name)
            }
        }
    };
}

causes! {
    NoListener = "no_listener",
    AcceptQueueOverflow = "accept_queue_overflow",
    SynQueueOverflow = "syn_queue_overflow",
    FdExhaustion = "fd_exhaustion",
    EphemeralPortExhaustion = "ephemeral_port_exhaustion",
    ConnectionRefused = "connection_refused",
    AbortOnClose = "abort_on_close",
    AbortByApplication = "abort_by_application",
    AbortOnMemory = "abort_on_memory",
    KeepaliveTimeout = "keepalive_timeout",
    AbortOnTimeout = "abort_on_timeout",
    TimewaitSegment = "timewait_segment",
    ProtocolViolation = "protocol_violation",
    ResetByPeer = "reset_by_peer",
    FirewallReject = "firewall_reject",
    FirewallDrop = "firewall_drop",
    /// The kernel gave a reason the catalogue does not cover; the reason is reported verbatim.
    Unclassified = "unclassified",
}

/// Whether the RST/segment left this host, arrived, or was dropped here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Direction {
    Sent,
    Received,
    Dropped,
    /// A syscall failed; no segment was involved.
    None,
}

/// Which part of the system produced the RST or the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Origin {
    TcpStack,
    Netfilter,
    Peer,
    Syscall,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(Cause::from_name(c.as_str()), Some(*c));
            assert!(Cause::ALL[..i].iter().all(|o| o.as_str() != c.as_str()));
        }
        assert_eq!(Cause::ALL.len(), 17);
    }
}
