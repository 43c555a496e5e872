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

/// The agent is woken each time this many more unread bytes have piled up.
const WAKE_EVERY_BYTES: u64 = 64 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// A record's room in the ring: its 8-byte header, then the record rounded up to 8 bytes.
const fn ring_len(record_len: usize) -> u64 {
    (8 + ((record_len + 7) & !7)) as u64
}

/// Copies `record` into the ring buffer, or counts it as lost. A wakeup costs the sender more
/// than the record itself (an irq_work self-IPI, in a VM a trapped MSR write, then the
/// consumer's wake-up): the default wakes per record whenever the agent has caught up, and a
/// wakeup on every record past a fill level costs a few microseconds per record exactly when
/// the agent lags. So a record wakes the agent only when it is the one that carries the unread
/// bytes across a multiple of [`WAKE_EVERY_BYTES`]; otherwise the agent drains on its short
/// timer. Two CPUs reserving at once may both miss a crossing: the next one wakes.
#[inline(always)]
pub fn deliver<T: 'static>(kind: RecordKind, record: &T) {
    match RST_EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            unsafe { core::ptr::copy_nonoverlapping(record, entry.as_mut_ptr(), 1) };
            // Counts this record, reserved but not yet submitted.
            let unread = RST_EVENTS.query(BPF_RB_AVAIL_DATA);
            let wake = if unread % WAKE_EVERY_BYTES < ring_len(core::mem::size_of::<T>())
                && unread >= WAKE_EVERY_BYTES
            {
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
