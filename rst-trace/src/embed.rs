//! What an in-process user of the agent adds to its run loop: the metrics endpoint
//! (`run --metrics-addr`) and the live view (`top`).
//!
//! The loop stays the one `rst-trace run` uses; an [`Embedding`] only adds taps that see every
//! diagnosis, a channel through which the loop answers requests for its totals, and a way to
//! end the run as SIGTERM does.
use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{cause::Cause, diagnosis::Diagnosis, loader::Loaded, stats::OwnerTables};

/// Sees what the agent finds, in the run loop itself: keep it cheap.
pub trait Tap {
    /// Every diagnosis, before storm folding: `count` is exact, none is left out.
    fn diagnosis(&mut self, d: &Diagnosis);
    /// Every hook is attached: the `rst_trace.started` line.
    fn started(&mut self, _started: &Value) {}
}

/// What does not change while the agent runs.
#[derive(Debug, Clone, Default)]
pub struct AgentInfo {
    pub version: &'static str,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// Every hook the agent tried (by program name, sorted), and whether it is attached.
    pub hooks: Vec<(&'static str, bool)>,
}

impl AgentInfo {
    pub fn from_loaded(loaded: &Loaded) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            // One entry per program name (attached if any of its attachments is): a metric
            // series per hook must not repeat.
            hooks: loaded
                .hooks
                .iter()
                .fold(BTreeMap::new(), |mut m, h| {
                    *m.entry(h.program).or_insert(false) |= h.is_attached();
                    m
                })
                .into_iter()
                .collect(),
        }
    }
}

/// The agent's totals at one moment: the figures of an `rst_trace.stats` line.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per cause, exactly as the stats line computes them (kernel counters where they decide).
    pub causes: BTreeMap<Cause, u64>,
    pub delivered: u64,
    pub lost: u64,
    pub undecodable: u64,
    /// Events folded into storm summaries (the stats line's `records.suppressed`).
    pub folded: u64,
    /// RSTs the TCP stack sent (what Tcp.OutRsts counts), and those netfilter REJECT rules
    /// sent (the stats line's `resets_sent`).
    pub resets_sent_tcp_stack: u64,
    pub resets_sent_netfilter: u64,
    pub owners: OwnerTables,
    /// Every bounded table's occupancy (the stats line's `tables`).
    pub tables: Vec<crate::occupancy::TableFigure>,
    /// Runs of each loaded program the kernel skipped (see [`crate::skipped_runs`]).
    pub skipped_runs: BTreeMap<String, u64>,
    pub info: Arc<AgentInfo>,
}

/// A request for a [`Snapshot`]; the run loop answers it between two ring buffer reads.
#[derive(Debug)]
pub struct SnapshotRequest(oneshot::Sender<Snapshot>);

impl SnapshotRequest {
    pub fn new() -> (Self, oneshot::Receiver<Snapshot>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }

    pub fn answer(self, s: Snapshot) {
        // The asker may have given up (client gone, timeout): nothing to do then.
        let _ = self.0.send(s);
    }
}

/// What `run` is given besides its command line.
pub struct Embedding {
    /// Events, the started line and stats lines are written as lines (JSON or text). `top` turns
    /// this off: it owns the terminal.
    pub lines: bool,
    pub taps: Vec<Box<dyn Tap>>,
    /// Requests for totals (metrics scrapes).
    pub snapshots: Option<mpsc::Receiver<SnapshotRequest>>,
    /// Ends the run like SIGTERM when a value arrives or the sender is dropped.
    pub stop: Option<oneshot::Receiver<()>>,
    pub info: Arc<AgentInfo>,
}

impl Default for Embedding {
    /// Plain `rst-trace run`: lines and nothing else.
    fn default() -> Self {
        Self {
            lines: true,
            taps: Vec::new(),
            snapshots: None,
            stop: None,
            info: Arc::default(),
        }
    }
}

impl Embedding {
    pub fn observe(&mut self, d: &Diagnosis) {
        for t in &mut self.taps {
            t.diagnosis(d);
        }
    }

    pub fn started(&mut self, started: &Value) {
        for t in &mut self.taps {
            t.started(started);
        }
    }

    /// The next request for totals; never resolves without a channel or once it is closed.
    pub async fn next_request(
        snapshots: &mut Option<mpsc::Receiver<SnapshotRequest>>,
    ) -> SnapshotRequest {
        match snapshots {
            Some(rx) => match rx.recv().await {
                Some(r) => r,
                None => {
                    *snapshots = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }

    /// Resolves when the embedder asks the run to end.
    pub async fn stopped(stop: &mut Option<oneshot::Receiver<()>>) {
        match stop {
            // A dropped sender is a request too: whoever could have asked is gone.
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }
}
