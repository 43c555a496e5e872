//! REJECT ↔ netfilter drop: an RST that netfilter built (REJECT --reject-with tcp-reset) is
//! paired with the NETFILTER_DROP of the segment it answers, so the two are one
//! firewall_reject event. RSTs whose drop never shows up are reported alone after a window.
use crate::fastmap::FastMap;
use crate::occupancy::TableFigure;

use crate::records::Endpoints;

/// An RST from netfilter is matched with the drop of the segment it answers this fast.
pub const REJECT_PAIR_WINDOW_NS: u64 = 1_000_000_000;
/// Tuples waiting at once; past it a new RST is reported at once, unpaired.
const MAX_WAITING: usize = 16_384;

/// RSTs waiting for their drop: first RST time and how many, per (netns, 4-tuple).
#[derive(Default)]
pub struct RejectPairing {
    waiting: FastMap<(u32, Endpoints), (u64, u64)>,
}

/// RSTs of one tuple that were never paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpaired {
    pub netns: u32,
    pub endpoints: Endpoints,
    pub first_ns: u64,
    pub count: u64,
}

impl RejectPairing {
    /// How full it is, for the stats line.
    pub fn figure(&self) -> TableFigure {
        TableFigure::new("rejects_waiting", self.waiting.len(), MAX_WAITING)
    }

    /// A netfilter RST at `at`: false when it cannot wait (the bound is reached).
    pub fn reset(&mut self, netns: u32, e: Endpoints, at: u64) -> bool {
        if self.waiting.len() >= MAX_WAITING && !self.waiting.contains_key(&(netns, e)) {
            return false;
        }
        self.waiting.entry((netns, e)).or_insert((at, 0)).1 += 1;
        true
    }

    /// A netfilter drop of a segment on `e`: the time of the RST that answered it, if one is
    /// waiting and recent.
    pub fn drop_seen(&mut self, now: u64, netns: u32, e: Endpoints) -> Option<u64> {
        let (t, n) = self.waiting.remove(&(netns, e))?;
        if now.saturating_sub(t) > REJECT_PAIR_WINDOW_NS {
            return None;
        }
        if n > 1 {
            // More RSTs than drops so far for this tuple: the rest keep waiting.
            self.waiting.insert((netns, e), (t, n - 1));
        }
        Some(t)
    }

    /// RSTs whose drop was never seen within the window (e.g. REJECT outside INPUT).
    pub fn expire(&mut self, now: u64) -> Vec<Unpaired> {
        let stale: Vec<(u32, Endpoints)> = self
            .waiting
            .iter()
            .filter(|(_, (t, _))| now.saturating_sub(*t) > REJECT_PAIR_WINDOW_NS)
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Unpaired> = stale
            .into_iter()
            .filter_map(|k| {
                let (first_ns, count) = self.waiting.remove(&k)?;
                Some(Unpaired {
                    netns: k.0,
                    endpoints: k.1,
                    first_ns,
                    count,
                })
            })
            .collect();
        out.sort_by_key(|u| u.first_ns);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use crate::records::Endpoint;

    fn tuple(port: u16) -> Endpoints {
        let addr = "10.0.0.1".parse().expect("ip");
        Endpoints {
            local: Endpoint { addr, port },
            remote: Endpoint { addr, port: 40000 },
        }
    }

    #[test]
    fn a_drop_pairs_with_one_waiting_rst_within_the_window() {
        let clock = FakeClock::at(5_000);
        let mut p = RejectPairing::default();
        assert!(p.reset(1, tuple(80), clock.now_ns()));
        assert!(p.reset(1, tuple(80), clock.now_ns()));
        assert_eq!(
            p.drop_seen(clock.now_ns(), 2, tuple(80)),
            None,
            "other netns"
        );
        assert_eq!(p.drop_seen(clock.now_ns(), 1, tuple(80)), Some(5_000));
        clock.set(5_000 + REJECT_PAIR_WINDOW_NS + 1);
        let left = p.expire(clock.now_ns());
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].count, 1, "one RST is still unpaired");
        assert!(p.expire(clock.now_ns()).is_empty());
    }

    #[test]
    fn a_late_drop_does_not_pair() {
        let clock = FakeClock::at(0);
        let mut p = RejectPairing::default();
        p.reset(1, tuple(80), clock.now_ns());
        clock.set(REJECT_PAIR_WINDOW_NS + 1);
        assert_eq!(p.drop_seen(clock.now_ns(), 1, tuple(80)), None);
    }
}
