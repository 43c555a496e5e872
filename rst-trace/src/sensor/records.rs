//! Decoding of ring buffer records. Every length is checked before a byte is read, and a
//! record that does not fit is an error, never a panic.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rst_trace_common::{
    AcceptRecord, ConnectRecord, ForeignResetRecord, ListenDropRecord, ListenerHotRecord,
    RecordHeader, RecordKind, ResetReceivedRecord, ResetSentRecord, SkbDropRecord, SockStateRecord,
    TaskInfo, Tuple, RECORD_VERSION,
};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need} its kind needs")]
    Short { need: usize, got: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("record layout version {got}, this agent reads {expected}")]
    Version { got: u16, expected: u16 },
    #[error("address family {0} is neither AF_INET nor AF_INET6")]
    Family(u16),
}

#[derive(Debug, Clone, Copy)]
pub enum Record {
    ResetSent(ResetSentRecord),
    ResetReceived(ResetReceivedRecord),
    SockState(SockStateRecord),
    SkbDrop(SkbDropRecord),
    Accept(AcceptRecord),
    Connect(ConnectRecord),
    ForeignReset(ForeignResetRecord),
    ListenDrop(ListenDropRecord),
    ListenerHot(ListenerHotRecord),
}

fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: the length was checked above, `T: Pod` has no invalid bit patterns, and the
    // unaligned read makes no assumption about the ring buffer's alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

impl TryFrom<&[u8]> for Record {
    type Error = DecodeError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let header: RecordHeader = read_pod(bytes)?;
        if header.version != RECORD_VERSION {
            return Err(DecodeError::Version {
                got: header.version,
                expected: RECORD_VERSION,
            });
        }
        let kind =
            RecordKind::from_u16(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
        Ok(match kind {
            RecordKind::ResetSent => Self::ResetSent(read_pod(bytes)?),
            RecordKind::ResetReceived => Self::ResetReceived(read_pod(bytes)?),
            RecordKind::SockState => Self::SockState(read_pod(bytes)?),
            RecordKind::SkbDrop => Self::SkbDrop(read_pod(bytes)?),
            RecordKind::Accept => Self::Accept(read_pod(bytes)?),
            RecordKind::Connect => Self::Connect(read_pod(bytes)?),
            RecordKind::ForeignReset => Self::ForeignReset(read_pod(bytes)?),
            RecordKind::ListenDrop => Self::ListenDrop(read_pod(bytes)?),
            RecordKind::ListenerHot => Self::ListenerHot(read_pod(bytes)?),
        })
    }
}

impl Record {
    pub fn header(&self) -> &RecordHeader {
        match self {
            Self::ResetSent(r) => &r.header,
            Self::ResetReceived(r) => &r.header,
            Self::SockState(r) => &r.header,
            Self::SkbDrop(r) => &r.header,
            Self::Accept(r) => &r.header,
            Self::Connect(r) => &r.header,
            Self::ForeignReset(r) => &r.header,
            Self::ListenDrop(r) => &r.header,
            Self::ListenerHot(r) => &r.header,
        }
    }
}

/// Decodes `bytes` as the agent does, and converts what the pipeline converts (endpoints of
/// a tuple, a task's comm), checking what must hold. The body of the fuzz target
/// (fuzz/fuzz_targets/record_decoder.rs) and of its stable fallback: it panics only on a bug.
pub fn fuzz_one(bytes: &[u8]) {
    if let Ok(rec) = Record::try_from(bytes) {
        let h = rec.header();
        assert!(RecordKind::from_u16(h.kind).is_some() && h.version == RECORD_VERSION);
    }
    // The same bytes as the pieces every record is made of.
    let u16_at = |i: usize| {
        bytes
            .get(i..i + 2)
            .and_then(|s| <[u8; 2]>::try_from(s).ok())
            .map(u16::from_ne_bytes)
    };
    let bytes16_at = |i: usize| {
        bytes
            .get(i..i + 16)
            .and_then(|s| <[u8; 16]>::try_from(s).ok())
    };
    if let (Some(family), Some(lp), Some(rp), Some(la), Some(ra)) = (
        u16_at(0),
        u16_at(2),
        u16_at(4),
        bytes16_at(8),
        bytes16_at(24),
    ) {
        let t = Tuple {
            family,
            local_port: lp,
            remote_port: rp,
            local_addr: la,
            remote_addr: ra,
            ..Tuple::default()
        };
        if let Ok(e) = Endpoints::try_from(&t) {
            assert!(e.local.port == lp && e.remote.port == rp);
        }
    }
    if let Some(comm) = bytes16_at(0) {
        let ti = TaskInfo {
            comm,
            ..TaskInfo::default()
        };
        assert!(Task::from(&ti).comm.chars().count() <= comm.len());
    }
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// A connection's endpoints, local first, in std types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoints {
    pub local: Endpoint,
    pub remote: Endpoint,
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn addr(family: u16, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*raw);
            // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d; show them as IPv4.
            Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        other => Err(DecodeError::Family(other)),
    }
}

impl TryFrom<&Tuple> for Endpoints {
    type Error = DecodeError;

    fn try_from(t: &Tuple) -> Result<Self, Self::Error> {
        Ok(Self {
            local: Endpoint {
                addr: addr(t.family, &t.local_addr)?,
                port: t.local_port,
            },
            remote: Endpoint {
                addr: addr(t.family, &t.remote_addr)?,
                port: t.remote_port,
            },
        })
    }
}

/// The task that ran a syscall, in std types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl From<&TaskInfo> for Task {
    fn from(t: &TaskInfo) -> Self {
        let end = t.comm.iter().position(|b| *b == 0).unwrap_or(t.comm.len());
        Self {
            pid: t.pid,
            tid: t.tid,
            comm: String::from_utf8_lossy(&t.comm[..end]).into_owned(),
            cgroup_id: t.cgroup_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: Pod types are plain bytes with no padding.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn sent() -> ResetSentRecord {
        let mut r = ResetSentRecord::default();
        r.header.kind = RecordKind::ResetSent as u16;
        r.header.version = RECORD_VERSION;
        r.header.netns = 4026532001;
        r.tuple.family = AF_INET;
        r.tuple.local_port = 8080;
        r.tuple.remote_port = 40000;
        r.tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        r.reason = 1;
        r
    }

    #[test]
    fn decodes_a_reset_sent_record() {
        let b = bytes_of(&sent());
        let Ok(Record::ResetSent(r)) = Record::try_from(b.as_slice()) else {
            panic!("decode")
        };
        assert_eq!(r.header.netns, 4026532001);
        let e = Endpoints::try_from(&r.tuple).expect("endpoints");
        assert_eq!(
            e.local,
            Endpoint {
                addr: "127.0.0.1".parse().expect("ip"),
                port: 8080
            }
        );
        assert_eq!(e.remote.port, 40000);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let b = bytes_of(&sent());
        for len in [0, 1, 23, 24, 100, b.len() - 1] {
            assert!(Record::try_from(&b[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Record::try_from(buf.as_slice());
        }
        let mut b = bytes_of(&sent());
        b[0] = 0xee;
        assert_eq!(
            Record::try_from(b.as_slice()).err(),
            Some(DecodeError::UnknownKind(0xee))
        );
        let mut b = bytes_of(&sent());
        b[2] = 9;
        assert!(matches!(
            Record::try_from(b.as_slice()),
            Err(DecodeError::Version { .. })
        ));
    }

    #[test]
    fn bad_family_is_an_error() {
        let mut r = sent();
        r.tuple.family = 7;
        assert_eq!(Endpoints::try_from(&r.tuple), Err(DecodeError::Family(7)));
    }

    #[test]
    fn v4_mapped_v6_shows_as_v4() {
        let mut t = Tuple {
            family: AF_INET6,
            ..Default::default()
        };
        t.local_addr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let e = Endpoints::try_from(&t).expect("endpoints");
        assert_eq!(e.local.addr, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut ti = TaskInfo::default();
        ti.comm[..5].copy_from_slice(b"nginx");
        assert_eq!(Task::from(&ti).comm, "nginx");
    }
}
