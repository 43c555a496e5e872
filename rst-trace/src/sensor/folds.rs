//! The counts the kernel folded in a storm (see `rst_trace_common::fold`): the budget armed
//! for every CPU once a second, and the counts of closed epochs taken out of the map. What
//! they mean is the pipeline's business ([`crate::pipeline::Pipeline::folded`]).
use std::collections::BTreeMap;

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use rst_trace_common::{
    fold::{
        due, next_epoch, FoldBudget, FoldKey, FOLDS_CAPACITY, FOLD_REFUSED, FOLD_SENT_NO_SOCKET,
    },
    tcp::TCP_SYN_SENT,
    OwnerInfo, RecordHeader, RecordKind, ResetReceivedRecord, ResetSentRecord, Tuple,
    OWNER_CONNECT, RECORD_VERSION,
};

use super::records::Record;
use crate::occupancy::TableFigure;

/// Epoch start times kept for the summaries' timestamps; older epochs are due long before.
const EPOCH_TIMES_KEPT: usize = 8;

pub struct KernelFolds {
    budget: PerCpuArray<MapData, FoldBudget>,
    counts: PerCpuHashMap<MapData, FoldKey, u64>,
    cpus: usize,
    records_per_cpu: u32,
    epoch: u32,
    /// When each recent epoch was armed (CLOCK_MONOTONIC ns).
    armed_at: BTreeMap<u32, u64>,
    /// Keys taken at the last take: about a second's worth.
    last_keys: usize,
}

/// Folded events of one key: `count` of them, from the epoch armed at `at_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    pub key: FoldKey,
    pub count: u64,
    pub at_ns: u64,
}

impl KernelFolds {
    /// Each of the `cpus` possible CPUs may send `records_per_cpu` records a second of the
    /// kinds that fold.
    pub fn new(
        budget: PerCpuArray<MapData, FoldBudget>,
        counts: PerCpuHashMap<MapData, FoldKey, u64>,
        records_per_cpu: u32,
        cpus: usize,
    ) -> Self {
        Self {
            budget,
            counts,
            cpus,
            records_per_cpu,
            epoch: 0,
            armed_at: BTreeMap::new(),
            last_keys: 0,
        }
    }

    /// How many keys the last take found; `refused`: storm RSTs it had no room for,
    /// which were sent as records ([`rst_trace_common::TABLE_FOLDS_FULL`]).
    pub fn figure(&self, refused: u64) -> TableFigure {
        TableFigure {
            refused: Some(refused),
            ..TableFigure::new(
                rst_trace_common::fold::FOLDS_MAP,
                self.last_keys,
                FOLDS_CAPACITY as usize,
            )
        }
    }

    pub fn records_per_cpu(&self) -> u32 {
        self.records_per_cpu
    }

    /// Opens the next epoch with a full budget on every CPU (once a second).
    pub fn arm(&mut self, now_ns: u64) -> Result<(), MapError> {
        let epoch = next_epoch(self.epoch);
        let grant = FoldBudget {
            epoch,
            records_left: self.records_per_cpu,
        };
        let values = PerCpuValues::try_from(vec![grant; self.cpus])?;
        self.budget.set(0, values, 0)?;
        self.epoch = epoch;
        self.armed_at.insert(epoch, now_ns);
        while self.armed_at.len() > EPOCH_TIMES_KEPT {
            self.armed_at.pop_first();
        }
        Ok(())
    }

    /// The counts no program can still add to (every count when `all`: the programs are
    /// going), summed over CPUs and deleted from the map, oldest epoch first.
    pub fn take(&mut self, all: bool, now_ns: u64) -> Vec<Folded> {
        let keys: Vec<FoldKey> = self
            .counts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| due(k.epoch, self.epoch, all))
            .collect();
        self.last_keys = keys.len();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let count = self
                .counts
                .get(&key, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum());
            if let Err(e) = self.counts.remove(&key) {
                log::debug!("folded count not removed: {e}");
            }
            if count > 0 {
                let at_ns = self.armed_at.get(&key.epoch).copied().unwrap_or(now_ns);
                out.push(Folded { key, count, at_ns });
            }
        }
        out.sort_by_key(|f| (f.at_ns, f.key.epoch));
        out
    }
}

impl Folded {
    /// The record one of these events would have sent, as far as the key tells it: the
    /// client's port is 0 (each event had its own), and a socket's snapshot is empty (a
    /// socket-less RST has none; a refused connect() had sent and received nothing).
    pub fn record(&self) -> Option<Record> {
        let k = &self.key;
        let header = |kind: RecordKind| RecordHeader {
            kind: kind as u16,
            version: RECORD_VERSION,
            ktime_ns: self.at_ns,
            netns: k.netns,
            ..Default::default()
        };
        let mut tuple = Tuple {
            family: k.family,
            local_addr: k.local_addr,
            remote_addr: k.remote_addr,
            ..Default::default()
        };
        match k.kind {
            FOLD_SENT_NO_SOCKET => {
                tuple.local_port = k.port;
                Some(Record::ResetSent(ResetSentRecord {
                    header: header(RecordKind::ResetSent),
                    tuple,
                    reason: k.reason,
                    ..Default::default()
                }))
            }
            FOLD_REFUSED => {
                tuple.remote_port = k.port;
                Some(Record::ResetReceived(ResetReceivedRecord {
                    header: header(RecordKind::ResetReceived),
                    tuple,
                    state: TCP_SYN_SENT,
                    owner: OwnerInfo {
                        pid: k.owner_pid,
                        tid: k.owner_tid,
                        start_boottime_ns: k.owner_start_ns,
                        cgroup_id: k.owner_cgroup_id,
                        comm: k.owner_comm,
                        how: OWNER_CONNECT,
                        ..Default::default()
                    },
                    ..Default::default()
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Endpoints;

    fn key(kind: u16) -> FoldKey {
        let mut k = FoldKey {
            epoch: 3,
            netns: 4026532001,
            kind,
            family: 2,
            port: 8080,
            ..Default::default()
        };
        k.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        k.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        k
    }

    #[test]
    fn a_folded_sent_reset_is_a_socketless_record_on_the_service_port() {
        let f = Folded {
            key: FoldKey {
                reason: 2,
                ..key(FOLD_SENT_NO_SOCKET)
            },
            count: 5000,
            at_ns: 77,
        };
        let Some(Record::ResetSent(r)) = f.record() else {
            panic!("a sent RST");
        };
        assert_eq!(
            (r.header.netns, r.header.ktime_ns, r.reason),
            (4026532001, 77, 2)
        );
        assert_eq!((r.skaddr, r.state, r.flags), (0, 0, 0), "no socket");
        let e = Endpoints::try_from(&r.tuple).expect("IPv4");
        assert_eq!((e.local.port, e.remote.port), (8080, 0));
        assert_eq!(e.remote.addr.to_string(), "127.0.0.2");
    }

    #[test]
    fn a_folded_refusal_names_the_connecting_process() {
        let f = Folded {
            key: FoldKey {
                owner_pid: 4242,
                owner_tid: 4243,
                owner_start_ns: 9,
                owner_comm: *b"client\0\0\0\0\0\0\0\0\0\0",
                ..key(FOLD_REFUSED)
            },
            count: 12,
            at_ns: 1,
        };
        let Some(Record::ResetReceived(r)) = f.record() else {
            panic!("a received RST");
        };
        assert_eq!(r.state, TCP_SYN_SENT);
        assert_eq!(
            (r.owner.pid, r.owner.tid, r.owner.start_boottime_ns),
            (4242, 4243, 9)
        );
        assert_eq!(r.owner.how, OWNER_CONNECT);
        assert_eq!(&r.owner.comm[..7], b"client\0", "the name at connect()");
        assert_eq!((r.tuple.local_port, r.tuple.remote_port), (0, 8080));
    }

    #[test]
    fn an_unknown_kind_is_no_record() {
        let f = Folded {
            key: key(99),
            count: 1,
            at_ns: 0,
        };
        assert!(f.record().is_none());
    }
}
