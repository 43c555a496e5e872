//! The dispatcher: each kernel record (from the sensor, [`crate::records`]) goes to the
//! cause family that explains it ([`crate::causes`]), with the enrichment it needs
//! ([`crate::enrich`]) and the correlators that join it to other records
//! ([`crate::correlate`]). The output side ([`crate::output`], metrics) gets typed events.
use std::collections::HashMap;

use rst_trace_common::{
    event::Sampled, tcp::TCP_LISTEN, ResetSentRecord, SkbDropRecord, SockStateRecord, REASON_NONE,
    RST_HAS_SOCK, RST_KEEPALIVE_ON, RST_LINGER_ZERO, SNAP_BACKLOG, SNAP_SEQ, STATE_TASK_VALID,
};

use crate::{
    attribution::{classify_drop, classify_sent_reset, SentReset},
    cause::{Cause, Direction, Origin},
    causes::{connection, ephemeral_ports, fd_exhaustion, firewall, listen_queue, no_listener},
    clock::{Clock, WallClock},
    correlate::{FdIncidents, ListenDropLedger, RejectPairing, RstLink, SentRst},
    diagnosis::Diagnosis,
    enrich::Enricher,
    host::HostInfo,
    kernel::reasons::ReasonNames,
    listeners::{Finding, Saturation},
    owner::{Learned, Owner},
    records::{Endpoint, Endpoints, Record, Task},
    sensor::folds::Folded,
    sockdiag::NetnsSnapshot,
    sockets::{ListenerSock, SocketTable},
};

pub struct Pipeline<H: HostInfo> {
    ctx: Enricher<H>,
    rst_reasons: ReasonNames,
    drop_reasons: ReasonNames,
    /// The kernel frees packets with reason NETFILTER_DROP (5.17+): a REJECT's dropped
    /// segment can be seen and paired with its RST.
    netfilter_drops_seen: bool,
    fd_incidents: FdIncidents,
    listen_drops: ListenDropLedger,
    rejects: RejectPairing,
    rst_link: RstLink<Diagnosis>,
}

impl<H: HostInfo> Pipeline<H> {
    /// How full every table of the pipeline is, for the stats line and the metrics.
    pub fn figures(&self) -> Vec<crate::occupancy::TableFigure> {
        let mut v = self.ctx.figures();
        v.extend(self.rst_link.figures());
        v.push(self.rejects.figure());
        v.extend(self.listen_drops.figures());
        v.push(self.fd_incidents.figure());
        v
    }

    /// The namespace is gone: its listeners with it (their close may have been a lost record).
    pub fn forget_netns(&mut self, netns: u32) {
        self.ctx.table.forget_netns(netns);
    }

    pub fn new(
        rst_reasons: ReasonNames,
        drop_reasons: ReasonNames,
        host: H,
        clock: WallClock,
        hz: u64,
    ) -> Self {
        Self {
            ctx: Enricher::new(host, clock, hz),
            rst_reasons,
            netfilter_drops_seen: drop_reasons.value("NETFILTER_DROP").is_some(),
            drop_reasons,
            fd_incidents: FdIncidents::default(),
            listen_drops: ListenDropLedger::default(),
            rejects: RejectPairing::default(),
            rst_link: RstLink::default(),
        }
    }

    /// Drives the correlators' windows from `clock` instead of CLOCK_MONOTONIC (tests).
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.ctx.set_clock(Box::new(clock));
        self
    }

    /// Owners of the sockets that existed when the agent started (sockfs inode → pids).
    pub fn seed(&mut self, seeds: HashMap<u64, Vec<u32>>) {
        self.ctx.seed(seeds);
    }

    pub fn host(&self) -> &H {
        self.ctx.host()
    }

    pub fn clock(&self) -> WallClock {
        self.ctx.wall_clock()
    }

    pub fn table(&self) -> &SocketTable {
        &self.ctx.table
    }

    /// A listener found by polling (sock_diag) that no record announced.
    pub fn discovered_listener(
        &mut self,
        netns: u32,
        local: Endpoint,
        inode: u64,
        owners: Vec<std::sync::Arc<Owner>>,
        max: Option<u32>,
        now: u64,
    ) {
        self.ctx
            .table
            .discovered_listener(netns, local, inode, owners, max, now);
    }

    pub fn handle(&mut self, rec: &Record) -> Vec<Diagnosis> {
        let (ctx, incidents) = (&mut self.ctx, &mut self.fd_incidents);
        let out: Vec<Diagnosis> = match rec {
            Record::SockState(r) => {
                self.on_sock_state(r);
                None
            }
            Record::Accept(r) => fd_exhaustion::on_accept(ctx, incidents, r),
            Record::Connect(r) => ephemeral_ports::on_connect(ctx, r),
            Record::ResetSent(r) => Some(self.on_reset_sent(r)),
            Record::ResetReceived(r) => connection::on_reset_received(ctx, &mut self.rst_link, r),
            Record::SkbDrop(r) => self.on_skb_drop(r),
            Record::ListenDrop(r) => {
                listen_queue::on_listen_drop(ctx, &mut self.listen_drops, incidents, r)
            }
            // A signal for the poller, not an event.
            Record::ListenerHot(_) => None,
            Record::ForeignReset(r) => {
                firewall::on_foreign_reset(ctx, &mut self.rejects, self.netfilter_drops_seen, r)
            }
        }
        .into_iter()
        .collect();
        for d in &out {
            self.remember_sent(d);
        }
        out
    }

    /// Events the kernel folded in a storm, as one summary: explained as one of them would
    /// be, without linking sent and received RSTs (a count has no 4-tuple to link by).
    pub fn folded(&mut self, f: &Folded, records_per_cpu: u32) -> Option<Diagnosis> {
        let mut d = match f.record()? {
            Record::ResetSent(r) => self.on_reset_sent(&r),
            Record::ResetReceived(r) => connection::received(&mut self.ctx, &r),
            _ => return None,
        };
        d.count = f.count;
        d.evidence.set_sampled(Sampled {
            note: format!("storm: folded in the kernel past {records_per_cpu} records a second per CPU; one summary stands for this many events, client ports not kept"),
            events: f.count,
        });
        Some(d)
    }

    /// RSTs this host sent are remembered, so the receiving side (loopback, or another local
    /// namespace) is linked to their cause.
    fn remember_sent(&mut self, d: &Diagnosis) {
        if d.direction != Direction::Sent {
            return;
        }
        let Some(e) = d.endpoints else { return };
        let now = self.ctx.now();
        let sent = SentRst {
            cause: d.cause,
            origin: d.origin,
            netns: d.netns,
            at_ns: now,
            owner_pid: d.owner.as_ref().map(|o| o.pid),
        };
        self.rst_link.sent(now, e, sent, connection::link);
    }

    /// Whether received RSTs are waiting for their local counterpart (the agent's hold timer
    /// runs only then).
    pub fn holding_received(&self) -> bool {
        self.rst_link.holding()
    }

    /// Received RSTs whose hold is over (all of them when `force`), in arrival order.
    pub fn release_received(&mut self, force: bool) -> Vec<Diagnosis> {
        self.rst_link.release(self.ctx.now(), force)
    }

    /// Netfilter RSTs whose dropped segment was never seen: reported on their own once the
    /// window has passed.
    pub fn expire_foreign_resets(&mut self) -> Vec<Diagnosis> {
        let now = self.ctx.now();
        let out = firewall::expire(&self.ctx, &mut self.rejects, now);
        for d in &out {
            self.remember_sent(d);
        }
        out
    }

    /// Periodic upkeep (once a second): forget closed listeners and incidents past their time.
    pub fn expire(&mut self) {
        let now = self.ctx.now();
        self.ctx.table.expire(now);
        self.fd_incidents.expire(now);
    }

    fn on_sock_state(&mut self, r: &SockStateRecord) {
        let now = r.header.ktime_ns;
        let netns = r.header.netns;
        let endpoints = Endpoints::try_from(&r.tuple).ok();
        let task = (r.flags & STATE_TASK_VALID != 0).then(|| Task::from(&r.task));
        match (r.old_state, r.new_state, task) {
            (_, TCP_LISTEN, Some(task)) => {
                let Some(e) = endpoints else { return };
                let owner = self.ctx.owner(&task, Learned::Listen);
                self.ctx.table.listen(
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
            (TCP_LISTEN, _, _) => self.ctx.table.close(r.skaddr, now),
            _ => {}
        }
    }

    /// An RST the TCP stack sent: classified from the kernel's reason, or inferred from the
    /// socket's state where the kernel gives none, then explained by its family.
    fn on_reset_sent(&mut self, r: &ResetSentRecord) -> Diagnosis {
        let reason = (r.reason != REASON_NONE).then(|| {
            self.rst_reasons
                .name(u64::from(r.reason))
                .map(str::to_owned)
                .unwrap_or_else(|| format!("REASON_{}", r.reason))
        });
        let snap = &r.snap;
        let unread =
            (snap.valid & SNAP_SEQ != 0).then(|| snap.rcv_nxt.wrapping_sub(snap.copied_seq));
        let facts = SentReset {
            reason: reason.as_deref(),
            state: r.state,
            has_sock: r.flags & RST_HAS_SOCK != 0,
            linger_zero: r.flags & RST_LINGER_ZERO != 0,
            listener_full: snap.valid & SNAP_BACKLOG != 0
                && snap.sk_ack_backlog > snap.sk_max_ack_backlog,
            unread_bytes: unread,
            keepalive_on: r.flags & RST_KEEPALIVE_ON != 0,
            idle_seconds: self.ctx.idle_seconds(snap),
        };
        let (cause, inferred) = classify_sent_reset(&facts);
        let mut d = Diagnosis::new(
            self.ctx.wall(r.header.ktime_ns),
            "rst_trace.reset_sent",
            cause,
            Direction::Sent,
            Origin::TcpStack,
            r.header.netns,
        );
        d.reason = reason.clone();
        d.inferred = inferred;
        d.endpoints = Endpoints::try_from(&r.tuple).ok();
        // A socket-less RST has no TCP state (the tracepoint reports 0).
        d.tcp_state = (r.flags & RST_HAS_SOCK != 0).then_some(r.state);
        let reason = reason.as_deref();
        match cause {
            Cause::NoListener => no_listener::explain(&self.ctx, &mut d, reason, r.header.ktime_ns),
            Cause::AcceptQueueOverflow => {
                listen_queue::on_reset_sent(&mut self.ctx, &self.fd_incidents, &mut d, r, reason)
            }
            _ => connection::on_reset_sent(&mut self.ctx, &mut d, r, reason, unread),
        }
        d
    }

    /// A segment freed with one of the watched drop reasons.
    fn on_skb_drop(&mut self, r: &SkbDropRecord) -> Option<Diagnosis> {
        let reason = self.drop_reasons.name(u64::from(r.reason))?.to_owned();
        let cause = classify_drop(&reason)?;
        let origin = if cause == Cause::FirewallDrop {
            Origin::Netfilter
        } else {
            Origin::TcpStack
        };
        let mut d = Diagnosis::new(
            self.ctx.wall(r.header.ktime_ns),
            "rst_trace.segment_dropped",
            cause,
            Direction::Dropped,
            origin,
            r.header.netns,
        );
        d.reason = Some(reason.clone());
        d.endpoints = Endpoints::try_from(&r.tuple).ok();
        if cause == Cause::FirewallDrop {
            return Some(firewall::on_skb_drop(
                &mut self.ctx,
                &mut self.rejects,
                d,
                r,
                &reason,
            ));
        }
        listen_queue::on_skb_drop(
            &mut self.ctx,
            &mut self.listen_drops,
            &self.fd_incidents,
            &mut d,
            r,
            &reason,
        );
        Some(d)
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
        listen_queue::explain_finding(
            &mut self.ctx,
            &self.fd_incidents,
            netns,
            f,
            snap,
            interval_s,
        )
    }

    /// A listener whose accept queue is at least 80 % full: a warning before drops start.
    pub fn explain_saturation(&mut self, netns: u32, s: &Saturation) -> Diagnosis {
        listen_queue::explain_saturation(&mut self.ctx, netns, s)
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline fed with records as the kernel would write them, no kernel involved.
    use std::collections::BTreeMap;

    use rst_trace_common::{
        tcp::TCP_CLOSE, AcceptRecord, ListenDropRecord, OwnerInfo, RecordKind, ResetReceivedRecord,
        Tuple, LISTEN_DROP_ACK_ACCEPT_FULL, OWNER_ACCEPT, OWNER_CLOSED, RECORD_VERSION,
    };
    use serde_json::{json, Value};

    use super::*;
    use crate::{
        clock::{FakeClock, WallClock as Clock},
        correlate::fd_incidents::FD_INCIDENT_WINDOW_NS,
        host::Acceptor,
    };

    /// The evidence as it is written out.
    fn ev(d: &Diagnosis) -> Value {
        d.to_json()["evidence"].clone()
    }
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

    fn folded(kind: u16, port: u16, count: u64) -> Folded {
        let t = tuple(port, port);
        Folded {
            key: rst_trace_common::fold::FoldKey {
                epoch: 1,
                netns: NS,
                kind,
                family: t.family,
                port,
                local_addr: t.local_addr,
                remote_addr: t.remote_addr,
                reason: if kind == rst_trace_common::fold::FOLD_SENT_NO_SOCKET {
                    1
                } else {
                    0
                },
                owner_pid: if kind == rst_trace_common::fold::FOLD_REFUSED {
                    4242
                } else {
                    0
                },
                owner_tid: 4243,
                owner_comm: *b"gone-client\0\0\0\0\0",
                ..Default::default()
            },
            count,
            at_ns: NOW,
        }
    }

    #[test]
    fn a_storm_folded_in_the_kernel_is_one_summary_per_key() {
        let mut p = pipeline();
        let d = p
            .folded(
                &folded(rst_trace_common::fold::FOLD_SENT_NO_SOCKET, 8080, 5000),
                200,
            )
            .expect("a summary");
        assert_eq!((d.cause, d.count, d.netns), (Cause::NoListener, 5000, NS));
        assert_eq!(d.endpoints.map(|e| e.local.port), Some(8080));
        assert_eq!(d.reason.as_deref(), Some("NO_SOCKET"));
        let sampled = d.evidence.sampled().expect("marked as a summary");
        assert_eq!(sampled.events, 5000);
        assert!(sampled.note.contains("in the kernel"), "{}", sampled.note);

        let d = p
            .folded(&folded(rst_trace_common::fold::FOLD_REFUSED, 9, 12), 200)
            .expect("a summary");
        assert_eq!((d.cause, d.count), (Cause::ConnectionRefused, 12));
        assert_eq!(d.endpoints.map(|e| e.remote.port), Some(9));
        let o = d.owner.expect("the connecting process");
        assert_eq!((o.pid, o.tid), (4242, 4243));
        assert_eq!(
            o.comm, "myapp",
            "named as it is called now, when it still runs"
        );
        assert!(d.related.is_none(), "a count is not linked by 4-tuple");
        assert!(!p.holding_received(), "a summary is not held for linking");
    }

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
        assert_eq!(ev(&d[0])["last_listener"]["process"]["pid"], 4242);
        assert_eq!(ev(&d[0])["last_listener"]["closed_seconds_ago"], 1.25);
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
        assert_eq!(ev(&d[0])["listening_elsewhere"][0], "127.0.0.1:8080");
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
        assert_eq!(ev(&d[0])["connection_age_seconds"], 0.0);
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
        // The kernel keeps no time a TIME_WAIT socket's last owner was learnt.
        o.since_ns = 0;
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
        assert_eq!(ev(&d[0])["last_owner"]["process"]["pid"], 200);
        assert_eq!(ev(&d[0])["last_owner"]["closed_seconds_ago"], 2.5);
        assert!(ev(&d[0]).get("connection_age_seconds").is_none());
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
        assert_eq!(ev(&d[0])["accepting_processes"], json!([]));
        assert_eq!(ev(&d[0])["listener_group"]["sockets_on_port"], 2);
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
            released[0].to_json()["related"].get("cause").cloned(),
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
        assert_eq!(ev(&d[0])["rlimit_nofile"]["soft"], 8);
        let overflow = |p: &mut Pipeline<FakeHost>, port: u16, t: u64| {
            p.handle(&Record::ListenDrop(ListenDropRecord {
                header: header(RecordKind::ListenDrop, t),
                tuple: tuple(port, 50000),
                skaddr: 0xa,
                stage: LISTEN_DROP_ACK_ACCEPT_FULL,
                ..Default::default()
            }))
            .remove(0)
            .to_json()
        };
        let o = overflow(&mut p, 80, 20);
        assert_eq!(o["cause"], "accept_queue_overflow");
        assert_eq!(o["related"]["cause"], "fd_exhaustion");
        assert_eq!(o["related"]["accept_failures"], 1);
        assert!(o["advice"]
            .as_str()
            .is_some_and(|a| a.contains("RLIMIT_NOFILE")));
        assert_eq!(
            overflow(&mut p, 81, 20)["related"],
            Value::Null,
            "another port"
        );
        let late = overflow(&mut p, 80, 10 + FD_INCIDENT_WINDOW_NS + 1);
        assert_eq!(late["related"], Value::Null, "expired");
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
        assert!(p.rst_link.take_counterpart(NOW, client).is_some());
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
