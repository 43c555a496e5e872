//! Per-listener counts for `rst_trace_listener_events_total{cause, port, process}`, with a
//! bounded number of series.
//!
//! Each listener-side cause keeps at most N (port, process) pairs as series of their own; every
//! other pair is counted under `port="other", process="other"`. Three properties hold at every
//! scrape, which is what makes the series safe for `rate()` and `sum()`:
//! - every series only grows while it exists (a counter);
//! - the series of a cause sum to every event of that cause the agent explained;
//! - the N pairs with their own series are the N with the most events, up to ties: a pair counted
//!   under "other" that overtakes the smallest one takes its place.
//!
//! The price of the last two: a pair that climbs into the top N late starts its own series then
//! (its earlier events stay in "other"), and the pair it displaces hands its count over to
//! "other" and its series ends.
use std::collections::{BTreeMap, HashMap};

use crate::{cause::Cause, diagnosis::Diagnosis, embed::Tap};

/// The causes that concern a listening port (the local side of the event).
pub const LISTENER_CAUSES: [Cause; 6] = [
    Cause::NoListener,
    Cause::AcceptQueueOverflow,
    Cause::SynQueueOverflow,
    Cause::FdExhaustion,
    Cause::FirewallReject,
    Cause::FirewallDrop,
];

/// The label values of the series everything outside the top N is summed into.
pub const OTHER: &str = "other";
/// `process` when no process owns the port (no_listener) or its owner is unknown.
pub const NO_PROCESS: &str = "none";
/// `port` when the event carried no address.
pub const NO_PORT: &str = "unknown";

/// Pairs remembered per cause beyond the top N, to rank them; past this the least counted
/// one is forgotten (its events stay counted under "other").
const CANDIDATES_PER_SLOT: usize = 4;
const MIN_CANDIDATES: usize = 64;

/// (port, process) as label values.
pub type Pair = (String, String);

#[derive(Debug, Clone, Copy, Default)]
struct Member {
    /// Events counted in this pair's own series (since it got one).
    series: u64,
    /// Every event of the pair, for ranking.
    total: u64,
}

#[derive(Debug, Default)]
struct CauseTally {
    members: HashMap<Pair, Member>,
    /// Pairs without a series of their own, by their total.
    candidates: HashMap<Pair, u64>,
    other: u64,
}

/// One series of `rst_trace_listener_events_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSeries {
    pub cause: Cause,
    pub port: String,
    pub process: String,
    pub value: u64,
}

#[derive(Debug)]
pub struct ListenerTally {
    top_n: usize,
    causes: BTreeMap<Cause, CauseTally>,
}

impl ListenerTally {
    pub fn new(top_n: usize) -> Self {
        Self {
            top_n,
            causes: BTreeMap::new(),
        }
    }

    /// The (port, process) pair of a listener-side diagnosis, or None for other causes, for
    /// warnings that stand for no event (`count` 0) and for what is not an incident of its
    /// own (see [`crate::stats::is_incident`]).
    pub fn pair_of(d: &Diagnosis) -> Option<Pair> {
        if d.count == 0 || !LISTENER_CAUSES.contains(&d.cause) || !crate::stats::is_incident(d) {
            return None;
        }
        let port = d
            .endpoints
            .map_or_else(|| NO_PORT.to_owned(), |e| e.local.port.to_string());
        let process = d
            .owner
            .as_ref()
            .map_or_else(|| NO_PROCESS.to_owned(), |o| o.comm.clone());
        Some((port, process))
    }

    pub fn add(&mut self, cause: Cause, pair: Pair, n: u64) {
        let top_n = self.top_n;
        let t = self.causes.entry(cause).or_default();
        if let Some(m) = t.members.get_mut(&pair) {
            m.series += n;
            m.total += n;
            return;
        }
        if t.members.len() < top_n {
            // Room for another series: the pair's events since it was last a candidate are
            // already under "other" and stay there.
            let earlier = t.candidates.remove(&pair).unwrap_or(0);
            t.members.insert(
                pair,
                Member {
                    series: n,
                    total: earlier + n,
                },
            );
            return;
        }
        t.other += n;
        let total = {
            let c = t.candidates.entry(pair.clone()).or_insert(0);
            *c += n;
            *c
        };
        // Overtaking the smallest series: swap, so the top N stay the N largest.
        let smallest = t
            .members
            .iter()
            .min_by(|a, b| a.1.total.cmp(&b.1.total).then_with(|| a.0.cmp(b.0)))
            .map(|(p, m)| (p.clone(), *m));
        if let Some((out, m)) = smallest {
            if total > m.total {
                t.members.remove(&out);
                t.other += m.series;
                t.candidates.insert(out, m.total);
                t.candidates.remove(&pair);
                t.members.insert(pair, Member { series: 0, total });
            }
        }
        let cap = MIN_CANDIDATES.max(top_n.saturating_mul(CANDIDATES_PER_SLOT));
        if t.candidates.len() > cap {
            if let Some(least) = t
                .candidates
                .iter()
                .min_by_key(|(_, v)| **v)
                .map(|(p, _)| p.clone())
            {
                t.candidates.remove(&least);
            }
        }
    }

    /// Every series, in a stable order (cause, then port and process, "other" last).
    pub fn series(&self) -> Vec<ListenerSeries> {
        let mut out = Vec::new();
        for (cause, t) in &self.causes {
            let mut own: Vec<_> = t.members.iter().collect();
            own.sort_by(|a, b| a.0.cmp(b.0));
            for ((port, process), m) in own {
                out.push(ListenerSeries {
                    cause: *cause,
                    port: port.clone(),
                    process: process.clone(),
                    value: m.series,
                });
            }
            if t.other > 0 {
                out.push(ListenerSeries {
                    cause: *cause,
                    port: OTHER.to_owned(),
                    process: OTHER.to_owned(),
                    value: t.other,
                });
            }
        }
        out
    }
}

/// The tally as the run loop's tap; the metrics server reads it at scrape time.
#[derive(Debug, Clone)]
pub struct SharedTally(pub std::sync::Arc<std::sync::Mutex<ListenerTally>>);

impl SharedTally {
    pub fn new(top_n: usize) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(
            ListenerTally::new(top_n),
        )))
    }

    pub fn series(&self) -> Vec<ListenerSeries> {
        // A panic elsewhere while holding the lock leaves counts that are still counts.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).series()
    }
}

impl Tap for SharedTally {
    fn diagnosis(&mut self, d: &Diagnosis) {
        if let Some(pair) = ListenerTally::pair_of(d) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(d.cause, pair, d.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(port: u16, process: &str) -> Pair {
        (port.to_string(), process.to_owned())
    }

    fn values(t: &ListenerTally) -> BTreeMap<(String, String), u64> {
        t.series()
            .into_iter()
            .map(|s| ((s.port, s.process), s.value))
            .collect()
    }

    fn sum(t: &ListenerTally) -> u64 {
        t.series().iter().map(|s| s.value).sum()
    }

    #[test]
    fn pairs_beyond_n_are_other() {
        let mut t = ListenerTally::new(2);
        t.add(Cause::NoListener, p(80, "none"), 3);
        t.add(Cause::NoListener, p(81, "none"), 2);
        t.add(Cause::NoListener, p(82, "none"), 1);
        let v = values(&t);
        assert_eq!(v[&p(80, "none")], 3);
        assert_eq!(v[&p(81, "none")], 2);
        assert_eq!(v[&(OTHER.into(), OTHER.into())], 1);
        assert_eq!(v.len(), 3);
        assert_eq!(sum(&t), 6);
    }

    #[test]
    fn a_pair_that_overtakes_takes_a_series_and_every_series_stays_monotonic() {
        let mut t = ListenerTally::new(2);
        t.add(Cause::AcceptQueueOverflow, p(80, "nginx"), 5);
        t.add(Cause::AcceptQueueOverflow, p(81, "java"), 1);
        let mut last = values(&t);
        let mut events = 6;
        // A storm on a third port: it must end up with a series of its own.
        for _ in 0..10 {
            t.add(Cause::AcceptQueueOverflow, p(9000, "python3"), 1);
            events += 1;
            let now = values(&t);
            for (k, v) in &now {
                if let Some(before) = last.get(k) {
                    assert!(v >= before, "{k:?} went from {before} to {v}");
                }
            }
            assert_eq!(sum(&t), events, "series must sum to every event");
            last = now;
        }
        let v = values(&t);
        assert!(v.contains_key(&p(9000, "python3")), "{v:?}");
        assert!(v.contains_key(&p(80, "nginx")), "{v:?}");
        assert!(!v.contains_key(&p(81, "java")), "{v:?}");
        // java's 1 and python3's first two (before it overtook java's 1) are under other.
        assert_eq!(v[&(OTHER.into(), OTHER.into())], 3);
        assert_eq!(v[&p(9000, "python3")], 8);
    }

    #[test]
    fn causes_are_counted_apart_and_cardinality_is_bounded() {
        let mut t = ListenerTally::new(3);
        for port in 0..2000u16 {
            t.add(Cause::NoListener, p(port, "none"), 1);
            t.add(Cause::FdExhaustion, p(port, "app"), 2);
        }
        let s = t.series();
        assert_eq!(s.len(), 2 * (3 + 1));
        let nl: u64 = s
            .iter()
            .filter(|x| x.cause == Cause::NoListener)
            .map(|x| x.value)
            .sum();
        assert_eq!(nl, 2000);
        assert!(t.causes[&Cause::NoListener].candidates.len() <= MIN_CANDIDATES + 1);
    }

    #[test]
    fn only_listener_side_events_count() {
        use crate::cause::{Direction, Origin};
        let mut d = Diagnosis::new(
            std::time::SystemTime::UNIX_EPOCH,
            "rst_trace.reset_received",
            Cause::ConnectionRefused,
            Direction::Received,
            Origin::Peer,
            1,
        );
        assert_eq!(ListenerTally::pair_of(&d), None);
        d.cause = Cause::NoListener;
        assert_eq!(
            ListenerTally::pair_of(&d),
            Some((NO_PORT.into(), NO_PROCESS.into()))
        );
        d.cause = Cause::AcceptQueueOverflow;
        assert!(ListenerTally::pair_of(&d).is_some());
        // The RST sent for an overflow (tcp_abort_on_overflow=1) is the same incident.
        d.direction = Direction::Sent;
        assert_eq!(ListenerTally::pair_of(&d), None);
        d.direction = Direction::Dropped;
        d.count = 0; // a warning, not an event
        assert_eq!(ListenerTally::pair_of(&d), None);
    }
}
