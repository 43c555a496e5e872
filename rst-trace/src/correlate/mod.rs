//! Correlation: state that joins one kernel record to another. Each correlator owns its state,
//! its bound (a storm must not grow it without limit) and its expiry, and takes `now` from
//! the caller (see [`crate::clock`]), never from a clock of its own.
pub mod fd_incidents;
pub mod listen_drops;
pub mod reject_pairing;
pub mod rst_link;
pub mod ttl_cache;

pub use fd_incidents::{FdIncident, FdIncidents};
pub use listen_drops::ListenDropLedger;
pub use reject_pairing::RejectPairing;
pub use rst_link::{RstLink, SentRst, RECEIVED_HOLD_NS};
pub use ttl_cache::TtlCache;
