//! Who owns a socket: the process that created, listened on, connected or accepted it —
//! learnt in process context, never from the task that happens to run a softirq.
use std::time::SystemTime;

use rst_trace_common::{
    event::{Container, Executable, K8s, Linux, OwnerJson, OwnerProcess, Pod, Thread},
    OwnerInfo, OWNER_ACCEPT, OWNER_CONNECT, OWNER_LISTEN,
};
use serde::Serialize;

use crate::{container, diagnosis::rfc3339_nanos, records::Task};

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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listen => "listen",
            Self::Accept => "accept",
            Self::Connect => "connect",
            Self::Syscall => "syscall",
            Self::Procfs => "procfs",
        }
    }

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
        let container_id = cgroup
            .as_deref()
            .and_then(container::container_id_from_cgroup);
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

    /// `k8s.pod.uid` (OpenTelemetry's name) when the cgroup is a Kubernetes pod's. Derived
    /// here rather than stored, so `Owner` keeps its fields.
    pub fn pod_uid(&self) -> Option<String> {
        self.cgroup
            .as_deref()
            .and_then(container::pod_uid_from_cgroup)
    }

    pub fn to_event(&self) -> OwnerJson {
        OwnerJson {
            process: OwnerProcess {
                pid: self.pid,
                executable: Executable {
                    name: self.comm.clone(),
                },
                linux: Linux {
                    cgroup: self.cgroup.clone(),
                },
            },
            thread: Thread { id: self.tid },
            container: self
                .container_id
                .as_ref()
                .map(|id| Container { id: id.clone() }),
            learned_from: self.learned.as_str().into(),
            learned_at: self.learned_at.map(rfc3339_nanos),
            // Present only for pods, like `container` is null outside containers: absent keeps
            // the documented owner shape unchanged on hosts without Kubernetes.
            k8s: self.pod_uid().map(|uid| K8s { pod: Pod { uid } }),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_event()).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(cgroup: &str) -> Owner {
        let task = Task {
            pid: 7,
            tid: 8,
            comm: "server".into(),
            cgroup_id: 0,
        };
        Owner::from_task(&task, Learned::Listen, Some(cgroup.to_owned()))
    }

    #[test]
    fn owner_json_names_container_and_pod() {
        let id = "ab".repeat(32);
        let uid = "0f3c5a7e-1b2d-4c6e-8f90-a1b2c3d4e5f6";
        let o = owner(&format!("/kubepods/burstable/pod{uid}/{id}"));
        let v = o.to_json();
        assert_eq!(v["container"]["id"], id.as_str());
        assert_eq!(v["k8s"]["pod"]["uid"], uid);
        assert_eq!(v["process"]["pid"], 7);
    }

    #[test]
    fn owner_json_outside_kubernetes_has_no_k8s_key() {
        let id = "ab".repeat(32);
        let v = owner(&format!("/system.slice/docker-{id}.scope")).to_json();
        assert_eq!(v["container"]["id"], id.as_str());
        assert!(v.get("k8s").is_none(), "{v}");
        let v = owner("/user.slice").to_json();
        assert!(v["container"].is_null(), "{v}");
        assert!(v.get("k8s").is_none(), "{v}");
    }
}
