//! Counting and delivery. Counters are bumped first, so a full ring buffer loses the record
//! but never the count; the loss itself is counted per record kind.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use rst_trace_common::{counter_index, CounterFamily, RecordKind, COUNTERS_LEN, EVENTS_RING_BYTES};

#[map(name = "RST_EVENTS")]
static RST_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map(name = "RST_COUNTERS")]
static RST_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[inline(always)]
pub fn count(family: CounterFamily, slot: u32) {
    if let Some(c) = RST_COUNTERS.get_ptr_mut(counter_index(family, slot)) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *c += 1 };
    }
}

/// Unread bytes in the ring buffer past which a record wakes the agent at once.
const WAKE_AT_BYTES: u64 = 64 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Copies `record` into the ring buffer, or counts it as lost. A wakeup per record (the
/// default whenever the agent has caught up) costs the sender more than the record itself in
/// a storm; the agent drains on a short timer, and a filling buffer wakes it at once.
#[inline(always)]
pub fn deliver<T: 'static>(kind: RecordKind, record: &T) {
    match RST_EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            unsafe { core::ptr::copy_nonoverlapping(record, entry.as_mut_ptr(), 1) };
            let wake = if RST_EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKE_AT_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(wake);
        }
        None => {
            count(CounterFamily::Lost, kind as u32);
            crate::diag::record_lost(kind);
        }
    }
}
