//! Time for the data path. Correlators never read a clock: the dispatcher asks a [`Clock`]
//! once per step and passes `now` down, so tests drive every window with a fake clock.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns()` reads, so kernel record
/// timestamps and `now` compare directly.
pub trait Clock: Send {
    fn now_ns(&self) -> u64;
}

/// The host's CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic;

impl Clock for Monotonic {
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Clone, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    pub fn at(ns: u64) -> Self {
        Self(Arc::new(AtomicU64::new(ns)))
    }

    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Turns kernel monotonic timestamps into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// Wall-clock time at monotonic zero.
    boot: SystemTime,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        Self {
            boot: SystemTime::now() - Duration::from_nanos(mono),
        }
    }

    pub fn fixed(boot: SystemTime) -> Self {
        Self { boot }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(ktime_ns)
    }
}
