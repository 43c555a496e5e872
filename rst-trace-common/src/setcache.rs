//! The hash the kernel's set-associative caches share, and the placement of the owner cache
//! ([`crate::ownercache`]): a key hashes to two sets and a check, each set starts with its
//! slots' [`crate::SlotTag`]s, and slots are tried in one fixed order, the ways of the two sets
//! interleaved (`a[0] b[0] a[1] b[1] …`), by the store that takes the first slot that fits and
//! by the look-up alike, so a look-up meets a key's newest slot first. (The TIME_WAIT cache,
//! [`crate::twcache`], takes the same hash but keeps a set in one cache line and tries it
//! whole first: see there.)
//!
//! Interleaving fills the two sets evenly without comparing them (the verifier follows every
//! outcome of a comparison between slots, which multiplied its paths and the agent's start-up
//! time): with 8 ways, random keys first miss a slot at 3/4 of the capacity, where trying all
//! of the first set before the second missed 16 of 65,536 at half and 490 at 70 %.
//!
//! Both caches are arrays rather than hash maps because they are written on the path of every
//! healthy connection: an array slot costs no bucket lock, no free-list allocation and no
//! helper call (the verifier inlines array look-ups), where a hash insert and its delete took
//! 43 % of the state-change program's samples in an RST storm.

/// Where a key goes: its two sets, and the check its slot's tag carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub a: u32,
    pub b: u32,
    /// Never 0, which marks a slot never used (or emptied).
    pub check: u32,
}

/// The placement of a key (its 8-byte words) among `sets` sets (a power of two), from
/// different bits of one hash. Keys that differ in a few low bits (one client's consecutive
/// ports, slab addresses a fixed stride apart) spread out: every word is multiplied through
/// before the next is mixed in.
#[inline(always)]
pub fn place<const N: usize>(words: &[u64; N], sets: u32) -> Placement {
    let h = hash(words);
    Placement {
        a: (h >> 8) as u32 & (sets - 1),
        b: (h >> 36) as u32 & (sets - 1),
        check: h as u32 | 1,
    }
}

/// The hash [`place`] takes its bits from.
#[inline(always)]
pub fn hash<const N: usize>(words: &[u64; N]) -> u64 {
    let mut h: u64 = 0;
    let mut i = 0;
    while i < N {
        h = (h ^ words[i]).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
        i += 1;
    }
    h
}

/// The slots a key may take, in the order stores and look-ups try them: `(set, way)`.
#[cfg(test)]
pub(crate) fn probe_order(p: Placement, ways: u32) -> impl Iterator<Item = (u32, u32)> {
    (0..ways).flat_map(move |way| [(p.a, way), (p.b, way)])
}
