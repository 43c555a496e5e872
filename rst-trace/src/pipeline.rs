//! From kernel records to diagnoses: keeps the socket table current and explains each
//! reset, drop and failed syscall with its owner, evidence and advice.
use std::{collections::HashMap, sync::Arc};

use rst_trace_common::{
    AcceptRecord, ConnectRecord, ListenDropRecord, OwnerInfo, ResetReceivedRecord, ResetSentRecord,
    SkbDropRecord, SockStateRecord, TcpSnapshot, LISTEN_DROP_ACK_ACCEPT_FULL,
    LISTEN_DROP_SYN_ACCEPT_FULL, LISTEN_DROP_SYN_QUEUE_FULL, REASON_NONE, RST_HAS_SOCK,
    RST_KEEPALIVE_ON, RST_LINGER_ZERO, SKB_OUTBOUND, SNAP_BACKLOG, SNAP_SEQ, SNAP_TIMES,
    STATE_TASK_VALID,
};
use serde_json::{json, Value};

use crate::{
    advice::{advice, AdviceFacts},
    attribution::{
        classify_drop, classify_received_reset, classify_sent_reset, SentReset, TCP_LISTEN,
    },
    cause::{Cause, Direction, Origin},
    correlate::{FdIncidents, ListenDropLedger, RejectPairing, RstLink, SentRst, TtlCache},
    diagnosis::Diagnosis,
    host::HostInfo,
    kernel::reasons::ReasonNames,
    listeners::{Finding, Saturation},
    owner::{KernelOwner, Learned, Owner},
    records::{Endpoint, Endpoints, Record, Task},
    sockdiag::NetnsSnapshot,
    sockets::{ListenerSock, SocketTable},
};

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const EADDRNOTAVAIL: i32 = 99;

use crate::clock::WallClock as Clock;

/// Socket counts to one destination, by TCP state name.
type SocketsByState = std::collections::BTreeMap<&'static str, u64>;

/// A process's file-descriptor facts, read at most once a second per process: accept() fails
/// with EMFILE in a tight loop, and each reading walks /proc/<pid>/fd.
#[derive(Debug, Clone, Copy)]
struct FdFacts {
    nofile: Option<(u64, u64)>,
    open: Option<u64>,
    file_nr: Option<[u64; 3]>,
}

pub struct Pipeline<H: HostInfo> {
    pub table: SocketTable,
    rst_reasons: ReasonNames,
    drop_reasons: ReasonNames,
    /// The kernel frees packets with reason NETFILTER_DROP (5.17+): a REJECT's dropped
    /// segment can be seen and paired with its RST.
    netfilter_drops_seen: bool,
    host: H,
    clock: Clock,
    hz: u64,
    fd_incidents: FdIncidents,
    owners: HashMap<(u32, u32), Arc<Owner>>,
    listen_drops: ListenDropLedger,
    rejects: RejectPairing,
    rst_link: RstLink<Diagnosis>,
    /// Sockets to a destination by state, sampled at most once a second per destination.
    port_census: TtlCache<(u32, Endpoint), Option<SocketsByState>>,
    /// File-descriptor facts per process, see [`FdFacts`].
    fd_facts: TtlCache<u32, FdFacts>,
    /// Sockets that predate the agent: sockfs inode → processes holding it (from /proc).
    seeds: HashMap<u64, Vec<u32>>,
    /// Current name and cgroup per (pid, start time), read at most once a second: names
    /// change with exec(), and a storm must not read /proc per event.
    processes: TtlCache<(u32, u64), CachedProcess>,
    /// Monotonic time for the correlators' windows (a fake one in tests).
    mono: Box<dyn crate::clock::Clock>,
}

#[derive(Debug, Clone)]
struct CachedProcess {
    name: Option<String>,
    cgroup: Option<String>,
}

const PROCESS_CACHE_NS: u64 = 1_000_000_000;
const MAX_CACHED_PROCESSES: usize = 65_536;

/// The `related` section of a received RST that this host sent.
fn sent_related(s: &SentRst) -> Value {
    json!({
        "cause": s.cause.as_str(),
        "direction": "sent",
        "origin": s.origin,
        "netns": s.netns,
        "owner_pid": s.owner_pid,
        "note": "this RST was sent by this host; its cause on the sending side is above",
    })
}

const FIREWALL_REFUSAL: &str = "A local netfilter rule (REJECT --reject-with tcp-reset) refused the connection, not a missing listener: see the firewall_reject event and the rule.";

/// A socket closed this recently still names its owner for the RST its closing caused.
const JUST_CLOSED_NS: u64 = 2_000_000_000;
/// accept() callers this recent are "the process serving the queue".
const ACCEPTER_WINDOW_NS: u64 = 60_000_000_000;

fn wrapping_gap(a: u32, b: u32) -> u32 {
    a.wrapping_sub(b)
}

impl<H: HostInfo> Pipeline<H> {
    pub fn new(
        rst_reasons: ReasonNames,
        drop_reasons: ReasonNames,
        host: H,
        clock: Clock,
        hz: u64,
    ) -> Self {
        Self {
            table: SocketTable::default(),
            rst_reasons,
            netfilter_drops_seen: drop_reasons.value("NETFILTER_DROP").is_some(),
            drop_reasons,
            host,
            clock,
            hz: hz.max(1),
            fd_incidents: FdIncidents::default(),
            owners: HashMap::new(),
            listen_drops: ListenDropLedger::default(),
            rejects: RejectPairing::default(),
            rst_link: RstLink::default(),
            port_census: TtlCache::new(1_000_000_000, 4096),
            seeds: HashMap::new(),
            processes: TtlCache::new(PROCESS_CACHE_NS, MAX_CACHED_PROCESSES),
            fd_facts: TtlCache::new(PROCESS_CACHE_NS, MAX_CACHED_PROCESSES),
            mono: Box::new(crate::clock::Monotonic),
        }
    }

    /// Drives the correlators' windows from `clock` instead of CLOCK_MONOTONIC (tests).
    pub fn with_clock(mut self, clock: impl crate::clock::Clock + 'static) -> Self {
        self.mono = Box::new(clock);
        self
    }

    fn now(&self) -> u64 {
        self.mono.now_ns()
    }

    fn fd_facts(&mut self, pid: u32) -> FdFacts {
        let now = self.now();
        let host = &self.host;
        self.fd_facts.get_or_read(now, pid, || FdFacts {
            nofile: host.nofile_limit(pid),
            open: host.open_fds(pid),
            file_nr: host.file_nr(),
        })
    }

    /// Owners of the sockets that existed when the agent started (sockfs inode → pids).
    pub fn seed(&mut self, seeds: HashMap<u64, Vec<u32>>) {
        self.seeds = seeds;
    }

    /// The current name (`None`: the process is gone or its pid was reused) and cgroup of a
    /// process.
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
    fn kernel_owner(&mut self, info: &OwnerInfo) -> Option<Arc<Owner>> {
        let k = KernelOwner::from_info(info)?;
        let p = self.process(k.pid, k.start_boottime_ns);
        let task = Task {
            pid: k.pid,
            tid: k.tid,
            comm: p.name.unwrap_or(k.comm),
            cgroup_id: info.cgroup_id,
        };
        let mut o = Owner::from_task(&task, k.learned, p.cgroup);
        o.learned_at = Some(self.clock.wall(k.since_ns));
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

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// One `Owner` per (pid, thread, how learnt): connections of one process share it.
    fn owner(&mut self, task: &Task, learned: Learned) -> Arc<Owner> {
        let key = (task.tid, learned as u32);
        if let Some(o) = self.owners.get(&key) {
            if o.pid == task.pid && o.comm == task.comm {
                return o.clone();
            }
        }
        if self.owners.len() > 65_536 {
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

    pub fn handle(&mut self, rec: &Record) -> Vec<Diagnosis> {
        let out = match rec {
            Record::SockState(r) => {
                self.on_sock_state(r);
                Vec::new()
            }
            Record::Accept(r) => self.on_accept(r),
            Record::ResetSent(r) => self.on_reset_sent(r),
            Record::ResetReceived(r) => self.on_reset_received(r),
            Record::SkbDrop(r) => self.on_skb_drop(r),
            Record::Connect(r) => self.on_connect(r),
            Record::ListenDrop(r) => self.on_listen_drop(r),
            // A signal for the poller, not an event.
            Record::ListenerHot(_) => Vec::new(),
            Record::ForeignReset(r) => match Endpoints::try_from(&r.tuple) {
                // Without the NETFILTER_DROP drop reason (before 5.17) the dropped segment is
                // never seen: waiting for it would only delay the report past the moment the
                // peer's receipt of this RST looks for it.
                Ok(e) if !self.netfilter_drops_seen => {
                    let mut d = self.firewall_reject(r.header.netns, e, r.header.ktime_ns);
                    d.evidence
                        .insert("dropped_segment_seen".into(), json!(false));
                    // This kernel frees packets without a reason: the drop cannot be seen.
                    d.evidence
                        .insert("dropped_segment_observable".into(), json!(false));
                    vec![d]
                }
                Ok(e) if self.rejects.reset(r.header.netns, e, r.header.ktime_ns) => Vec::new(),
                Ok(e) => {
                    // Too many RSTs waiting for their drop: reported at once, unpaired.
                    let mut d = self.firewall_reject(r.header.netns, e, r.header.ktime_ns);
                    d.evidence
                        .insert("dropped_segment_seen".into(), json!(false));
                    vec![d]
                }
                Err(_) => Vec::new(),
            },
        };
        for d in &out {
            self.remember_sent(d);
        }
        out
    }

    fn remember_sent(&mut self, d: &Diagnosis) {
        if d.direction != Direction::Sent {
            return;
        }
        let Some(e) = d.endpoints else { return };
        let now = self.now();
        let sent = SentRst {
            cause: d.cause,
            origin: d.origin,
            netns: d.netns,
            at_ns: now,
            owner_pid: d.owner.as_ref().map(|o| o.pid),
        };
        self.rst_link.sent(now, e, sent, |pending, s| {
            pending.related = Some(sent_related(s));
            if s.cause == Cause::FirewallReject && pending.cause == Cause::ConnectionRefused {
                pending.advice = FIREWALL_REFUSAL.to_owned();
            }
        });
    }

    /// Whether received RSTs are waiting for their local counterpart (the agent's hold timer
    /// runs only then).
    pub fn holding_received(&self) -> bool {
        self.rst_link.holding()
    }

    /// Received RSTs whose hold is over (all of them when `force`), in arrival order.
    pub fn release_received(&mut self, force: bool) -> Vec<Diagnosis> {
        let now = self.now();
        self.rst_link.release(now, force)
    }

    /// Netfilter RSTs whose dropped segment was never seen (e.g. REJECT outside INPUT):
    /// reported on their own once the window has passed.
    pub fn expire_foreign_resets(&mut self) -> Vec<Diagnosis> {
        let now = self.now();
        let out: Vec<Diagnosis> = self
            .rejects
            .expire(now)
            .into_iter()
            .map(|u| {
                let mut d = self.firewall_reject(u.netns, u.endpoints, u.first_ns);
                d.count = u.count;
                d.evidence
                    .insert("dropped_segment_seen".into(), json!(false));
                d
            })
            .collect();
        for d in &out {
            self.remember_sent(d);
        }
        out
    }

    /// A netfilter drop answered by an RST that netfilter built: that is a REJECT.
    fn match_foreign_reset(
        &mut self,
        netns: u32,
        e: Endpoints,
        now: u64,
        r: &SkbDropRecord,
        reason: &str,
    ) -> Option<Diagnosis> {
        let t = self.rejects.drop_seen(now, netns, e)?;
        let mut d = self.firewall_reject(netns, e, t);
        d.reason = Some(reason.to_owned());
        d.evidence.insert(
            "dropped_segment_flags".into(),
            json!(tcp_flags(r.tcp_flags)),
        );
        d.evidence.insert("kernel_reason".into(), json!(reason));
        Some(d)
    }

    fn firewall_reject(&self, netns: u32, e: Endpoints, at: u64) -> Diagnosis {
        let mut d = Diagnosis::new(
            self.clock.wall(at),
            "rst_trace.reset_sent",
            Cause::FirewallReject,
            Direction::Sent,
            Origin::Netfilter,
            netns,
        );
        d.endpoints = Some(e);
        let listeners = self.table.listeners(netns, e.local.port).to_vec();
        let (owner, others, _) = self.listener_owner(&listeners, &e.local);
        d.owner = owner;
        d.other_owners = others;
        d.evidence.insert("note".into(), json!("the RST was built by netfilter (REJECT --reject-with tcp-reset), not by TCP: Tcp.OutRsts does not count it"));
        d.evidence
            .insert("intended_listener".into(), json!(!listeners.is_empty()));
        d.advice = advice(
            Cause::FirewallReject,
            &AdviceFacts {
                port: Some(e.local.port),
                ..Default::default()
            },
        );
        d
    }

    fn on_sock_state(&mut self, r: &SockStateRecord) {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let endpoints = Endpoints::try_from(&r.tuple).ok();
        let task = (r.flags & STATE_TASK_VALID != 0).then(|| Task::from(&r.task));
        match (r.old_state, r.new_state, task) {
            (_, TCP_LISTEN, Some(task)) => {
                let Some(e) = endpoints else { return };
                let owner = self.owner(&task, Learned::Listen);
                self.table.listen(
                    netns,
                    e.local.port,
                    ListenerSock {
                        skaddr: Some(r.skaddr),
                        inode: (r.sock_inode != 0).then_some(r.sock_inode),
                        addr: e.local.addr,
                        owners: vec![owner],
                        requested_backlog: (r.requested_backlog > 0).then_some(r.requested_backlog),
                        max_backlog: Some(r.max_ack_backlog),
                        since_ns: now,
                    },
                );
            }
            (TCP_LISTEN, _, _) => self.table.close(r.skaddr, now),
            _ => {}
        }
    }

    /// Periodic upkeep (once a second): forget closed listeners past their retention.
    pub fn expire(&mut self) {
        let now = self.now();
        self.table.expire(now);
        self.fd_incidents.expire(now);
    }

    fn on_accept(&mut self, r: &AcceptRecord) -> Vec<Diagnosis> {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let task = Task::from(&r.task);
        let errno = -r.ret;
        if errno != EMFILE && errno != ENFILE {
            return Vec::new();
        }
        let owner = self.owner(&task, Learned::Syscall);
        let listener = Endpoints::try_from(&r.listener).ok();
        let port = listener.map(|e| e.local.port).unwrap_or(0);
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.accept_failed",
            Cause::FdExhaustion,
            Direction::None,
            Origin::Syscall,
            netns,
        );
        d.endpoints = listener;
        d.tcp_state = Some(TCP_LISTEN);
        d.reason = Some(if errno == EMFILE { "EMFILE" } else { "ENFILE" }.into());
        let facts = self.fd_facts(task.pid);
        let (nofile, open, file_nr) = (facts.nofile, facts.open, facts.file_nr);
        let incident = self
            .fd_incidents
            .failure(now, netns, port, task.pid, &task.comm)
            .clone();
        let ev = &mut d.evidence;
        ev.insert("errno".into(), json!(d.reason));
        ev.insert("listen_fd".into(), json!(r.listen_fd));
        ev.insert("listening_port".into(), json!(port));
        ev.insert(
            "rlimit_nofile".into(),
            json!(nofile.map(|(s, h)| json!({"soft": limit_json(s), "hard": limit_json(h)}))),
        );
        ev.insert("open_fds".into(), json!(open));
        ev.insert(
            "file_nr".into(),
            json!(file_nr.map(|[a, f, m]| json!({"allocated": a, "free": f, "max": m}))),
        );
        ev.insert(
            "accept_queue".into(),
            json!({"length": r.listener_ack_backlog, "cap": r.listener_max_ack_backlog}),
        );
        ev.insert(
            "incident".into(),
            json!({"id": incident.id, "failures": incident.failures}),
        );
        d.advice = advice(
            Cause::FdExhaustion,
            &AdviceFacts {
                port: Some(port),
                nofile,
                open_fds: open,
                ..Default::default()
            },
        );
        d.owner = Some(owner);
        vec![d]
    }

    /// The live fd_exhaustion incident on a listener, if any, as a `related` object.
    pub fn related_fd_incident(&self, netns: u32, port: u16, now: u64) -> Option<Value> {
        let i = self.fd_incidents.live(now, netns, port)?;
        Some(json!({
            "cause": "fd_exhaustion",
            "incident": i.id,
            "process": {"pid": i.pid, "executable": {"name": i.comm}},
            "accept_failures": i.failures,
            "note": "the owner cannot accept() for lack of file descriptors, so its accept queue fills: one incident, root cause fd_exhaustion",
        }))
    }

    fn listener_owner(
        &self,
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
                let first = if owners.is_empty() {
                    None
                } else {
                    Some(owners.remove(0))
                };
                (first, owners, Some(l.clone()))
            }
            None => (None, Vec::new(), None),
        }
    }

    fn on_reset_sent(&mut self, r: &ResetSentRecord) -> Vec<Diagnosis> {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let endpoints = Endpoints::try_from(&r.tuple).ok();
        let reason = (r.reason != REASON_NONE).then(|| {
            self.rst_reasons
                .name(u64::from(r.reason))
                .map(str::to_owned)
                .unwrap_or_else(|| format!("REASON_{}", r.reason))
        });
        let snap = &r.snap;
        let unread =
            (snap.valid & SNAP_SEQ != 0).then(|| wrapping_gap(snap.rcv_nxt, snap.copied_seq));
        let listener_full =
            snap.valid & SNAP_BACKLOG != 0 && snap.sk_ack_backlog > snap.sk_max_ack_backlog;
        let facts = SentReset {
            reason: reason.as_deref(),
            state: r.state,
            has_sock: r.flags & RST_HAS_SOCK != 0,
            linger_zero: r.flags & RST_LINGER_ZERO != 0,
            listener_full,
            unread_bytes: unread,
            keepalive_on: r.flags & RST_KEEPALIVE_ON != 0,
            idle_seconds: self.idle_seconds(snap),
        };
        let (cause, inferred) = classify_sent_reset(&facts);
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.reset_sent",
            cause,
            Direction::Sent,
            Origin::TcpStack,
            netns,
        );
        d.reason = reason.clone();
        d.inferred = inferred;
        d.endpoints = endpoints;
        // A socket-less RST has no TCP state (the tracepoint reports 0).
        d.tcp_state = (r.flags & RST_HAS_SOCK != 0).then_some(r.state);
        let mut af = AdviceFacts {
            port: endpoints.map(|e| e.local.port),
            reason: reason.clone(),
            unread_bytes: unread,
            ..Default::default()
        };

        match cause {
            Cause::NoListener => {
                if let Some(e) = endpoints {
                    if let Some(c) = self.table.closed_listener(netns, e.local.port) {
                        let ago = now.saturating_sub(c.closed_ns) as f64 / 1e9;
                        if let Some(o) = c.owners.first() {
                            af.last_owner = Some((o.comm.clone(), o.pid, ago));
                            d.evidence.insert(
                                "last_listener".into(),
                                json!({
                                    "process": {"pid": o.pid, "executable": {"name": o.comm}},
                                    "address": c.addr.to_string(),
                                    "closed_seconds_ago": (ago * 1000.0).round() / 1000.0,
                                }),
                            );
                        }
                    }
                    let elsewhere: Vec<String> = self
                        .table
                        .listeners(netns, e.local.port)
                        .iter()
                        .map(|l| format!("{}:{}", l.addr, e.local.port))
                        .collect();
                    if !elsewhere.is_empty() {
                        d.evidence
                            .insert("listening_elsewhere".into(), json!(elsewhere));
                        af.listening_elsewhere = elsewhere;
                    }
                }
            }
            Cause::AcceptQueueOverflow => {
                d.evidence.insert("stage".into(), json!("ack"));
                d.evidence.insert(
                    "accept_queue".into(),
                    json!({"length": snap.sk_ack_backlog, "cap": snap.sk_max_ack_backlog}),
                );
                d.evidence.insert("tcp_abort_on_overflow".into(), json!(1));
                af.queue = Some((snap.sk_ack_backlog, snap.sk_max_ack_backlog));
                if let Some(l) = self.table.listener_by_sk(r.skaddr).cloned() {
                    self.attach_listener(&mut d, &l, &mut af);
                } else if let Some(o) = self.kernel_owner(&r.owner) {
                    d.owner = Some(o);
                }
                if let Some(e) = endpoints {
                    d.related = self.related_fd_incident(netns, e.local.port, now);
                    af.fd_exhaustion_related = d.related.is_some();
                }
            }
            _ => {
                self.attach_conn_owner(&mut d, &r.owner, r.sock_inode, endpoints, now);
                self.conn_evidence(&mut d, cause, snap, r.flags);
                if let Some(idle) = self.idle_seconds(snap) {
                    af.idle_s = Some(idle);
                }
            }
        }
        if let Some(reason) = &reason {
            d.evidence.insert("kernel_reason".into(), json!(reason));
        }
        d.advice = advice(cause, &af);
        vec![d]
    }

    /// The listener's owner is the process serving its queue (the latest accept() caller),
    /// else the one that called listen(); every other holder is listed too. In an
    /// SO_REUSEPORT group each member has its own queue: only the processes holding this
    /// member count.
    fn attach_listener(&mut self, d: &mut Diagnosis, l: &ListenerSock, af: &mut AdviceFacts) {
        let now = self.now();
        let port = d.endpoints.map_or(0, |e| e.local.port);
        let shared_port = self.table.listeners(d.netns, port).len() > 1;
        let holders: Vec<u32> = l.owners.iter().map(|o| o.pid).collect();
        let accepting: Vec<Arc<Owner>> = self
            .host
            .acceptors(d.netns, port)
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
        if !owners.is_empty() {
            d.owner = Some(owners.remove(0));
            d.other_owners = owners;
        }
        d.evidence.insert(
            "accepting_processes".into(),
            json!(accepting
                .iter()
                .map(|o| json!({"pid": o.pid, "executable": {"name": o.comm}}))
                .collect::<Vec<_>>()),
        );
        if let Some(inode) = l.inode {
            d.evidence.insert("listener_inode".into(), json!(inode));
        }
        if shared_port {
            d.evidence.insert(
                "listener_group".into(),
                json!({"sockets_on_port": self.table.listeners(d.netns, port).len(), "note": "SO_REUSEPORT: each socket has its own accept queue; this event is about the one above"}),
            );
        }
        af.requested_backlog = l.requested_backlog;
        d.evidence.insert(
            "listen_backlog_requested".into(),
            json!(l.requested_backlog),
        );
        d.evidence
            .insert("listener_address".into(), json!(l.addr.to_string()));
        if let Some(somaxconn) = self
            .host
            .sysctl(d.netns, "net.core.somaxconn")
            .and_then(|v| v.parse::<u32>().ok())
        {
            af.somaxconn = Some(somaxconn);
            d.evidence.insert("somaxconn".into(), json!(somaxconn));
        }
    }

    /// The connection's owner as the kernel recorded it. A socket closed a moment ago (close()
    /// moves it to CLOSE just before the abort RST) still names it; a TIME_WAIT socket or one
    /// closed longer ago only has a last owner. Sockets older than the agent are found by inode.
    fn attach_conn_owner(
        &mut self,
        d: &mut Diagnosis,
        info: &OwnerInfo,
        sock_inode: u64,
        endpoints: Option<Endpoints>,
        now: u64,
    ) {
        if let Some(owner) = self.kernel_owner(info) {
            let closed = (info.closed_ns != 0).then_some(info.closed_ns);
            let just_closed = closed.is_some_and(|c| now.saturating_sub(c) <= JUST_CLOSED_NS);
            if closed.is_none() || (just_closed && d.cause != Cause::TimewaitSegment) {
                d.evidence.insert(
                    "connection_age_seconds".into(),
                    json!(secs(closed.unwrap_or(now).saturating_sub(info.since_ns))),
                );
                d.owner = Some(owner);
            } else {
                d.evidence.insert(
                    "last_owner".into(),
                    json!({
                        "process": {"pid": owner.pid, "executable": {"name": owner.comm}},
                        "closed_seconds_ago": secs(now.saturating_sub(closed.unwrap_or(now))),
                    }),
                );
            }
            return;
        }
        if sock_inode != 0 {
            let mut holders = self.seeded_owners(sock_inode);
            if !holders.is_empty() {
                d.owner = Some(holders.remove(0));
                d.other_owners = holders;
                d.evidence.insert(
                    "owner_found_by".into(),
                    json!("the socket predates the agent: /proc/<pid>/fd at start-up"),
                );
                return;
            }
        }
        // A connection nobody accepted yet, reset because its listener went away.
        if let Some(e) = endpoints {
            if let Some(l) = self.table.closed_listener(d.netns, e.local.port) {
                if now.saturating_sub(l.closed_ns) <= JUST_CLOSED_NS {
                    d.owner = l.owners.first().cloned();
                    d.evidence.insert("trigger".into(), json!("the listener closed with this connection still in its accept queue (never accepted)"));
                }
            }
        }
    }

    fn idle_seconds(&self, snap: &TcpSnapshot) -> Option<f64> {
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

    fn conn_evidence(&self, d: &mut Diagnosis, cause: Cause, snap: &TcpSnapshot, flags: u32) {
        if snap.valid & SNAP_SEQ != 0 {
            d.evidence.insert(
                "unread_bytes".into(),
                json!(wrapping_gap(snap.rcv_nxt, snap.copied_seq)),
            );
            d.evidence.insert(
                "bytes_in_flight".into(),
                json!(wrapping_gap(snap.snd_nxt, snap.snd_una)),
            );
        }
        if let Some(idle) = self.idle_seconds(snap) {
            d.evidence.insert(
                "idle_seconds".into(),
                json!((idle * 1000.0).round() / 1000.0),
            );
        }
        if cause == Cause::KeepaliveTimeout {
            // Namespace defaults; a socket may override them with TCP_KEEPIDLE/INTVL/CNT.
            let mut ka = serde_json::Map::new();
            for (key, sysctl) in [
                ("time_seconds", "net.ipv4.tcp_keepalive_time"),
                ("interval_seconds", "net.ipv4.tcp_keepalive_intvl"),
                ("probes", "net.ipv4.tcp_keepalive_probes"),
            ] {
                ka.insert(
                    key.into(),
                    json!(self
                        .host
                        .sysctl(d.netns, sysctl)
                        .and_then(|v| v.parse::<u64>().ok())),
                );
            }
            d.evidence
                .insert("keepalive_defaults".into(), Value::Object(ka));
        }
        if cause == Cause::AbortByApplication {
            d.evidence.insert(
                "linger".into(),
                json!(if flags & RST_LINGER_ZERO != 0 {
                    "on, 0 s (close aborts)"
                } else {
                    "off"
                }),
            );
            if !d.evidence.contains_key("trigger") {
                d.evidence.insert(
                    "trigger".into(),
                    json!(if flags & RST_LINGER_ZERO != 0 {
                        "close() with SO_LINGER {1, 0}"
                    } else {
                        "disconnect or shutdown by the application"
                    }),
                );
            }
        }
    }

    fn on_reset_received(&mut self, r: &ResetReceivedRecord) -> Vec<Diagnosis> {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let endpoints = Endpoints::try_from(&r.tuple).ok();
        let cause = classify_received_reset(r.state);
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.reset_received",
            cause,
            Direction::Received,
            Origin::Peer,
            netns,
        );
        d.endpoints = endpoints;
        d.tcp_state = Some(r.state);
        self.attach_conn_owner(&mut d, &r.owner, r.sock_inode, endpoints, now);
        if cause == Cause::ResetByPeer {
            self.conn_evidence(&mut d, cause, &r.snap, 0);
        }
        d.evidence
            .insert("sock_cookie".into(), json!(r.sock_cookie));
        let af = AdviceFacts {
            port: endpoints.map(|e| e.remote.port),
            idle_s: self.idle_seconds(&r.snap),
            ..Default::default()
        };
        d.advice = advice(cause, &af);
        if let Some(e) = endpoints {
            d.related = self.rst_link.counterpart(self.now(), e).map(sent_related);
        }
        let refused_by_firewall = d.related.as_ref().and_then(|r| r["cause"].as_str())
            == Some(Cause::FirewallReject.as_str());
        if cause == Cause::ConnectionRefused && refused_by_firewall {
            d.advice = FIREWALL_REFUSAL.to_owned();
        }
        if let (None, Some(e)) = (&d.related, endpoints) {
            let now = self.now();
            return self.rst_link.hold(now, e, d).into_iter().collect();
        }
        vec![d]
    }

    fn on_skb_drop(&mut self, r: &SkbDropRecord) -> Vec<Diagnosis> {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let Some(reason) = self
            .drop_reasons
            .name(u64::from(r.reason))
            .map(str::to_owned)
        else {
            return Vec::new();
        };
        let Some(cause) = classify_drop(&reason) else {
            return Vec::new();
        };
        let endpoints = Endpoints::try_from(&r.tuple).ok();
        if cause == Cause::FirewallDrop {
            if let Some(d) =
                endpoints.and_then(|e| self.match_foreign_reset(netns, e, now, r, &reason))
            {
                return vec![d];
            }
        }
        let origin = if cause == Cause::FirewallDrop {
            Origin::Netfilter
        } else {
            Origin::TcpStack
        };
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.segment_dropped",
            cause,
            Direction::Dropped,
            origin,
            netns,
        );
        d.reason = Some(reason.clone());
        d.endpoints = endpoints;
        d.evidence.insert("kernel_reason".into(), json!(reason));
        d.evidence
            .insert("tcp_flags".into(), json!(tcp_flags(r.tcp_flags)));
        d.evidence.insert(
            "segment_direction".into(),
            json!(if r.flags & SKB_OUTBOUND != 0 {
                "outbound"
            } else {
                "inbound"
            }),
        );
        let mut af = AdviceFacts {
            port: endpoints.map(|e| e.local.port),
            ..Default::default()
        };
        if let Some(e) = endpoints {
            match cause {
                Cause::AcceptQueueOverflow => {
                    self.listen_drops.ack_time_drop(netns, e.local.port);
                    d.tcp_state = Some(TCP_LISTEN);
                    d.evidence.insert("stage".into(), json!("ack"));
                    if reason == "NO_SOCKET" {
                        d.evidence.insert("syncookie_handshake".into(), json!(true));
                    }
                    // The receiving socket is the listener itself: in an SO_REUSEPORT group it
                    // says which member overflowed.
                    let l = self.table.listener_by_sk(r.rx_sk).cloned().or_else(|| {
                        let listeners = self.table.listeners(netns, e.local.port).to_vec();
                        self.listener_owner(&listeners, &e.local).2
                    });
                    if let Some(l) = l {
                        self.attach_listener(&mut d, &l, &mut af);
                    }
                    if let Some(v) = self.host.sysctl(netns, "net.ipv4.tcp_abort_on_overflow") {
                        d.evidence
                            .insert("tcp_abort_on_overflow".into(), json!(v.parse::<u32>().ok()));
                    }
                    d.related = self.related_fd_incident(netns, e.local.port, now);
                    af.fd_exhaustion_related = d.related.is_some();
                }
                _ => {
                    if let Some(o) = self.kernel_owner(&r.owner) {
                        d.owner = Some(o);
                    } else {
                        let listeners = self.table.listeners(netns, e.local.port).to_vec();
                        let (owner, others, _) = self.listener_owner(&listeners, &e.local);
                        d.owner = owner;
                        d.other_owners = others;
                    }
                }
            }
        }
        d.advice = advice(cause, &af);
        vec![d]
    }

    /// A listener drop seen on the drop path itself (fentry/kprobe tiers).
    fn on_listen_drop(&mut self, r: &ListenDropRecord) -> Vec<Diagnosis> {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let Ok(e) = Endpoints::try_from(&r.tuple) else {
            return Vec::new();
        };
        let (cause, stage, via) = match r.stage {
            LISTEN_DROP_SYN_ACCEPT_FULL => (Cause::AcceptQueueOverflow, "syn", "tcp_conn_request"),
            LISTEN_DROP_ACK_ACCEPT_FULL => {
                (Cause::AcceptQueueOverflow, "ack", "tcp_v*_syn_recv_sock")
            }
            LISTEN_DROP_SYN_QUEUE_FULL => (Cause::SynQueueOverflow, "syn", "tcp_conn_request"),
            _ => return Vec::new(),
        };
        if cause == Cause::SynQueueOverflow {
            self.listen_drops.syn_queue_drop(netns, e.local.port);
        } else {
            self.listen_drops.ack_time_drop(netns, e.local.port);
        }
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.listen_drop",
            cause,
            Direction::Dropped,
            Origin::TcpStack,
            netns,
        );
        d.endpoints = Some(e);
        d.tcp_state = Some(TCP_LISTEN);
        let mut af = AdviceFacts {
            port: Some(e.local.port),
            queue: Some((r.ack_backlog, r.max_ack_backlog)),
            ..Default::default()
        };
        let l = self.table.listener_by_sk(r.skaddr).cloned().or_else(|| {
            let listeners = self.table.listeners(netns, e.local.port).to_vec();
            self.listener_owner(&listeners, &e.local).2
        });
        if let Some(l) = l {
            self.attach_listener(&mut d, &l, &mut af);
        }
        d.evidence.insert("stage".into(), json!(stage));
        d.evidence
            .insert("observed_by".into(), json!(format!("per packet at {via}")));
        d.evidence.insert(
            "accept_queue".into(),
            json!({"length": r.ack_backlog, "cap": r.max_ack_backlog}),
        );
        d.evidence
            .insert("syn_queue_length".into(), json!(r.syn_qlen));
        if cause == Cause::SynQueueOverflow {
            let cookies = self
                .host
                .sysctl(netns, "net.ipv4.tcp_syncookies")
                .and_then(|v| v.parse::<u32>().ok());
            d.evidence.insert("tcp_syncookies".into(), json!(cookies));
            d.evidence.insert(
                "outcome".into(),
                json!(if cookies.unwrap_or(1) == 0 {
                    "dropped"
                } else {
                    "syn cookie sent"
                }),
            );
        } else {
            d.related = self.related_fd_incident(netns, e.local.port, now);
            af.fd_exhaustion_related = d.related.is_some();
        }
        d.advice = advice(cause, &af);
        vec![d]
    }

    /// SYN-queue overflows reported per packet in `netns` since the last call.
    pub fn take_synq_per_packet(&mut self, netns: u32) -> u64 {
        self.listen_drops.take_syn_queue(netns)
    }

    /// ACK-time drops reported per packet in `netns` since the last call, by port.
    pub fn take_ack_time_drops(&mut self, netns: u32) -> HashMap<u16, u64> {
        self.listen_drops.take_ack_time(netns)
    }

    /// Explains drops found by polling a namespace's listeners and counters.
    pub fn explain_finding(
        &mut self,
        netns: u32,
        f: &Finding,
        snap: &NetnsSnapshot,
        interval_s: f64,
    ) -> Diagnosis {
        let now = self.now();
        let event = if f.cause == Cause::SynQueueOverflow {
            "rst_trace.syn_queue_overflow"
        } else {
            "rst_trace.listen_drops"
        };
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            event,
            f.cause,
            Direction::Dropped,
            Origin::TcpStack,
            netns,
        );
        d.count = f.count;
        d.tcp_state = Some(TCP_LISTEN);
        if let Some(addr) = f.addr {
            d.endpoints = Some(Endpoints {
                local: Endpoint { addr, port: f.port },
                remote: Endpoint {
                    addr: unspecified(addr),
                    port: 0,
                },
            });
        }
        let sysctl = |n: &str| snap.sysctls.get(n).cloned();
        let num = |n: &str| sysctl(n).and_then(|v| v.parse::<u32>().ok());
        let mut af = AdviceFacts {
            port: Some(f.port),
            dropped: Some(f.count),
            interval_s: Some(interval_s),
            queue: f.queue,
            ..Default::default()
        };
        let listeners = self.table.listeners(netns, f.port).to_vec();
        let known = listeners
            .iter()
            .find(|l| f.inode.is_some() && l.inode == f.inode)
            .or_else(|| listeners.iter().find(|l| Some(l.addr) == f.addr))
            .or_else(|| listeners.first())
            .cloned();
        if let Some(l) = &known {
            self.attach_listener(&mut d, l, &mut af);
        }
        af.somaxconn = num("net.core.somaxconn");
        let ev = &mut d.evidence;
        ev.insert(
            "interval_seconds".into(),
            json!((interval_s * 1000.0).round() / 1000.0),
        );
        ev.insert("observed_by".into(), json!("polling: sock_diag drop counters and TcpExt MIB (no per-packet hook for this drop on this kernel)"));
        ev.insert(
            "accept_queue".into(),
            json!(f.queue.map(|(q, c)| json!({"length": q, "cap": c}))),
        );
        ev.insert("somaxconn".into(), json!(af.somaxconn));
        match f.cause {
            Cause::SynQueueOverflow => {
                ev.insert("syn_queue_length".into(), json!(f.syn_queue));
                ev.insert("syn_cookies_sent".into(), json!(f.cookies));
                ev.insert("syns_dropped".into(), json!(f.count - f.cookies));
                ev.insert(
                    "tcp_max_syn_backlog".into(),
                    json!(num("net.ipv4.tcp_max_syn_backlog")),
                );
                ev.insert(
                    "tcp_syncookies".into(),
                    json!(num("net.ipv4.tcp_syncookies")),
                );
                ev.insert(
                    "top_sources".into(),
                    json!(f
                        .top_sources
                        .iter()
                        .map(|(a, n)| json!({"address": a.to_string(), "syn_recv": n}))
                        .collect::<Vec<_>>()),
                );
                let total: usize = f.top_sources.iter().map(|(_, n)| n).sum();
                let top = f.top_sources.first().map_or(0, |(_, n)| *n);
                let shape = if total == 0 {
                    "unknown"
                } else if top * 2 >= total {
                    "flood from few sources"
                } else {
                    "burst from many sources"
                };
                ev.insert("pattern".into(), json!(shape));
            }
            _ => {
                ev.insert("stage".into(), json!("syn"));
                ev.insert(
                    "tcp_abort_on_overflow".into(),
                    json!(num("net.ipv4.tcp_abort_on_overflow")),
                );
                d.related = self.related_fd_incident(netns, f.port, now);
                af.fd_exhaustion_related = d.related.is_some();
            }
        }
        d.advice = advice(f.cause, &af);
        d
    }

    /// A listener whose accept queue is at least 80 % full: a warning before drops start.
    pub fn explain_saturation(&mut self, netns: u32, s: &Saturation) -> Diagnosis {
        let now = self.now();
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.listener_saturated",
            Cause::AcceptQueueOverflow,
            Direction::None,
            Origin::TcpStack,
            netns,
        );
        d.count = 0;
        d.endpoints = Some(Endpoints {
            local: Endpoint {
                addr: s.addr,
                port: s.port,
            },
            remote: Endpoint {
                addr: unspecified(s.addr),
                port: 0,
            },
        });
        d.tcp_state = Some(TCP_LISTEN);
        let mut af = AdviceFacts {
            port: Some(s.port),
            queue: Some((s.queue, s.cap)),
            ..Default::default()
        };
        if let Some(l) = self.table.listeners(netns, s.port).first().cloned() {
            self.attach_listener(&mut d, &l, &mut af);
        }
        d.evidence.insert(
            "accept_queue".into(),
            json!({"length": s.queue, "cap": s.cap}),
        );
        d.evidence.insert(
            "warning".into(),
            json!("accept queue at or above 80% of its cap: drops are imminent"),
        );
        d.advice = format!(
            "The accept queue of :{} is {}/{} full. {}",
            s.port,
            s.queue,
            s.cap,
            advice(Cause::AcceptQueueOverflow, &af)
        );
        d
    }

    fn on_connect(&mut self, r: &ConnectRecord) -> Vec<Diagnosis> {
        if -r.ret != EADDRNOTAVAIL {
            return Vec::new();
        }
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let task = Task::from(&r.task);
        let owner = self.owner(&task, Learned::Syscall);
        let mut d = Diagnosis::new(
            self.clock.wall(now),
            "rst_trace.connect_failed",
            Cause::EphemeralPortExhaustion,
            Direction::None,
            Origin::Syscall,
            netns,
        );
        d.endpoints = Endpoints::try_from(&r.tuple).ok();
        d.reason = Some("EADDRNOTAVAIL".into());
        let range = self.host.sysctl(netns, "net.ipv4.ip_local_port_range");
        d.evidence
            .insert("ip_local_port_range".into(), json!(range));
        if let Some(dst) = d.endpoints.map(|e| e.remote) {
            // Rate-limited: under exhaustion connect() fails in a tight loop.
            let host = &self.host;
            let census = self.port_census.get_or_read(now, (netns, dst), || {
                host.sockets_to(netns, dst.addr, dst.port)
            });
            if let Some(census) = census {
                d.evidence
                    .insert("sockets_to_destination".into(), json!(census));
            }
        }
        if let Some(r) = range.as_deref() {
            let v: Vec<u32> = r
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [lo, hi] = v[..] {
                d.evidence
                    .insert("ephemeral_ports".into(), json!(hi.saturating_sub(lo) + 1));
            }
        }
        d.owner = Some(owner);
        d.advice = advice(
            Cause::EphemeralPortExhaustion,
            &AdviceFacts {
                port_range: range,
                ..Default::default()
            },
        );
        vec![d]
    }
}

fn unspecified(like: std::net::IpAddr) -> std::net::IpAddr {
    if like.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}

fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e6).round() / 1000.0
}

fn limit_json(v: u64) -> Value {
    if v == u64::MAX {
        json!("unlimited")
    } else {
        json!(v)
    }
}

fn tcp_flags(b: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x04, "RST"),
        (0x01, "FIN"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| b & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    //! The pipeline fed with records as the kernel would write them, no kernel involved.
    use std::collections::BTreeMap;

    use rst_trace_common::{
        RecordKind, Tuple, OWNER_ACCEPT, OWNER_CLOSED, RECORD_VERSION, STATE_TASK_VALID,
    };

    use super::*;
    use crate::{
        attribution::TCP_CLOSE, clock::FakeClock, correlate::fd_incidents::FD_INCIDENT_WINDOW_NS,
        host::Acceptor,
    };
    use std::time::SystemTime;

    /// A host where pid 200 exec'd into "server" and pid 300 is "worker-b"; other pids are gone.
    #[derive(Default)]
    struct FakeHost {
        acceptors: Vec<(u16, Acceptor)>,
    }

    impl HostInfo for FakeHost {
        fn cgroup_of(&self, _pid: u32) -> Option<String> {
            Some("/system.slice/app.service".into())
        }
        fn nofile_limit(&self, _pid: u32) -> Option<(u64, u64)> {
            Some((8, 4096))
        }
        fn open_fds(&self, _pid: u32) -> Option<u64> {
            Some(8)
        }
        fn file_nr(&self) -> Option<[u64; 3]> {
            Some([100, 0, 1000])
        }
        fn sysctl(&self, _netns: u32, name: &str) -> Option<String> {
            Some(
                if name == "net.core.somaxconn" {
                    "4096"
                } else {
                    "0"
                }
                .into(),
            )
        }
        fn sockets_to(
            &self,
            _netns: u32,
            _dst: std::net::IpAddr,
            _port: u16,
        ) -> Option<BTreeMap<&'static str, u64>> {
            None
        }
        fn process_name(&self, pid: u32, start: u64) -> Option<String> {
            match (pid, start) {
                (200, 0 | 77) => Some("server".into()),
                (300, _) => Some("worker-b".into()),
                (100 | 4242 | 1, _) => Some("myapp".into()),
                _ => None,
            }
        }
        fn acceptors(&self, _netns: u32, port: u16) -> Vec<Acceptor> {
            self.acceptors
                .iter()
                .filter(|(p, _)| *p == port)
                .map(|(_, a)| a.clone())
                .collect()
        }
    }

    const NS: u32 = 4026532001;

    fn pipeline() -> Pipeline<FakeHost> {
        let rst = ReasonNames::from_pairs([("NO_SOCKET".into(), 1), ("TCP_STATE".into(), 14)]);
        Pipeline::new(
            rst,
            ReasonNames::default(),
            FakeHost::default(),
            Clock::fixed(SystemTime::UNIX_EPOCH),
            250,
        )
        .with_clock(FakeClock::at(NOW))
    }

    /// Monotonic time the fake clock starts at.
    const NOW: u64 = 1_000_000_000;

    fn header(kind: RecordKind, t: u64) -> rst_trace_common::RecordHeader {
        rst_trace_common::RecordHeader {
            kind: kind as u16,
            version: RECORD_VERSION,
            cpu: 0,
            ktime_ns: t,
            netns: NS,
            _pad: 0,
        }
    }

    fn tuple(lport: u16, rport: u16) -> Tuple {
        let mut t = Tuple {
            family: 2,
            local_port: lport,
            remote_port: rport,
            ..Default::default()
        };
        t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t
    }

    fn task(pid: u32, comm: &[u8]) -> rst_trace_common::TaskInfo {
        let mut t = rst_trace_common::TaskInfo {
            tid: pid,
            pid,
            ..Default::default()
        };
        t.comm[..comm.len()].copy_from_slice(comm);
        t
    }

    fn listen(p: &mut Pipeline<FakeHost>, sk: u64, port: u16, pid: u32, t: u64) {
        let r = SockStateRecord {
            header: header(RecordKind::SockState, t),
            tuple: tuple(port, 0),
            skaddr: sk,
            old_state: TCP_CLOSE,
            new_state: TCP_LISTEN,
            flags: STATE_TASK_VALID,
            requested_backlog: 16,
            max_ack_backlog: 16,
            _pad: 0,
            task: task(pid, b"myapp"),
            sock_inode: 0,
        };
        assert!(p.handle(&Record::SockState(r)).is_empty());
    }

    fn close(p: &mut Pipeline<FakeHost>, sk: u64, port: u16, old: u32, t: u64) {
        let r = SockStateRecord {
            header: header(RecordKind::SockState, t),
            tuple: tuple(port, 0),
            skaddr: sk,
            old_state: old,
            new_state: TCP_CLOSE,
            ..Default::default()
        };
        p.handle(&Record::SockState(r));
    }

    fn no_socket_rst(lport: u16, rport: u16, t: u64) -> Record {
        Record::ResetSent(ResetSentRecord {
            header: header(RecordKind::ResetSent, t),
            tuple: tuple(lport, rport),
            reason: 1,
            ..Default::default()
        })
    }

    #[test]
    fn no_listener_names_the_listener_that_closed_and_never_the_current_task() {
        let mut p = pipeline();
        listen(&mut p, 0xa, 8080, 4242, 1_000_000_000);
        close(&mut p, 0xa, 8080, TCP_LISTEN, 2_000_000_000);
        let d = p.handle(&no_socket_rst(8080, 40000, 3_250_000_000));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].cause, Cause::NoListener);
        assert!(d[0].owner.is_none(), "no_listener has no owner");
        assert_eq!(d[0].evidence["last_listener"]["process"]["pid"], 4242);
        assert_eq!(d[0].evidence["last_listener"]["closed_seconds_ago"], 1.25);
        assert!(
            d[0].advice.contains("myapp") && d[0].advice.contains("1.2 s ago"),
            "{}",
            d[0].advice
        );
    }

    #[test]
    fn a_listener_on_another_address_is_pointed_out() {
        let mut p = pipeline();
        listen(&mut p, 0xa, 8080, 1, 0);
        let mut rec = ResetSentRecord {
            header: header(RecordKind::ResetSent, 5),
            tuple: tuple(8080, 40000),
            reason: 1,
            ..Default::default()
        };
        rec.tuple.local_addr[..4].copy_from_slice(&[10, 0, 0, 5]);
        let d = p.handle(&Record::ResetSent(rec));
        assert_eq!(d[0].evidence["listening_elsewhere"][0], "127.0.0.1:8080");
    }

    fn kernel_owner(pid: u32, comm: &[u8], how: u32) -> OwnerInfo {
        let mut o = OwnerInfo {
            pid,
            tid: pid,
            how,
            since_ns: 10,
            start_boottime_ns: 77,
            ..Default::default()
        };
        o.comm[..comm.len()].copy_from_slice(comm);
        o
    }

    fn abort_rst(sk: u64, port: u16, owner: OwnerInfo, t: u64) -> Record {
        Record::ResetSent(ResetSentRecord {
            header: header(RecordKind::ResetSent, t),
            tuple: tuple(port, 50000),
            skaddr: sk,
            state: TCP_CLOSE,
            reason: 14,
            flags: rst_trace_common::RST_HAS_SOCK,
            owner,
            ..Default::default()
        })
    }

    #[test]
    fn the_owner_comes_from_the_record_with_its_current_name() {
        let mut p = pipeline();
        listen(&mut p, 0xa, 80, 100, 0);
        // Learnt as "launcher" at accept(); the process has exec'd into "server" since.
        let d = p.handle(&abort_rst(
            0xc,
            80,
            kernel_owner(200, b"launcher", OWNER_ACCEPT),
            20,
        ));
        assert_eq!(d[0].cause, Cause::AbortByApplication);
        let o = d[0].owner.as_ref().expect("owner");
        assert_eq!(
            (o.pid, o.comm.as_str(), o.learned),
            (200, "server", Learned::Accept)
        );
        assert!(o.learned_at.is_some());
        assert_eq!(d[0].evidence["connection_age_seconds"], 0.0);
    }

    #[test]
    fn a_reused_pid_keeps_the_recorded_name() {
        let mut p = pipeline();
        let mut o = kernel_owner(200, b"launcher", OWNER_ACCEPT);
        o.start_boottime_ns = 5; // another process had pid 200 then
        let d = p.handle(&abort_rst(0xc, 80, o, 20));
        assert_eq!(
            d[0].owner.as_ref().map(|o| o.comm.as_str()),
            Some("launcher")
        );
    }

    #[test]
    fn a_timewait_socket_names_its_last_owner_only() {
        let mut p = pipeline();
        let mut o = kernel_owner(200, b"server", OWNER_ACCEPT);
        o.closed_ns = 500_000_000;
        o.flags = OWNER_CLOSED;
        let d = p.handle(&Record::ResetSent(ResetSentRecord {
            header: header(RecordKind::ResetSent, 3_000_000_000),
            tuple: tuple(80, 50000),
            skaddr: 0xd,
            state: 6,
            reason: 9,
            flags: rst_trace_common::RST_HAS_SOCK,
            owner: o,
            ..Default::default()
        }));
        assert!(d[0].owner.is_none(), "{:?}", d[0].owner);
        assert_eq!(d[0].evidence["last_owner"]["process"]["pid"], 200);
        assert_eq!(d[0].evidence["last_owner"]["closed_seconds_ago"], 2.5);
    }

    #[test]
    fn a_socket_older_than_the_agent_is_found_by_inode() {
        let mut p = pipeline();
        p.seed(HashMap::from([(9999, vec![300])]));
        let d = p.handle(&Record::ResetReceived(ResetReceivedRecord {
            header: header(RecordKind::ResetReceived, 5),
            tuple: tuple(50000, 80),
            skaddr: 0xd,
            state: 1,
            sock_inode: 9999,
            ..Default::default()
        }));
        assert!(d.is_empty(), "held back for its counterpart");
        let d = p.release_received(true);
        assert_eq!(
            d[0].owner.as_ref().map(|o| (o.pid, o.learned)),
            Some((300, Learned::Procfs))
        );
    }

    #[test]
    fn a_reuseport_member_is_blamed_on_its_own_holder() {
        let mut p = Pipeline::new(
            ReasonNames::from_pairs([("TCP_STATE".into(), 14)]),
            ReasonNames::from_pairs([("TCP_LISTEN_OVERFLOW".into(), 77)]),
            FakeHost {
                // pid 300 serves its own member; pid 100's member is stalled.
                acceptors: vec![(
                    80,
                    Acceptor {
                        pid: 300,
                        comm: "worker-b".into(),
                        last_ns: NOW,
                    },
                )],
            },
            Clock::fixed(SystemTime::UNIX_EPOCH),
            250,
        )
        .with_clock(FakeClock::at(NOW));
        listen(&mut p, 0xa, 80, 100, 0);
        listen(&mut p, 0xb, 80, 300, 0);
        let d = p.handle(&Record::SkbDrop(SkbDropRecord {
            header: header(RecordKind::SkbDrop, 9),
            tuple: tuple(80, 50000),
            rx_sk: 0xa,
            reason: 77,
            flags: rst_trace_common::SKB_TUPLE_VALID,
            ..Default::default()
        }));
        assert_eq!(d[0].cause, Cause::AcceptQueueOverflow);
        assert_eq!(
            d[0].owner.as_ref().map(|o| o.pid),
            Some(100),
            "the stalled member's holder"
        );
        assert!(d[0].other_owners.is_empty(), "{:?}", d[0].other_owners);
        assert_eq!(d[0].evidence["accepting_processes"], json!([]));
        assert_eq!(d[0].evidence["listener_group"]["sockets_on_port"], 2);
    }

    #[test]
    fn a_received_rst_is_linked_to_the_local_rst_even_when_it_arrives_first() {
        let clock = FakeClock::at(NOW);
        let mut p = pipeline().with_clock(clock.clone());
        let recv = ResetReceivedRecord {
            header: header(RecordKind::ResetReceived, 5),
            tuple: tuple(50000, 80),
            skaddr: 0xd,
            state: 1,
            ..Default::default()
        };
        assert!(
            p.handle(&Record::ResetReceived(recv)).is_empty(),
            "held back for its counterpart"
        );
        p.handle(&Record::ResetSent(ResetSentRecord {
            header: header(RecordKind::ResetSent, 6),
            tuple: tuple(80, 50000),
            skaddr: 0xe,
            state: TCP_CLOSE,
            reason: 14,
            flags: rst_trace_common::RST_HAS_SOCK,
            ..Default::default()
        }));
        assert!(p.release_received(false).is_empty(), "the hold is not over");
        clock.set(NOW + crate::correlate::RECEIVED_HOLD_NS);
        let released = p.release_received(false);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].cause, Cause::ResetByPeer);
        assert_eq!(
            released[0].related.as_ref().map(|r| r["cause"].clone()),
            Some(json!("abort_by_application"))
        );
    }

    #[test]
    fn emfile_on_accept_is_one_incident_that_explains_the_overflow() {
        let mut p = pipeline();
        listen(&mut p, 0xa, 80, 100, 0);
        let acc = AcceptRecord {
            header: header(RecordKind::Accept, 10),
            task: task(100, b"myapp"),
            listener: tuple(80, 0),
            listener_skaddr: 0xa,
            ret: -24,
            ..Default::default()
        };
        let d = p.handle(&Record::Accept(acc));
        assert_eq!(d[0].cause, Cause::FdExhaustion);
        assert_eq!(d[0].owner.as_ref().map(|o| o.pid), Some(100));
        assert_eq!(d[0].evidence["rlimit_nofile"]["soft"], 8);
        let related = p.related_fd_incident(NS, 80, 20).expect("incident");
        assert_eq!(related["cause"], "fd_exhaustion");
        assert!(p.related_fd_incident(NS, 81, 20).is_none(), "another port");
        assert!(
            p.related_fd_incident(NS, 80, 10 + FD_INCIDENT_WINDOW_NS + 1)
                .is_none(),
            "expired"
        );
    }

    fn foreign_rst(lport: u16, rport: u16, t: u64) -> Record {
        Record::ForeignReset(rst_trace_common::ForeignResetRecord {
            header: header(RecordKind::ForeignReset, t),
            tuple: tuple(lport, rport),
            ..Default::default()
        })
    }

    #[test]
    fn netfilter_rst_is_reported_at_once_where_drops_have_no_reason() {
        // 5.10: no skb_drop_reason, so the REJECTed segment's drop is never seen.
        let mut p = pipeline();
        listen(&mut p, 0xa, 8443, 4242, 1);
        let out = p.handle(&foreign_rst(8443, 50000, 2));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].cause, Cause::FirewallReject);
        assert_eq!(out[0].owner.as_ref().map(|o| o.pid), Some(4242));
        // The client's refusal arriving right after links to it.
        let client = Endpoints::try_from(&tuple(50000, 8443)).expect("tuple");
        assert!(p.rst_link.counterpart(NOW, client).is_some());
    }

    #[test]
    fn netfilter_rst_waits_for_its_drop_where_drops_have_reasons() {
        let mut p = Pipeline::new(
            ReasonNames::default(),
            ReasonNames::from_pairs([("NETFILTER_DROP".into(), 10)]),
            FakeHost::default(),
            Clock::fixed(SystemTime::UNIX_EPOCH),
            250,
        )
        .with_clock(FakeClock::at(NOW));
        assert!(p.handle(&foreign_rst(8443, 50000, 2)).is_empty());
    }
}
