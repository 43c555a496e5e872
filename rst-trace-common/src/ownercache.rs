//! Placement rules of the socket owner cache ([`crate::OWNERS_MAP`]), shared by the kernel
//! programs that store and read it and by the agent that reports its occupancy.
//!
//! Every healthy connection stores its owner here (at connect() or accept()) and marks it
//! closed at its end, so it is an array of sets ([`crate::setcache`]): a socket's address
//! hashes to two sets of [`OWNERS_WAYS`] slots, and its owner takes the first slot that fits
//! in the order a look-up reads them: its own (the address of a freed socket reused by a new
//! one), an empty one, or one whose socket closed more than [`OWNER_CLOSE_GRACE_NS`] ago.
//! The owner of an open socket is never displaced: when no slot fits, the new owner is not
//! stored and that is counted, as an insert into a full hash map was.
//!
//! A closed socket's slot is not emptied at once: close() sends its abort RST (unread data,
//! SO_LINGER 0) right after the socket enters CLOSE, and that RST's owner is read from it.
use crate::{setcache::Placement, OWNERS_CAPACITY, OWNERS_WAYS};

/// Sets in the cache.
pub const OWNERS_SETS: u32 = OWNERS_CAPACITY / OWNERS_WAYS;

/// How long a closed socket's owner keeps its slot. The abort RST follows the state change
/// in the same close() call, microseconds later natively; the margin covers a guest under
/// software emulation. Under churn, closed slots wait this long before reuse: at 100,000
/// closes a second that is 5,000 slots of 131,072.
pub const OWNER_CLOSE_GRACE_NS: u64 = 50_000_000;

/// The placement of a socket (its `struct sock` address).
#[inline(always)]
pub fn placement(sk: u64) -> Placement {
    crate::setcache::place(&[sk], OWNERS_SETS)
}

/// Whether a slot holds the owner of an open socket (`check` and `closed_ns` from its tag).
#[inline(always)]
pub fn is_open(check: u32, closed_ns: u64) -> bool {
    check != 0 && closed_ns == 0
}

/// Whether a slot may take a new owner: it is not being written (`busy`), and it is empty,
/// holds the same socket, or holds a socket closed more than the grace period ago. A close
/// time ahead of `now_ns` is a close just now: both come from `tickclock`, whose readings on
/// two CPUs may differ by two ticks either way.
#[inline(always)]
pub fn fits(busy: bool, check: u32, same_key: bool, closed_ns: u64, now_ns: u64) -> bool {
    !busy
        && (check == 0
            || same_key
            || (closed_ns != 0 && now_ns.saturating_sub(closed_ns) >= OWNER_CLOSE_GRACE_NS))
}

/// Whether an entry found for a socket is that socket's: an open one always; a closed one
/// only while the socket itself is closing (its abort RST), since otherwise it was left by an
/// earlier socket at the same address (sockets are SLAB_TYPESAFE_BY_RCU).
#[inline(always)]
pub fn belongs(closed_ns: u64, closing: bool) -> bool {
    closing || closed_ns == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slot_fits_when_it_is_empty_the_sockets_own_or_closed_long_enough() {
        let now = 1_000_000 * MS;
        assert!(fits(false, 0, false, 0, now), "empty");
        assert!(fits(false, 7, true, 0, now), "the same socket address");
        assert!(
            fits(false, 7, false, now - 51 * MS, now),
            "closed, grace over"
        );
        assert!(
            !fits(false, 7, false, 0, now),
            "an open socket's owner stays"
        );
        assert!(
            !fits(false, 7, false, now - MS, now),
            "closed, within grace"
        );
        assert!(!fits(true, 0, false, 0, now), "a slot being written");
        assert!(
            !fits(false, 7, false, now + 4 * MS, now),
            "closed a tick ahead of this CPU's reading: within grace"
        );
    }

    #[test]
    fn a_closed_entry_belongs_only_to_its_closing_socket() {
        assert!(belongs(0, false));
        assert!(belongs(5, true));
        assert!(!belongs(5, false));
        assert!(is_open(3, 0) && !is_open(3, 5) && !is_open(0, 0));
    }

    /// Socket addresses as the slab hands them out (`struct tcp_sock` objects a fixed stride
    /// apart in order-3 slabs scattered over memory), stored as the kernel stores them: every
    /// but one in 98,304 open sockets keeps its owner at 3/4 of the capacity (this one loses
    /// 1), and at 7/8 all but one in 250 (this one: 430 of 114,688).
    #[test]
    fn open_sockets_keep_their_owners_to_three_quarters_of_the_capacity() {
        let mut check = vec![0u32; OWNERS_CAPACITY as usize];
        let (stride, per_slab) = (2432u64, 13u64);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let (mut failed, mut failed_at_three_quarters) = (0u32, None);
        for i in 0..OWNERS_CAPACITY * 7 / 8 {
            if i == OWNERS_CAPACITY * 3 / 4 {
                failed_at_three_quarters = Some(failed);
            }
            if u64::from(i) % per_slab == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            let slab = 0xffff_8880_0000_0000 | ((x & 0xf_ffff) << 15);
            let sk = slab + (u64::from(i) % per_slab) * stride;
            let p = placement(sk);
            assert!(p.a < OWNERS_SETS && p.b < OWNERS_SETS && p.check != 0);
            let slot = crate::setcache::probe_order(p, OWNERS_WAYS)
                .map(|(set, way)| (set * OWNERS_WAYS + way) as usize)
                .find(|&s| fits(false, check[s], false, 0, 0));
            match slot {
                Some(s) => check[s] = p.check,
                None => failed += 1,
            }
        }
        assert!(
            failed_at_three_quarters.is_some_and(|f| f <= 1),
            "{failed_at_three_quarters:?}"
        );
        assert!(
            failed * 250 <= OWNERS_CAPACITY * 7 / 8,
            "{failed} owners not stored at 7/8 of the capacity"
        );
    }
}
