//! From samples to figures: medians over rounds, per-round ratios, per-event costs. Pure
//! arithmetic, no I/O, so it is unit-tested.
//!
//! Ratios are taken round by round (variant / untraced of the same round) and their median
//! reported: rounds are interleaved, so the two runs of a round saw the same machine, while
//! the machine itself may be slower in one round than in another.

use std::collections::BTreeMap;

use super::tracer::Variant;
use super::workload::{Sample, Workload};

pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    Some(if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    })
}

/// Medians of one workload under one variant.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub rounds: usize,
    /// Events per second, each round, in round order.
    pub rates: Vec<f64>,
    pub rate: Option<f64>,
    /// Median of this round's rate / the untraced rate of the same round.
    pub vs_untraced: Option<f64>,
    /// Median of this round's rate / tcpdump's rate of the same round.
    pub vs_tcpdump: Option<f64>,
    pub tracer_cpu_s: Option<f64>,
    /// Tracer CPU over the window, in % of one core.
    pub tracer_cpu_pct: Option<f64>,
    pub tracer_cpu_us_per_event: Option<f64>,
    /// Whole-host busy CPU over the window, in % of one core.
    pub host_cpu_pct: Option<f64>,
    pub startup_s: Option<f64>,
    pub startups: Vec<f64>,
    pub startup_cpu_s: Option<f64>,
    /// Highest of the rounds.
    pub rss_start_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub delivered: Option<f64>,
    pub delivered_per_event: Option<f64>,
    pub lost: Option<f64>,
    /// Signal to exit, of the rounds where it stopped in time.
    pub stop_s: Option<f64>,
    /// Rounds where it did not stop in time and was killed.
    pub stops_killed: usize,
}

pub type Key = (Workload, Variant);

pub fn cells(samples: &[Sample]) -> BTreeMap<Key, Cell> {
    let mut groups: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups.entry((s.workload, s.variant)).or_default().push(s);
    }
    let rate_in = |w: Workload, v: Variant, round: usize| {
        samples
            .iter()
            .find(|s| s.workload == w && s.variant == v && s.round == round)
            .and_then(Sample::rate)
    };
    let mut out = BTreeMap::new();
    for (&(w, v), runs) in &groups {
        let ratio_to = |base: Variant| {
            median(
                runs.iter()
                    .filter_map(|s| Some(s.rate()? / rate_in(w, base, s.round)?))
                    .collect(),
            )
        };
        let med =
            |f: &dyn Fn(&Sample) -> Option<f64>| median(runs.iter().filter_map(|s| f(s)).collect());
        let max = |f: &dyn Fn(&Sample) -> Option<u64>| runs.iter().filter_map(|s| f(s)).max();
        let cell = Cell {
            rounds: runs.len(),
            rates: runs.iter().filter_map(|s| s.rate()).collect(),
            rate: med(&|s| s.rate()),
            vs_untraced: (v != Variant::Untraced)
                .then(|| ratio_to(Variant::Untraced))
                .flatten(),
            vs_tcpdump: (v != Variant::Tcpdump)
                .then(|| ratio_to(Variant::Tcpdump))
                .flatten(),
            tracer_cpu_s: med(&|s| s.tracer_cpu_s),
            tracer_cpu_pct: med(&|s| {
                Some(100.0 * s.tracer_cpu_s? / s.window_s).filter(|_| s.window_s > 0.0)
            }),
            tracer_cpu_us_per_event: med(&|s| {
                Some(1e6 * s.tracer_cpu_s? / s.events as f64).filter(|_| s.events > 0)
            }),
            host_cpu_pct: med(&|s| {
                Some(100.0 * s.host_busy_s? / s.window_s).filter(|_| s.window_s > 0.0)
            }),
            startup_s: med(&|s| s.startup_s),
            startups: runs.iter().filter_map(|s| s.startup_s).collect(),
            startup_cpu_s: med(&|s| s.startup_cpu_s),
            rss_start_kib: max(&|s| s.rss_start_kib),
            hwm_kib: max(&|s| s.hwm_kib),
            delivered: med(&|s| Some(s.finished.as_ref()?.delivered? as f64)),
            delivered_per_event: med(&|s| {
                let delivered = s.finished.as_ref()?.delivered?;
                (s.events > 0).then(|| delivered as f64 / s.events as f64)
            }),
            lost: med(&|s| Some(s.finished.as_ref()?.lost? as f64)),
            stop_s: med(&|s| s.finished.as_ref()?.stop_s),
            stops_killed: runs
                .iter()
                .filter(|s| s.finished.as_ref().is_some_and(|f| f.stop_s.is_none()))
                .count(),
        };
        out.insert((w, v), cell);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(v: Variant, round: usize, events: u64, secs: f64) -> Sample {
        let mut s = Sample::new(
            Workload::Churn {
                connections: events,
            },
            v,
            round,
        );
        s.events = events;
        s.window_s = secs;
        s
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios_are_taken_within_a_round() {
        // Round 2 ran on a machine twice as slow: the per-round ratio is still 0.5.
        let samples = [
            sample(Variant::Untraced, 1, 1000, 1.0),
            sample(Variant::RstTrace, 1, 1000, 2.0),
            sample(Variant::Untraced, 2, 1000, 2.0),
            sample(Variant::RstTrace, 2, 1000, 4.0),
            sample(Variant::Untraced, 3, 1000, 1.0),
            sample(Variant::RstTrace, 3, 1000, 2.0),
        ];
        let cells = cells(&samples);
        let traced = &cells[&(Workload::Churn { connections: 1000 }, Variant::RstTrace)];
        assert_eq!(traced.vs_untraced, Some(0.5));
        assert_eq!(traced.rate, Some(500.0));
        assert_eq!(traced.rates.len(), 3);
        let untraced = &cells[&(Workload::Churn { connections: 1000 }, Variant::Untraced)];
        assert_eq!(untraced.vs_untraced, None);
    }
}
