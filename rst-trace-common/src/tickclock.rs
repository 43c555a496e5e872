//! The arithmetic of the owner caches' clock: `bpf_ktime_get_ns()` read once in a while, and
//! in between the kernel's tick count (`bpf_jiffies64()`, which the verifier turns into one
//! load) times the tick's length. Shared by the kernel programs that keep it and by tests.
//!
//! Why: on a guest the clock read costs tens of ns, and every healthy connection read it at
//! its connect() or accept() and again at its close, only to stamp owner entries whose times are
//! compared in tens of milliseconds at the finest (the close grace, `ownercache`). The coarse
//! clock `bpf_ktime_get_coarse_ns` is refused to tracing programs.
//!
//! What it gives: CLOCK_MONOTONIC to within two ticks, never ahead of it. The kernel advances
//! jiffies by whole ticks of CLOCK_MONOTONIC, so `ktime` at an anchor tick plus the ticks
//! since, less one, is at or before the true time: the anchor's `ktime` lies within its tick,
//! and the current tick has begun. The tick's length is not exported to programs; it is
//! measured against the clock, once per CPU, and taken only when it is the tick of a `HZ`
//! the kernel can be built with.

/// Ticks between the anchor and a reading before they measure the tick's length: the
/// measure is off by less than one tick in `ticks - 1` (the anchor and the reading each lie
/// somewhere within their ticks), so at 24 it tells the `HZ` values apart.
pub const MEASURE_TICKS: u64 = 24;

/// Ticks an anchor serves before the clock is read again, and the anchor's prediction checked
/// against it (65 s at `HZ`=250).
pub const ANCHOR_TICKS: u64 = 1 << 14;

/// `HZ` values x86-64 and arm64 kernels are built with, the architectures rst-trace runs on:
/// 20 % apart at the closest.
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The tick's length in ns (the kernel's `TICK_NSEC`) of the `HZ` that `ticks` ticks in
/// `elapsed_ns` measure, when exactly one of [`KNOWN_HZ`] lies within twice the measure's
/// error of it.
#[inline(always)]
pub fn tick_ns_of(elapsed_ns: u64, ticks: u64) -> Option<u64> {
    if elapsed_ns == 0 || !(MEASURE_TICKS..=u64::MAX / NSEC_PER_SEC).contains(&ticks) {
        return None;
    }
    // Checked divisions: a panic path in a kernel program is a call the verifier refuses.
    let hz = (ticks * NSEC_PER_SEC).checked_div(elapsed_ns)?;
    let (mut found, mut matches) = (0, 0);
    let mut i = 0;
    while i < KNOWN_HZ.len() {
        let known = KNOWN_HZ[i];
        if hz.abs_diff(known) * ticks <= 2 * known {
            found = known;
            matches += 1;
        }
        i += 1;
    }
    if matches != 1 {
        return None;
    }
    (NSEC_PER_SEC + found / 2).checked_div(found)
}

/// Whether an anchor's prediction for now (`predicted_ns`) agrees with the clock (`now_ns`):
/// it may not be ahead, nor more than two ticks behind. A tick measured wrong, or jiffies that
/// stopped, fail this, and the tick is measured again.
#[inline(always)]
fn prediction_holds(predicted_ns: u64, now_ns: u64, tick_ns: u64) -> bool {
    predicted_ns <= now_ns && now_ns - predicted_ns <= 2 * tick_ns
}

/// What an anchor (`anchor_ktime_ns` read at tick `anchor_jiffies`) predicts for tick
/// `jiffies`: its reading plus the ticks since, less one.
#[inline(always)]
fn predict(anchor_jiffies: u64, anchor_ktime_ns: u64, tick_ns: u64, jiffies: u64) -> u64 {
    let ticks = jiffies.wrapping_sub(anchor_jiffies);
    anchor_ktime_ns
        .wrapping_add(ticks.wrapping_mul(tick_ns))
        .saturating_sub(tick_ns)
}

/// The time at tick `jiffies` from an anchor, or `None` when the anchor has no tick yet, is
/// too old, or is ahead (another program renewed it meanwhile).
#[inline(always)]
pub fn from_anchor(
    anchor_jiffies: u64,
    anchor_ktime_ns: u64,
    tick_ns: u64,
    jiffies: u64,
) -> Option<u64> {
    let ticks = jiffies.checked_sub(anchor_jiffies)?;
    (tick_ns != 0 && ticks < ANCHOR_TICKS)
        .then(|| predict(anchor_jiffies, anchor_ktime_ns, tick_ns, jiffies))
}

/// For an anchor that could not serve, and a reading of the exact clock (`now_ns` at tick
/// `jiffies`): the tick's length to renew the anchor with at this reading (0: not measured),
/// or `None` to keep the anchor as it is, while its baseline grows long enough to measure on.
#[inline(always)]
pub fn renewed_tick(
    anchor_jiffies: u64,
    anchor_ktime_ns: u64,
    tick_ns: u64,
    jiffies: u64,
    now_ns: u64,
) -> Option<u64> {
    if tick_ns != 0 {
        // The anchor has served its span: its tick is kept if what it predicts for now is
        // what the clock says.
        let predicted = predict(anchor_jiffies, anchor_ktime_ns, tick_ns, jiffies);
        return Some(if prediction_holds(predicted, now_ns, tick_ns) {
            tick_ns
        } else {
            0
        });
    }
    if anchor_jiffies == 0 {
        return Some(0);
    }
    let ticks = jiffies.wrapping_sub(anchor_jiffies);
    match tick_ns_of(now_ns.saturating_sub(anchor_ktime_ns), ticks) {
        Some(t) => Some(t),
        None if ticks < ANCHOR_TICKS => None,
        None => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_measured_to_a_known_hz() {
        // The shortest baseline, the anchor late in its tick and the reading early in its,
        // and the other way round, for each HZ.
        for hz in KNOWN_HZ {
            let tick = (NSEC_PER_SEC + hz / 2) / hz;
            let n = MEASURE_TICKS;
            for elapsed in [(n - 1) * tick + 1, n * tick, (n + 1) * tick - 1] {
                assert_eq!(tick_ns_of(elapsed, n), Some(tick), "HZ={hz} {elapsed}");
            }
        }
        assert_eq!(tick_ns_of(300 * 3_333_333, 300), Some(3_333_333));
        assert_eq!(tick_ns_of(10 * 4_000_000, 10), None, "too short a baseline");
        assert_eq!(tick_ns_of(256 * 7_000_000, 256), None, "no such HZ");
        assert_eq!(tick_ns_of(0, 256), None);
    }

    #[test]
    fn never_ahead_of_the_clock_and_at_most_two_ticks_behind() {
        let tick = 4_000_000;
        // Tick n begins at n * tick (any fixed offset shifts both clocks alike).
        for anchor_in_tick in [0, 1, tick / 2, tick - 1] {
            let (j0, k0) = (1_000, 1_000 * tick + anchor_in_tick);
            for j in [j0, j0 + 1, j0 + 17, j0 + ANCHOR_TICKS - 1] {
                for now_in_tick in [0, tick / 3, tick - 1] {
                    let now = j * tick + now_in_tick;
                    if now < k0 {
                        continue;
                    }
                    let t = from_anchor(j0, k0, tick, j).expect("a fresh anchor serves");
                    assert!(t <= now, "{t} ahead of {now}");
                    assert!(now - t < 2 * tick, "{t} too far behind {now}");
                }
            }
        }
    }

    #[test]
    fn a_prediction_is_checked_against_the_clock() {
        let tick = 4_000_000;
        assert!(prediction_holds(100, 100, tick));
        assert!(prediction_holds(100, 100 + 2 * tick, tick));
        assert!(!prediction_holds(101, 100, tick), "ahead");
        assert!(
            !prediction_holds(100, 101 + 2 * tick, tick),
            "too far behind"
        );
    }

    #[test]
    fn an_anchor_is_measured_then_renewed_or_sent_back_to_measuring() {
        let tick = 4_000_000;
        let (j0, k0) = (1_000, 1_000 * tick + 1);
        assert_eq!(renewed_tick(0, 0, 0, j0, k0), Some(0), "the first anchor");
        let j = j0 + MEASURE_TICKS - 1;
        assert_eq!(
            renewed_tick(j0, k0, 0, j, j * tick),
            None,
            "kept while the baseline is short"
        );
        let j = j0 + MEASURE_TICKS;
        assert_eq!(renewed_tick(j0, k0, 0, j, j * tick + 5), Some(tick));
        let j = j0 + ANCHOR_TICKS;
        assert_eq!(
            renewed_tick(j0, k0, 0, j, 3 * j * tick),
            Some(0),
            "no such HZ: start over"
        );
        assert_eq!(
            renewed_tick(j0, k0, tick, j, j * tick + 7),
            Some(tick),
            "served its span, prediction held"
        );
        // A tick measured as HZ=250 on a 256 Hz kernel drifts out within an anchor's span.
        let true_tick = 3_906_250;
        assert_eq!(
            renewed_tick(j0, j0 * true_tick, tick, j, j * true_tick),
            Some(0)
        );
    }

    #[test]
    fn stale_or_unmeasured_anchors_do_not_serve() {
        assert_eq!(from_anchor(10, 40, 0, 11), None);
        assert_eq!(from_anchor(10, 40, 4, 10 + ANCHOR_TICKS), None);
        assert_eq!(from_anchor(10, 40, 4, 9), None);
    }
}
