//! container.id and k8s.pod.uid of a real owner: a server whose accept queue overflows runs in
//! a hand-made cgroup shaped like a container's, and the overflow events must name it.
//! * cgroup v1 (a named or controller hierarchy), cgroupfs-driver Kubernetes shape:
//!   `/kubepods/burstable/pod<uid>/<64 hex>`. On a hybrid host the process's v2 line stays
//!   `0::/`, so this also checks the agent takes the v1 line that names the container.
//! * the unified (v2) hierarchy, systemd-driver Docker shape: `/system.slice/docker-<64 hex>.scope`.
//!
//! The cgroups are removed afterwards, also when the test fails: the server is reaped first,
//! then every directory the test created is removed, deepest first.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rst_trace_tests::{event, require_root, Agent, Netns, Peer};
use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_rst-trace-peer");

/// Directories made under a cgroup hierarchy; on drop, processes still inside go back to the
/// hierarchy's root and the directories are removed.
struct HandMadeCgroup {
    root: PathBuf,
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

impl HandMadeCgroup {
    fn create(root: &Path, rel: &str) -> HandMadeCgroup {
        let mut guard = HandMadeCgroup {
            root: root.to_path_buf(),
            created: Vec::new(),
            leaf: root.join(rel),
        };
        let mut dir = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                guard.created.push(dir.clone());
            }
        }
        assert!(
            guard.leaf.join("cgroup.procs").exists(),
            "{} is not a cgroup (no cgroup.procs)",
            guard.leaf.display()
        );
        guard
    }

    fn procs(&self) -> PathBuf {
        self.leaf.join("cgroup.procs")
    }
}

impl Drop for HandMadeCgroup {
    fn drop(&mut self) {
        // Only this test's processes can be in there (the server, if a failure left it alive).
        if let Ok(pids) = std::fs::read_to_string(self.procs()) {
            for pid in pids.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.created.iter().rev() {
            // A cgroup whose last task just exited can be busy for a moment: bounded retries.
            let mut last = None;
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(e) = last {
                eprintln!("warning: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Mount points of cgroup hierarchies from /proc/self/mountinfo: (v1 ones with their options,
/// the v2 one).
fn cgroup_mounts() -> (Vec<(PathBuf, String)>, Option<PathBuf>) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mut v1 = Vec::new();
    let mut v2 = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4).unwrap_or("");
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        let super_opts = r.nth(1).unwrap_or("");
        match fstype {
            "cgroup" => v1.push((PathBuf::from(mount_point), super_opts.to_owned())),
            "cgroup2" => v2 = Some(PathBuf::from(mount_point)),
            _ => {}
        }
    }
    (v1, v2)
}

/// A v1 hierarchy to make cgroups in: the controller-less name=systemd one if mounted (moving
/// a process there changes no resource accounting), else pids.
fn v1_hierarchy() -> PathBuf {
    let (v1, _) = cgroup_mounts();
    v1.iter()
        .find(|(_, o)| o.split(',').any(|x| x == "name=systemd"))
        .or_else(|| v1.iter().find(|(_, o)| o.split(',').any(|x| x == "pids")))
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| {
            panic!("no cgroup v1 hierarchy (name=systemd or pids) is mounted: this test needs one; mounts: {v1:?}")
        })
}

fn v2_hierarchy() -> PathBuf {
    cgroup_mounts()
        .1
        .unwrap_or_else(|| panic!("no cgroup2 (unified) hierarchy is mounted: this test needs one"))
}

/// 64 hex digits unique to this run, like a container id.
fn fake_container_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:016x}{:016x}{:032x}",
        u64::from(std::process::id()),
        0x7273_7474_7261_6365u64,
        nanos
    )
}

/// A pod uid unique to this run (UUID shape).
fn fake_pod_uid() -> String {
    let id = fake_container_id();
    format!(
        "{}-{}-{}-{}-{}",
        &id[32..40],
        &id[40..44],
        &id[44..48],
        &id[48..52],
        &id[52..64]
    )
}

/// A listener overflow with its server in `cgroup`: the server listens with backlog 1 and never
/// accepts, clients flood it. Returns the server's pid, the first accept_queue_overflow event,
/// and the server's /proc/<pid>/cgroup as the test saw it.
///
/// The server stays alive until the agent has stopped: a process that has exited can lose its
/// cgroup v1 membership before the agent looks it up, which would test the timing, not the
/// parsing.
fn overflow_in_cgroup(cgroup: &HandMadeCgroup, port: u16) -> (u32, Value, String) {
    let ns = Netns::new();
    let mut agent = Agent::start(&ns, None);
    let port_s = port.to_string();
    // The server joins the cgroup before it exists as a server: sh writes its own pid, then
    // execs the peer (same pid), so every owner the agent learns already has the cgroup.
    // `ip netns exec` remounts /sys in a mount namespace of its own, where /sys/fs/cgroup is
    // not mounted: the path goes through this test process's root instead.
    let script = format!(
        "echo $$ > '/proc/{}/root{}' && exec '{PEER}' \"$@\"",
        std::process::id(),
        cgroup.procs().display()
    );
    let server = Peer::spawn(
        &ns,
        "/bin/sh",
        &[
            "-c",
            &script,
            "sh",
            "listen",
            "--addr",
            "127.0.0.1",
            "--port",
            &port_s,
            "--backlog",
            "1",
        ],
    );
    let server_pid = server.pid();
    let seen = std::fs::read_to_string(format!("/proc/{server_pid}/cgroup")).unwrap_or_default();
    let _ = Peer::connect(
        &ns,
        PEER,
        "127.0.0.1",
        port,
        10,
        &["--nonblocking", "--timeout-ms", "2500"],
    );
    let got = agent.wait_for(
        |v| event::has_cause(v, "accept_queue_overflow") && event::local_port(v) == Some(port),
        1,
        Duration::from_secs(20),
    );
    agent.stop();
    drop(server);
    assert!(
        !got.is_empty(),
        "no accept_queue_overflow event; the server's /proc/<pid>/cgroup was:\n{seen}"
    );
    (server_pid, got[0].clone(), seen)
}

#[test]
fn kubernetes_pod_in_a_cgroup_v1_hierarchy() {
    require_root();
    let id = fake_container_id();
    let uid = fake_pod_uid();
    let rel = format!("kubepods/burstable/pod{uid}/{id}");
    let cgroup = HandMadeCgroup::create(&v1_hierarchy(), &rel);
    let (pid, v, seen) = overflow_in_cgroup(&cgroup, 41401);
    assert_eq!(
        event::owner_pid(&v),
        Some(pid),
        "{v}\nserver cgroups:\n{seen}"
    );
    assert_eq!(
        event::str_at(&v, "owner.container.id"),
        Some(id.as_str()),
        "{v}\nserver cgroups:\n{seen}"
    );
    assert_eq!(
        event::str_at(&v, "owner.k8s.pod.uid"),
        Some(uid.as_str()),
        "{v}\nserver cgroups:\n{seen}"
    );
    assert_eq!(
        event::str_at(&v, "owner.process.linux.cgroup"),
        Some(format!("/{rel}").as_str()),
        "the v1 line that names the container: {v}"
    );
}

#[test]
fn docker_scope_in_the_unified_hierarchy() {
    require_root();
    let id = fake_container_id();
    let rel = format!("system.slice/docker-{id}.scope");
    let cgroup = HandMadeCgroup::create(&v2_hierarchy(), &rel);
    let (pid, v, seen) = overflow_in_cgroup(&cgroup, 41402);
    assert_eq!(
        event::owner_pid(&v),
        Some(pid),
        "{v}\nserver cgroups:\n{seen}"
    );
    assert_eq!(
        event::str_at(&v, "owner.container.id"),
        Some(id.as_str()),
        "{v}\nserver cgroups:\n{seen}"
    );
    assert!(
        event::get(&v, "owner.k8s").is_none(),
        "no pod outside Kubernetes: {v}"
    );
    assert_eq!(
        event::str_at(&v, "owner.process.linux.cgroup"),
        Some(format!("/{rel}").as_str()),
        "{v}\nserver cgroups:\n{seen}"
    );
}
