//! Checks before anything is loaded: privileges, and the memlock limit old kernels need.
use thiserror::Error;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error("this kernel ({release}) is older than 5.8 and has no BPF ring buffer, which rst-trace needs; run it on Linux 5.8 or later")]
    KernelTooOld { release: String },
    #[error("missing {missing}, needed to load the eBPF programs. Run as root (sudo rst-trace run), or grant the capabilities: setcap cap_bpf,cap_perfmon,cap_net_admin,cap_sys_admin+ep \"$(command -v rst-trace)\"")]
    MissingCapabilities { missing: String },
}

/// Effective capability set of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0)
}

pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// (major, minor) of a kernel release string such as `6.1.0-56-cloud-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The BPF ring buffer arrived in 5.8; older kernels get a plain explanation, not a load error.
pub fn check_kernel() -> Result<(), PreflightError> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    match kernel_version(&release) {
        Some(v) if v < (5, 8) => Err(PreflightError::KernelTooOld { release }),
        _ => Ok(()),
    }
}

pub fn check_privileges() -> Result<(), PreflightError> {
    let missing = missing_capabilities(effective_caps());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities {
            missing: missing.join(" and "),
        })
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use the cgroup, so a
/// refusal here (no CAP_SYS_RESOURCE) is harmless and only logged.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "raising RLIMIT_MEMLOCK failed ({}); fine on kernels ≥ 5.11",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.0-46-cloud-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("4.19.0"), Some((4, 19)));
        assert!(kernel_version("4.19.0").is_some_and(|v| v < (5, 8)));
        assert!(kernel_version("5.10.0").is_some_and(|v| v >= (5, 8)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn capabilities_needed() {
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_PERFMON"]);
    }
}
