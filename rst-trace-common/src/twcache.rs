//! Placement rules of the TIME_WAIT owner cache ([`crate::TW_OWNERS_MAP`]) and of the owner
//! identities its slots name ([`crate::TW_IDS_MAP`]), shared by the kernel program that stores
//! and reads them and by the agent that reports their occupancy.
//!
//! Every healthy connection that closes actively leaves a TIME_WAIT socket for 60 s, and its
//! last owner is stored in case that socket sends an RST. The store is on the path of every
//! such close, and the cache is megabytes, so what costs is the cache lines it touches, each
//! likely a miss: a slot is 16 bytes (the key's hash, a reference to the owner's identity,
//! the close time), four to a cache line. With 112-byte slots (key and owner inline) and the
//! tags apart, a store touched four lines, and took 60 % of the state-change program's time
//! under healthy churn.
//!
//! A key hashes to two sets of [`TW_OWNERS_WAYS`] slots; a store takes the first slot that
//! fits (its own key, an empty slot, or one whose TIME_WAIT is over) in the first set, then in
//! the second, the order a look-up reads them, so a look-up meets a key's newest slot first.
//! Whole sets in turn rather than their ways interleaved: while the first four ways of the
//! first set have room, a store reads one line. Interleaved, it read a line of each set, and
//! lost fewer keys at the same load; the capacity is twice the old one's for that (2 MiB
//! where 65,536 inline slots took 8): in a simulation of one client's ports, none is lost up
//! to a quarter of it live, 17 of 65,536 at half. When both sets hold live owners only, one
//! slot of the first, picked by the hash, is overwritten, and that eviction is counted.
//!
//! The identities are few (one per process thread that closes connections, per how it came to
//! own them) and are written again only when they change, so their lines stay in the CPU's
//! cache. An identity slot is one of two its hash picks; a slot that no live TIME_WAIT owner
//! has named for as long as a TIME_WAIT lasts may be replaced. A slot names its identity with
//! the identity slot's index and a check of the identity's hash, so a replaced identity is
//! seen as gone, never taken for another.
use crate::{TwIdentity, TwSlot, TW_IDS_CAPACITY, TW_OWNERS_CAPACITY, TW_OWNERS_WAYS};

/// Sets in the cache.
pub const TW_OWNERS_SETS: u32 = TW_OWNERS_CAPACITY / TW_OWNERS_WAYS;

/// How long a last owner is kept from eviction after its connection closed. TIME_WAIT lasts
/// 60 s (TCP_TIMEWAIT_LEN), and its timer may fire late: the margin keeps the owner of a
/// TIME_WAIT socket still there.
pub const TW_OWNER_KEEP_NS: u64 = 90_000_000_000;

/// Times in the cache are CLOCK_MONOTONIC as [`crate::tickclock`] reads it, `>> CLOCK_SHIFT`
/// (about a millisecond), kept in 32 bits: they wrap after 52 days, and only differences under
/// [`TW_OWNER_KEEP_NS`] are ever taken.
pub const CLOCK_SHIFT: u32 = 20;

const KEEP_UNITS: u32 = (TW_OWNER_KEEP_NS >> CLOCK_SHIFT) as u32;

/// `ns` (CLOCK_MONOTONIC, as `bpf_ktime_get_ns` or [`crate::tickclock`] reads it) as the cache
/// keeps times.
#[inline(always)]
pub fn units(ns: u64) -> u32 {
    (ns >> CLOCK_SHIFT) as u32
}

/// How far a kept time may lie ahead of a later reading and still count as just now: the
/// caches are stamped with `tickclock`'s time, up to two ticks (20 ms at `HZ`=100) behind the
/// clock and behind another CPU's reading; 128 units are 134 ms.
const AHEAD_SLACK_UNITS: u32 = 128;

/// Units from `kept` to `now`; 0 when `kept` is slightly ahead (see [`AHEAD_SLACK_UNITS`]),
/// where a plain wrapping difference would make a time just stored look 52 days old.
#[inline(always)]
pub fn elapsed(kept: u32, now: u32) -> u32 {
    let d = now.wrapping_sub(kept);
    if d > u32::MAX - AHEAD_SLACK_UNITS {
        0
    } else {
        d
    }
}

/// A time the cache kept, back in ns, taken to lie within the 52 days before `now_ns`.
#[inline(always)]
pub fn ns_of(kept: u32, now_ns: u64) -> u64 {
    let ago = u64::from(elapsed(kept, units(now_ns))) << CLOCK_SHIFT;
    now_ns.saturating_sub(ago)
}

/// Where a TIME_WAIT key goes: its two sets, and the key's hash its slot carries (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub a: u32,
    pub b: u32,
    pub key: u64,
}

/// The placement of a TIME_WAIT key (as its six 8-byte words). The sets come from bits of the
/// hash that the key hash also holds: the 50 others tell keys of one set apart.
#[inline(always)]
pub fn placement(words: &[u64; 6]) -> Placement {
    let h = crate::setcache::hash(words);
    Placement {
        a: (h >> 8) as u32 & (TW_OWNERS_SETS - 1),
        b: (h >> 36) as u32 & (TW_OWNERS_SETS - 1),
        key: h | 1,
    }
}

/// Whether something kept at `kept` is within the TIME_WAIT span at `now` (both [`units`]).
#[inline(always)]
pub fn is_live(kept: u32, now: u32) -> bool {
    elapsed(kept, now) < KEEP_UNITS
}

/// Whether a slot holds the last owner of a TIME_WAIT socket that may still be there.
#[inline(always)]
pub fn slot_live(slot: &TwSlot, now: u32) -> bool {
    slot.key != 0 && is_live(slot.closed, now)
}

/// Whether a slot (its key hash and close time) may take `key`: it holds the same key,
/// nothing, or an owner whose TIME_WAIT is over.
#[inline(always)]
pub fn fits(slot_key: u64, slot_closed: u32, key: u64, now: u32) -> bool {
    slot_key == 0 || slot_key == key || !is_live(slot_closed, now)
}

/// The way of the first set overwritten when both sets hold live owners only.
#[inline(always)]
pub fn evicted_way(key: u64) -> u32 {
    ((key >> 1) as u32) & (TW_OWNERS_WAYS - 1)
}

/// Bits of [`TwSlot::owner`] that index [`crate::TW_IDS_MAP`]; the rest check the identity.
const ID_INDEX_BITS: u32 = TW_IDS_CAPACITY.trailing_zeros();

/// Where an identity goes: its two slots, and the check a reference to it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdPlacement {
    pub a: u32,
    pub b: u32,
    pub check: u32,
}

/// The words of an identity, as [`id_placement`] hashes them and the kernel compares them:
/// `comm` as its two 8-byte halves (a byte loop here would compile to a `memcpy` call).
#[inline(always)]
pub fn id_words(
    pid: u32,
    tid: u32,
    start_ns: u64,
    cgroup: u64,
    comm: [u64; 2],
    how: u32,
) -> [u64; 6] {
    [
        u64::from(pid) | (u64::from(tid) << 32),
        start_ns,
        cgroup,
        comm[0],
        comm[1],
        u64::from(how),
    ]
}

/// The placement of an identity (its [`id_words`]).
#[inline(always)]
pub fn id_placement(words: &[u64; 6]) -> IdPlacement {
    let h = crate::setcache::hash(words);
    IdPlacement {
        a: h as u32 & (TW_IDS_CAPACITY - 1),
        b: (h >> 24) as u32 & (TW_IDS_CAPACITY - 1),
        check: (h >> (32 + ID_INDEX_BITS)) as u32,
    }
}

/// A [`TwSlot::owner`]: identity slot `index` holding the identity `check` comes from.
#[inline(always)]
pub fn id_ref(index: u32, check: u32) -> u32 {
    (index & (TW_IDS_CAPACITY - 1)) | (check << ID_INDEX_BITS)
}

/// The identity slot a [`TwSlot::owner`] names.
#[inline(always)]
pub fn id_index(owner: u32) -> u32 {
    owner & (TW_IDS_CAPACITY - 1)
}

/// Whether the identity read from the slot a [`TwSlot::owner`] names is the one it was stored
/// with (the slot may have been given to another since).
#[inline(always)]
pub fn id_matches(owner: u32, placement: &IdPlacement) -> bool {
    id_ref(id_index(owner), placement.check) == owner
}

/// Whether an identity slot may take another identity: empty, or named by no live slot.
#[inline(always)]
pub fn id_replaceable(id: &TwIdentity, now: u32) -> bool {
    id.pid == 0 || !is_live(id.named, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn u(ns: u64) -> u32 {
        units(ns)
    }

    #[test]
    fn a_slot_fits_when_it_is_the_keys_own_empty_or_stale() {
        let now = 1000 * S;
        assert!(fits(7, u(now - S), 7, u(now)));
        assert!(fits(0, 0, 7, u(now)));
        assert!(fits(9, u(now - 200 * S), 7, u(now)));
        assert!(!fits(9, u(now - S), 7, u(now)));
    }

    #[test]
    fn time_wait_is_live_for_its_60_s_and_the_timer_slack() {
        let now = 1000 * S;
        assert!(is_live(u(now - 60 * S), u(now)));
        assert!(is_live(u(now - 89 * S), u(now)));
        assert!(!is_live(u(now - 91 * S), u(now)));
        let slot = |key, closed| TwSlot {
            key,
            owner: 1,
            closed,
        };
        assert!(slot_live(&slot(5, u(now - S)), u(now)));
        assert!(!slot_live(&slot(0, u(now - S)), u(now)), "empty");
    }

    #[test]
    fn times_survive_the_32_bit_wrap() {
        // 60 days after boot the unit clock has wrapped once.
        let now = 60 * 86_400 * S;
        let closed = now - 30 * S;
        assert!(is_live(u(closed), u(now)));
        let back = ns_of(u(closed), now);
        assert!(
            back.abs_diff(closed) < 1 << CLOCK_SHIFT,
            "{back} vs {closed}"
        );
        assert_eq!(ns_of(u(now), now), now);
    }

    #[test]
    fn a_time_stored_a_tick_ahead_is_just_now_not_long_ago() {
        // Stored on another CPU whose reading ran 8 ms ahead of this one's.
        let now = 1000 * S;
        let ahead = u(now + 8_000_000);
        assert_eq!(elapsed(ahead, u(now)), 0);
        assert!(is_live(ahead, u(now)));
        assert!(!fits(9, ahead, 7, u(now)), "a live owner is not displaced");
        assert_eq!(ns_of(ahead, now), now);
        let mut id = TwIdentity {
            pid: 100,
            named: ahead,
            ..Default::default()
        };
        assert!(!id_replaceable(&id, u(now)));
        id.named = u(now - 100 * S);
        assert!(id_replaceable(&id, u(now)));
    }

    #[test]
    fn an_identity_reference_tells_a_replaced_identity() {
        let comm = [u64::from_ne_bytes(*b"nginx\0\0\0"), 0];
        let one = id_placement(&id_words(100, 101, 5 * S, 7, comm, 3));
        let two = id_placement(&id_words(200, 200, 6 * S, 7, comm, 3));
        assert!(one.a < TW_IDS_CAPACITY && one.b < TW_IDS_CAPACITY);
        let r = id_ref(one.a, one.check);
        assert_eq!(id_index(r), one.a);
        assert!(id_matches(r, &one));
        assert!(!id_matches(r, &two), "another identity in the same slot");
        let mut id = TwIdentity::default();
        assert!(id_replaceable(&id, u(100 * S)), "empty");
        id.pid = 100;
        id.named = u(50 * S);
        assert!(!id_replaceable(&id, u(100 * S)));
        assert!(id_replaceable(&id, u(200 * S)));
    }

    /// One client's consecutive local ports to one server (the bench's churn), placed as the
    /// kernel places them, first set whole then the second: none lost up to a quarter of the
    /// capacity live (32,768 connections; 17 lost at half).
    #[test]
    fn one_clients_ports_keep_their_owners_up_to_a_quarter_of_the_capacity() {
        let now = u(1000 * S);
        let mut slots = vec![TwSlot::default(); TW_OWNERS_CAPACITY as usize];
        let mut lost = 0;
        for i in 0..TW_OWNERS_CAPACITY / 4 {
            let (lport, rport) = (1024 + (i % 64_000) as u64, 8080 + u64::from(i / 64_000));
            let ports = 2 | (lport << 16) | (rport << 32);
            let p = placement(&[4026531840, ports, 0x0100_007f, 0, 0x0100_007f, 0]);
            assert!(p.a < TW_OWNERS_SETS && p.b < TW_OWNERS_SETS && p.key != 0);
            let order = (0..TW_OWNERS_WAYS)
                .map(|w| p.a * TW_OWNERS_WAYS + w)
                .chain((0..TW_OWNERS_WAYS).map(|w| p.b * TW_OWNERS_WAYS + w));
            let slot = order
                .clone()
                .find(|&i| {
                    let s = &slots[i as usize];
                    fits(s.key, s.closed, p.key, now)
                })
                .unwrap_or_else(|| {
                    lost += 1;
                    p.a * TW_OWNERS_WAYS + evicted_way(p.key)
                });
            slots[slot as usize] = TwSlot {
                key: p.key,
                owner: 1,
                closed: now - 1,
            };
        }
        assert_eq!(lost, 0, "owners lost at a quarter of the capacity live");
    }
}
