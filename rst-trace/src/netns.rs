//! Network namespaces: naming them the way operators do, and doing work inside one.
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace {0:?} not found (expected a name under /run/netns, a path, or an inode number)")]
    NotFound(String),
    #[error("no process is left in network namespace {0}")]
    Gone(u32),
    #[error("entering network namespace {inode}: {source}")]
    Enter { inode: u32, source: nix::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A network namespace the agent can enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: PathBuf,
}

impl Netns {
    /// `NAME` (as `ip netns add NAME` creates), a path to an nsfs file, or an inode number.
    pub fn resolve(spec: &str) -> Result<Self, NetnsError> {
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            PathBuf::from("/run/netns").join(spec)
        };
        if let Ok(inode) = inode_of(&path) {
            return Ok(Self { inode, path });
        }
        if let Ok(inode) = spec.parse::<u32>() {
            return Self::find_by_inode(inode).ok_or_else(|| NetnsError::NotFound(spec.into()));
        }
        Err(NetnsError::NotFound(spec.into()))
    }

    /// The agent's own network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        let path = PathBuf::from("/proc/self/ns/net");
        let inode = inode_of(&path)?;
        Ok(Self {
            inode,
            path: PathBuf::from(format!("/proc/{}/ns/net", std::process::id())),
        })
    }

    /// Finds a handle on namespace `inode`: the last one found if it still leads there, else a
    /// named one, else any process living in it (a walk of /proc, so its result is kept).
    pub fn find_by_inode(inode: u32) -> Option<Self> {
        static FOUND: std::sync::Mutex<Option<std::collections::HashMap<u32, PathBuf>>> =
            std::sync::Mutex::new(None);
        let mut found = FOUND.lock().ok();
        if let Some(path) = found
            .as_mut()
            .and_then(|f| f.get_or_insert_with(Default::default).get(&inode).cloned())
        {
            if inode_of(&path).ok() == Some(inode) {
                return Some(Self { inode, path });
            }
        }
        let path = handles().find(|p| inode_of(p).ok() == Some(inode))?;
        if let Some(map) = found
            .as_mut()
            .map(|f| f.get_or_insert_with(Default::default))
        {
            // Bounded: one entry per namespace that ever had an event worth a look.
            if map.len() >= 65_536 {
                map.clear();
            }
            map.insert(inode, path.clone());
        }
        Some(Self { inode, path })
    }

    /// Every network namespace that has a name or a process in it.
    pub fn all() -> Vec<Self> {
        let mut seen = std::collections::HashSet::new();
        handles()
            .filter_map(|path| inode_of(&path).ok().map(|inode| Self { inode, path }))
            .filter(|ns| seen.insert(ns.inode))
            .collect()
    }

    /// Runs `f` on a short-lived thread that has entered this namespace, so the agent's own
    /// threads never change namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let path = self.path.clone();
        let inode = self.inode;
        let handle = std::thread::Builder::new()
            .name("rst-netns".into())
            .spawn(move || {
                let file = File::open(&path).map_err(|_| NetnsError::Gone(inode))?;
                // Re-check: a /proc/<pid> handle may now belong to another process.
                if inode_of(&path).ok() != Some(inode) {
                    return Err(NetnsError::Gone(inode));
                }
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Enter { inode, source })?;
                Ok(f())
            })?;
        handle.join().unwrap_or(Err(NetnsError::Gone(inode)))
    }
}

/// Files that pin a network namespace: names under /run/netns first, then every process's.
fn handles() -> impl Iterator<Item = PathBuf> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(procs)
}

pub fn inode_of(path: &Path) -> Result<u32, NetnsError> {
    let meta = std::fs::metadata(path)?;
    u32::try_from(meta.ino()).map_err(|_| NetnsError::NotFound(path.display().to_string()))
}

/// Reads a sysctl as seen from inside `netns` (net.* sysctls are per namespace).
pub fn sysctl_in(netns: &Netns, name: &str) -> Option<String> {
    let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
    netns
        .run(move || {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .ok()
        .flatten()
}
