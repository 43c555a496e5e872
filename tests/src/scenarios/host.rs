//! The host's [`Env`]: each scenario in a fresh namespace with its own agent
//! (`rst-trace run --netns NS`), stopped at the end so its final stats line is checked too.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rst_trace_common::names::RAW_TRACEPOINTS_ENV;
use serde_json::{json, Value};

use super::{Env, Run};
use crate::{Agent, Mib, Netns};

pub struct HostEnv {
    // Field order is drop order: the agent goes before the namespace.
    agent: Agent,
    ns: Netns,
    peer: PathBuf,
    workdir: PathBuf,
}

impl HostEnv {
    /// A fresh namespace and an agent watching it; `peer` is the rst-trace-peer binary.
    pub fn new(peer: impl Into<PathBuf>) -> HostEnv {
        HostEnv::with_agent_env(peer, &[])
    }

    /// [`HostEnv::new`], the agent started with `agent_env` set.
    pub fn with_agent_env(peer: impl Into<PathBuf>, agent_env: &[(&str, &str)]) -> HostEnv {
        crate::require_root();
        let ns = Netns::new();
        let agent = Agent::start_with_env(&ns, None, agent_env);
        assert_eq!(
            crate::event::u64_at(agent.started(), "netns"),
            Some(ns.inode()),
            "started line names another netns: {}",
            agent.started()
        );
        let workdir = std::env::temp_dir().join(format!("rst-scenario-{}", ns.name()));
        std::fs::create_dir_all(&workdir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", workdir.display()));
        HostEnv {
            agent,
            ns,
            peer: peer.into(),
            workdir,
        }
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Drop for HostEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

impl Env for HostEnv {
    fn isolated(&self) -> bool {
        true
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        self.ns.command(program, args)
    }

    fn peer_program(&self) -> PathBuf {
        self.peer.clone()
    }

    fn mib(&self) -> Mib {
        Mib::snapshot(&self.ns)
    }

    fn settled_mib(&self) -> Mib {
        Mib::settled(&self.ns)
    }

    fn read(&self, path: &str) -> String {
        self.ns.exec("cat", &[path])
    }

    fn sysctl_get(&self, key: &str) -> String {
        self.ns.sysctl_get(key)
    }

    fn sysctl_set(&self, key: &str, value: &str) {
        self.ns.sysctl(key, value)
    }

    fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }

    fn netns_inode(&self) -> u64 {
        self.ns.inode()
    }

    fn workdir(&self) -> PathBuf {
        self.workdir.clone()
    }

    fn finish(&mut self, mark: usize) -> (Vec<Value>, Option<Value>) {
        // A late duplicate or wrong event would come within the agent's pairing window (1 s).
        self.agent.settle(Duration::from_millis(1500));
        let stopped = self.agent.stop();
        let lines = stopped.lines.get(mark..).unwrap_or_default().to_vec();
        (lines, Some(stopped.final_stats))
    }

    fn slowness(&self) -> u32 {
        1
    }
}

/// Runs the scenario `name` (as listed by [`super::all`]) on the host; panics with every failed
/// check and the scenario's record when one does not hold.
pub fn run(name: &str, peer: &str) {
    run_with(name, peer, &[]);
}

/// [`run`] with the agent started with `agent_env` set (`RAW_TRACEPOINTS_ENV` at 1: the raw
/// tracepoint programs where BTF ones would attach, which the run checks).
pub fn run_with(name: &str, peer: &str, agent_env: &[(&str, &str)]) {
    let (family, body) = super::find(name).unwrap_or_else(|| panic!("no scenario called {name}"));
    let mut env = HostEnv::with_agent_env(peer, agent_env);
    let attached = |env: &HostEnv, hook: &str| {
        env.agent.started()["hooks"][hook]["attached"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let raw = agent_env.contains(&(RAW_TRACEPOINTS_ENV, "1"));
    let kinds: Vec<(&str, Vec<String>)> = ["tcp_send_reset", "tcp_receive_reset", "net_dev_queue"]
        .into_iter()
        .map(|h| (h, attached(&env, h)))
        .collect();
    let mut run = Run::new(&mut env, family);
    if raw {
        for (hook, at) in kinds {
            run.check(
                &format!("{hook} attached as a raw tracepoint"),
                json!([format!("raw_tp:{hook}")]),
                json!(at),
            );
        }
    }
    body(&mut run);
    let (passed, failures, detail) = (run.passed(), run.failures(), run.detail());
    drop(run);
    assert!(
        passed,
        "scenario {name} ({family:?}) failed:\n  {failures}\nrecord: {detail:#}"
    );
}
