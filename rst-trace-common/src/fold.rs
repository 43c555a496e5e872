//! Storms folded in the kernel. Past a per-CPU budget of records a second, the two kinds of
//! RST that make storms (a socket-less RST the stack sends, and an RST that refuses a
//! connect()) stop costing a record each: the program adds one to a count keyed by what the
//! agent needs to explain them ([`FoldKey`]), and the agent turns the counts into one summary
//! per key. The exact counters are bumped before this choice, so totals are unchanged.
//!
//! The agent arms the budget once a second ([`FoldBudget`], written for every CPU), so the
//! kernel needs no clock for it. Each arming opens a new epoch; counts are kept per epoch their
//! program read, and the agent takes (and clears) only epochs closed a full second ago, so no
//! program can still be adding to a count the agent removes.
//!
//! The counts live in an array the agent maps ([`FoldSlot`]s): each CPU has its own region,
//! split in [`FOLD_PARTS`] partitions by epoch, and a key goes to one of [`FOLD_PROBES`]
//! slots of its partition chosen by a multiply-shift hash of its words. A kernel hash map
//! did the same job for twice the cost of each reset program (`jhash` over the 96-byte key and
//! its bucket walk: 55 ns of 120 per run, measured on 6.18).

/// Per-CPU [`FoldBudget`] (one slot): the agent's grant of records for the current second.
pub const FOLD_BUDGET_MAP: &str = "RST_FOLD_BUDGET";
/// Array of [`FoldSlot`]s, [`FOLD_CPU_SLOTS`] per possible CPU (the loader sizes it), mapped
/// by the agent.
pub const FOLDS_MAP: &str = "RST_FOLDS";
/// Epoch partitions of a CPU's region. A program writes the partition of the epoch it read
/// (the current one, or the one before when it read the budget just before an arming); the
/// agent clears the others' due slots before it arms the epoch that reuses them.
pub const FOLD_PARTS: u32 = 4;
/// Slots of one partition: how many keys one CPU folds in one second. A key that finds its
/// slots taken by others sends its record as it would without folding: a storm of keys (a
/// port scan, a spoofed-source flood) costs what it did, and stays exact.
pub const FOLD_SLOTS: u32 = 128;
/// Slots one key may take: its hash's, and the next.
pub const FOLD_PROBES: u32 = 2;
/// Slots of one CPU's region.
pub const FOLD_CPU_SLOTS: u32 = FOLD_PARTS * FOLD_SLOTS;
/// Bits of the hash that choose a slot (`FOLD_SLOTS` is their power of two).
const FOLD_SLOT_BITS: u32 = FOLD_SLOTS.trailing_zeros();

/// [`FoldKey::kind`]: an RST the stack sent with no socket (a segment for a closed port).
pub const FOLD_SENT_NO_SOCKET: u16 = 1;
/// [`FoldKey::kind`]: an RST that a socket in SYN_SENT received (a refused connect()).
pub const FOLD_REFUSED: u16 = 2;

/// What one CPU may still send this second. Written whole by the agent; a program only
/// decrements `records_left`, so it can never turn the epoch back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldBudget {
    /// 0 until the agent arms folding (and always when folding is off): nothing is folded.
    pub epoch: u32,
    pub records_left: u32,
}

/// What a folded RST is counted under: the fields its summary shows. The client's ephemeral
/// port is left out (every refused connect has its own), and so is everything a record reads
/// beyond the endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FoldKey {
    pub epoch: u32,
    pub netns: u32,
    /// One of `FOLD_*`.
    pub kind: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// The service's port: the local port of a sent RST, the remote port of a refusal.
    pub port: u16,
    pub _pad: u16,
    /// `enum sk_rst_reason` of a sent RST (or `REASON_NONE`); 0 for a refusal.
    pub reason: u32,
    /// The process that called connect() (a refusal); 0 for a sent RST.
    pub owner_pid: u32,
    /// The thread that called it.
    pub owner_tid: u32,
    pub _pad2: u32,
    /// Its `start_boottime`, which tells it from a later process with the same pid.
    pub owner_start_ns: u64,
    /// Its cgroup and name at connect(): a storm's client has often exited by the time the
    /// agent reads the count.
    pub owner_cgroup_id: u64,
    pub owner_comm: [u8; 16],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// One count in [`FOLDS_MAP`]: free while `key.epoch` is 0. A program takes a free slot by
/// writing the key (the epoch first) and a count of 1; the agent frees a due one by zeroing
/// everything else first and the epoch last, so a program never finds a free slot that is
/// still being cleared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldSlot {
    pub key: FoldKey,
    pub count: u64,
}

/// Odd multipliers, one per word of a [`FoldKey`] (from the golden ratio's, each rotated):
/// different words must not cancel out when they swap values (a connection and its reverse).
const MIX_KEYS: [u64; 12] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x85EB_CA77_C2B2_AE63,
    0x27D4_EB2F_1656_67C5,
    0xFF51_AFD7_ED55_8CCD,
    0xC4CE_B9FE_1A85_EC53,
    0x94D0_49BB_1331_11EB,
    0xBF58_476D_1CE4_E5B9,
    0x2545_F491_4F6C_DD1D,
    0xD6E8_FEB8_6659_FD93,
    0xA076_1D64_78BD_642F,
];

/// Adds word `i` of a key to its hash `acc`. Each word has its own multiplier and the
/// products are summed, so the twelve multiplications do not wait on each other (a chain of
/// multiply-then-xor did, about 50 cycles per key).
#[inline(always)]
pub fn mix(acc: u64, word: u64, i: usize) -> u64 {
    acc.wrapping_add(word.wrapping_mul(MIX_KEYS[i % MIX_KEYS.len()]))
}

/// The slot of a key's partition its hash `acc` points at. A product moves a word's bits
/// only upwards, so the top half is folded down and multiplied once more: a key that differs
/// only in a word's top bytes (an IPv6 address's last ones) still changes the slot.
#[inline(always)]
pub fn slot_of(acc: u64) -> u32 {
    ((acc ^ (acc >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FOLD_SLOT_BITS)) as u32
}

/// Index in [`FOLDS_MAP`] of probe `probe` for a key of `epoch` hashed to `slot` on `cpu`.
#[inline(always)]
pub fn slot_index(cpu: u32, epoch: u32, slot: u32, probe: u32) -> u32 {
    cpu.wrapping_mul(FOLD_CPU_SLOTS)
        .wrapping_add((epoch & (FOLD_PARTS - 1)) * FOLD_SLOTS)
        .wrapping_add(slot.wrapping_add(probe) & (FOLD_SLOTS - 1))
}

/// Whether a count of `key_epoch` may be taken when the agent's current epoch is `current`:
/// only epochs closed for a full arming period (two behind), or every epoch at the end
/// (`all`: the programs are about to go). Epochs wrap past 0 (after 136 years at one a
/// second), which [`next_epoch`] skips.
pub fn due(key_epoch: u32, current: u32, all: bool) -> bool {
    let mut behind = current.wrapping_sub(key_epoch);
    if key_epoch > current {
        behind = behind.wrapping_sub(1);
    }
    all || behind >= 2
}

/// The epoch after `e`: never 0, which means "not armed".
pub fn next_epoch(e: u32) -> u32 {
    match e.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_epochs_closed_a_full_period_ago_are_taken() {
        assert!(!due(10, 10, false), "the epoch programs use now");
        assert!(
            !due(9, 10, false),
            "closed just now: a program may still hold it"
        );
        assert!(due(8, 10, false));
        assert!(due(10, 10, true), "at the end everything");
        assert!(!due(u32::MAX, 1, false), "across the wrap, which skips 0");
        assert!(due(u32::MAX, 2, false));
    }

    #[test]
    fn the_epoch_never_becomes_unarmed() {
        assert_eq!(next_epoch(1), 2);
        assert_eq!(next_epoch(u32::MAX), 1);
    }

    #[test]
    fn the_key_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FoldKey>(), 96);
        assert_eq!(core::mem::size_of::<FoldSlot>(), 104);
        assert_eq!(core::mem::size_of::<FoldBudget>(), 8);
    }

    #[test]
    fn a_connection_and_its_reverse_hash_apart() {
        let hash = |a: u64, b: u64| {
            let mut acc = 0;
            for w in 0..12 {
                acc = mix(acc, [0, 0, 0, 0, 0, 0, 0, 0, a, 0, b, 0][w], w);
            }
            acc
        };
        assert_ne!(
            hash(0x0100_007f, 0x0200_007f),
            hash(0x0200_007f, 0x0100_007f)
        );
    }

    #[test]
    fn a_key_stays_in_its_cpu_and_epoch_partition() {
        for cpu in [0, 1, 7] {
            for epoch in [1, 2, 3, 4, 5, u32::MAX] {
                for slot in [0, 1, FOLD_SLOTS - 1] {
                    for probe in 0..FOLD_PROBES {
                        let i = slot_index(cpu, epoch, slot, probe);
                        assert_eq!(i / FOLD_CPU_SLOTS, cpu);
                        assert_eq!((i % FOLD_CPU_SLOTS) / FOLD_SLOTS, epoch % FOLD_PARTS);
                    }
                }
            }
        }
        assert_eq!(
            slot_index(0, 1, FOLD_SLOTS - 1, 1),
            FOLD_SLOTS,
            "the second probe wraps inside the partition"
        );
    }

    #[test]
    fn keys_that_differ_in_any_word_spread_over_the_slots() {
        // A storm's keys differ in one word (the port of a scan, the pid of a client pool):
        // each word alone must spread them.
        for word in 0..12 {
            for shift in [0, 16, 32, 48] {
                let mut seen = [0u32; FOLD_SLOTS as usize];
                for v in 0..(FOLD_SLOTS as u64 * 4) {
                    let mut acc = 0;
                    for w in 0..12 {
                        acc = mix(acc, if w == word { (v & 0xffff) << shift } else { 7 }, w);
                    }
                    seen[slot_of(acc) as usize] += 1;
                }
                let used = seen.iter().filter(|&&n| n > 0).count();
                assert!(
                    used > FOLD_SLOTS as usize / 2,
                    "word {word}, bits from {shift}: {used} slots of {FOLD_SLOTS} used"
                );
            }
        }
    }
}
