//! Placement rules of the TIME_WAIT owner cache ([`crate::TW_OWNERS_MAP`]), shared by the
//! kernel program that stores and reads it and by the agent that reports its occupancy.
//!
//! Every healthy connection that closes actively leaves a TIME_WAIT socket for 60 s, and its
//! last owner is stored in case that socket sends an RST. The store is on the path of every
//! such close, so it is an array. A key hashes to two sets of [`TW_OWNERS_WAYS`] slots and
//! takes its own slot, else a free one (empty, or its TIME_WAIT is over) in the set with more
//! free slots, else the one closed longest ago. Only the last is an eviction, and it is
//! counted. Choosing the emptier of two sets keeps the sets even: in a simulation of random
//! keys, none was evicted below half the capacity live, 425 of 50,000 at three quarters (one
//! set per key: 1,185 of 32,768 at half).
use crate::{TW_OWNERS_CAPACITY, TW_OWNERS_WAYS};

/// Sets in the cache.
pub const TW_OWNERS_SETS: u32 = TW_OWNERS_CAPACITY / TW_OWNERS_WAYS;

/// How long a last owner is kept from eviction after its connection closed. TIME_WAIT lasts
/// 60 s (TCP_TIMEWAIT_LEN), and its timer may fire late: the margin keeps the owner of a
/// TIME_WAIT socket still there.
pub const TW_OWNER_KEEP_NS: u64 = 90_000_000_000;

/// The key's own slot: overwritten in place.
pub const RANK_SAME: u64 = 0;
/// A slot never used.
pub const RANK_EMPTY: u64 = 1;
/// A slot whose connection's TIME_WAIT is over.
pub const RANK_STALE: u64 = 2;
/// Live slots rank from here, the longest closed first.
pub const RANK_LIVE: u64 = 3;
/// A slot another CPU is writing: never taken.
pub const RANK_BUSY: u64 = u64::MAX;

/// Where a key goes: its two sets, and the check its slot's tag carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub a: u32,
    pub b: u32,
    /// Never 0, which marks a slot never used.
    pub check: u32,
}

/// The placement of the key (as its six 8-byte words), from different bits of one hash.
/// Local ports of one client differ in a few low bits, so every word is multiplied through
/// before the next is mixed in.
#[inline(always)]
pub fn placement(words: &[u64; 6]) -> Placement {
    let mut h: u64 = 0;
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
        i += 1;
    }
    Placement {
        a: (h >> 8) as u32 & (TW_OWNERS_SETS - 1),
        b: (h >> 36) as u32 & (TW_OWNERS_SETS - 1),
        check: h as u32 | 1,
    }
}

/// One set seen by a store: its fittest slot and how many of its slots are free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetScan {
    pub way: u32,
    pub rank: u64,
    pub free: u32,
}

impl Default for SetScan {
    fn default() -> Self {
        Self::new()
    }
}

impl SetScan {
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            way: 0,
            rank: RANK_BUSY,
            free: 0,
        }
    }

    /// Slot `way` has rank `rank`.
    #[inline(always)]
    pub fn see(&mut self, way: u32, rank: u64) {
        if rank == RANK_EMPTY || rank == RANK_STALE {
            self.free += 1;
        }
        if rank < self.rank {
            self.way = way;
            self.rank = rank;
        }
    }
}

/// Which of the key's two sets takes it (`true`: the second), and where: the key's own slot,
/// else the set with more free slots, else the longest closed of both.
#[inline(always)]
pub fn pick(a: SetScan, b: SetScan) -> (bool, SetScan) {
    if a.rank == RANK_SAME {
        (false, a)
    } else if b.rank == RANK_SAME {
        (true, b)
    } else if a.free == 0 && b.free == 0 {
        if b.rank < a.rank {
            (true, b)
        } else {
            (false, a)
        }
    } else if b.free > a.free {
        (true, b)
    } else {
        (false, a)
    }
}

/// Whether an entry whose connection closed at `closed_ns` may still explain a TIME_WAIT
/// socket at `now_ns` (both `bpf_ktime_get_ns`, i.e. CLOCK_MONOTONIC).
#[inline(always)]
pub fn is_live(closed_ns: u64, now_ns: u64) -> bool {
    closed_ns != 0 && now_ns.wrapping_sub(closed_ns) < TW_OWNER_KEEP_NS
}

/// How fit a slot is to take a new entry; the lowest rank of a set is taken. `busy`: its
/// sequence was odd (another CPU is writing it).
#[inline(always)]
pub fn rank(busy: bool, same_key: bool, closed_ns: u64, now_ns: u64) -> u64 {
    if busy {
        RANK_BUSY
    } else if same_key {
        RANK_SAME
    } else if closed_ns == 0 {
        RANK_EMPTY
    } else if !is_live(closed_ns, now_ns) {
        RANK_STALE
    } else {
        // ktime stays far below 2^63: no overflow.
        RANK_LIVE.saturating_add(closed_ns)
    }
}

/// Whether a store that picked a slot of this rank loses an owner: another connection's live
/// one it overwrites, or its own when every slot was being written.
#[inline(always)]
pub fn loses_owner(rank: u64) -> bool {
    rank >= RANK_LIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn scan(slots: &[(bool, bool, u64)], now: u64) -> SetScan {
        let mut s = SetScan::new();
        for (way, &(busy, same, closed)) in slots.iter().enumerate() {
            s.see(way as u32, rank(busy, same, closed, now));
        }
        s
    }

    fn best(slots: &[(bool, bool, u64)], now: u64) -> (usize, u64) {
        let s = scan(slots, now);
        (s.way as usize, s.rank)
    }

    #[test]
    fn the_emptier_set_takes_a_new_key_and_its_own_set_an_old_one() {
        let now = 1000 * S;
        let live = now - S;
        let a = scan(
            &[
                (false, false, live),
                (false, false, 0),
                (false, false, live),
            ],
            now,
        );
        let b = scan(
            &[(false, false, 0), (false, false, 0), (false, false, live)],
            now,
        );
        assert_eq!(pick(a, b), (true, b));
        assert_eq!(pick(b, a), (false, b));
        let own = scan(&[(false, true, live), (false, false, live)], now);
        assert!(pick(b, own).0);
        assert!(!pick(own, b).0);
        // Both full: the longest closed of the two goes.
        let older = scan(&[(false, false, now - 30 * S)], now);
        let newer = scan(&[(false, false, now - 2 * S)], now);
        assert_eq!(pick(newer, older), (true, older));
        assert!(loses_owner(pick(newer, older).1.rank));
        assert!(loses_owner(scan(&[(true, false, 0)], now).rank));
    }

    #[test]
    fn a_key_takes_its_own_slot_before_an_empty_one() {
        let now = 1000 * S;
        let (way, r) = best(
            &[(false, false, 0), (false, true, now - S), (false, false, 0)],
            now,
        );
        assert_eq!((way, r), (1, RANK_SAME));
        assert!(!loses_owner(r));
    }

    #[test]
    fn empty_then_stale_then_the_longest_closed_live_one() {
        let now = 1000 * S;
        let live_old = now - 50 * S;
        let live_new = now - S;
        let stale = now - 200 * S;
        assert_eq!(
            best(&[(false, false, live_new), (false, false, 0)], now).0,
            1
        );
        assert_eq!(
            best(&[(false, false, live_new), (false, false, stale)], now).1,
            RANK_STALE
        );
        let (way, r) = best(
            &[
                (false, false, live_new),
                (false, false, live_old),
                (false, false, live_new),
            ],
            now,
        );
        assert_eq!(way, 1);
        assert!(loses_owner(r));
    }

    #[test]
    fn a_slot_being_written_is_never_taken() {
        let now = 1000 * S;
        let (way, r) = best(&[(true, true, 0), (false, false, now - S)], now);
        assert_eq!(way, 1);
        assert!(loses_owner(r));
        assert_eq!(best(&[(true, false, 0)], now).1, RANK_BUSY);
    }

    #[test]
    fn time_wait_is_live_for_its_60_s_and_the_timer_slack() {
        let now = 1000 * S;
        assert!(is_live(now - 60 * S, now));
        assert!(is_live(now - 89 * S, now));
        assert!(!is_live(now - 90 * S, now));
        assert!(!is_live(0, now));
    }

    /// One client's consecutive local ports to one server (the bench's churn) fill half the
    /// cache, placed as the kernel places them: at most one owner in 10,000 is lost (random
    /// keys lose none at half in most runs of the simulation; these lose 1).
    #[test]
    fn half_the_capacity_of_one_clients_ports_loses_no_owner() {
        let now = 1000 * S;
        let mut closed = vec![0u64; TW_OWNERS_CAPACITY as usize];
        let mut lost = 0;
        let n = TW_OWNERS_CAPACITY / 2;
        for i in 0..n {
            let (lport, rport) = (1024 + (i % 64_000) as u64, 8080 + u64::from(i / 64_000));
            let ports = 2 | (lport << 16) | (rport << 32);
            let p = placement(&[4026531840, ports, 0x0100_007f, 0, 0x0100_007f, 0]);
            let (sa, sb) = (p.a, p.b);
            assert!(sa < TW_OWNERS_SETS && sb < TW_OWNERS_SETS && p.check != 0);
            let look = |set: u32| {
                let mut s = SetScan::new();
                for way in 0..TW_OWNERS_WAYS {
                    let c = closed[(set * TW_OWNERS_WAYS + way) as usize];
                    s.see(way, rank(false, false, c, now));
                }
                s
            };
            let (second, s) = pick(look(sa), look(sb));
            lost += u32::from(loses_owner(s.rank));
            closed[((if second { sb } else { sa }) * TW_OWNERS_WAYS + s.way) as usize] = now - S;
        }
        assert!(lost * 10_000 <= n, "{lost} owners lost at {n} live");
    }
}
