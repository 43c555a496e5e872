//! Storm control: past a per-cause rate, events are folded into one summary per cause and
//! port each second. Counts are never lost: the summary carries how many it stands for.
use std::collections::HashMap;

use rst_trace_common::event::Sampled;

use crate::{cause::Cause, diagnosis::Diagnosis};

pub struct Limiter {
    per_second: u64,
    window_start_ns: u64,
    emitted: HashMap<Cause, u64>,
    folded: HashMap<(Cause, u32, u16), Diagnosis>,
    pub suppressed: u64,
}

impl Limiter {
    pub fn new(per_second: u64) -> Self {
        Self {
            per_second,
            window_start_ns: 0,
            emitted: HashMap::new(),
            folded: HashMap::new(),
            suppressed: 0,
        }
    }

    /// Lets `d` through, or folds it into its cause's summary. Returns what to emit now.
    pub fn admit(&mut self, d: Diagnosis, now_ns: u64) -> Vec<Diagnosis> {
        let mut out = Vec::new();
        if now_ns.saturating_sub(self.window_start_ns) >= 1_000_000_000 {
            out.extend(self.flush());
            self.window_start_ns = now_ns;
        }
        let n = self.emitted.entry(d.cause).or_insert(0);
        if self.per_second == 0 || *n < self.per_second {
            *n += 1;
            out.push(d);
            return out;
        }
        self.suppressed += d.count;
        let port = d.endpoints.map_or(0, |e| e.local.port);
        self.folded
            .entry((d.cause, d.netns, port))
            .and_modify(|s| s.count += d.count)
            .or_insert(d);
        out
    }

    /// Emits the summaries of the current window.
    pub fn flush(&mut self) -> Vec<Diagnosis> {
        self.emitted.clear();
        self.folded
            .drain()
            .map(|(_, mut d)| {
                d.evidence.set_sampled(Sampled {
                    note: "storm: one summary stands for this many events".into(),
                    events: d.count,
                });
                d
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::cause::{Direction, Origin};

    fn d() -> Diagnosis {
        Diagnosis::new(
            SystemTime::UNIX_EPOCH,
            "rst_trace.reset_sent",
            Cause::NoListener,
            Direction::Sent,
            Origin::TcpStack,
            1,
        )
    }

    #[test]
    fn storms_are_folded_but_counted() {
        let mut l = Limiter::new(3);
        let mut out = Vec::new();
        for i in 0..10 {
            out.extend(l.admit(d(), i));
        }
        assert_eq!(out.len(), 3);
        let summary = l.flush();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].count, 7);
        let total: u64 = out.iter().chain(summary.iter()).map(|d| d.count).sum();
        assert_eq!(total, 10);
    }
}
