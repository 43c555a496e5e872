//! How full every table is, kernel maps and the agent's own, for the stats line and the
//! metrics endpoint: a flood or namespace churn that pushes a table to its bound shows up as
//! entries at capacity plus counted refusals or evictions, never as silent loss or growth.
use aya::{
    maps::{HashMap, Map, MapData},
    Ebpf, Pod,
};
use rst_trace_common::{
    ownercache::{self, OWNERS_SETS},
    twcache::{self, TW_OWNERS_SETS},
    AcceptorKey, OwnerInfo, OwnerSet, SlotTag, TwIdentity, TwSet, TwSlot, ACCEPTORS_CAPACITY,
    ACCEPTORS_MAP, OWNERS_CAPACITY, OWNERS_MAP, OWNERS_WAYS, TW_IDS_CAPACITY, TW_IDS_MAP,
    TW_OWNERS_CAPACITY, TW_OWNERS_MAP, TW_OWNERS_WAYS,
};
use std::collections::BTreeMap;

use crate::mapped::MappedArray;

use rst_trace_common::event::{ProcessResources, TableOccupancy};
use serde_json::Value;

/// The kernel's signal table (see hot.rs in the eBPF crate), an LRU.
const HOT_MAP: &str = "RST_HOT_SENT";
const HOT_CAPACITY: u32 = 4096;

/// One table's figures. `refused`: inserts a full table turned away; `evicted`: entries
/// forgotten to make room for others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFigure {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
    pub refused: Option<u64>,
    pub evicted: Option<u64>,
}

impl TableFigure {
    pub fn new(name: &'static str, entries: usize, capacity: usize) -> Self {
        Self {
            name,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
            capacity: u64::try_from(capacity).unwrap_or(u64::MAX),
            ..Default::default()
        }
    }
}

/// Counts the entries of one kernel table (a hash map by a walk of its keys, one syscall per
/// entry; a set cache by its tags through read-only mappings), so it runs per stats line or
/// scrape, never per event.
type Counter = Box<dyn Fn() -> Option<u64> + Send>;

struct KernelTable {
    name: &'static str,
    capacity: u32,
    count: Counter,
}

/// Second handles on the kernel's bounded maps, opened by id so the maps stay where the loader
/// and the pipeline keep them.
#[derive(Default)]
pub struct KernelTables {
    tables: Vec<KernelTable>,
}

/// A walk of hash map `name`'s keys, whose values are [`OwnerInfo`]s (the walk reads keys
/// only), bounded by twice its `capacity`.
fn open<K: Pod + Send>(ebpf: &Ebpf, name: &str, capacity: u32) -> Option<Counter> {
    let id = match ebpf.map(name)? {
        Map::HashMap(m) | Map::LruHashMap(m) => m.info().ok()?.id(),
        _ => return None,
    };
    let map = Map::from_map_data(MapData::from_id(id).ok()?).ok()?;
    let typed: HashMap<MapData, K, OwnerInfo> = match HashMap::try_from(map) {
        Ok(t) => t,
        Err(e) => {
            log::debug!("map {name}: {e}");
            return None;
        }
    };
    Some(Box::new(move || {
        let mut n = 0u64;
        for k in typed.keys() {
            // A key deleted under the walk restarts it in the kernel; the bound keeps a map
            // that churns faster than it is read from holding the loop.
            k.ok()?;
            n += 1;
            if n > u64::from(capacity) * 2 {
                break;
            }
        }
        Some(n)
    }))
}

fn open_hot(ebpf: &Ebpf) -> Option<Counter> {
    let id = match ebpf.map(HOT_MAP)? {
        Map::LruHashMap(m) => m.info().ok()?.id(),
        _ => return None,
    };
    let map = Map::from_map_data(MapData::from_id(id).ok()?).ok()?;
    let typed: HashMap<MapData, u64, u64> = HashMap::try_from(map).ok()?;
    Some(Box::new(move || {
        let n = typed
            .keys()
            .take(2 * HOT_CAPACITY as usize)
            .filter(Result::is_ok)
            .count();
        u64::try_from(n).ok()
    }))
}

/// Which slots of a set cache count as entries, from the `T` (a tag, or a whole slot) that
/// starts each, at `now` (monotonic ns).
type Live<T> = fn(&T, u64) -> bool;

/// Counts the live slots of a set-associative cache in an array (the kernel's owner caches:
/// `sets` sets of `set_bytes` bytes, each starting with its `ways` tags or slots, `T`),
/// through read-only mappings of a window at a time.
fn open_cache<T: Copy + 'static>(
    ebpf: &Ebpf,
    name: &'static str,
    sets: u32,
    set_bytes: usize,
    ways: u32,
    live: Live<T>,
) -> Option<Counter> {
    let id = match ebpf.map(name)? {
        Map::Array(m) => m.info().ok()?.id(),
        _ => return None,
    };
    let ways = usize::try_from(ways).ok()?;
    if ways * std::mem::size_of::<T>() > set_bytes
        || !set_bytes.is_multiple_of(std::mem::align_of::<T>())
    {
        log::debug!("{name}: {ways} tags do not fit a set of {set_bytes} bytes");
        return None;
    }
    let array = MappedArray::new(
        name,
        MapData::from_id(id).ok()?,
        set_bytes,
        usize::try_from(sets).ok()?,
    )?;
    Some(Box::new(move || {
        let now = crate::clock::monotonic_ns();
        let mut n = 0u64;
        array
            .for_each_window(false, |base, count| {
                for set in 0..count {
                    for way in 0..ways {
                        // SAFETY: `T` number `way` of set `set` lies inside the mapping (they
                        // start each set, checked above), aligned (the set size is a multiple
                        // of `T`'s alignment, the mapping page-aligned); the kernel writes
                        // slots under it, so the tag is read volatile and judged by its
                        // sequence or key.
                        let tag = unsafe {
                            let t = base.as_ptr().add(set * set_bytes).cast::<T>().add(way);
                            std::ptr::read_volatile(t)
                        };
                        if live(&tag, now) {
                            n += 1;
                        }
                    }
                }
            })
            .ok()?;
        Some(n)
    }))
}

impl KernelTables {
    /// Handles on every bounded kernel map; one that cannot be opened is left out (and said
    /// once), the stats line then lacks its figure rather than the agent failing.
    pub fn open(ebpf: &Ebpf) -> Self {
        let mut tables = Vec::new();
        let mut add = |name: &'static str, capacity: u32, c: Option<Counter>| match c {
            Some(count) => tables.push(KernelTable {
                name,
                capacity,
                count,
            }),
            None => log::warn!("cannot read the occupancy of kernel map {name}"),
        };
        add(
            OWNERS_MAP,
            OWNERS_CAPACITY,
            open_cache(
                ebpf,
                OWNERS_MAP,
                OWNERS_SETS,
                std::mem::size_of::<OwnerSet>(),
                OWNERS_WAYS,
                |t: &SlotTag, _| t.seq & 1 == 0 && ownercache::is_open(t.check, t.closed_ns),
            ),
        );
        add(
            TW_OWNERS_MAP,
            TW_OWNERS_CAPACITY,
            open_cache(
                ebpf,
                TW_OWNERS_MAP,
                TW_OWNERS_SETS,
                std::mem::size_of::<TwSet>(),
                TW_OWNERS_WAYS,
                |t: &TwSlot, now| twcache::slot_live(t, twcache::units(now)),
            ),
        );
        add(
            TW_IDS_MAP,
            TW_IDS_CAPACITY,
            open_cache(
                ebpf,
                TW_IDS_MAP,
                TW_IDS_CAPACITY,
                std::mem::size_of::<TwIdentity>(),
                1,
                |t: &TwIdentity, now| {
                    t.seq & 1 == 0 && !twcache::id_replaceable(t, twcache::units(now))
                },
            ),
        );
        add(
            ACCEPTORS_MAP,
            ACCEPTORS_CAPACITY,
            open::<AcceptorKey>(ebpf, ACCEPTORS_MAP, ACCEPTORS_CAPACITY),
        );
        add(HOT_MAP, HOT_CAPACITY, open_hot(ebpf));
        Self { tables }
    }

    /// Entries now, per map. `owners`: the kernel's store counters, which give the refusals of
    /// the owner table and the evictions of the TIME_WAIT cache.
    pub fn figures(&self, owners: &crate::stats::OwnerTables) -> Vec<TableFigure> {
        self.tables
            .iter()
            .filter_map(|t| {
                let entries = (t.count)()?;
                let mut f = TableFigure {
                    name: t.name,
                    entries,
                    capacity: u64::from(t.capacity),
                    refused: None,
                    evicted: None,
                };
                match t.name {
                    OWNERS_MAP => f.refused = Some(owners.full),
                    // An identity replaced while live slots named it loses their owners: one
                    // count, kept by the TIME_WAIT cache's figure.
                    TW_OWNERS_MAP => f.evicted = Some(owners.timewait_evicted),
                    _ => {}
                }
                Some(f)
            })
            .collect()
    }
}

/// The `tables` object of the stats line.
/// The figures as the stats line's `tables` object.
pub fn occupancy(figures: &[TableFigure]) -> BTreeMap<String, TableOccupancy> {
    figures
        .iter()
        .map(|f| {
            (
                f.name.to_owned(),
                TableOccupancy {
                    entries: f.entries,
                    capacity: f.capacity,
                    refused: f.refused,
                    evicted: f.evicted,
                },
            )
        })
        .collect()
}

/// The same, as JSON.
pub fn json(figures: &[TableFigure]) -> Value {
    serde_json::to_value(occupancy(figures)).unwrap_or(Value::Null)
}

/// The agent process's own resources: resident memory, open fds, threads.
pub fn process() -> ProcessResources {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .and_then(|d| u64::try_from(d.count()).ok());
    ProcessResources {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_as_json() {
        let mut f = TableFigure::new("listeners", 3, 10);
        f.refused = Some(2);
        let mut g = TableFigure::new("RST_TW_OWNERS", 7, 8);
        g.evicted = Some(1);
        let v = json(&[f, g]);
        assert_eq!(
            v["listeners"],
            serde_json::json!({"entries": 3, "capacity": 10, "refused": 2})
        );
        assert_eq!(v["RST_TW_OWNERS"]["evicted"], 1);
        assert!(v["RST_TW_OWNERS"].get("refused").is_none());
    }

    #[test]
    fn own_process_figures() {
        let p = process();
        assert!(p.rss_kib.is_some_and(|r| r > 0));
        assert!(p.threads.is_some_and(|t| t >= 1));
        assert!(p.fds.is_some_and(|n| n >= 1));
    }
}
