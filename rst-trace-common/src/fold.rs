//! Storms folded in the kernel. Past a per-CPU budget of records a second, the two kinds of
//! RST that make storms (a socket-less RST the stack sends, and an RST that refuses a
//! connect()) stop costing a record each: the program adds one to a count keyed by what the
//! agent needs to explain them ([`FoldKey`]), and the agent turns the counts into one summary
//! per key. The exact counters are bumped before this choice, so totals are unchanged.
//!
//! The agent arms the budget once a second ([`FoldBudget`], written for every CPU), so the
//! kernel needs no clock for it. Each arming opens a new epoch; counts are keyed by the epoch
//! their program read, and the agent takes (and deletes) only epochs closed a full second ago,
//! so no program can still be adding to an entry the agent removes.

/// Per-CPU [`FoldBudget`] (one slot): the agent's grant of records for the current second.
pub const FOLD_BUDGET_MAP: &str = "RST_FOLD_BUDGET";
/// Per-CPU hash [`FoldKey`] → events folded on that CPU.
pub const FOLDS_MAP: &str = "RST_FOLDS";
/// Capacity of [`FOLDS_MAP`]. When it is full a program sends the record as it would without
/// folding: a storm of keys (a spoofed-source flood) costs what it did, and stays exact.
pub const FOLDS_CAPACITY: u32 = 4096;

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
        assert_eq!(core::mem::size_of::<FoldBudget>(), 8);
    }
}
