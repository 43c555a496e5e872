//! Owners of sockets that existed before the agent started (or whose owner was never seen
//! in a syscall): which processes hold a socket inode open, from /proc/<pid>/fd.
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// Why /proc cannot show the agent every process, if it cannot: mounted with `hidepid` and
/// the agent lacks CAP_SYS_PTRACE (which sees through it). Owners that only /proc can tell
/// (sockets older than the agent, forked holders) are then unknown, and events say so.
pub fn hidden_processes() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    hidden_processes_from(&mountinfo, &status)
}

const CAP_SYS_PTRACE: u32 = 19;

fn hidden_processes_from(mountinfo: &str, status: &str) -> Option<String> {
    // mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS";
    // the last /proc mount is the one in effect.
    let hidepid = mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("/proc"))
        .filter_map(|l| l.split_once(" - "))
        .filter(|(_, rest)| rest.split_whitespace().next() == Some("proc"))
        .filter_map(|(_, rest)| rest.split_whitespace().nth(2).map(str::to_owned))
        .next_back()?
        .split(',')
        .find_map(|o| o.strip_prefix("hidepid=").map(str::to_owned))?;
    if matches!(hidepid.as_str(), "0" | "off") {
        return None;
    }
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << CAP_SYS_PTRACE) != 0 {
        return None;
    }
    Some(format!(
        "/proc is mounted hidepid={hidepid} and the agent lacks CAP_SYS_PTRACE: owners that only \
         /proc can tell (sockets older than the agent) are hidden from it"
    ))
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

#[cfg(test)]
mod hidden_tests {
    use super::hidden_processes_from;

    const MOUNTS: &str = "22 1 0:5 / /proc rw,nosuid - proc proc rw\n\
        30 22 0:40 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw\n";

    #[test]
    fn hidepid_without_ptrace_hides_owners() {
        let hidden = MOUNTS.replace("proc proc rw", "proc proc rw,hidepid=invisible");
        let no_ptrace = "CapEff:\t000001fffff7ffff\n";
        let ptrace = "CapEff:\t000001ffffffffff\n";
        let why = hidden_processes_from(&hidden, no_ptrace).expect("hidden");
        assert!(why.contains("hidepid=invisible"), "{why}");
        assert_eq!(hidden_processes_from(&hidden, ptrace), None);
        assert_eq!(hidden_processes_from(MOUNTS, no_ptrace), None);
        let off = MOUNTS.replace("proc proc rw", "proc proc rw,hidepid=0");
        assert_eq!(hidden_processes_from(&off, no_ptrace), None);
    }

    #[test]
    fn the_last_proc_mount_wins() {
        let two = format!("{MOUNTS}40 22 0:50 / /proc rw - proc proc rw,hidepid=2\n");
        assert!(hidden_processes_from(&two, "CapEff:\t0\n").is_some());
        assert_eq!(hidden_processes_from("garbage\n", "CapEff:\t0\n"), None);
    }
}
