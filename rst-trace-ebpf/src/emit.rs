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

/// Copies `record` into the ring buffer, or counts it as lost.
#[inline(always)]
pub fn deliver<T: 'static>(kind: RecordKind, record: &T) {
    match RST_EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            unsafe { core::ptr::copy_nonoverlapping(record, entry.as_mut_ptr(), 1) };
            entry.submit(0);
        }
        None => count(CounterFamily::Lost, kind as u32),
    }
}
