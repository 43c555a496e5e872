//! The counts the kernel folded in a storm (see `rst_trace_common::fold`): the budget armed
//! for every CPU once a second, and the counts of closed epochs taken out of the kernel's
//! array. What they mean is the pipeline's business ([`crate::pipeline::Pipeline::folded`]).
use std::{collections::BTreeMap, ptr::NonNull};

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use rst_trace_common::{
    fold::{
        due, next_epoch, FoldBudget, FoldKey, FoldSlot, FOLD_CPU_SLOTS, FOLD_REFUSED,
        FOLD_SENT_NO_SOCKET, FOLD_SLOTS,
    },
    tcp::TCP_SYN_SENT,
    OwnerInfo, RecordHeader, RecordKind, ResetReceivedRecord, ResetSentRecord, Tuple,
    OWNER_CONNECT, RECORD_VERSION,
};

use super::records::Record;
use crate::{mapped::MappedArray, occupancy::TableFigure};

/// Epoch start times kept for the summaries' timestamps; older epochs are due long before.
const EPOCH_TIMES_KEPT: usize = 8;

/// Slots of the kernel's array, as the agent reaches them: through a mapping, or a vector in
/// tests.
pub trait FoldSlots {
    /// Calls `f` with each run of consecutive slots.
    fn visit(&mut self, f: &mut dyn FnMut(&mut SlotView<'_>)) -> Result<(), String>;
}

/// A run of slots, read and cleared the way the kernel's programs expect (see
/// [`FoldSlot`]): the epoch read first, a slot freed with its epoch cleared last.
pub struct SlotView<'a> {
    base: NonNull<FoldSlot>,
    len: usize,
    _slots: std::marker::PhantomData<&'a mut [FoldSlot]>,
}

impl SlotView<'_> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, i: usize) -> Option<*mut FoldSlot> {
        // SAFETY: `i` is within the run, which `base` starts.
        (i < self.len).then(|| unsafe { self.base.as_ptr().add(i) })
    }

    /// The epoch of slot `i`, 0 when it is free.
    pub fn epoch(&self, i: usize) -> u32 {
        // SAFETY: a slot of the run, aligned; the kernel may write it meanwhile, hence
        // volatile.
        self.at(i).map_or(0, |s| unsafe {
            std::ptr::read_volatile(&raw const (*s).key.epoch)
        })
    }

    /// Slot `i` as it is now.
    pub fn read(&self, i: usize) -> Option<FoldSlot> {
        // SAFETY: as above.
        self.at(i).map(|s| unsafe { std::ptr::read_volatile(s) })
    }

    /// Frees slot `i`: everything but the epoch zeroed first, then the epoch, so that a
    /// program that finds it free finds nothing else of the old count.
    pub fn free(&mut self, i: usize) {
        let Some(s) = self.at(i) else {
            return;
        };
        let cleared = FoldSlot {
            key: FoldKey {
                epoch: self.epoch(i),
                ..Default::default()
            },
            count: 0,
        };
        // SAFETY: as above; the slot's epoch is due, so no program writes it. The epoch is a
        // naturally aligned u32, so it can be stored as an atomic: a release store, after which
        // the zeroes before it are visible to any CPU that sees the slot free.
        unsafe {
            std::ptr::write_volatile(s, cleared);
            let epoch = &*(&raw const (*s).key.epoch).cast::<std::sync::atomic::AtomicU32>();
            epoch.store(0, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The kernel's array through shared mappings, a window at a time.
pub struct MappedSlots(MappedArray);

impl FoldSlots for MappedSlots {
    fn visit(&mut self, f: &mut dyn FnMut(&mut SlotView<'_>)) -> Result<(), String> {
        self.0
            .for_each_window(true, |base, len| {
                let mut view = SlotView {
                    base: base.cast(),
                    len,
                    _slots: std::marker::PhantomData,
                };
                f(&mut view);
            })
            .map_err(|e| e.to_string())
    }
}

impl FoldSlots for Vec<FoldSlot> {
    fn visit(&mut self, f: &mut dyn FnMut(&mut SlotView<'_>)) -> Result<(), String> {
        let len = self.len();
        let mut view = SlotView {
            base: NonNull::new(self.as_mut_ptr()).ok_or("no slots")?,
            len,
            _slots: std::marker::PhantomData,
        };
        f(&mut view);
        Ok(())
    }
}

pub struct KernelFolds {
    budget: PerCpuArray<MapData, FoldBudget>,
    slots: MappedSlots,
    cpus: usize,
    records_per_cpu: u32,
    epoch: u32,
    /// When each recent epoch was armed (CLOCK_MONOTONIC ns).
    armed_at: BTreeMap<u32, u64>,
    /// The most keys one epoch had at the last take: a second's worth.
    last_keys: usize,
}

/// Folded events of one key: `count` of them, from the epoch armed at `at_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    pub key: FoldKey,
    pub count: u64,
    pub at_ns: u64,
}

/// Slots the kernel's array has for `cpus` possible CPUs (the loader sizes it so).
pub fn slots_for(cpus: usize) -> usize {
    cpus.saturating_mul(FOLD_CPU_SLOTS as usize)
}

impl KernelFolds {
    /// Each of the `cpus` possible CPUs may send `records_per_cpu` records a second of the
    /// kinds that fold; `counts` is the kernel's array, sized for them.
    pub fn new(
        budget: PerCpuArray<MapData, FoldBudget>,
        counts: MapData,
        records_per_cpu: u32,
        cpus: usize,
    ) -> Result<Self, String> {
        let mapped = MappedArray::new(
            rst_trace_common::fold::FOLDS_MAP,
            counts,
            std::mem::size_of::<FoldSlot>(),
            slots_for(cpus),
        )
        .ok_or("the fold array cannot be mapped")?;
        Ok(Self {
            budget,
            slots: MappedSlots(mapped),
            cpus,
            records_per_cpu,
            epoch: 0,
            armed_at: BTreeMap::new(),
            last_keys: 0,
        })
    }

    /// How many keys the last take found; `refused`: storm RSTs that found their slots
    /// taken, which were sent as records ([`rst_trace_common::TABLE_FOLDS_FULL`]). The
    /// capacity is a second's keys: one partition of every CPU.
    pub fn figure(&self, refused: u64) -> TableFigure {
        TableFigure {
            refused: Some(refused),
            ..TableFigure::new(
                rst_trace_common::fold::FOLDS_MAP,
                self.last_keys,
                self.cpus.saturating_mul(FOLD_SLOTS as usize),
            )
        }
    }

    pub fn records_per_cpu(&self) -> u32 {
        self.records_per_cpu
    }

    /// Opens the next epoch with a full budget on every CPU (once a second). The partition
    /// it reuses held the epoch four armings back, which an earlier take cleared (it has been
    /// due since two armings ago); a slot left over anyway only sends its key's records.
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
    /// going), summed over CPUs and cleared from the array, oldest epoch first.
    pub fn take(&mut self, all: bool, now_ns: u64) -> Vec<Folded> {
        let counts = match take_due(&mut self.slots, self.epoch, all) {
            Ok(c) => c,
            Err(e) => {
                log::debug!("folded counts not read: {e}");
                return Vec::new();
            }
        };
        self.last_keys = busiest_epoch(&counts);
        let mut out: Vec<Folded> = counts
            .into_iter()
            .map(|(key, count)| Folded {
                key,
                count,
                at_ns: self.armed_at.get(&key.epoch).copied().unwrap_or(now_ns),
            })
            .collect();
        out.sort_by_key(|f| (f.at_ns, f.key.epoch));
        out
    }
}

/// Every due slot's count, summed per key over CPUs (a key folds on each CPU its RSTs came
/// to), and freed.
fn take_due(
    slots: &mut dyn FoldSlots,
    current: u32,
    all: bool,
) -> Result<Vec<(FoldKey, u64)>, String> {
    let mut sums: std::collections::HashMap<FoldKey, u64> = std::collections::HashMap::new();
    slots.visit(&mut |view| {
        for i in 0..view.len() {
            let epoch = view.epoch(i);
            if epoch == 0 || !due(epoch, current, all) {
                continue;
            }
            if let Some(slot) = view.read(i) {
                if slot.count > 0 {
                    let sum = sums.entry(slot.key).or_default();
                    *sum = sum.saturating_add(slot.count);
                }
            }
            view.free(i);
        }
    })?;
    Ok(sums.into_iter().collect())
}

/// The most keys of any one epoch among `counts`. A take can hold several epochs (the final
/// one takes all, a late timer two), but one epoch's keys fit in one partition of every CPU,
/// which is what the figure's capacity counts.
fn busiest_epoch(counts: &[(FoldKey, u64)]) -> usize {
    let mut per_epoch: BTreeMap<u32, usize> = BTreeMap::new();
    for (key, _) in counts {
        *per_epoch.entry(key.epoch).or_default() += 1;
    }
    per_epoch.into_values().max().unwrap_or(0)
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

    fn slot(epoch: u32, port: u16, count: u64) -> FoldSlot {
        FoldSlot {
            key: FoldKey {
                epoch,
                port,
                ..key(FOLD_SENT_NO_SOCKET)
            },
            count,
        }
    }

    #[test]
    fn only_due_slots_are_taken_summed_over_cpus_and_freed() {
        let mut slots = vec![FoldSlot::default(); slots_for(2)];
        let cpu1 = FOLD_CPU_SLOTS as usize;
        slots[3] = slot(8, 80, 1000);
        slots[cpu1 + 77] = slot(8, 80, 234);
        slots[5] = slot(8, 443, 7);
        slots[130] = slot(9, 80, 50);
        slots[cpu1 + 300] = slot(10, 80, 60);
        let mut taken = take_due(&mut slots, 10, false).expect("a vector");
        taken.sort_by_key(|(k, _)| k.port);
        let got: Vec<(u32, u16, u64)> = taken.iter().map(|(k, n)| (k.epoch, k.port, *n)).collect();
        assert_eq!(
            got,
            [(8, 80, 1234), (8, 443, 7)],
            "epoch 8 only, one per key"
        );
        for i in [3, cpu1 + 77, 5] {
            assert_eq!(slots[i], FoldSlot::default(), "slot {i} freed whole");
        }
        assert_eq!(
            slots[130].count, 50,
            "closed just now: a program may hold it"
        );
        assert_eq!(slots[cpu1 + 300].count, 60, "the current epoch");
        let mut rest = take_due(&mut slots, 10, true).expect("a vector");
        rest.sort_by_key(|(k, _)| k.epoch);
        let got: Vec<(u32, u64)> = rest.iter().map(|(k, n)| (k.epoch, *n)).collect();
        assert_eq!(got, [(9, 50), (10, 60)], "at the end everything");
        assert!(slots.iter().all(|s| *s == FoldSlot::default()));
    }

    #[test]
    fn a_final_take_of_full_partitions_stays_within_the_figures_capacity() {
        let cpus = 2;
        let mut slots = vec![FoldSlot::default(); slots_for(cpus)];
        // Every partition of every CPU full of keys of its own, as a namespace churn leaves
        // them when the agent stops: epochs 5..=8, the current one 8.
        for (i, s) in slots.iter_mut().enumerate() {
            let part = (i % FOLD_CPU_SLOTS as usize) / FOLD_SLOTS as usize;
            let epoch = 5 + u32::try_from(part).expect("4 partitions");
            let port = u16::try_from(i).expect("1,024 slots");
            *s = slot(epoch, port, 1);
        }
        let taken = take_due(&mut slots, 8, true).expect("a vector");
        let capacity = cpus * FOLD_SLOTS as usize;
        assert_eq!(taken.len(), 4 * capacity, "every epoch taken at the end");
        assert_eq!(
            busiest_epoch(&taken),
            capacity,
            "one epoch fills its partitions"
        );
        assert_eq!(busiest_epoch(&[]), 0);
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
