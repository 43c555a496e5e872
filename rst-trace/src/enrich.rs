//! Enrichment: who owns a socket, named as the process is called now, and the host facts the
//! causes quote (limits, sysctls, socket counts). Every /proc reading goes through a cache
//! with a time to live, so a storm reads /proc per process, not per event.
use std::{collections::HashMap, sync::Arc, time::SystemTime};

use rst_trace_common::{
    event::{LastOwner, ListenerGroup, ProcessRef},
    OwnerInfo, TcpSnapshot, SNAP_TIMES,
};

use crate::{
    cause::Cause,
    clock::{Clock, Monotonic, WallClock},
    correlate::TtlCache,
    host::HostInfo,
    owner::{KernelOwner, Learned, Owner},
    records::{Endpoint, Endpoints, Task},
    sockets::{ListenerSock, SocketTable},
};

/// Socket counts to one destination, by TCP state name.
pub type SocketsByState = std::collections::BTreeMap<&'static str, u64>;

const PROCESS_CACHE_NS: u64 = 1_000_000_000;
const MAX_CACHED_PROCESSES: usize = 65_536;
const MAX_CACHED_OWNERS: usize = 65_536;
const MAX_PORT_CENSUS: usize = 4096;
/// A socket closed this recently still names its owner for the RST its closing caused.
pub const JUST_CLOSED_NS: u64 = 2_000_000_000;
/// accept() callers this recent are "the process serving the queue".
const ACCEPTER_WINDOW_NS: u64 = 60_000_000_000;

/// A process's file-descriptor facts, read at most once a second per process: accept() fails
/// with EMFILE in a tight loop, and each reading walks /proc/<pid>/fd.
#[derive(Debug, Clone, Copy)]
pub struct FdFacts {
    pub nofile: Option<(u64, u64)>,
    pub open: Option<u64>,
    pub file_nr: Option<[u64; 3]>,
}

#[derive(Debug, Clone)]
struct CachedProcess {
    name: Option<String>,
    cgroup: Option<String>,
}

/// A listener as a cause event shows it: who serves its queue, who else holds it.
#[derive(Debug, Clone, Default)]
pub struct ListenerView {
    pub owner: Option<Arc<Owner>>,
    pub other_owners: Vec<Arc<Owner>>,
    pub accepting: Vec<ProcessRef>,
    pub inode: Option<u64>,
    pub group: Option<ListenerGroup>,
    pub requested_backlog: Option<u32>,
    pub address: String,
    pub somaxconn: Option<u32>,
}

/// A connection's owner, or what is known instead of it.
#[derive(Debug, Clone, Default)]
pub struct ConnOwner {
    pub owner: Option<Arc<Owner>>,
    pub other_owners: Vec<Arc<Owner>>,
    pub age_seconds: Option<f64>,
    pub last_owner: Option<LastOwner>,
    pub found_by: Option<&'static str>,
    pub trigger: Option<&'static str>,
}

pub struct Enricher<H: HostInfo> {
    pub table: SocketTable,
    host: H,
    wall: WallClock,
    mono: Box<dyn Clock>,
    hz: u64,
    owners: crate::fastmap::FastMap<(u32, u32), Arc<Owner>>,
    /// Current name and cgroup per (pid, start time): names change with exec().
    processes: TtlCache<(u32, u64), CachedProcess>,
    fd_facts: TtlCache<u32, FdFacts>,
    /// Sockets to a destination by state, sampled at most once a second per destination.
    port_census: TtlCache<(u32, Endpoint), Option<SocketsByState>>,
    /// Sockets that predate the agent: sockfs inode → processes holding it (from /proc).
    seeds: HashMap<u64, Vec<u32>>,
}

pub fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e6).round() / 1000.0
}

fn wrapping_gap(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b)
}

impl<H: HostInfo> Enricher<H> {
    /// How full its tables and caches are, for the stats line (each is cleared at its bound).
    pub fn figures(&self) -> Vec<crate::occupancy::TableFigure> {
        let mut v = Vec::from(self.table.figures());
        v.extend([
            self.processes.figure("processes"),
            self.fd_facts.figure("fd_facts"),
            crate::occupancy::TableFigure::new("owners", self.owners.len(), MAX_CACHED_OWNERS),
            self.port_census.figure("port_census"),
        ]);
        v
    }

    pub fn new(host: H, wall: WallClock, hz: u64) -> Self {
        Self {
            table: SocketTable::default(),
            host,
            wall,
            mono: Box::new(Monotonic),
            hz: hz.max(1),
            owners: Default::default(),
            processes: TtlCache::new(PROCESS_CACHE_NS, MAX_CACHED_PROCESSES),
            fd_facts: TtlCache::new(PROCESS_CACHE_NS, MAX_CACHED_PROCESSES),
            port_census: TtlCache::new(1_000_000_000, MAX_PORT_CENSUS),
            seeds: HashMap::new(),
        }
    }

    pub fn set_clock(&mut self, clock: Box<dyn Clock>) {
        self.mono = clock;
    }

    /// Monotonic now, from the injected clock.
    pub fn now(&self) -> u64 {
        self.mono.now_ns()
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.wall.wall(ktime_ns)
    }

    pub fn wall_clock(&self) -> WallClock {
        self.wall
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn seed(&mut self, seeds: HashMap<u64, Vec<u32>>) {
        self.seeds = seeds;
    }

    pub fn sysctl(&self, netns: u32, name: &str) -> Option<String> {
        self.host.sysctl(netns, name)
    }

    pub fn sysctl_u32(&self, netns: u32, name: &str) -> Option<u32> {
        self.sysctl(netns, name).and_then(|v| v.parse().ok())
    }

    pub fn fd_facts(&mut self, pid: u32) -> FdFacts {
        let now = self.now();
        let host = &self.host;
        self.fd_facts.get_or_read(now, pid, || FdFacts {
            nofile: host.nofile_limit(pid),
            open: host.open_fds(pid),
            file_nr: host.file_nr(),
        })
    }

    /// Sockets to `dst` by state, rate-limited: under exhaustion connect() fails in a loop.
    pub fn sockets_to(&mut self, now: u64, netns: u32, dst: Endpoint) -> Option<SocketsByState> {
        let host = &self.host;
        self.port_census.get_or_read(now, (netns, dst), || {
            host.sockets_to(netns, dst.addr, dst.port)
        })
    }

    /// The current name (`None`: the process is gone or its pid was reused) and cgroup.
    fn process(&mut self, pid: u32, start_boottime_ns: u64) -> CachedProcess {
        let now = self.now();
        let host = &self.host;
        self.processes
            .get_or_read(now, (pid, start_boottime_ns), || {
                let name = host.process_name(pid, start_boottime_ns);
                let cgroup = name.as_ref().and_then(|_| host.cgroup_of(pid));
                CachedProcess { name, cgroup }
            })
    }

    /// An owner the kernel programs recorded, named as the process is called now.
    pub fn kernel_owner(&mut self, info: &OwnerInfo) -> Option<Arc<Owner>> {
        let k = KernelOwner::from_info(info)?;
        let p = self.process(k.pid, k.start_boottime_ns);
        let task = Task {
            pid: k.pid,
            tid: k.tid,
            comm: p.name.unwrap_or(k.comm),
            cgroup_id: info.cgroup_id,
        };
        let mut o = Owner::from_task(&task, k.learned, p.cgroup);
        // A TIME_WAIT socket's last owner keeps no time it was learnt (0).
        o.learned_at = (k.since_ns != 0).then(|| self.wall(k.since_ns));
        Some(Arc::new(o))
    }

    /// `o` as the process is called now: listeners are often handed on by exec() (socket
    /// activation, init shims, shell wrappers) after listen() recorded the launcher's name.
    fn named_now(&mut self, o: &Arc<Owner>) -> Arc<Owner> {
        let p = self.process(o.pid, 0);
        match p.name {
            Some(name) if name != o.comm => {
                let mut renamed = Owner::clone(o);
                renamed.comm = name;
                Arc::new(renamed)
            }
            _ => o.clone(),
        }
    }

    /// The processes holding a socket that predates the agent.
    fn seeded_owners(&mut self, inode: u64) -> Vec<Arc<Owner>> {
        let pids = self.seeds.get(&inode).cloned().unwrap_or_default();
        pids.into_iter()
            .filter_map(|pid| {
                let p = self.process(pid, 0);
                let task = Task {
                    pid,
                    tid: pid,
                    comm: p.name?,
                    cgroup_id: 0,
                };
                Some(Arc::new(Owner::from_task(&task, Learned::Procfs, p.cgroup)))
            })
            .collect()
    }

    /// One `Owner` per (pid, thread, how learnt): connections of one process share it.
    pub fn owner(&mut self, task: &Task, learned: Learned) -> Arc<Owner> {
        let key = (task.tid, learned as u32);
        if let Some(o) = self.owners.get(&key) {
            if o.pid == task.pid && o.comm == task.comm {
                return o.clone();
            }
        }
        if self.owners.len() >= MAX_CACHED_OWNERS {
            self.owners.clear();
        }
        let o = Arc::new(Owner::from_task(
            task,
            learned,
            self.host.cgroup_of(task.pid),
        ));
        self.owners.insert(key, o.clone());
        o
    }

    /// The listener on `addr`'s port that `addr` reaches: the exact address, else the
    /// wildcard, else any. Its first owner, the others, and the listener.
    pub fn listener_owner(
        listeners: &[ListenerSock],
        addr: &Endpoint,
    ) -> (Option<Arc<Owner>>, Vec<Arc<Owner>>, Option<ListenerSock>) {
        let exact = listeners
            .iter()
            .find(|l| l.addr == addr.addr)
            .or_else(|| listeners.iter().find(|l| l.addr.is_unspecified()))
            .or_else(|| listeners.first());
        match exact {
            Some(l) => {
                let mut owners = l.owners.clone();
                let first = (!owners.is_empty()).then(|| owners.remove(0));
                (first, owners, Some(l.clone()))
            }
            None => (None, Vec::new(), None),
        }
    }

    /// The listener a drop happened on: the socket itself when known (in an SO_REUSEPORT
    /// group it says which member), else the one the address reaches.
    pub fn find_listener(&self, netns: u32, skaddr: u64, local: &Endpoint) -> Option<ListenerSock> {
        self.table
            .listener_by_sk(skaddr)
            .cloned()
            .or_else(|| Self::listener_owner(self.table.listeners(netns, local.port), local).2)
    }

    /// The listener's owner is the process serving its queue (the latest accept() caller),
    /// else the one that called listen(); every other holder is listed too. In an
    /// SO_REUSEPORT group each member has its own queue: only the processes holding this
    /// member count.
    pub fn listener_view(&mut self, netns: u32, port: u16, l: &ListenerSock) -> ListenerView {
        let now = self.now();
        let on_port = self.table.listeners(netns, port).len();
        let shared_port = on_port > 1;
        let holders: Vec<u32> = l.owners.iter().map(|o| o.pid).collect();
        let accepting: Vec<Arc<Owner>> = self
            .host
            .acceptors(netns, port)
            .into_iter()
            .filter(|a| now.saturating_sub(a.last_ns) <= ACCEPTER_WINDOW_NS)
            .filter(|a| !shared_port || holders.contains(&a.pid))
            .map(|a| {
                let p = self.process(a.pid, 0);
                let task = Task {
                    pid: a.pid,
                    tid: a.pid,
                    comm: p.name.unwrap_or(a.comm),
                    cgroup_id: 0,
                };
                Arc::new(Owner::from_task(&task, Learned::Accept, p.cgroup))
            })
            .collect();
        let mut owners: Vec<Arc<Owner>> = accepting.iter().take(1).cloned().collect();
        for o in &l.owners {
            if !owners.iter().any(|e| e.pid == o.pid) {
                owners.push(self.named_now(o));
            }
        }
        let owner = (!owners.is_empty()).then(|| owners.remove(0));
        ListenerView {
            owner,
            other_owners: owners,
            accepting: accepting
                .iter()
                .map(|o| ProcessRef::new(o.pid, &o.comm))
                .collect(),
            inode: l.inode,
            group: shared_port.then(|| ListenerGroup {
                sockets_on_port: on_port as u64,
                note: "SO_REUSEPORT: each socket has its own accept queue; this event is about the one above".into(),
            }),
            requested_backlog: l.requested_backlog,
            address: l.addr.to_string(),
            somaxconn: self.sysctl_u32(netns, "net.core.somaxconn"),
        }
    }

    /// The connection's owner as the kernel recorded it. A socket closed a moment ago (close()
    /// moves it to CLOSE just before the abort RST) still names it; a TIME_WAIT socket or one
    /// closed longer ago only has a last owner. Sockets older than the agent are found by inode.
    pub fn conn_owner(
        &mut self,
        cause: Cause,
        netns: u32,
        info: &OwnerInfo,
        sock_inode: u64,
        endpoints: Option<Endpoints>,
        now: u64,
    ) -> ConnOwner {
        let mut c = ConnOwner::default();
        if let Some(owner) = self.kernel_owner(info) {
            let closed = (info.closed_ns != 0).then_some(info.closed_ns);
            let just_closed = closed.is_some_and(|t| now.saturating_sub(t) <= JUST_CLOSED_NS);
            if closed.is_none() || (just_closed && cause != Cause::TimewaitSegment) {
                c.age_seconds = (info.since_ns != 0)
                    .then(|| secs(closed.unwrap_or(now).saturating_sub(info.since_ns)));
                c.owner = Some(owner);
            } else {
                c.last_owner = Some(LastOwner {
                    process: ProcessRef::new(owner.pid, &owner.comm),
                    closed_seconds_ago: secs(now.saturating_sub(closed.unwrap_or(now))),
                });
            }
            return c;
        }
        if sock_inode != 0 {
            let mut holders = self.seeded_owners(sock_inode);
            if !holders.is_empty() {
                c.owner = Some(holders.remove(0));
                c.other_owners = holders;
                c.found_by = Some("the socket predates the agent: /proc/<pid>/fd at start-up");
                return c;
            }
        }
        // A connection nobody accepted yet, reset because its listener went away.
        if let Some(e) = endpoints {
            if let Some(l) = self.table.closed_listener(netns, e.local.port) {
                if now.saturating_sub(l.closed_ns) <= JUST_CLOSED_NS {
                    c.owner = l.owners.first().cloned();
                    c.trigger = Some("the listener closed with this connection still in its accept queue (never accepted)");
                }
            }
        }
        c
    }

    /// Seconds since the connection last sent or received, from the kernel's jiffies stamps.
    pub fn idle_seconds(&self, snap: &TcpSnapshot) -> Option<f64> {
        // A socket that never sent or received data has no activity stamps yet.
        if snap.valid & SNAP_TIMES == 0 || (snap.lsndtime == 0 && snap.rcv_tstamp == 0) {
            return None;
        }
        let now = snap.now_jiffies as u32;
        let last = if wrapping_gap(snap.lsndtime, snap.rcv_tstamp) < u32::MAX / 2 {
            snap.lsndtime
        } else {
            snap.rcv_tstamp
        };
        Some(f64::from(wrapping_gap(now, last)) / self.hz as f64)
    }
}
