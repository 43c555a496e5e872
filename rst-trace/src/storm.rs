//! Storm control: past a per-cause rate, events are folded into one summary per cause and
//! port each second. Counts are never lost: the summary carries how many it stands for.
use crate::fastmap::FastMap;

use rst_trace_common::event::Sampled;

use crate::{cause::Cause, diagnosis::Diagnosis, owner::Learned};

pub struct Limiter {
    per_second: u64,
    window_start_ns: u64,
    emitted: FastMap<Cause, u64>,
    folded: FastMap<(Cause, u32, u16), Diagnosis>,
    pub suppressed: u64,
}

impl Limiter {
    pub fn new(per_second: u64) -> Self {
        Self {
            per_second,
            window_start_ns: 0,
            emitted: FastMap::default(),
            folded: FastMap::default(),
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
            // A summary the kernel folded: its events had no line of their own either.
            if d.evidence.sampled().is_some() {
                self.suppressed += d.count;
            }
            out.push(d);
            return out;
        }
        self.suppressed += d.count;
        let port = service_port(&d);
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

/// TCP state of a socket whose connect() is waiting for the SYN-ACK.
const TCP_SYN_SENT: u32 = 2;

/// The port a storm is about: the server's. Keyed on the local port, a client-side storm
/// (connect() refused again and again) would give each ephemeral port its own summary, and
/// folding would fold nothing.
fn service_port(d: &Diagnosis) -> u16 {
    let Some(e) = d.endpoints else { return 0 };
    let client = d.tcp_state == Some(TCP_SYN_SENT)
        || d.owner
            .as_ref()
            .is_some_and(|o| o.learned == Learned::Connect);
    if client {
        e.remote.port
    } else {
        e.local.port
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::cause::{Direction, Origin};
    use crate::records::{Endpoint, Endpoints};

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

    #[test]
    fn a_summary_from_the_kernel_counts_as_suppressed_whether_folded_or_not() {
        let mut l = Limiter::new(1);
        let summary = || {
            let mut s = d();
            s.count = 500;
            s.evidence.set_sampled(Sampled {
                note: "folded in the kernel".into(),
                events: 500,
            });
            s
        };
        assert_eq!(
            l.admit(summary(), 0).len(),
            1,
            "within the rate: its own line"
        );
        assert_eq!(l.suppressed, 500);
        assert!(l.admit(summary(), 1).is_empty(), "past it: folded again");
        assert_eq!(l.suppressed, 1000);
        assert_eq!(l.flush()[0].count, 500);
    }

    #[test]
    fn refused_connects_fold_on_the_server_port() {
        let mut l = Limiter::new(1);
        let mut out = Vec::new();
        for i in 0..10u16 {
            let mut d = d();
            d.cause = Cause::ConnectionRefused;
            d.direction = Direction::Received;
            d.tcp_state = Some(TCP_SYN_SENT);
            d.endpoints = Some(Endpoints {
                local: Endpoint {
                    addr: std::net::Ipv4Addr::LOCALHOST.into(),
                    port: 40000 + i,
                },
                remote: Endpoint {
                    addr: std::net::Ipv4Addr::LOCALHOST.into(),
                    port: 9,
                },
            });
            out.extend(l.admit(d, u64::from(i)));
        }
        assert_eq!(out.len(), 1);
        let summary = l.flush();
        assert_eq!(summary.len(), 1, "one summary for port 9");
        assert_eq!(summary[0].count, 9);
    }
}
