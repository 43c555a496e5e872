//! Hash tables for the per-record paths. std's SipHash is built to resist hash flooding at a
//! cost paid on every look-up; foldhash keeps a per-process random seed (enough against keys an
//! attacker can shape, such as spoofed 4-tuples) for much less work per key. In a profile of an
//! RST storm, hashing in the RST linker, the storm limiter and the owner caches was about a
//! fifth of the agent's CPU with SipHash.

/// A `HashMap` with foldhash's seeded hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
