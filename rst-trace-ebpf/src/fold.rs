//! Storms folded in the kernel (see `rst_trace_common::fold`): past this CPU's budget for the
//! second, a socket-less sent RST or a refused connect() adds one to a count instead of
//! sending a record. The caller has already bumped the exact counters.
use aya_ebpf::{
    helpers::generated,
    macros::map,
    maps::{Array, PerCpuArray},
};
use rst_trace_common::{
    fold::{
        mix, slot_index, slot_of, FoldBudget, FoldKey, FoldSlot, FOLD_CPU_SLOTS, FOLD_PROBES,
        FOLD_REFUSED, FOLD_SENT_NO_SOCKET,
    },
    CounterFamily, OwnerInfo, Tuple, TABLE_FOLDS_FULL,
};

use crate::{
    emit::count,
    mem::{copy, same, word},
};

/// The agent maps the counts to take and clear them without a syscall per slot.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "RST_FOLD_BUDGET")]
static RST_FOLD_BUDGET: PerCpuArray<FoldBudget> = PerCpuArray::with_max_entries(1, 0);

/// One CPU's region here; the loader gives the map one per possible CPU.
#[map(name = "RST_FOLDS")]
static RST_FOLDS: Array<FoldSlot> = Array::with_max_entries(FOLD_CPU_SLOTS, BPF_F_MMAPABLE);

/// The epoch to fold under, or `None` when the record is to be sent: folding is not armed, or
/// this CPU has budget left this second (one record of it is taken).
#[inline(always)]
fn fold_epoch() -> Option<u32> {
    let b = RST_FOLD_BUDGET.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot. The agent rewrites it whole once a second; a program between
    // its read and its write can only leave one record more or less in the budget.
    unsafe {
        let epoch = core::ptr::read_volatile(&(*b).epoch);
        if epoch == 0 {
            return None;
        }
        let left = (*b).records_left;
        if left > 0 {
            (*b).records_left = left - 1;
            return None;
        }
        Some(epoch)
    }
}

/// Adds one to `key`'s count on this CPU. False when its slots hold other keys: the record
/// is sent instead.
#[inline(always)]
fn add(key: &FoldKey) -> bool {
    let mut acc = 0;
    let mut i = 0;
    while i < 12 {
        acc = mix(acc, word(key, i), i);
        i += 1;
    }
    let slot = slot_of(acc);
    // SAFETY: no arguments; the CPU cannot change under a tracing program.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() };
    let mut probe = 0;
    while probe < FOLD_PROBES {
        let Some(s) = RST_FOLDS.get_ptr_mut(slot_index(cpu, key.epoch, slot, probe)) else {
            break;
        };
        // SAFETY: a slot of this CPU's region: only programs on this CPU write it, and the
        // agent only clears slots of due epochs, which no program writes (see FoldSlot). A
        // reset program nested in another on this CPU (a softirq's over a process context's)
        // is of the other kind, so never at the same key: it may see a key half written,
        // which differs from its own, and goes on.
        let s = unsafe { &mut *s };
        let epoch = unsafe { core::ptr::read_volatile(&s.key.epoch) };
        if epoch == 0 {
            // Word by word, the epoch's first: the slot is taken from the first store.
            copy(&mut s.key, key);
            s.count = 1;
            return true;
        }
        if epoch == key.epoch && same(&s.key, key) {
            s.count += 1;
            return true;
        }
        probe += 1;
    }
    count(CounterFamily::Table, TABLE_FOLDS_FULL);
    false
}

/// Fills `k` (whatever it held) with a key of every byte zero but the endpoints, the epoch
/// and the namespace, in place and word by word: a struct literal with zeroed arrays, or a key
/// returned by value, becomes byte-at-a-time `memset` loops (hundreds of instructions).
#[inline(always)]
fn fill_key(k: &mut FoldKey, epoch: u32, netns: u32, kind: u16, port: u16, t: &Tuple) {
    crate::mem::zero(k);
    k.epoch = epoch;
    k.netns = netns;
    k.kind = kind;
    k.family = t.family;
    k.port = port;
    k.local_addr = t.local_addr;
    k.remote_addr = t.remote_addr;
}

/// Whether a socket-less RST the stack sent (endpoints `t`, local first) was folded.
#[inline(always)]
pub fn sent_folded(netns: u32, t: &Tuple, reason: u32) -> bool {
    let Some(epoch) = fold_epoch() else {
        return false;
    };
    let mut k = core::mem::MaybeUninit::<FoldKey>::uninit();
    // SAFETY: plain integers and byte arrays, valid for any bits; `fill_key` writes all of it.
    let k = unsafe { &mut *k.as_mut_ptr() };
    fill_key(k, epoch, netns, FOLD_SENT_NO_SOCKET, t.local_port, t);
    k.reason = reason;
    add(k)
}

/// Whether an RST that refused `owner`'s connect() (endpoints `t`) was folded. Without a
/// known owner the record goes: the agent may still find one (a socket older than it).
#[inline(always)]
pub fn refusal_folded(netns: u32, t: &Tuple, owner: &OwnerInfo) -> bool {
    if owner.pid == 0 {
        return false;
    }
    let Some(epoch) = fold_epoch() else {
        return false;
    };
    let mut k = core::mem::MaybeUninit::<FoldKey>::uninit();
    // SAFETY: as above.
    let k = unsafe { &mut *k.as_mut_ptr() };
    fill_key(k, epoch, netns, FOLD_REFUSED, t.remote_port, t);
    k.owner_pid = owner.pid;
    k.owner_tid = owner.tid;
    k.owner_start_ns = owner.start_boottime_ns;
    k.owner_cgroup_id = owner.cgroup_id;
    k.owner_comm = owner.comm;
    add(k)
}
