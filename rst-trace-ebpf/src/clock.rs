//! The owner caches' clock (`rst_trace_common::tickclock`): CLOCK_MONOTONIC to within two
//! ticks and never ahead of it, for a load and a per-CPU slot instead of a clock read on every
//! connect(), accept() and close. Records keep the exact clock: their times order and pair
//! events.
use aya_ebpf::{helpers::generated, macros::map, maps::PerCpuArray};
use core::ptr::{read_volatile, write_volatile};
use rst_trace_common::tickclock;

/// This CPU's anchor: the clock read at a tick, and the tick's measured length (0 until
/// measured).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TickAnchor {
    /// Odd while a program writes the anchor. A program this one interrupted on the same CPU
    /// may have been writing it (a softirq over a syscall): an odd or changed sequence sends
    /// the reader to the exact clock, and it leaves the anchor alone.
    seq: u64,
    jiffies: u64,
    ktime_ns: u64,
    tick_ns: u64,
}

#[map(name = "RST_TICK_ANCHOR")]
static RST_TICK_ANCHOR: PerCpuArray<TickAnchor> = PerCpuArray::with_max_entries(1, 0);

/// Now, to within two ticks and never ahead of `bpf_ktime_get_ns()`. Until this CPU has
/// measured the tick (its first [`tickclock::MEASURE_TICKS`] ticks of use, 96 ms at
/// `HZ`=250), and whenever its anchor is old or being written, the exact clock.
#[inline(always)]
pub fn owner_now_ns() -> u64 {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { generated::bpf_jiffies64() };
    let Some(a) = RST_TICK_ANCHOR.get_ptr_mut(0) else {
        return unsafe { generated::bpf_ktime_get_ns() };
    };
    // SAFETY: a per-CPU slot; the sequence guards against a write this run interrupted.
    unsafe {
        let seq = read_volatile(&(*a).seq);
        let anchor_jiffies = read_volatile(&(*a).jiffies);
        let anchor_ns = read_volatile(&(*a).ktime_ns);
        let tick_ns = read_volatile(&(*a).tick_ns);
        let settled = seq & 1 == 0 && read_volatile(&(*a).seq) == seq;
        if settled {
            if let Some(t) = tickclock::from_anchor(anchor_jiffies, anchor_ns, tick_ns, jiffies) {
                return t;
            }
        }
        let now = generated::bpf_ktime_get_ns();
        if !settled {
            return now;
        }
        let Some(tick_ns) =
            tickclock::renewed_tick(anchor_jiffies, anchor_ns, tick_ns, jiffies, now)
        else {
            return now;
        };
        write_volatile(&mut (*a).seq, seq | 1);
        write_volatile(&mut (*a).jiffies, jiffies);
        write_volatile(&mut (*a).ktime_ns, now);
        write_volatile(&mut (*a).tick_ns, tick_ns);
        write_volatile(&mut (*a).seq, (seq | 1).wrapping_add(1));
        now
    }
}
