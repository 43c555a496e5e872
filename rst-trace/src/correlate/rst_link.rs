//! Received ↔ sent RST linking: an RST received over loopback or between two local namespaces
//! was sent by this host, and the sending side knows its cause. Sent RSTs are remembered for a
//! short window; received ones are held briefly, because for active resets the kernel traces
//! the sending side only after transmitting, so on loopback the receiving side comes first.
use crate::occupancy::TableFigure;
use std::collections::{hash_map::Entry, VecDeque};

use crate::fastmap::FastMap;

use crate::{
    cause::{Cause, Origin},
    records::Endpoints,
};

/// How long a received RST waits for the local RST that caused it.
pub const RECEIVED_HOLD_NS: u64 = 50_000_000;
/// How long a sent RST waits to be matched by the peer's receipt of it.
pub const RST_LINK_WINDOW_NS: u64 = 2_000_000_000;
/// Sent RSTs remembered, and received ones held, at most.
pub const MAX_LINKED: usize = 16_384;

/// What the receiving side learns about an RST this host sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRst {
    pub cause: Cause,
    pub origin: Origin,
    pub netns: u32,
    pub at_ns: u64,
    pub owner_pid: Option<u32>,
}

struct Held<T> {
    at_ns: u64,
    endpoints: Endpoints,
    linked: bool,
    item: T,
}

/// Links received RSTs (held as `T`) with the sent RST they are.
pub struct RstLink<T> {
    sent: FastMap<Endpoints, SentRst>,
    /// (`at_ns`, tuple) in sending order. An entry expires only if the table still holds the
    /// RST it was pushed for: a tuple sent again must outlive its earlier entry.
    sent_order: VecDeque<(u64, Endpoints)>,
    held: VecDeque<Held<T>>,
    /// How many held RSTs each 4-tuple has: a sent RST looks here before scanning the queue,
    /// so storms of unrelated RSTs do not pay for the held ones.
    held_by_tuple: FastMap<Endpoints, u32>,
}

impl<T> Default for RstLink<T> {
    fn default() -> Self {
        Self {
            sent: FastMap::default(),
            sent_order: VecDeque::new(),
            held: VecDeque::new(),
            held_by_tuple: FastMap::default(),
        }
    }
}

/// The 4-tuple as the other end sees it.
fn reversed(e: Endpoints) -> Endpoints {
    Endpoints {
        local: e.remote,
        remote: e.local,
    }
}

impl<T> RstLink<T> {
    /// How full its two queues are, for the stats line.
    pub fn figures(&self) -> [TableFigure; 2] {
        [
            TableFigure::new("recent_sent", self.sent.len(), MAX_LINKED),
            TableFigure::new("held_received", self.held.len(), MAX_LINKED),
        ]
    }

    /// An RST this host sent on `e` (local first): remembered for the window, and linked at
    /// once to held received RSTs of the same connection (`link` updates each of them).
    pub fn sent(
        &mut self,
        now: u64,
        e: Endpoints,
        s: SentRst,
        mut link: impl FnMut(&mut T, &SentRst),
    ) {
        while self.sent_order.len() >= MAX_LINKED
            || self
                .sent_order
                .front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) > RST_LINK_WINDOW_NS)
        {
            let Some((t, k)) = self.sent_order.pop_front() else {
                break;
            };
            if let Entry::Occupied(o) = self.sent.entry(k) {
                if o.get().at_ns == t {
                    o.remove();
                }
            }
        }
        let peer_view = reversed(e);
        if self.held_by_tuple.contains_key(&peer_view) {
            for h in self.held.iter_mut() {
                if !h.linked && h.endpoints == peer_view {
                    h.linked = true;
                    link(&mut h.item, &s);
                }
            }
        }
        self.sent_order.push_back((s.at_ns, e));
        self.sent.insert(e, s);
    }

    /// The RST this host sent that one received on `received` is, if any. An RST reaches one
    /// socket, so a match is taken out: in a storm of local RSTs the table then holds only the
    /// few not yet received, and stays small and in cache.
    pub fn take_counterpart(&mut self, now: u64, received: Endpoints) -> Option<SentRst> {
        let Entry::Occupied(o) = self.sent.entry(reversed(received)) else {
            return None;
        };
        (now.saturating_sub(o.get().at_ns) <= RST_LINK_WINDOW_NS).then(|| o.remove())
    }

    /// Holds a received RST for its counterpart; gives it back when the bound is reached.
    pub fn hold(&mut self, now: u64, e: Endpoints, item: T) -> Option<T> {
        if self.held.len() >= MAX_LINKED {
            return Some(item);
        }
        *self.held_by_tuple.entry(e).or_insert(0) += 1;
        self.held.push_back(Held {
            at_ns: now,
            endpoints: e,
            linked: false,
            item,
        });
        None
    }

    /// Whether received RSTs are waiting (the agent's hold timer runs only then).
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Received RSTs whose hold is over (all of them when `force`), in arrival order.
    pub fn release(&mut self, now: u64, force: bool) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(h) = self.held.front() {
            if !force && now.saturating_sub(h.at_ns) < RECEIVED_HOLD_NS {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            if let Some(n) = self.held_by_tuple.get_mut(&h.endpoints) {
                *n -= 1;
                if *n == 0 {
                    self.held_by_tuple.remove(&h.endpoints);
                }
            }
            out.push(h.item);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use crate::records::Endpoint;

    fn conn(a: u16, b: u16) -> Endpoints {
        let addr = "127.0.0.1".parse().expect("ip");
        Endpoints {
            local: Endpoint { addr, port: a },
            remote: Endpoint { addr, port: b },
        }
    }

    fn sent(at_ns: u64) -> SentRst {
        SentRst {
            cause: Cause::AbortOnClose,
            origin: Origin::TcpStack,
            netns: 1,
            at_ns,
            owner_pid: Some(7),
        }
    }

    #[test]
    fn a_held_rst_is_linked_when_its_sender_shows_up_and_released_after_the_hold() {
        let clock = FakeClock::at(1_000);
        let mut l: RstLink<Option<Cause>> = RstLink::default();
        assert!(l.hold(clock.now_ns(), conn(40000, 80), None).is_none());
        assert!(l.holding());
        l.sent(
            clock.now_ns(),
            conn(80, 40000),
            sent(clock.now_ns()),
            |held, s| *held = Some(s.cause),
        );
        assert!(
            l.release(clock.now_ns(), false).is_empty(),
            "still within the hold"
        );
        clock.set(1_000 + RECEIVED_HOLD_NS);
        assert_eq!(
            l.release(clock.now_ns(), false),
            vec![Some(Cause::AbortOnClose)]
        );
        assert!(!l.holding());
    }

    #[test]
    fn a_sent_rst_is_found_by_the_receiver_within_the_window_only() {
        let clock = FakeClock::at(0);
        let mut l: RstLink<()> = RstLink::default();
        l.sent(clock.now_ns(), conn(80, 40000), sent(0), |_, _| {});
        assert!(l
            .take_counterpart(clock.now_ns(), conn(40001, 80))
            .is_none());
        l.sent(clock.now_ns(), conn(80, 40001), sent(0), |_, _| {});
        assert!(l
            .take_counterpart(clock.now_ns(), conn(40000, 80))
            .is_some());
        assert!(
            l.take_counterpart(clock.now_ns(), conn(40000, 80))
                .is_none(),
            "one RST, one receiver"
        );
        clock.set(RST_LINK_WINDOW_NS + 1);
        assert!(l
            .take_counterpart(clock.now_ns(), conn(40001, 80))
            .is_none());
    }

    #[test]
    fn a_tuple_sent_again_outlives_its_earlier_entry() {
        let clock = FakeClock::at(0);
        let mut l: RstLink<()> = RstLink::default();
        l.sent(clock.now_ns(), conn(80, 40000), sent(0), |_, _| {});
        clock.set(RST_LINK_WINDOW_NS);
        l.sent(
            clock.now_ns(),
            conn(80, 40000),
            sent(RST_LINK_WINDOW_NS),
            |_, _| {},
        );
        // The first entry expires here; the second, remembered for the same tuple, must stay.
        clock.set(RST_LINK_WINDOW_NS + 2);
        l.sent(
            clock.now_ns(),
            conn(80, 40001),
            sent(RST_LINK_WINDOW_NS + 2),
            |_, _| {},
        );
        assert!(l
            .take_counterpart(clock.now_ns(), conn(40000, 80))
            .is_some());
    }

    #[test]
    fn force_releases_everything_in_order() {
        let clock = FakeClock::at(0);
        let mut l: RstLink<u32> = RstLink::default();
        for i in 0..3 {
            l.hold(clock.now_ns(), conn(40000 + i as u16, 80), i);
        }
        assert_eq!(l.release(clock.now_ns(), true), vec![0, 1, 2]);
    }
}
