//! Who owns a socket: the process that created, listened on, connected or accepted it —
//! learnt in process context, never from the task that happens to run a softirq.
use serde::Serialize;

use crate::records::Task;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub learned: Learned,
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
