//! Counting and delivery. Counters are bumped first, so a full ring buffer loses the record
//! but never the count; the loss itself is counted per record kind.
use crate::layout::lay;
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

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// A record's room in the ring: its 8-byte header, then the record rounded up to 8 bytes.
const fn ring_len(record_len: usize) -> u64 {
    (8 + ((record_len + 7) & !7)) as u64
}

/// Bytes this CPU has written into the ring buffer, for the wake-up rule of [`deliver`].
#[map(name = "RST_RING_WRITTEN")]
static RST_RING_WRITTEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether a record of `len` bytes written now carries this CPU's output across a multiple
/// of the wake-up mark (`ring_wake_shift` in the layout: 64 KiB on a few CPUs, less on many,
/// so that all of them just under their marks still leave most of the ring free). A per-CPU
/// sum: asking the ring how much is unread is one more helper call per record.
#[inline(always)]
fn crosses_wake_mark(len: u64) -> bool {
    let Some(written) = RST_RING_WRITTEN.get_ptr_mut(0) else {
        return true;
    };
    let shift = lay!(ring_wake_shift) & 63;
    // SAFETY: a per-CPU slot. A program that interrupts this one on the same CPU (softirq over
    // a syscall) between the read and the write has its bytes left out of the sum, which only
    // moves the next wake-up a record later.
    unsafe {
        let before = *written;
        let after = before.wrapping_add(len);
        *written = after;
        before >> shift != after >> shift
    }
}

/// Copies `record` into the ring buffer, or counts it as lost. A wakeup costs the sender more
/// than the record itself (an irq_work self-IPI, in a VM a trapped MSR write, then the
/// consumer's wake-up): the default wakes per record whenever the agent has caught up. So a
/// record wakes the agent only when it carries its CPU's output across a multiple of
/// the wake-up mark; otherwise the agent drains on its short timer (100 ms), and a burst
/// never waits for it longer than the ring takes to fill by that much.
#[inline(always)]
pub fn deliver<T: 'static>(kind: RecordKind, record: &T) {
    match RST_EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            unsafe { core::ptr::copy_nonoverlapping(record, entry.as_mut_ptr(), 1) };
            let wake = if crosses_wake_mark(ring_len(core::mem::size_of::<T>())) {
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
