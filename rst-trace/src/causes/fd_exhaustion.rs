//! `fd_exhaustion`: accept() fails with EMFILE or ENFILE, so connections stay queued and the
//! accept queue overflows next. Failures on one listener form one incident
//! ([`crate::correlate::FdIncidents`]) that the overflow events name as their root cause.
use rst_trace_common::{
    event::{Evidence, FdExhaustionEvidence, FileNr, IncidentCount, Limit, QueueFill, Rlimit},
    AcceptRecord,
};

pub use rst_trace_common::event::FdExhaustionEvidence as EvidenceType;

use super::port_text;
use rst_trace_common::tcp::TCP_LISTEN;

use crate::{
    cause::{Cause, Direction, Origin},
    correlate::FdIncidents,
    diagnosis::Diagnosis,
    enrich::Enricher,
    host::HostInfo,
    owner::Learned,
    records::{Endpoints, Task},
};

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// An accept() that failed: an event only for EMFILE/ENFILE.
pub fn on_accept<H: HostInfo>(
    ctx: &mut Enricher<H>,
    incidents: &mut FdIncidents,
    r: &AcceptRecord,
) -> Option<Diagnosis> {
    let errno = match -r.ret {
        EMFILE => "EMFILE",
        ENFILE => "ENFILE",
        _ => return None,
    };
    let now = r.header.ktime_ns;
    let netns = r.header.netns;
    let task = Task::from(&r.task);
    let owner = ctx.owner(&task, Learned::Syscall);
    let listener = Endpoints::try_from(&r.listener).ok();
    let port = listener.map(|e| e.local.port).unwrap_or(0);
    let mut d = Diagnosis::new(
        ctx.wall(now),
        "rst_trace.accept_failed",
        Cause::FdExhaustion,
        Direction::None,
        Origin::Syscall,
        netns,
    );
    d.endpoints = listener;
    d.tcp_state = Some(TCP_LISTEN);
    d.reason = Some(errno.into());
    let facts = ctx.fd_facts(task.pid);
    let incident = incidents.failure(now, netns, port, task.pid, &task.comm);
    d.evidence = Evidence::FdExhaustion(FdExhaustionEvidence {
        errno: Some(errno.into()),
        listen_fd: i64::from(r.listen_fd),
        listening_port: port,
        rlimit_nofile: facts.nofile.map(|(soft, hard)| Rlimit {
            soft: Limit::of(soft),
            hard: Limit::of(hard),
        }),
        open_fds: facts.open,
        file_nr: facts.file_nr.map(|[allocated, free, max]| FileNr {
            allocated,
            free,
            max,
        }),
        accept_queue: QueueFill {
            length: r.listener_ack_backlog,
            cap: r.listener_max_ack_backlog,
        },
        incident: IncidentCount {
            id: incident.id.clone(),
            failures: incident.failures,
        },
        sampled: None,
        owner_unavailable: None,
    });
    d.advice = advice(Some(port), facts.nofile, facts.open);
    d.owner = Some(owner);
    Some(d)
}

fn limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Raise the limit, look for a leak.
pub fn advice(port: Option<u16>, nofile: Option<(u64, u64)>, open_fds: Option<u64>) -> String {
    let lim = nofile.map_or_else(String::new, |(s, h)| {
        format!(
            " (RLIMIT_NOFILE soft {}, hard {}{})",
            limit(s),
            limit(h),
            open_fds.map_or_else(String::new, |n| format!(", {n} open"))
        )
    });
    format!(
        "accept() on {} fails for lack of file descriptors{lim}; connections stay queued and the accept queue will overflow. Raise LimitNOFILE/ulimit -n and look for a descriptor leak.",
        port_text(port)
    )
}
