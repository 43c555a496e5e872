//! Throw-away network namespaces (`ip netns add`, `lo` up), deleted when the guard drops, also
//! on errors. Every workload round gets fresh ones, so TIME_WAIT sockets, port ranges and
//! counters never leak from one measurement into the next.

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

const PREFIX: &str = "rstbench-";

/// `ip` spends most of its time waiting on the kernel (RCU grace periods), so a few in
/// parallel create 1,000 namespaces about three times faster than one after the other.
const PARALLEL_IP: usize = 8;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct NetnsSet {
    names: Vec<String>,
}

impl NetnsSet {
    /// Creates `count` namespaces `rstbench-<pid>-<seq>`, each with `lo` up.
    pub fn create(count: usize) -> Result<NetnsSet> {
        let names: Vec<String> = (0..count)
            .map(|_| {
                format!(
                    "{PREFIX}{}-{}",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::SeqCst)
                )
            })
            .collect();
        let added: Vec<AtomicBool> = names.iter().map(|_| AtomicBool::new(false)).collect();
        let errors = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_IP.min(count) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(name) = names.get(i) else { break };
                    let result = ip(["netns", "add", name]).and_then(|()| {
                        // From here on the namespace exists and must be deleted, whatever follows.
                        added[i].store(true, Ordering::SeqCst);
                        ip(["-n", name, "link", "set", "lo", "up"])
                    });
                    if let Err(e) = result {
                        if let Ok(mut errors) = errors.lock() {
                            errors.push(e);
                        }
                        break;
                    }
                });
            }
        });
        let set = NetnsSet {
            names: names
                .into_iter()
                .zip(&added)
                .filter(|(_, a)| a.load(Ordering::SeqCst))
                .map(|(n, _)| n)
                .collect(),
        };
        let errors = errors.into_inner().unwrap_or_default();
        if let Some(first) = errors.into_iter().next() {
            // `set` drops here and deletes whatever was created.
            return Err(first.context("creating network namespaces"));
        }
        if set.names.len() != count {
            bail!("created {} of {count} namespaces", set.names.len());
        }
        Ok(set)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The first namespace: workloads that need only one create a set of one.
    pub fn first(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }

    /// `program` run inside namespace `name` (`ip netns exec`, which execs it: the spawned
    /// child's pid is the program's own).
    pub fn command(name: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", name]).arg(program);
        c
    }

    /// Deletes `rstbench-<pid>-*` namespaces of bench runs that no longer exist (a killed run
    /// cannot drop its guards). Names of live processes are left alone.
    pub fn reap_stale() {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("xtask: bench: deleting namespace {name} left by an earlier run");
                let _ = ip(["netns", "delete", &name]);
            }
        }
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        let next = AtomicUsize::new(0);
        let names = &self.names;
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_IP.min(names.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(name) = names.get(i) else { break };
                    if let Err(e) = ip(["netns", "delete", name]) {
                        eprintln!("xtask: bench: warning: {e:#}");
                    }
                });
            }
        });
    }
}

fn ip<const N: usize>(args: [&str; N]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
