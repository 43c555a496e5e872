//! Causes: one module per cause family, each holding how the family's events are explained
//! from kernel records (and poller findings), its evidence type (from
//! `rst_trace_common::event`, shared with the tests and xtask), and its advice.
//!
//! Adding a cause: one line in the catalogue (`rst_trace_common::cause`), its evidence in
//! `rst_trace_common::event` (or an existing family's), and a module here registered below,
//! called from the dispatcher ([`crate::pipeline`]) for the records that reveal it.
pub mod connection;
pub mod ephemeral_ports;
pub mod fd_exhaustion;
pub mod firewall;
pub mod listen_queue;
pub mod no_listener;

/// `:port`, or "the port" when unknown, as advice sentences quote it.
pub(crate) fn port_text(port: Option<u16>) -> String {
    port.map_or_else(|| "the port".to_owned(), |p| format!(":{p}"))
}

/// Seconds rounded to the millisecond, as evidence reports them.
pub(crate) fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// TCP flags of a segment, e.g. `SYN|ACK`.
pub(crate) fn tcp_flags(b: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x04, "RST"),
        (0x01, "FIN"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| b & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// `inbound` or `outbound`, from a drop record's flags.
pub(crate) fn segment_direction(flags: u32) -> String {
    if flags & rst_trace_common::SKB_OUTBOUND != 0 {
        "outbound"
    } else {
        "inbound"
    }
    .into()
}
