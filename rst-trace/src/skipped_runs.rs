//! Runs of the agent's programs that the kernel skipped. The kernel runs one program at most
//! once at a time per CPU: when an interrupt brings a second event while the program is
//! running for a first one on that CPU (a timer's retransmission dropped in softirq while the
//! program was running in a task for some unrelated packet), the second run does not happen
//! and the kernel only counts it (`recursion_misses`, 5.12 and later). Neither a record nor a
//! counter of the agent's own sees that event, so the count is reported as it is.
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::Ebpf;

/// Every loaded program, by name, with a handle of its own so the count stays readable
/// wherever the loader keeps the program.
pub struct SkippedRuns {
    programs: Vec<(String, OwnedFd)>,
}

impl SkippedRuns {
    pub fn open(ebpf: &Ebpf) -> Self {
        let programs = ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?.as_fd().try_clone_to_owned().ok()?;
                Some((name.to_owned(), fd))
            })
            .collect();
        Self { programs }
    }

    /// Skipped runs per program, zero included; empty where the kernel does not count them.
    pub fn read(&self) -> BTreeMap<String, u64> {
        self.programs
            .iter()
            .filter_map(|(name, fd)| {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                    .ok()?;
                Some((name.clone(), recursion_misses(&info)?))
            })
            .collect()
    }
}

/// `recursion_misses` of a program's fdinfo.
pub fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "recursion_misses")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Only the programs that skipped runs: what the stats line shows.
pub fn nonzero(all: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    all.iter()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| (p.clone(), *n))
        .collect()
}

/// A warning when the total grew since `*warned_at` (then raised to it), else None.
pub fn warning(all: &BTreeMap<String, u64>, warned_at: &mut u64) -> Option<String> {
    let total: u64 = all.values().sum();
    if total <= *warned_at {
        return None;
    }
    *warned_at = total;
    let list: Vec<String> = nonzero(all)
        .iter()
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    Some(format!(
        "the kernel skipped runs of programs already running on the same CPU when an interrupt brought another event ({}): the events of those runs are missing from the output and the per-cause totals",
        list.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDINFO_6_18: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2077\n\
        prog_type:\t17\nprog_jited:\t1\nprog_tag:\t0f5b1d3e4b8a7c21\nmemlock:\t4096\n\
        prog_id:\t8100\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t2\nverified_insns:\t612\n";

    #[test]
    fn reads_recursion_misses_from_fdinfo() {
        assert_eq!(recursion_misses(FDINFO_6_18), Some(2));
    }

    #[test]
    fn kernels_without_the_field_give_none() {
        let older = "prog_type:\t17\nprog_jited:\t1\nmemlock:\t4096\nprog_id:\t9\n";
        assert_eq!(recursion_misses(older), None);
    }

    #[test]
    fn warns_once_per_increase() {
        let mut at = 0;
        let mut all = BTreeMap::from([
            ("kfree_skb".to_owned(), 0),
            ("tcp_send_reset".to_owned(), 0),
        ]);
        assert_eq!(warning(&all, &mut at), None);
        all.insert("kfree_skb".to_owned(), 2);
        let w = warning(&all, &mut at).expect("a warning");
        assert!(
            w.contains("kfree_skb=2") && !w.contains("tcp_send_reset"),
            "{w}"
        );
        assert_eq!(warning(&all, &mut at), None);
        assert_eq!(nonzero(&all).len(), 1);
    }
}
