//! Which cause a kernel event stands for. Pure functions of what the kernel reported, so
//! every rule is unit-tested without a kernel.
use crate::cause::Cause;

use rst_trace_common::tcp::{
    TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT,
};

/// What the kernel said about one RST it sent.
#[derive(Debug, Clone, Default)]
pub struct SentReset<'a> {
    /// The kernel's reason name (`enum sk_rst_reason`), `None` on kernels without one.
    pub reason: Option<&'a str>,
    pub state: u32,
    pub has_sock: bool,
    pub linger_zero: bool,
    /// The socket is a listener whose accept queue is over its cap.
    pub listener_full: bool,
    /// Bytes received but not read by the application.
    pub unread_bytes: Option<u32>,
    /// SO_KEEPALIVE on, socket not orphaned.
    pub keepalive_on: bool,
    /// Seconds since the socket last sent or received data.
    pub idle_seconds: Option<f64>,
}

/// Keepalive probes start after at least a second of silence (TCP_KEEPIDLE ≥ 1).
const KEEPALIVE_MIN_IDLE_SECONDS: f64 = 1.0;

/// Returns the cause and whether it was inferred (no reason from the kernel).
pub fn classify_sent_reset(r: &SentReset<'_>) -> (Cause, bool) {
    let given = match r.reason {
        Some("NO_SOCKET") => Some(Cause::NoListener),
        Some("TCP_ABORT_ON_CLOSE") => Some(Cause::AbortOnClose),
        Some("TCP_ABORT_ON_LINGER" | "TCP_STATE" | "TCP_DISCONNECT_WITH_DATA") => {
            Some(Cause::AbortByApplication)
        }
        Some("TCP_ABORT_ON_MEMORY") => Some(Cause::AbortOnMemory),
        Some("TCP_KEEPALIVE_TIMEOUT") => Some(Cause::KeepaliveTimeout),
        Some("TCP_ABORT_ON_TIMEOUT") => Some(Cause::AbortOnTimeout),
        Some("TCP_TIMEWAIT_SOCKET") => Some(Cause::TimewaitSegment),
        // With tcp_abort_on_overflow=1 the final ACK of a handshake that finds the accept
        // queue full is answered with an RST of reason INVALID_SYN, sent on the listener.
        Some("INVALID_SYN") if r.state == TCP_LISTEN && r.listener_full => {
            Some(Cause::AcceptQueueOverflow)
        }
        Some(
            "INVALID_SYN"
            | "TCP_INVALID_ACK_SEQUENCE"
            | "TCP_RFC7323_PAWS"
            | "TCP_TOO_OLD_ACK"
            | "TCP_ACK_UNSENT_DATA"
            | "TCP_FLAGS"
            | "TCP_OLD_ACK"
            | "TCP_ABORT_ON_DATA",
        ) => Some(Cause::ProtocolViolation),
        Some("NOT_SPECIFIED") | None => None,
        Some(_) => Some(Cause::Unclassified),
    };
    if let Some(c) = given {
        return (c, false);
    }
    // No reason: derive it from the socket, as kernels before 6.10 require.
    let cause = if !r.has_sock {
        Cause::NoListener
    } else if r.state == TCP_TIME_WAIT {
        Cause::TimewaitSegment
    } else if r.state == TCP_LISTEN && r.listener_full {
        Cause::AcceptQueueOverflow
    } else if r.state == TCP_LISTEN || r.state == TCP_NEW_SYN_RECV {
        Cause::ProtocolViolation
    } else if r.linger_zero {
        Cause::AbortByApplication
    } else if r.unread_bytes.is_some_and(|b| b > 0) {
        Cause::AbortOnClose
    } else if (r.state == TCP_ESTABLISHED || r.state == TCP_CLOSE_WAIT)
        && r.keepalive_on
        && r.idle_seconds
            .is_some_and(|s| s >= KEEPALIVE_MIN_IDLE_SECONDS)
    {
        // Only the keepalive timer resets a live, silent, non-orphaned connection without a
        // reason; the application's own resets (close with SO_LINGER 0, unread data,
        // disconnect) are caught above or leave the socket in CLOSE first.
        Cause::KeepaliveTimeout
    } else {
        Cause::Unclassified
    };
    (cause, true)
}

/// An RST that arrived: on our SYN it is a refusal, otherwise the peer reset us.
pub fn classify_received_reset(state: u32) -> Cause {
    if state == TCP_SYN_SENT {
        Cause::ConnectionRefused
    } else {
        Cause::ResetByPeer
    }
}

/// A segment freed with one of the watched drop reasons.
pub fn classify_drop(reason: &str) -> Option<Cause> {
    match reason {
        // NO_SOCKET reaches here only for a full listener's handshake ACK (cookie path).
        "TCP_LISTEN_OVERFLOW" | "NO_SOCKET" => Some(Cause::AcceptQueueOverflow),
        "NETFILTER_DROP" => Some(Cause::FirewallDrop),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rst_trace_common::tcp::TCP_CLOSE;

    fn sent(reason: Option<&str>) -> SentReset<'_> {
        SentReset {
            reason,
            has_sock: true,
            state: 1,
            ..Default::default()
        }
    }

    #[test]
    fn reasons_from_the_kernel_map_to_causes() {
        let cases = [
            ("NO_SOCKET", Cause::NoListener),
            ("TCP_ABORT_ON_CLOSE", Cause::AbortOnClose),
            ("TCP_STATE", Cause::AbortByApplication),
            ("TCP_ABORT_ON_MEMORY", Cause::AbortOnMemory),
            ("TCP_KEEPALIVE_TIMEOUT", Cause::KeepaliveTimeout),
            ("TCP_TIMEWAIT_SOCKET", Cause::TimewaitSegment),
            ("TCP_RFC7323_PAWS", Cause::ProtocolViolation),
            ("TCP_ABORT_ON_DATA", Cause::ProtocolViolation),
            ("MPTCP_RST_EMPTCP", Cause::Unclassified),
        ];
        for (reason, want) in cases {
            assert_eq!(
                classify_sent_reset(&sent(Some(reason))),
                (want, false),
                "{reason}"
            );
        }
    }

    #[test]
    fn overflow_rst_is_told_apart_from_a_bad_syn() {
        let mut r = SentReset {
            reason: Some("INVALID_SYN"),
            state: TCP_LISTEN,
            has_sock: true,
            listener_full: true,
            ..Default::default()
        };
        assert_eq!(classify_sent_reset(&r).0, Cause::AcceptQueueOverflow);
        r.listener_full = false;
        assert_eq!(classify_sent_reset(&r).0, Cause::ProtocolViolation);
    }

    #[test]
    fn without_a_reason_the_cause_is_inferred() {
        let none = SentReset {
            reason: None,
            has_sock: false,
            ..Default::default()
        };
        assert_eq!(classify_sent_reset(&none), (Cause::NoListener, true));
        let tw = SentReset {
            reason: None,
            has_sock: true,
            state: TCP_TIME_WAIT,
            ..Default::default()
        };
        assert_eq!(classify_sent_reset(&tw), (Cause::TimewaitSegment, true));
        let linger = SentReset {
            reason: None,
            has_sock: true,
            state: TCP_CLOSE,
            linger_zero: true,
            ..Default::default()
        };
        assert_eq!(
            classify_sent_reset(&linger),
            (Cause::AbortByApplication, true)
        );
        let unread = SentReset {
            reason: Some("NOT_SPECIFIED"),
            has_sock: true,
            state: TCP_CLOSE,
            unread_bytes: Some(10),
            ..Default::default()
        };
        assert_eq!(classify_sent_reset(&unread), (Cause::AbortOnClose, true));
    }

    #[test]
    fn received_resets() {
        assert_eq!(
            classify_received_reset(TCP_SYN_SENT),
            Cause::ConnectionRefused
        );
        assert_eq!(classify_received_reset(1), Cause::ResetByPeer);
        assert_eq!(
            classify_drop("TCP_LISTEN_OVERFLOW"),
            Some(Cause::AcceptQueueOverflow)
        );
        assert_eq!(classify_drop("OTHER"), None);
    }

    #[test]
    fn keepalive_expiry_is_inferred_from_a_silent_keepalive_socket() {
        let expired = SentReset {
            has_sock: true,
            state: TCP_ESTABLISHED,
            keepalive_on: true,
            idle_seconds: Some(3.2),
            unread_bytes: Some(0),
            ..Default::default()
        };
        assert_eq!(
            classify_sent_reset(&expired),
            (Cause::KeepaliveTimeout, true)
        );
        // Keepalive off, or traffic a moment ago: not a keepalive expiry.
        let off = SentReset {
            keepalive_on: false,
            ..expired.clone()
        };
        assert_eq!(classify_sent_reset(&off), (Cause::Unclassified, true));
        let busy = SentReset {
            idle_seconds: Some(0.2),
            ..expired.clone()
        };
        assert_eq!(classify_sent_reset(&busy), (Cause::Unclassified, true));
        // The kernel's reason wins where there is one.
        let given = SentReset {
            reason: Some("TCP_STATE"),
            ..expired
        };
        assert_eq!(
            classify_sent_reset(&given),
            (Cause::AbortByApplication, false)
        );
    }
}
