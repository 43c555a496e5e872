//! Owners of sockets that existed before the agent started (or whose owner was never seen
//! in a syscall): which processes hold a socket inode open, from /proc/<pid>/fd.
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// Maps each wanted socket inode to the processes that hold it.
pub fn holders_of(wanted: &HashSet<u64>) -> HashMap<u64, Vec<Holder>> {
    let mut out: HashMap<u64, Vec<Holder>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    walk_sockets(|pid, inode, comm| {
        if !wanted.contains(&inode) {
            return true;
        }
        let list = out.entry(inode).or_default();
        if !list.iter().any(|h| h.pid == pid) {
            list.push(Holder {
                pid,
                comm: comm().to_owned(),
            });
        }
        true
    });
    out
}

/// Every socket inode held open by any process, with its holders' pids: the owners of the
/// sockets that predate the agent. At most `limit` sockets are kept (the rest are counted in
/// the second value).
pub fn all_socket_holders(limit: usize) -> (HashMap<u64, Vec<u32>>, u64) {
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut skipped = 0u64;
    walk_sockets(|pid, inode, _| {
        let room = out.len() < limit;
        match out.get_mut(&inode) {
            Some(pids) => {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            None if room => {
                out.insert(inode, vec![pid]);
            }
            None => skipped += 1,
        }
        true
    });
    (out, skipped)
}

/// Calls `f(pid, inode, comm)` for every socket fd of every process; `comm` reads the
/// process's name only when asked.
fn walk_sockets(mut f: impl FnMut(u32, u64, &mut dyn FnMut() -> String) -> bool) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(&link.to_string_lossy()) else {
                continue;
            };
            let mut name = || {
                comm.get_or_insert_with(|| {
                    std::fs::read_to_string(entry.path().join("comm"))
                        .map(|s| s.trim_end().to_owned())
                        .unwrap_or_default()
                })
                .clone()
            };
            if !f(pid, inode, &mut name) {
                return;
            }
        }
    }
}

pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[1]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }
}
