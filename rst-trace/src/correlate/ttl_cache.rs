//! A value per key, read again once it is older than its time to live: the /proc readings
//! (process names, fd counts) and socket censuses that a storm would otherwise repeat per
//! event.
use std::hash::Hash;

use crate::fastmap::FastMap;

use crate::occupancy::TableFigure;

pub struct TtlCache<K, V> {
    map: FastMap<K, (u64, V)>,
    ttl_ns: u64,
    max: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// Entries live `ttl_ns`; at `max` entries the cache starts over (cheaper than an LRU,
    /// and a full cache only means more readings).
    pub fn new(ttl_ns: u64, max: usize) -> Self {
        Self {
            map: FastMap::default(),
            ttl_ns,
            max: max.max(1),
        }
    }

    /// The value for `key`, read with `read` when missing or stale.
    pub fn get_or_read(&mut self, now: u64, key: K, read: impl FnOnce() -> V) -> V {
        if let Some((t, v)) = self.map.get(&key) {
            if now.saturating_sub(*t) < self.ttl_ns {
                return v.clone();
            }
        }
        if self.map.len() >= self.max {
            self.map.clear();
        }
        let v = read();
        self.map.insert(key, (now, v.clone()));
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How full it is, for the stats line.
    pub fn figure(&self, name: &'static str) -> TableFigure {
        TableFigure::new(name, self.map.len(), self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};

    #[test]
    fn a_value_is_read_once_per_ttl_and_the_bound_holds() {
        let clock = FakeClock::at(1_000);
        let mut c: TtlCache<u32, u32> = TtlCache::new(100, 2);
        let mut reads = 0;
        for _ in 0..3 {
            c.get_or_read(clock.now_ns(), 1, || {
                reads += 1;
                reads
            });
        }
        assert_eq!(reads, 1);
        clock.set(1_100);
        assert_eq!(
            c.get_or_read(clock.now_ns(), 1, || 9),
            9,
            "stale: read again"
        );
        c.get_or_read(clock.now_ns(), 2, || 0);
        c.get_or_read(clock.now_ns(), 3, || 0);
        assert!(c.len() <= 2);
    }
}
