//! Facts about processes and the host that evidence needs, behind a trait so attribution
//! can be tested without a kernel.
use std::{collections::HashMap, sync::Mutex, time::Instant};

use aya::maps::MapData;
use rst_trace_common::{AcceptorKey, OwnerInfo};

use crate::netns::{sysctl_in, Netns};

/// A process that accepted connections on a port, and when it last did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptor {
    pub pid: u32,
    pub comm: String,
    pub last_ns: u64,
}

pub trait HostInfo {
    /// cgroup path of a process, e.g. `/system.slice/nginx.service`: the v2 one, or on a hybrid
    /// host the v1 one that names its container (see `container::cgroup_from_proc`).
    fn cgroup_of(&self, pid: u32) -> Option<String>;
    /// RLIMIT_NOFILE (soft, hard); `u64::MAX` for unlimited.
    fn nofile_limit(&self, pid: u32) -> Option<(u64, u64)>;
    /// Number of open file descriptors of a process.
    fn open_fds(&self, pid: u32) -> Option<u64>;
    /// `fs.file-nr`: allocated, free, max.
    fn file_nr(&self) -> Option<[u64; 3]>;
    /// A sysctl as seen inside network namespace `netns`.
    fn sysctl(&self, netns: u32, name: &str) -> Option<String>;
    /// Sockets in `netns` to `dst`:`port`, counted by TCP state.
    fn sockets_to(
        &self,
        netns: u32,
        dst: std::net::IpAddr,
        port: u16,
    ) -> Option<std::collections::BTreeMap<&'static str, u64>>;
    /// The current name of process `pid`, if `pid` still names the process that started at
    /// `start_boottime_ns` (0: not known, any process with that pid will do). Names change
    /// with exec().
    fn process_name(&self, pid: u32, start_boottime_ns: u64) -> Option<String>;
    /// Processes that accepted on (`netns`, `port`), most recent first.
    fn acceptors(&self, netns: u32, port: u16) -> Vec<Acceptor>;
}

/// Reads /proc. Per-namespace sysctls are cached for a few seconds: they rarely change, and
/// entering a namespace per event would be wasteful under a storm.
#[derive(Default)]
pub struct ProcHost {
    sysctl_cache: Mutex<HashMap<(u32, String), CachedSysctl>>,
    acceptors: Option<Mutex<AcceptorTable>>,
}

impl ProcHost {
    /// Reads "who accepted on this port" from the kernel's acceptor map.
    pub fn with_acceptors(map: aya::maps::HashMap<MapData, AcceptorKey, OwnerInfo>) -> Self {
        Self {
            acceptors: Some(Mutex::new(AcceptorTable {
                map,
                read_at: None,
                by_port: HashMap::new(),
            })),
            ..Default::default()
        }
    }
}

/// The kernel's acceptor map, read whole at most once a second: it is only consulted for
/// listener problems, and a storm of them must not turn into a storm of map walks.
pub struct AcceptorTable {
    map: aya::maps::HashMap<MapData, AcceptorKey, OwnerInfo>,
    read_at: Option<Instant>,
    by_port: HashMap<(u32, u16), Vec<Acceptor>>,
}

const ACCEPTOR_REFRESH_MS: u128 = 1000;

impl AcceptorTable {
    fn get(&mut self, netns: u32, port: u16) -> Vec<Acceptor> {
        if self
            .read_at
            .is_none_or(|t| t.elapsed().as_millis() >= ACCEPTOR_REFRESH_MS)
        {
            self.read_at = Some(Instant::now());
            self.by_port.clear();
            for (k, o) in self.map.iter().flatten() {
                let end = o.comm.iter().position(|b| *b == 0).unwrap_or(o.comm.len());
                self.by_port
                    .entry((k.netns, k.port))
                    .or_default()
                    .push(Acceptor {
                        pid: k.pid,
                        comm: String::from_utf8_lossy(&o.comm[..end]).into_owned(),
                        last_ns: o.since_ns,
                    });
            }
            for list in self.by_port.values_mut() {
                list.sort_by_key(|a| std::cmp::Reverse(a.last_ns));
            }
        }
        self.by_port
            .get(&(netns, port))
            .cloned()
            .unwrap_or_default()
    }
}

/// Clock ticks per second of /proc/<pid>/stat's start time.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(100)
}

/// `comm` and start time (clock ticks since boot) from a /proc/<pid>/stat line.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the name start at field 3 (state); starttime is field 22.
    let start = text
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((comm, start))
}

/// When a sysctl was read, and what it was.
type CachedSysctl = (Instant, Option<String>);

const SYSCTL_TTL_SECS: u64 = 5;

impl HostInfo for ProcHost {
    fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        // The v2 line ("0::/path") unless, on a hybrid host, a v1 line names the container.
        crate::container::cgroup_from_proc(&text)
    }

    fn nofile_limit(&self, pid: u32) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        parse_nofile(&text)
    }

    fn open_fds(&self, pid: u32) -> Option<u64> {
        let n = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        u64::try_from(n).ok()
    }

    fn file_nr(&self) -> Option<[u64; 3]> {
        let text = std::fs::read_to_string("/proc/sys/fs/file-nr").ok()?;
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        Some([*v.first()?, *v.get(1)?, *v.get(2)?])
    }

    fn sockets_to(
        &self,
        netns: u32,
        dst: std::net::IpAddr,
        port: u16,
    ) -> Option<std::collections::BTreeMap<&'static str, u64>> {
        let ns = Netns::find_by_inode(netns)?;
        ns.run(move || crate::sockdiag::states_to_here(dst, port).ok())
            .ok()
            .flatten()
    }

    fn process_name(&self, pid: u32, start_boottime_ns: u64) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, start_ticks) = parse_stat(&text)?;
        if start_boottime_ns != 0 {
            let ticks = start_boottime_ns / (1_000_000_000 / clock_ticks());
            if ticks != start_ticks {
                return None;
            }
        }
        Some(comm)
    }

    fn acceptors(&self, netns: u32, port: u16) -> Vec<Acceptor> {
        self.acceptors
            .as_ref()
            .and_then(|t| t.lock().ok().map(|mut t| t.get(netns, port)))
            .unwrap_or_default()
    }

    fn sysctl(&self, netns: u32, name: &str) -> Option<String> {
        let key = (netns, name.to_owned());
        if let Ok(cache) = self.sysctl_cache.lock() {
            if let Some((at, v)) = cache.get(&key) {
                if at.elapsed().as_secs() < SYSCTL_TTL_SECS {
                    return v.clone();
                }
            }
        }
        let value = Netns::find_by_inode(netns).and_then(|ns| sysctl_in(&ns, name));
        if let Ok(mut cache) = self.sysctl_cache.lock() {
            // Namespaces come and go by the thousand: expired entries go first, then all.
            if cache.len() >= MAX_CACHED_SYSCTLS {
                cache.retain(|_, (at, _)| at.elapsed().as_secs() < SYSCTL_TTL_SECS);
                if cache.len() >= MAX_CACHED_SYSCTLS {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), value.clone()));
        }
        value
    }
}

/// Sysctl values cached at most (a few per namespace with a listener problem).
const MAX_CACHED_SYSCTLS: usize = 4096;

fn parse_limit(v: &str) -> Option<u64> {
    if v == "unlimited" {
        Some(u64::MAX)
    } else {
        v.parse().ok()
    }
}

pub fn parse_nofile(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line.trim_start_matches("Max open files").split_whitespace();
    Some((parse_limit(it.next()?)?, parse_limit(it.next()?)?))
}

/// Kernel tick rate, needed to turn the jiffies stamps of `struct tcp_sock` into time.
/// Measured from /proc/timer_list (two readings 100 ms apart), rounded to a valid CONFIG_HZ.
pub fn kernel_hz() -> Option<u64> {
    fn jiffies() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/timer_list").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("jiffies: "))
            .and_then(|v| v.trim().parse().ok())
    }
    let (t0, j0) = (Instant::now(), jiffies()?);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (j1, dt) = (jiffies()?, t0.elapsed().as_secs_f64());
    let rate = (j1.checked_sub(j0)? as f64) / dt;
    [100u64, 250, 300, 1000].into_iter().min_by(|a, b| {
        ((*a as f64) - rate)
            .abs()
            .total_cmp(&((*b as f64) - rate).abs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_and_start_times() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(("my (odd) app".into(), 987_654)));
        assert_eq!(parse_stat("4242 (x"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn nofile_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            64                   524288               files     \n";
        assert_eq!(parse_nofile(text), Some((64, 524_288)));
        assert_eq!(
            parse_nofile("Max open files unlimited unlimited files"),
            Some((u64::MAX, u64::MAX))
        );
        assert_eq!(parse_nofile("nothing"), None);
    }
}
