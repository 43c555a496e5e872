//! TCP socket states (`include/net/tcp_states.h`). They are user ABI (/proc/net/tcp and
//! sock_diag report them), so the numbers are stable across kernels; this is the one place
//! rst-trace spells them.

/// One TCP state, as `sk_state` holds it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    /// A request socket (a SYN answered, the handshake not yet done).
    NewSynRecv = 12,
    /// Bound but neither listening nor connected (6.10+).
    BoundInactive = 13,
}

impl TcpState {
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    /// The kernel's name without its `TCP_` prefix, as reports show it.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::BoundInactive => "BOUND_INACTIVE",
        }
    }

    pub const fn from_code(code: u32) -> Option<TcpState> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == code {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The name of a state code, "UNKNOWN" for a code this table does not know.
    pub const fn name_of(code: u32) -> &'static str {
        match Self::from_code(code) {
            Some(s) => s.name(),
            None => "UNKNOWN",
        }
    }
}

/// A state code no [`TcpState`] has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownTcpState(pub u32);

impl TryFrom<u32> for TcpState {
    type Error = UnknownTcpState;
    fn try_from(code: u32) -> Result<Self, Self::Error> {
        Self::from_code(code).ok_or(UnknownTcpState(code))
    }
}

impl TryFrom<u8> for TcpState {
    type Error = UnknownTcpState;
    fn try_from(code: u8) -> Result<Self, Self::Error> {
        Self::try_from(u32::from(code))
    }
}

// The codes as integers: for `match` patterns, and for the kernel programs, which compare the
// raw field they read.
pub const TCP_ESTABLISHED: u32 = TcpState::Established as u32;
pub const TCP_SYN_SENT: u32 = TcpState::SynSent as u32;
pub const TCP_SYN_RECV: u32 = TcpState::SynRecv as u32;
pub const TCP_FIN_WAIT1: u32 = TcpState::FinWait1 as u32;
pub const TCP_FIN_WAIT2: u32 = TcpState::FinWait2 as u32;
pub const TCP_TIME_WAIT: u32 = TcpState::TimeWait as u32;
pub const TCP_CLOSE: u32 = TcpState::Close as u32;
pub const TCP_CLOSE_WAIT: u32 = TcpState::CloseWait as u32;
pub const TCP_LISTEN: u32 = TcpState::Listen as u32;
pub const TCP_CLOSING: u32 = TcpState::Closing as u32;
pub const TCP_NEW_SYN_RECV: u32 = TcpState::NewSynRecv as u32;

// ALL lists every state once, in code order.
const _: () = {
    let mut i = 0;
    while i < TcpState::ALL.len() {
        assert!(TcpState::ALL[i] as usize == i + 1);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::try_from(s as u32), Ok(s));
            assert_eq!(TcpState::try_from(s as u8), Ok(s));
            assert_eq!(TcpState::name_of(s as u32), s.name());
        }
        assert_eq!(TcpState::try_from(0u32), Err(UnknownTcpState(0)));
        assert_eq!(TcpState::try_from(14u32), Err(UnknownTcpState(14)));
        assert_eq!(TcpState::name_of(255), "UNKNOWN");
        assert_eq!(TCP_LISTEN, 10);
        assert_eq!(TCP_TIME_WAIT, 6);
    }
}
