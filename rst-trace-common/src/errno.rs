//! The errno values the agent reports (syscall results seen by the kernel programs, counter
//! slots, event reasons). These are the asm-generic numbers, which x86-64 and arm64 (the
//! architectures rst-trace builds for) share; a host test compares them with libc's.

/// An errno the agent names.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// The system-wide file table is full.
    Enfile = 23,
    /// The process hit RLIMIT_NOFILE.
    Emfile = 24,
    /// No local address/port left to bind (connect() found no ephemeral port).
    Eaddrnotavail = 99,
    Econnreset = 104,
    Etimedout = 110,
    Econnrefused = 111,
}

impl Errno {
    pub const ALL: [Errno; 6] = [
        Errno::Enfile,
        Errno::Emfile,
        Errno::Eaddrnotavail,
        Errno::Econnreset,
        Errno::Etimedout,
        Errno::Econnrefused,
    ];

    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The symbolic name ("EMFILE"), as events and counters show it.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::Enfile => "ENFILE",
            Errno::Emfile => "EMFILE",
            Errno::Eaddrnotavail => "EADDRNOTAVAIL",
            Errno::Econnreset => "ECONNRESET",
            Errno::Etimedout => "ETIMEDOUT",
            Errno::Econnrefused => "ECONNREFUSED",
        }
    }

    pub const fn from_code(code: i32) -> Option<Errno> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as i32 == code {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// An errno value this table does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownErrno(pub i32);

impl TryFrom<i32> for Errno {
    type Error = UnknownErrno;
    fn try_from(code: i32) -> Result<Self, Self::Error> {
        Self::from_code(code).ok_or(UnknownErrno(code))
    }
}

impl TryFrom<u32> for Errno {
    type Error = UnknownErrno;
    fn try_from(code: u32) -> Result<Self, Self::Error> {
        let code = i32::try_from(code).map_err(|_| UnknownErrno(-1))?;
        Self::try_from(code)
    }
}

// The codes as integers, for the kernel programs (which compare `-errno` return values).
pub const ENFILE: i32 = Errno::Enfile as i32;
pub const EMFILE: i32 = Errno::Emfile as i32;
pub const EADDRNOTAVAIL: i32 = Errno::Eaddrnotavail as i32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in Errno::ALL {
            assert_eq!(Errno::try_from(e.code()), Ok(e));
            assert_eq!(Errno::try_from(e.code() as u32), Ok(e));
        }
        assert_eq!(Errno::try_from(0i32), Err(UnknownErrno(0)));
        assert_eq!(Errno::try_from(u32::MAX), Err(UnknownErrno(-1)));
    }
}
