//! Per-netns kernel MIB counters: the ground truth the agent's counts must reconcile with.
//!
//! /proc/net/netstat and /proc/net/snmp come in header/value line pairs:
//! ```text
//! TcpExt: SyncookiesSent SyncookiesRecv ...
//! TcpExt: 0 0 ...
//! ```
//! A snapshot maps "TcpExt.ListenDrops", "Tcp.OutRsts", … to values.
//!
//! /proc/net/snmp6 has one `Ip6InReceives  42` pair per line; its counters are kept as
//! "Ip6.InReceives", "Icmp6.OutMsgs", … The kernel keeps one TCP MIB per namespace for both
//! families: Tcp.* and TcpExt.* count IPv4 and IPv6 alike (there is no Tcp6 line), so TCP
//! reconciliation reads the same keys on both; only the IP and ICMP layers are split.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};

use crate::Netns;

/// The MIB files of a namespace, in the order they are read.
pub const MIB_FILES: [&str; 3] = ["/proc/net/netstat", "/proc/net/snmp", "/proc/net/snmp6"];

/// A /proc/net/snmp6 line (`Ip6InReceives 42`, no colon) as ("Ip6.InReceives", value); None for
/// a line of the header/value format. The prefix ends at the first '6' (Ip6, Icmp6, Udp6,
/// UdpLite6).
fn snmp6_pair(line: &str) -> Option<(String, Result<i64>)> {
    let mut it = line.split_whitespace();
    let (name, value) = (it.next()?, it.next()?);
    if name.contains(':') || it.next().is_some() {
        return None;
    }
    let at = name.find('6')? + 1;
    let (prefix, rest) = name.split_at(at);
    if rest.is_empty() || !prefix.chars().next()?.is_ascii_uppercase() {
        return None;
    }
    let v = value
        .parse::<i64>()
        .with_context(|| format!("{name}: not an integer: {value:?}"));
    Some((format!("{prefix}.{rest}"), v))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mib {
    pub values: BTreeMap<String, i64>,
}

impl Mib {
    /// Parse the concatenated contents of /proc/net/netstat and /proc/net/snmp (strictly: a
    /// format change must fail the tests, not go unread).
    pub fn parse(text: &str) -> Result<Mib> {
        // /proc/net/snmp6 is one "Name value" pair a line; the rest is header/value table pairs,
        // read by the parser the agent and xtask share.
        let mut values = BTreeMap::new();
        let mut tables = String::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match snmp6_pair(line) {
                Some((key, v)) => {
                    values.insert(key, v?);
                }
                None => {
                    tables.push_str(line);
                    tables.push('\n');
                }
            }
        }
        if !tables.is_empty() {
            values.extend(rst_trace_common::mib::parse(&tables).context("parsing the MIB")?);
        }
        if values.is_empty() {
            anyhow::bail!("no counters found");
        }
        Ok(Mib { values })
    }

    /// Waits (bounded: 10 s) until the namespace's counters stop moving — peers gone, no
    /// retransmissions left — and returns them. Panics if traffic does not stop.
    pub fn settled(ns: &Netns) -> Mib {
        Mib::settle(|| Mib::snapshot(ns), Duration::from_millis(250), 40).unwrap_or_else(|_| {
            panic!(
                "the MIB of {} kept changing for 10 s; traffic did not stop",
                ns.name()
            )
        })
    }

    /// Reads `read` every `step` until two readings agree on every counter but the IPv6 ones
    /// (neighbour discovery on a fresh link keeps Icmp6 moving with no TCP traffic left), at
    /// most `tries` times. Err carries the last reading when the counters never settled.
    pub fn settle(read: impl Fn() -> Mib, step: Duration, tries: u32) -> Result<Mib, Mib> {
        let mut last = read();
        for _ in 0..tries {
            std::thread::sleep(step);
            let now = read();
            if Mib::changes(&last, &now)
                .keys()
                .all(|k| k.split('.').next().is_some_and(|p| p.ends_with('6')))
            {
                return Ok(now);
            }
            last = now;
        }
        Err(last)
    }

    /// Snapshot the counters of a namespace (/proc/net/netstat, /proc/net/snmp and
    /// /proc/net/snmp6 read by `cat` inside it).
    pub fn snapshot(ns: &Netns) -> Mib {
        let text = ns.exec("cat", &MIB_FILES);
        Mib::checked(&text, ns.name())
    }

    /// Snapshot the counters of this process's own namespace (a guest, where every scenario
    /// runs in the root namespace).
    pub fn local() -> Mib {
        let text: String = MIB_FILES
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        Mib::checked(&text, "this namespace")
    }

    fn checked(text: &str, whose: &str) -> Mib {
        let m = Mib::parse(text).unwrap_or_else(|e| panic!("cannot parse MIB of {whose}: {e:#}"));
        for k in [
            "Tcp.OutRsts",
            "TcpExt.ListenDrops",
            "TcpExt.ListenOverflows",
        ] {
            assert!(m.values.contains_key(k), "MIB of {whose} lacks {k}");
        }
        m
    }

    /// The value of `key` ("TcpExt.ListenDrops"); panics if absent.
    pub fn get(&self, key: &str) -> i64 {
        *self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("MIB counter {key:?} not present"))
    }

    /// Keys whose values differ between the two snapshots, with their deltas (for diagnostics).
    pub fn changes(before: &Mib, after: &Mib) -> BTreeMap<String, i64> {
        after
            .values
            .iter()
            .filter_map(|(k, v)| {
                let b = before.values.get(k).copied().unwrap_or(0);
                (v - b != 0).then(|| (k.clone(), v - b))
            })
            .collect()
    }
}

/// after[key] - before[key]; panics if the key is absent from either snapshot.
pub fn delta(before: &Mib, after: &Mib, key: &str) -> i64 {
    after.get(key) - before.get(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed ListenOverflows ListenDrops TCPReqQFullDrop
TcpExt: 0 0 3 17 21 0
IpExt: InNoRoutes InTruncatedPkts InOctets
IpExt: 0 0 123456789012
MPTcpExt: MPCapableSYNRX
MPTcpExt: 0
";
    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 42
Icmp: InMsgs InErrors
Icmp: 0 0
IcmpMsg: InType3 OutType3
IcmpMsg: 5 5
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 10 2 5 0 0 30 30 0 0 7 0
Udp: InDatagrams NoPorts
Udp: 0 0
";

    fn both() -> String {
        format!("{NETSTAT}{SNMP}")
    }

    #[test]
    fn parses_netstat_and_snmp() {
        let m = Mib::parse(&both()).unwrap();
        assert_eq!(m.get("TcpExt.ListenOverflows"), 17);
        assert_eq!(m.get("TcpExt.ListenDrops"), 21);
        assert_eq!(m.get("TcpExt.SyncookiesFailed"), 3);
        assert_eq!(m.get("IpExt.InOctets"), 123456789012);
        assert_eq!(m.get("MPTcpExt.MPCapableSYNRX"), 0);
        assert_eq!(m.get("Tcp.OutRsts"), 7);
        assert_eq!(m.get("Tcp.AttemptFails"), 5);
        assert_eq!(m.get("Tcp.MaxConn"), -1, "negative values are valid");
        assert_eq!(m.get("IcmpMsg.InType3"), 5);
        assert_eq!(m.get("Udp.NoPorts"), 0);
        assert_eq!(m.values.len(), 6 + 3 + 1 + 3 + 2 + 2 + 15 + 2);
    }

    #[test]
    fn parses_snmp6_pairs_after_the_header_value_files() {
        let text = format!(
            "{}Ip6InReceives                   \t12\nIcmp6OutMsgs 3\nIcmp6OutType133 1\nUdpLite6InErrors 0\n",
            both()
        );
        let m = Mib::parse(&text).unwrap();
        assert_eq!(m.get("Ip6.InReceives"), 12);
        assert_eq!(m.get("Icmp6.OutMsgs"), 3);
        assert_eq!(m.get("Icmp6.OutType133"), 1);
        assert_eq!(m.get("UdpLite6.InErrors"), 0);
        assert_eq!(m.get("Tcp.OutRsts"), 7, "the TCP MIB serves both families");
        assert!(Mib::parse("Ip6InReceives x\n").is_err());
    }

    #[test]
    fn tolerates_blank_lines_and_trailing_spaces() {
        let text = "Tcp: A B \nTcp: 1 2 \n\n\nTcpExt: C\nTcpExt: 3\n";
        let m = Mib::parse(text).unwrap();
        assert_eq!(m.get("Tcp.A"), 1);
        assert_eq!(m.get("Tcp.B"), 2);
        assert_eq!(m.get("TcpExt.C"), 3);
    }

    #[test]
    fn delta_and_changes() {
        let before = Mib::parse(&both()).unwrap();
        let after = Mib::parse(&both().replace(
            "-1 10 2 5 0 0 30 30 0 0 7 0",
            "-1 15 2 10 0 0 40 40 0 0 12 0",
        ))
        .unwrap();
        assert_eq!(delta(&before, &after, "Tcp.OutRsts"), 5);
        assert_eq!(delta(&before, &after, "Tcp.AttemptFails"), 5);
        assert_eq!(delta(&before, &after, "TcpExt.ListenDrops"), 0);
        let ch = Mib::changes(&before, &after);
        assert_eq!(ch.get("Tcp.OutRsts"), Some(&5));
        assert_eq!(ch.get("Tcp.InSegs"), Some(&10));
        assert!(!ch.contains_key("TcpExt.ListenDrops"));
    }

    #[test]
    #[should_panic(expected = "not present")]
    fn missing_key_panics() {
        let m = Mib::parse(&both()).unwrap();
        m.get("Tcp.NoSuchCounter");
    }

    #[test]
    fn rejects_malformed() {
        // mismatched prefixes
        assert!(Mib::parse("Tcp: A B\nUdp: 1 2\n").is_err());
        // count mismatch
        assert!(Mib::parse("Tcp: A B\nTcp: 1\n").is_err());
        // header without values
        assert!(Mib::parse("Tcp: A B\n").is_err());
        // not a number
        assert!(Mib::parse("Tcp: A\nTcp: x\n").is_err());
        // no prefix
        assert!(Mib::parse("garbage\nmore garbage\n").is_err());
        // empty
        assert!(Mib::parse("").is_err());
    }

    #[test]
    fn parses_this_machines_own_counters() {
        // Readable without root: the test process's own netns. Guards against format drift.
        let text: String = MIB_FILES
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let m = Mib::parse(&text).unwrap();
        assert!(m.values.contains_key("Ip6.InReceives"), "snmp6 read too");
        for k in [
            "Tcp.OutRsts",
            "Tcp.AttemptFails",
            "TcpExt.ListenDrops",
            "TcpExt.ListenOverflows",
        ] {
            assert!(m.values.contains_key(k), "{k} missing");
        }
    }
}
