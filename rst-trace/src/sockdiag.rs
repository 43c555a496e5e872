//! A namespace's listeners, request sockets and TCP counters, read from inside it:
//! sock_diag (NETLINK_SOCK_DIAG) for per-socket queues and drop counters, /proc for the MIB.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use rst_trace_common::TcpState;

/// Bounds a dump: a namespace with more sockets than this is read only in part.
const MAX_MESSAGES: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRow {
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
    /// Current accept queue length (`sk_ack_backlog`).
    pub queue: u32,
    /// Accept queue cap (`sk_max_ack_backlog`).
    pub cap: u32,
    /// The socket's drop counter (`sk_drops`): every listen drop on it.
    pub drops: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub local_port: u16,
    pub remote: IpAddr,
}

#[derive(Debug, Clone, Default)]
pub struct NetnsSnapshot {
    pub listeners: Vec<ListenerRow>,
    pub requests: Vec<RequestRow>,
    /// "TcpExt.ListenDrops", "Tcp.OutRsts", ...
    pub mib: HashMap<String, u64>,
    pub sysctls: HashMap<&'static str, String>,
}

pub const SYSCTLS: [&str; 5] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.ip_local_port_range",
];

/// Reads everything; must run on a thread that is inside the namespace.
pub fn snapshot_here() -> std::io::Result<NetnsSnapshot> {
    let mut snap = NetnsSnapshot::default();
    for family in [AF_INET, AF_INET6] {
        dump(family, &mut snap)?;
    }
    for file in [
        "/proc/thread-self/net/netstat",
        "/proc/thread-self/net/snmp",
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            parse_mib(&text, &mut snap.mib);
        }
    }
    for name in SYSCTLS {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        if let Ok(v) = std::fs::read_to_string(path) {
            snap.sysctls
                .insert(name, v.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    Ok(snap)
}

fn dump(family: u8, snap: &mut NetnsSnapshot) -> std::io::Result<()> {
    // LISTEN plus SYN_RECV: the kernel then also dumps request sockets (the SYN queue).
    dump_states(
        family,
        StateFlags::LISTEN | StateFlags::SYN_RECV,
        ExtensionFlags::SKMEMINFO,
        |resp| {
            let h = &resp.header;
            if TcpState::try_from(h.state) == Ok(TcpState::Listen) {
                let drops = resp.nlas.iter().find_map(|n| match n {
                    Nla::MemInfo(m) => Some(m.drops),
                    _ => None,
                });
                snap.listeners.push(ListenerRow {
                    addr: h.socket_id.source_address,
                    port: h.socket_id.source_port,
                    inode: u64::from(h.inode),
                    queue: h.recv_queue,
                    cap: h.send_queue,
                    drops: drops.unwrap_or(0),
                });
            } else {
                snap.requests.push(RequestRow {
                    local_port: h.socket_id.source_port,
                    remote: h.socket_id.destination_address,
                });
            }
        },
    )
}

/// Sockets of this namespace connected (or connecting) to `dst`, counted by TCP state.
/// Must run on a thread inside the namespace.
pub fn states_to_here(dst: IpAddr, port: u16) -> std::io::Result<BTreeMap<&'static str, u64>> {
    let mut by_state = BTreeMap::new();
    let family = if dst.is_ipv4() { AF_INET } else { AF_INET6 };
    dump_states(family, StateFlags::all(), ExtensionFlags::empty(), |resp| {
        let id = &resp.header.socket_id;
        if id.destination_port == port && id.destination_address == dst {
            *by_state
                .entry(TcpState::name_of(u32::from(resp.header.state)))
                .or_insert(0) += 1;
        }
    })?;
    Ok(by_state)
}

fn dump_states(
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    mut each: impl FnMut(&InetResponse),
) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    let mut seen = 0usize;
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let datagram = rx.get(..n).unwrap_or_default();
        if parse_datagram(datagram, &mut seen, &mut each)? == Dump::Over {
            return Ok(());
        }
    }
}

/// Whether a sock_diag dump goes on after one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// More datagrams follow.
    More,
    /// NLMSG_DONE, or a message that cannot be followed (zero length), or the bound of
    /// `MAX_MESSAGES`: stop reading.
    Over,
}

/// Parses one datagram of a sock_diag dump, calling `each` for every socket in it. `seen`
/// counts messages across datagrams. Whatever the kernel (or anything else) put in the buffer,
/// this returns an error or a verdict, never panics: lengths are checked before every slice.
pub fn parse_datagram(
    datagram: &[u8],
    seen: &mut usize,
    each: &mut impl FnMut(&InetResponse),
) -> std::io::Result<Dump> {
    let mut offset = 0usize;
    while let Some(bytes) = datagram.get(offset..).filter(|b| !b.is_empty()) {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|e| std::io::Error::other(format!("sock_diag: {e}")))?;
        let len = usize::try_from(msg.header.length).unwrap_or(0);
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(Dump::Over),
            NetlinkPayload::Error(e) => {
                return Err(std::io::Error::other(format!("sock_diag: {e:?}")))
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(resp)) => each(&resp),
            _ => {}
        }
        *seen += 1;
        if len == 0 || *seen > MAX_MESSAGES {
            return Ok(Dump::Over);
        }
        // Messages are 4-byte aligned in a datagram (NLMSG_ALIGN).
        offset = offset.saturating_add(len.saturating_add(3) & !3);
    }
    Ok(Dump::More)
}

/// Reads /proc/net/netstat or /proc/net/snmp into `out`, keeping the well-formed pairs of
/// "Prefix: names" / "Prefix: values" lines (the agent uses what it can read). Counters are
/// unsigned here: the few signed ones (`Tcp.MaxConn` = -1) are not counts the agent uses.
pub fn parse_mib(text: &str, out: &mut HashMap<String, u64>) {
    for (key, value) in rst_trace_common::mib::parse_lenient(text) {
        if let Ok(value) = u64::try_from(value) {
            out.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mib_pairs() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 7\nIpExt: InNoRoutes\nIpExt: 1\n";
        let mut m = HashMap::new();
        parse_mib(text, &mut m);
        assert_eq!(m.get("TcpExt.ListenOverflows"), Some(&5));
        assert_eq!(m.get("TcpExt.ListenDrops"), Some(&7));
        assert_eq!(m.get("IpExt.InNoRoutes"), Some(&1));
        parse_mib("garbage\n", &mut m);
        // A pair whose names and values differ in number is skipped whole: no value in it
        // can be matched to its name by position.
        parse_mib("A: x y\nA: 1\nB: z\nB: 2\n", &mut m);
        assert_eq!(m.get("A.x"), None);
        assert_eq!(m.get("B.z"), Some(&2));
    }
}
