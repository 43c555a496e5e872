//! Who owns a socket: the process that created, listened on, connected or accepted it —
//! learnt in process context, never from the task that happens to run a softirq.
use std::time::SystemTime;

use rst_trace_common::{OwnerInfo, OWNER_ACCEPT, OWNER_CONNECT, OWNER_LISTEN};
use serde::Serialize;

use crate::{diagnosis::rfc3339_nanos, records::Task};

/// How an owner was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Learned {
    /// `listen()` ran in this process.
    Listen,
    /// `accept()` returned this socket to this process.
    Accept,
    /// `connect()` ran in this process.
    Connect,
    /// The failing syscall itself ran in this process.
    Syscall,
    /// The socket existed before the agent started; found through /proc/<pid>/fd.
    Procfs,
}

impl Learned {
    /// How the kernel programs learnt an owner (`OwnerInfo::how`).
    pub fn from_kernel(how: u32) -> Option<Self> {
        match how {
            OWNER_LISTEN => Some(Self::Listen),
            OWNER_CONNECT => Some(Self::Connect),
            OWNER_ACCEPT => Some(Self::Accept),
            _ => None,
        }
    }
}

/// A process as the kernel programs recorded it when they learnt it owned a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOwner {
    pub pid: u32,
    pub tid: u32,
    /// Name when the owner was learnt; the process may have exec'd since.
    pub comm: String,
    pub start_boottime_ns: u64,
    pub learned: Learned,
    pub since_ns: u64,
    /// When the socket entered CLOSE, if it has.
    pub closed_ns: Option<u64>,
}

impl KernelOwner {
    pub fn from_info(o: &OwnerInfo) -> Option<Self> {
        if o.pid == 0 {
            return None;
        }
        let end = o.comm.iter().position(|b| *b == 0).unwrap_or(o.comm.len());
        Some(Self {
            pid: o.pid,
            tid: o.tid,
            comm: String::from_utf8_lossy(&o.comm[..end]).into_owned(),
            start_boottime_ns: o.start_boottime_ns,
            learned: Learned::from_kernel(o.how)?,
            since_ns: o.since_ns,
            closed_ns: (o.closed_ns != 0).then_some(o.closed_ns),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub learned: Learned,
    /// When the owner was learnt, where the kernel recorded it.
    pub learned_at: Option<SystemTime>,
}

impl Owner {
    pub fn from_task(task: &Task, learned: Learned, cgroup: Option<String>) -> Self {
        let container_id = cgroup.as_deref().and_then(container_id_from_cgroup);
        Self {
            pid: task.pid,
            tid: task.tid,
            comm: task.comm.clone(),
            cgroup,
            container_id,
            learned,
            learned_at: None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "process": {
                "pid": self.pid,
                "executable": { "name": self.comm },
                "linux": { "cgroup": self.cgroup },
            },
            "thread": { "id": self.tid },
            "container": self.container_id.as_ref().map(|id| serde_json::json!({ "id": id })),
            "learned_from": self.learned,
            "learned_at": self.learned_at.map(rfc3339_nanos),
        })
    }
}

/// Container runtimes name the cgroup after the container id (64 hex digits), e.g.
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `/docker/<id>`, `crio-<id>.scope`.
pub fn container_id_from_cgroup(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|segment| {
        let seg = segment.strip_suffix(".scope").unwrap_or(segment);
        let candidate = seg.rsplit('-').next().unwrap_or(seg);
        (candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| candidate.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_common_runtimes() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id_from_cgroup(&format!("/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            )),
            Some(id.clone())
        );
        assert_eq!(container_id_from_cgroup(&format!("/docker/{id}")), Some(id));
        assert_eq!(
            container_id_from_cgroup("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id_from_cgroup("/"), None);
    }
}
