//! What /proc says about a process (CPU time, memory) and about the host's CPUs.
//!
//! CPU time is utime+stime of the whole process (every thread), read before and after a
//! workload: the agent's own cost, without the in-kernel cost of its programs, which runs in
//! the context of whatever process triggered them and shows up in the workload's rate instead.

use std::fs;

use anyhow::{bail, Context, Result};

/// Clock ticks per second, the unit of /proc/PID/stat and /proc/stat.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0 // USER_HZ on every Linux architecture we run on
    }
}

/// utime + stime of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces and parentheses: fields are counted
    // from the last ')'. After it come state (3), ..., utime (14), stime (15).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')' in {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .with_context(|| format!("{path}: field {} unreadable", i + 3))
    };
    Ok((tick(11)? + tick(12)?) / clock_ticks())
}

/// A `Vm*:` line of /proc/PID/status (VmRSS: resident now, VmHWM: peak resident), in KiB.
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            let kib = v.trim().trim_end_matches("kB").trim();
            return kib
                .parse()
                .with_context(|| format!("{path}: {key} is {v:?}"));
        }
    }
    bail!("{path} has no {key} line")
}

/// Busy CPU time of the whole host (all CPUs, every process and the kernel), in seconds:
/// everything in the `cpu` line of /proc/stat except idle and iowait.
pub fn host_busy_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("/proc/stat: bad cpu field"))
        .collect::<Result<_>>()?;
    if ticks.len() < 5 {
        bail!("/proc/stat cpu line too short: {line:?}");
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already included in user, so only the first eight count.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 / clock_ticks())
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?
        .trim()
        .to_owned())
}

/// MemTotal of /proc/meminfo, in MiB.
pub fn memory_mib() -> Result<u64> {
    let info = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/meminfo has no MemTotal")?;
    Ok(kib / 1024)
}

/// The CPU model, for the report header.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|v| v.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(status_kib(pid, "VmHWM").unwrap() >= status_kib(pid, "VmRSS").unwrap() / 2);
        assert!(host_busy_seconds().unwrap() > 0.0);
    }
}
