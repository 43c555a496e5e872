//! Listener drops the kernel reports with no per-packet hook (SYN-time accept queue
//! overflow, SYN queue overflow, SYN cookies): read by polling each namespace's counters and
//! listeners, and apportioned to the listeners whose own drop counters moved.
//!
//! Exactness: per namespace, SYN-time accept-queue drops are ListenOverflows minus the
//! ACK-time drops already reported per packet. That difference is carried between polls, so
//! the totals are exact once traffic is quiet, even if a poll raced the ring buffer.
use std::{collections::HashMap, net::IpAddr};

use crate::{
    cause::Cause,
    sockdiag::{ListenerRow, NetnsSnapshot},
};

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub cause: Cause,
    pub port: u16,
    pub addr: Option<IpAddr>,
    pub inode: Option<u64>,
    pub count: u64,
    /// For syn_queue_overflow: how many of `count` were answered with SYN cookies (the
    /// rest were dropped).
    pub cookies: u64,
    pub queue: Option<(u32, u32)>,
    pub syn_queue: usize,
    pub top_sources: Vec<(IpAddr, usize)>,
}

/// A listener whose accept queue is near its cap: a warning before drops start.
#[derive(Debug, Clone, PartialEq)]
pub struct Saturation {
    pub port: u16,
    pub addr: IpAddr,
    pub inode: u64,
    pub queue: u32,
    pub cap: u32,
}

#[derive(Debug, Default)]
pub struct NetnsAccount {
    baseline: bool,
    mib: HashMap<String, u64>,
    drops: HashMap<u64, u32>,
    /// SYN-time accept-queue drops not yet reported (negative: reported ahead of the MIB).
    syn_time_carry: i64,
    /// SYN-queue overflows not yet reported, likewise.
    synq_carry: i64,
    /// SYN cookies counted but not reported yet.
    pending_cookies: u64,
    /// Running totals of TCPReqQFullDoCookies and SyncookiesSent, and the cookies counted from
    /// them so far (see `syn_queue_due`).
    cookie_decisions: u64,
    cookies_sent: u64,
    cookies_counted: u64,
    /// The carries as they were after the previous poll (see `settle`).
    syn_time_settled: i64,
    synq_settled: i64,
    /// The kernel reports every accept-queue drop per packet (SYN-time and ACK-time hooks).
    pub accept_per_packet: bool,
    /// Drops the listeners' own counters showed at the previous poll that no finding took.
    unclaimed: Vec<Unclaimed>,
}

/// A listener's drops not yet given to a finding. `settle` reports drops a poll after it first
/// sees them, and by then their listener's counter has stopped moving, or the listener is
/// gone (a restart under overload): so the listener is kept with them, for one poll.
#[derive(Debug, Clone)]
struct Unclaimed {
    row: ListenerRow,
    drops: u64,
}

/// What polling may report now out of `carry` (drops the counters saw that no per-packet
/// record explained). Only what stayed unexplained over two consecutive polls is reported,
/// so a record that was merely late is not counted twice; `flush` (the ring buffer was
/// drained, the agent is stopping) reports all of it.
fn settle(carry: &mut i64, settled: &mut i64, flush: bool) -> u64 {
    let ready = if flush {
        *carry
    } else {
        (*carry).min(*settled)
    };
    let n = u64::try_from(ready.max(0)).unwrap_or(0);
    *carry -= i64::try_from(n).unwrap_or(0);
    *settled = *carry;
    n
}

impl NetnsAccount {
    /// `accept_per_packet`: the kernel reports every accept-queue drop per packet. The first
    /// step is the baseline.
    pub fn new(accept_per_packet: bool) -> Self {
        Self {
            accept_per_packet,
            ..Default::default()
        }
    }

    /// For a namespace created after the agent started: its counters began at zero, so every
    /// drop they hold happened while the agent watched.
    pub fn from_zero(accept_per_packet: bool) -> Self {
        Self {
            accept_per_packet,
            baseline: true,
            ..Default::default()
        }
    }
}

/// The MIB counters the account compares between steps; only these are kept.
const MIB_KEYS: [&str; 5] = [
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "TcpExt.SyncookiesSent",
];

fn kept_mib(mib: &HashMap<String, u64>) -> HashMap<String, u64> {
    MIB_KEYS
        .iter()
        .filter_map(|k| mib.get(*k).map(|v| ((*k).to_owned(), *v)))
        .collect()
}

fn delta(now: &HashMap<String, u64>, before: &HashMap<String, u64>, key: &str) -> u64 {
    now.get(key)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(key).copied().unwrap_or(0))
}

pub const SATURATION_RATIO: f64 = 0.8;

impl NetnsAccount {
    /// Compares `snap` with the previous one. `ack_time` holds, per port, the ACK-time
    /// overflow drops reported per packet since the previous step.
    pub fn step(
        &mut self,
        snap: &NetnsSnapshot,
        ack_time: &HashMap<u16, u64>,
        synq_per_packet: u64,
        flush: bool,
    ) -> (Vec<Finding>, Vec<Saturation>) {
        let saturated = saturated(snap);
        let drops_now: HashMap<u64, u32> =
            snap.listeners.iter().map(|l| (l.inode, l.drops)).collect();
        if !self.baseline {
            self.baseline = true;
            self.mib = kept_mib(&snap.mib);
            self.drops = drops_now;
            return (Vec::new(), saturated);
        }
        let overflows = delta(&snap.mib, &self.mib, "TcpExt.ListenOverflows");
        let (reqq_drops, cookies) = self.syn_queue_due(snap, overflows, synq_per_packet, flush);
        let syn_time = self.syn_time_due(overflows, ack_time, flush);
        let seen = self.listener_drops(snap, ack_time);
        // The drops held back last time are the ones reported now: their listeners come first.
        let mut remaining = std::mem::take(&mut self.unclaimed);
        let held = remaining.len();
        for &(i, drops) in &seen {
            let row = &snap.listeners[i];
            match remaining.iter_mut().find(|u| u.row.inode == row.inode) {
                // Still there: the finding shows it as it is now.
                Some(u) => {
                    u.row = row.clone();
                    u.drops += drops;
                }
                None => remaining.push(Unclaimed {
                    row: row.clone(),
                    drops,
                }),
            }
        }
        self.mib = kept_mib(&snap.mib);
        self.drops = drops_now;
        let findings = attribute(snap, &mut remaining, syn_time, reqq_drops, cookies);
        // What this poll's counters showed waits one poll; what an earlier one showed goes.
        let fresh: HashMap<u64, u64> = seen
            .into_iter()
            .map(|(i, d)| (snap.listeners[i].inode, d))
            .collect();
        self.unclaimed = remaining
            .into_iter()
            .enumerate()
            .filter_map(|(n, mut u)| {
                let seen_now = fresh.get(&u.row.inode).copied().unwrap_or(0);
                if n < held {
                    u.drops = u.drops.min(seen_now);
                }
                (u.drops > 0).then_some(u)
            })
            .collect();
        (findings, saturated)
    }

    /// SYN-queue overflows to report now, as (drops, cookies sent): this interval's, less what
    /// was reported per packet, plus what earlier polls held back.
    fn syn_queue_due(
        &mut self,
        snap: &NetnsSnapshot,
        overflows: u64,
        synq_per_packet: u64,
        flush: bool,
    ) -> (u64, u64) {
        let mut reqq_drops = delta(&snap.mib, &self.mib, "TcpExt.TCPReqQFullDrop");
        // TCPReqQFullDoCookies also counts SYNs that the accept-queue check then drops (those are
        // accept_queue_overflow): only cookies actually sent count here. The two counters move
        // at different points of one SYN's path and a poll can fall between them, so the
        // minimum is taken over their running totals: per interval, such a SYN would be lost
        // to both intervals.
        self.cookie_decisions += delta(&snap.mib, &self.mib, "TcpExt.TCPReqQFullDoCookies");
        self.cookies_sent += delta(&snap.mib, &self.mib, "TcpExt.SyncookiesSent");
        let cookies_total = self.cookie_decisions.min(self.cookies_sent);
        let cookies = cookies_total.saturating_sub(self.cookies_counted);
        self.cookies_counted = cookies_total;
        // With syncookies off, SYNs are also dropped once under a quarter of
        // tcp_max_syn_backlog is free: only ListenDrops moves for those.
        let listen_drops = delta(&snap.mib, &self.mib, "TcpExt.ListenDrops");
        reqq_drops += listen_drops.saturating_sub(overflows + reqq_drops);
        // SYN-queue overflows already reported per packet are not reported again; the carry
        // keeps the total exact when a poll and the ring buffer race.
        self.synq_carry += i64::try_from(reqq_drops + cookies).unwrap_or(i64::MAX)
            - i64::try_from(synq_per_packet).unwrap_or(i64::MAX);
        let synq_new = settle(&mut self.synq_carry, &mut self.synq_settled, flush);
        // What is reported now may include counts held from earlier polls, and may be less
        // than this interval's (part reported per packet, or held): split it cookies first.
        self.pending_cookies += cookies;
        let cookies = synq_new.min(self.pending_cookies);
        self.pending_cookies -= cookies;
        self.pending_cookies = self
            .pending_cookies
            .min(u64::try_from(self.synq_carry.max(0)).unwrap_or(0));
        (synq_new - cookies, cookies)
    }

    /// SYN-time accept-queue overflows to report now: ListenOverflows less the ACK-time drops
    /// reported per packet (nothing when every accept-queue drop has its own record).
    fn syn_time_due(&mut self, overflows: u64, ack_time: &HashMap<u16, u64>, flush: bool) -> u64 {
        let ack_total: u64 = ack_time.values().sum();
        if self.accept_per_packet {
            self.syn_time_carry = 0;
        } else {
            self.syn_time_carry += i64::try_from(overflows).unwrap_or(i64::MAX)
                - i64::try_from(ack_total).unwrap_or(i64::MAX);
        }
        settle(&mut self.syn_time_carry, &mut self.syn_time_settled, flush)
    }

    /// Each listener's own drops this interval, less what was already reported per packet, as
    /// (index in `snap.listeners`, drops), most first.
    fn listener_drops(
        &self,
        snap: &NetnsSnapshot,
        ack_time: &HashMap<u16, u64>,
    ) -> Vec<(usize, u64)> {
        let mut remaining: Vec<(usize, u64)> = snap
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let before = self.drops.get(&l.inode).copied().unwrap_or(0);
                let d = u64::from(l.drops.wrapping_sub(before));
                (
                    i,
                    d.saturating_sub(ack_time.get(&l.port).copied().unwrap_or(0)),
                )
            })
            .collect();
        remaining.sort_by_key(|r| std::cmp::Reverse(r.1));
        remaining
    }
}

/// Listeners whose accept queue is at least [`SATURATION_RATIO`] full.
fn saturated(snap: &NetnsSnapshot) -> Vec<Saturation> {
    snap.listeners
        .iter()
        .filter(|l| l.cap > 0 && f64::from(l.queue) >= SATURATION_RATIO * f64::from(l.cap))
        .map(|l| Saturation {
            port: l.port,
            addr: l.addr,
            inode: l.inode,
            queue: l.queue,
            cap: l.cap,
        })
        .collect()
}

/// Spreads the namespace's overflow counts over the listeners whose own drop counters moved
/// (`remaining`, in order; what they give is taken off them); what no listener accounts for
/// goes to the fullest listener (accept queue) or the one with the most half-open connections
/// (SYN queue).
fn attribute(
    snap: &NetnsSnapshot,
    remaining: &mut [Unclaimed],
    syn_time: u64,
    reqq_drops: u64,
    cookies: u64,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut syn_queue_len: HashMap<u16, usize> = HashMap::new();
    for r in &snap.requests {
        *syn_queue_len.entry(r.local_port).or_insert(0) += 1;
    }
    let finding = |l: Option<&ListenerRow>, cause: Cause, count: u64, cookies: u64| {
        let port = l.map_or(0, |l| l.port);
        Finding {
            cause,
            port,
            addr: l.map(|l| l.addr),
            inode: l.map(|l| l.inode),
            count,
            cookies,
            queue: l.map(|l| (l.queue, l.cap)),
            syn_queue: syn_queue_len.get(&port).copied().unwrap_or(0),
            top_sources: top_sources(snap, port),
        }
    };
    let mut take = |want: u64, cause: Cause, out: &mut Vec<Finding>| {
        let mut left = want;
        for u in remaining.iter_mut() {
            if left == 0 {
                break;
            }
            let n = u.drops.min(left);
            if n > 0 {
                out.push(finding(Some(&u.row), cause, n, 0));
                u.drops -= n;
                left -= n;
            }
        }
        left
    };
    let left = take(syn_time, Cause::AcceptQueueOverflow, &mut findings);
    if left > 0 {
        // The dropping listener is gone or its counter did not move: still count it,
        // on the fullest listener if there is one.
        let fullest = snap.listeners.iter().max_by_key(|l| l.queue);
        findings.push(finding(fullest, Cause::AcceptQueueOverflow, left, 0));
    }
    let left = take(reqq_drops, Cause::SynQueueOverflow, &mut findings);
    let busiest_syn = snap
        .listeners
        .iter()
        .max_by_key(|l| syn_queue_len.get(&l.port).copied().unwrap_or(0));
    if left > 0 || cookies > 0 {
        let merged = findings.iter_mut().find(|f| {
            f.cause == Cause::SynQueueOverflow && Some(f.port) == busiest_syn.map(|l| l.port)
        });
        match merged {
            Some(f) => {
                f.count += left + cookies;
                f.cookies += cookies;
            }
            None => findings.push(finding(
                busiest_syn,
                Cause::SynQueueOverflow,
                left + cookies,
                cookies,
            )),
        }
    }
    findings
}

fn top_sources(snap: &NetnsSnapshot, port: u16) -> Vec<(IpAddr, usize)> {
    let mut by: HashMap<IpAddr, usize> = HashMap::new();
    for r in snap.requests.iter().filter(|r| r.local_port == port) {
        *by.entry(r.remote).or_insert(0) += 1;
    }
    let mut v: Vec<(IpAddr, usize)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(5);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockdiag::{ListenerRow, RequestRow};

    fn snap(lo: u64, qd: u64, qc: u64, listeners: Vec<ListenerRow>) -> NetnsSnapshot {
        let mut s = NetnsSnapshot {
            listeners,
            ..Default::default()
        };
        s.mib.insert("TcpExt.ListenOverflows".into(), lo);
        s.mib.insert("TcpExt.TCPReqQFullDrop".into(), qd);
        s.mib.insert("TcpExt.TCPReqQFullDoCookies".into(), qc);
        s.mib.insert("TcpExt.SyncookiesSent".into(), qc);
        s.mib.insert("TcpExt.ListenDrops".into(), lo + qd);
        s
    }

    #[test]
    fn syns_dropped_under_tcp_max_syn_backlog_are_syn_queue_overflow() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 16, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let mut s = snap(0, 0, 0, vec![l(80, 1, 0, 16, 9)]);
        s.mib.insert("TcpExt.ListenDrops".into(), 9);
        let (f, _) = a.step(&s, &HashMap::new(), 0, true);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].cause, f[0].count, f[0].cookies),
            (Cause::SynQueueOverflow, 9, 0)
        );
    }

    #[test]
    fn a_cookie_whose_two_counters_straddle_a_poll_is_counted_once() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 16, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let mut total = 0;
        for (decided, sent) in [(5, 4), (5, 5)] {
            let mut s = snap(0, 0, decided, vec![l(80, 1, 0, 16, 0)]);
            s.mib.insert("TcpExt.SyncookiesSent".into(), sent);
            let (f, _) = a.step(&s, &HashMap::new(), 0, true);
            total += f
                .iter()
                .filter(|x| x.cause == Cause::SynQueueOverflow)
                .map(|x| x.count)
                .sum::<u64>();
        }
        assert_eq!(total, 5);
    }

    #[test]
    fn cookie_flagged_syns_dropped_by_the_accept_queue_are_not_cookies() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 1, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let mut s = snap(4, 0, 4, vec![l(80, 1, 2, 1, 4)]);
        s.mib.insert("TcpExt.SyncookiesSent".into(), 0);
        let (f, _) = a.step(&s, &HashMap::new(), 0, true);
        let total = |c: Cause| {
            f.iter()
                .filter(|x| x.cause == c)
                .map(|x| x.count)
                .sum::<u64>()
        };
        assert_eq!(
            (
                total(Cause::AcceptQueueOverflow),
                total(Cause::SynQueueOverflow)
            ),
            (4, 0)
        );
    }

    fn l(port: u16, inode: u64, queue: u32, cap: u32, drops: u32) -> ListenerRow {
        ListenerRow {
            addr: "127.0.0.1".parse().expect("ip"),
            port,
            inode,
            queue,
            cap,
            drops,
        }
    }

    #[test]
    fn polling_waits_one_interval_for_late_per_packet_records() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 1, 0)]),
            &HashMap::new(),
            0,
            false,
        );
        // The MIB saw 5 ACK-time drops whose records are still in the ring buffer.
        let (f, _) = a.step(
            &snap(5, 0, 0, vec![l(80, 1, 0, 1, 5)]),
            &HashMap::new(),
            0,
            false,
        );
        assert!(f.is_empty(), "not reported on first sight: {f:?}");
        let (f, _) = a.step(
            &snap(5, 0, 0, vec![l(80, 1, 0, 1, 5)]),
            &HashMap::from([(80u16, 5u64)]),
            0,
            false,
        );
        assert!(f.is_empty(), "the records explained them");
        // 3 SYN-time drops with no record: reported once they stayed unexplained.
        let (f, _) = a.step(
            &snap(8, 0, 0, vec![l(80, 1, 0, 1, 8)]),
            &HashMap::new(),
            0,
            false,
        );
        assert!(f.is_empty());
        let (f, _) = a.step(
            &snap(8, 0, 0, vec![l(80, 1, 0, 1, 8)]),
            &HashMap::new(),
            0,
            false,
        );
        assert_eq!(f.iter().map(|f| f.count).sum::<u64>(), 3);
    }

    /// The held-back SYN-time drops of `first` (seen at the first poll after the baseline),
    /// as the second poll reports them with `second`'s listeners.
    fn held_back(first: Vec<ListenerRow>, second: Vec<ListenerRow>) -> Vec<Finding> {
        let mut a = NetnsAccount::default();
        let quiet: Vec<ListenerRow> = first
            .iter()
            .map(|r| ListenerRow {
                drops: 0,
                ..r.clone()
            })
            .collect();
        a.step(&snap(0, 0, 0, quiet), &HashMap::new(), 0, false);
        let dropped = first.iter().map(|r| u64::from(r.drops)).sum();
        let (f, _) = a.step(&snap(dropped, 0, 0, first), &HashMap::new(), 0, false);
        assert!(f.is_empty(), "held back one poll: {f:?}");
        a.step(&snap(dropped, 0, 0, second), &HashMap::new(), 0, false)
            .0
    }

    #[test]
    fn held_back_drops_keep_their_listener_when_it_is_gone() {
        // The overflowing server on 80 was restarted on 8080 between the two polls.
        let f = held_back(vec![l(80, 1, 2, 1, 3)], vec![l(8080, 2, 0, 128, 0)]);
        assert_eq!(
            f.iter()
                .map(|f| (f.cause, f.port, f.inode, f.count))
                .collect::<Vec<_>>(),
            vec![(Cause::AcceptQueueOverflow, 80, Some(1), 3)]
        );
    }

    #[test]
    fn held_back_drops_go_to_the_listener_that_dropped_not_the_fullest() {
        let f = held_back(
            vec![l(80, 1, 2, 1, 3), l(81, 2, 0, 10, 0)],
            vec![l(80, 1, 0, 1, 3), l(81, 2, 9, 10, 0)],
        );
        assert_eq!(
            f.iter()
                .map(|f| (f.port, f.count, f.queue))
                .collect::<Vec<_>>(),
            vec![(80, 3, Some((0, 1)))],
            "the listener as the reporting poll sees it"
        );
    }

    #[test]
    fn unclaimed_drops_wait_one_poll_only() {
        let mut a = NetnsAccount::default();
        // (ListenOverflows, port 80's drops, port 81's drops) at each poll: 81's counter moves
        // with no overflow behind it (another kind of listen drop), later 80 overflows.
        let polls: [(u64, u32, u32); 5] = [(0, 0, 0), (0, 0, 4), (0, 0, 4), (2, 2, 4), (2, 2, 4)];
        let mut last = Vec::new();
        for (overflows, d80, d81) in polls {
            let s = snap(
                overflows,
                0,
                0,
                vec![l(80, 1, 0, 1, d80), l(81, 2, 0, 1, d81)],
            );
            last = a.step(&s, &HashMap::new(), 0, false).0;
        }
        assert_eq!(
            last.iter().map(|f| (f.port, f.count)).collect::<Vec<_>>(),
            vec![(80, 2)],
            "81's old counts expired"
        );
    }

    #[test]
    fn with_per_packet_hooks_polling_reports_no_accept_drops() {
        let mut a = NetnsAccount {
            accept_per_packet: true,
            ..Default::default()
        };
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 1, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let (f, _) = a.step(
            &snap(9, 0, 0, vec![l(80, 1, 0, 1, 9)]),
            &HashMap::new(),
            0,
            true,
        );
        assert!(
            f.iter().all(|f| f.cause != Cause::AcceptQueueOverflow),
            "{f:?}"
        );
    }

    #[test]
    fn syn_time_drops_go_to_the_listener_that_dropped() {
        let mut a = NetnsAccount::default();
        assert!(a
            .step(
                &snap(0, 0, 0, vec![l(80, 1, 0, 1, 0), l(81, 2, 0, 10, 0)]),
                &HashMap::new(),
                0,
                true
            )
            .0
            .is_empty());
        let (f, sat) = a.step(
            &snap(12, 0, 0, vec![l(80, 1, 2, 1, 12), l(81, 2, 0, 10, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].cause, f[0].port, f[0].count),
            (Cause::AcceptQueueOverflow, 80, 12)
        );
        assert_eq!(f[0].queue, Some((2, 1)));
        assert_eq!(sat.len(), 1);
    }

    #[test]
    fn ack_time_drops_reported_per_packet_are_not_counted_twice() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 1, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let ack = HashMap::from([(80u16, 3u64)]);
        let (f, _) = a.step(&snap(10, 0, 0, vec![l(80, 1, 1, 1, 10)]), &ack, 0, true);
        assert_eq!(f.iter().map(|f| f.count).sum::<u64>(), 7);
    }

    #[test]
    fn a_poll_that_races_the_ring_buffer_is_made_good_later() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 1, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        // The MIB saw 5 ACK-time drops whose records arrive only after this poll.
        let (f, _) = a.step(
            &snap(5, 0, 0, vec![l(80, 1, 0, 1, 5)]),
            &HashMap::new(),
            0,
            true,
        );
        let first: u64 = f.iter().map(|f| f.count).sum();
        let (f, _) = a.step(
            &snap(5, 0, 0, vec![l(80, 1, 0, 1, 5)]),
            &HashMap::from([(80u16, 5u64)]),
            0,
            true,
        );
        let second: u64 = f.iter().map(|f| f.count).sum();
        // 5 reported by polling, then 5 per packet: the carry holds back the next 5 SYN-time.
        assert_eq!((first, second), (5, 0));
        let (f, _) = a.step(
            &snap(10, 0, 0, vec![l(80, 1, 0, 1, 10)]),
            &HashMap::new(),
            0,
            true,
        );
        assert_eq!(
            f.iter().map(|f| f.count).sum::<u64>(),
            0,
            "carry absorbs the double count"
        );
    }

    #[test]
    fn syn_queue_overflows_seen_per_packet_are_not_polled_again() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 8, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let (f, _) = a.step(
            &snap(0, 2, 6, vec![l(80, 1, 0, 8, 2)]),
            &HashMap::new(),
            5,
            true,
        );
        let polled: u64 = f
            .iter()
            .filter(|f| f.cause == Cause::SynQueueOverflow)
            .map(|f| f.count)
            .sum();
        assert_eq!(polled, 3, "8 in the MIB, 5 already reported per packet");
    }

    #[test]
    fn syn_queue_drops_and_cookies() {
        let mut a = NetnsAccount::default();
        a.step(
            &snap(0, 0, 0, vec![l(80, 1, 0, 8, 0)]),
            &HashMap::new(),
            0,
            true,
        );
        let mut s = snap(0, 4, 6, vec![l(80, 1, 0, 8, 4)]);
        s.requests = (0..8)
            .map(|i| RequestRow {
                local_port: 80,
                remote: if i < 6 {
                    "10.0.0.1".parse().expect("ip")
                } else {
                    "10.0.0.2".parse().expect("ip")
                },
            })
            .collect();
        let (f, _) = a.step(&s, &HashMap::new(), 0, true);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].cause, f[0].count, f[0].cookies, f[0].syn_queue),
            (Cause::SynQueueOverflow, 10, 6, 8)
        );
        assert_eq!(f[0].top_sources[0], ("10.0.0.1".parse().expect("ip"), 6));
    }
}
