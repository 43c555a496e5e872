//! Placement rules of the TIME_WAIT owner cache ([`crate::TW_OWNERS_MAP`]), shared by the
//! kernel program that stores and reads it and by the agent that reports its occupancy.
//!
//! Every healthy connection that closes actively leaves a TIME_WAIT socket for 60 s, and its
//! last owner is stored in case that socket sends an RST. The store is on the path of every
//! such close, so it is an array ([`crate::setcache`]). A key hashes to two sets of
//! [`TW_OWNERS_WAYS`] slots and takes the first slot that fits, in the order a look-up reads
//! them (its own, an empty one, or one whose TIME_WAIT is over). When both sets hold live
//! owners only, one slot of the first set, picked by the hash, is overwritten, and that
//! eviction is counted. In a simulation of random keys, none is evicted up to half the
//! capacity live; trying the whole first set before the second evicted 110 of 32,768 there.
use crate::{TW_OWNERS_CAPACITY, TW_OWNERS_WAYS};

/// Sets in the cache.
pub const TW_OWNERS_SETS: u32 = TW_OWNERS_CAPACITY / TW_OWNERS_WAYS;

/// How long a last owner is kept from eviction after its connection closed. TIME_WAIT lasts
/// 60 s (TCP_TIMEWAIT_LEN), and its timer may fire late: the margin keeps the owner of a
/// TIME_WAIT socket still there.
pub const TW_OWNER_KEEP_NS: u64 = 90_000_000_000;

pub use crate::setcache::Placement;

/// The placement of a TIME_WAIT key (as its six 8-byte words).
#[inline(always)]
pub fn placement(words: &[u64; 6]) -> Placement {
    crate::setcache::place(words, TW_OWNERS_SETS)
}

/// Whether an entry whose connection closed at `closed_ns` may still explain a TIME_WAIT
/// socket at `now_ns` (both `bpf_ktime_get_ns`, i.e. CLOCK_MONOTONIC).
#[inline(always)]
pub fn is_live(closed_ns: u64, now_ns: u64) -> bool {
    closed_ns != 0 && now_ns.wrapping_sub(closed_ns) < TW_OWNER_KEEP_NS
}

/// Whether a slot may take a new entry: it is not being written (`busy`), and it holds the
/// same key, nothing, or an owner whose TIME_WAIT is over.
#[inline(always)]
pub fn fits(busy: bool, same_key: bool, closed_ns: u64, now_ns: u64) -> bool {
    !busy && (same_key || !is_live(closed_ns, now_ns))
}

/// The way of the first set overwritten when both sets hold live owners only.
#[inline(always)]
pub fn evicted_way(check: u32) -> u32 {
    (check >> 1) & (TW_OWNERS_WAYS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_slot_fits_when_it_is_the_keys_own_empty_or_stale() {
        let now = 1000 * S;
        assert!(fits(false, true, now - S, now));
        assert!(fits(false, false, 0, now));
        assert!(fits(false, false, now - 200 * S, now));
        assert!(!fits(false, false, now - S, now));
        assert!(
            !fits(true, true, 0, now),
            "a slot being written is never taken"
        );
    }

    #[test]
    fn time_wait_is_live_for_its_60_s_and_the_timer_slack() {
        let now = 1000 * S;
        assert!(is_live(now - 60 * S, now));
        assert!(is_live(now - 89 * S, now));
        assert!(!is_live(now - 90 * S, now));
        assert!(!is_live(0, now));
    }

    /// One client's consecutive local ports to one server (the bench's churn), placed as the
    /// kernel places them: at most one lost up to half the capacity live (this one loses 1).
    #[test]
    fn one_clients_ports_keep_their_owners_up_to_half_the_capacity() {
        let now = 1000 * S;
        let mut closed = vec![0u64; TW_OWNERS_CAPACITY as usize];
        let mut lost = 0;
        for i in 0..TW_OWNERS_CAPACITY / 2 {
            let (lport, rport) = (1024 + (i % 64_000) as u64, 8080 + u64::from(i / 64_000));
            let ports = 2 | (lport << 16) | (rport << 32);
            let p = placement(&[4026531840, ports, 0x0100_007f, 0, 0x0100_007f, 0]);
            assert!(p.a < TW_OWNERS_SETS && p.b < TW_OWNERS_SETS && p.check != 0);
            let slot = crate::setcache::probe_order(p, TW_OWNERS_WAYS)
                .map(|(set, way)| set * TW_OWNERS_WAYS + way)
                .find(|&i| fits(false, false, closed[i as usize], now))
                .unwrap_or_else(|| {
                    lost += 1;
                    p.a * TW_OWNERS_WAYS + evicted_way(p.check)
                });
            closed[slot as usize] = now - S;
        }
        assert!(lost <= 1, "{lost} owners lost at half the capacity live");
    }
}
