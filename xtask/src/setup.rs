//! Installs what building and testing need, skipping whatever is present.
//!
//! Runs on developer machines and on fresh CI machines (Debian 12, root), so
//! every step first checks and only installs on a miss: re-running it is cheap
//! and never touches a working installation.

use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Debian's LLVM 22 matches the LLVM inside rustc 1.95. bpf-linker is built
/// against it, and that build needs both packages (checked on the CI machine
/// kind: Debian 12).
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];

/// Peers and tools the integration tests drive (setpriv is in util-linux). rsyslog is the log
/// shipper of tests/tests/output.rs, which runs a private rsyslogd of its own; prometheus (which
/// ships promtool) scrapes the agent in tests/tests/metrics.rs as a child process of its own;
/// where systemd runs, these packages may also enable the system's services, which the tests
/// never touch. tmux is the terminal tests/tests/top.rs drives `rst-trace top` in.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nginx-light",
    "hping3",
    "wrk",
    "iptables",
    "socat",
    "util-linux",
    "rsyslog",
    "prometheus",
    "tmux",
    "bpftool",
];

/// What the deployment tests need: `systemd-analyze verify` for the unit, podman to build
/// the container image, and a Python venv for the offline Kubernetes manifest validator.
const DEPLOY_PACKAGES: &[&str] = &["systemd", "podman", "python3-venv"];

/// What `integration-test vm` needs besides the build chain: QEMU, the guest's busybox, xz
/// for Debian's compressed kernel modules, and iptables, whose legacy binary the guest carries
/// (dpkg-deb, gzip, ldd and sha256sum are part of every Debian system).
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "xz-utils", "iptables"];

/// What `bench` compares the agent with and reads the kernel's per-program cost through:
/// tcpdump and a bpftrace one-liner are the usual ways to watch RSTs, bpftool reads
/// run_cnt/run_time_ns. iproute2 creates the namespaces the workloads run in.
const BENCH_PACKAGES: &[&str] = &["tcpdump", "bpftrace", "bpftool", "iproute2"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What building and running the agent needs (`build-ebpf`, `build`, `run`, `dist`).
    Build,
    /// Build prerequisites plus the test-time packages: peers, deployment tools, the VM ones.
    Full,
    /// Build prerequisites plus what `integration-test vm` needs.
    Vm,
    /// Build prerequisites plus what `bench` runs next to the agent.
    Bench,
}

/// The Debian packages a scope needs, without duplicates, in install order.
pub fn packages(scope: Scope) -> Vec<&'static str> {
    let mut packages = BUILD_PACKAGES.to_vec();
    if scope == Scope::Full {
        packages.extend_from_slice(TEST_PACKAGES);
        packages.extend_from_slice(DEPLOY_PACKAGES);
    }
    if matches!(scope, Scope::Full | Scope::Vm) {
        packages.extend_from_slice(VM_PACKAGES);
    }
    if scope == Scope::Bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    let mut seen = std::collections::HashSet::new();
    packages.retain(|p| seen.insert(*p));
    packages
}

pub fn ensure(scope: Scope) -> Result<()> {
    // Order matters: bpf-linker is compiled against llvm-22-dev.
    ensure_apt_packages(&packages(scope))?;
    ensure_components()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in packages {
        if apt_installed(pkg)? {
            eprintln!("ok {pkg} (present)");
        } else {
            eprintln!("installing {pkg}");
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    // A fresh machine's package lists are often empty or stale; refresh once,
    // and only when we actually have something to install.
    let mut update = apt_command()?;
    update.arg("update");
    cmd::run(&mut update).context("apt-get update failed")?;

    let mut install = apt_command()?;
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing);
    cmd::run(&mut install).context("apt-get install failed")?;

    for pkg in missing {
        if !apt_installed(pkg)? {
            bail!("apt-get reported success but {pkg} is still not installed");
        }
        eprintln!("ok {pkg} (installed)");
    }
    Ok(())
}

fn apt_installed(pkg: &str) -> Result<bool> {
    let out = cmd::probe(Command::new("dpkg-query").args(["-W", "--showformat=${Status}", pkg]))?
        .context(
        "dpkg-query not found: `cargo xtask setup` supports Debian-based systems only",
    )?;
    // Exit status 1 just means "unknown package"; a removed package that left
    // its config behind reports "deinstall ok config-files", also not usable.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

/// apt-get needs root; CI runs as root, a developer may have sudo.
fn apt_command() -> Result<Command> {
    if is_root() {
        return Ok(Command::new("apt-get"));
    }
    let has_sudo =
        cmd::probe(Command::new("sudo").arg("--version"))?.is_some_and(|o| o.status.success());
    if !has_sudo {
        bail!("installing packages needs root, and sudo is not available; re-run as root");
    }
    let mut sudo = Command::new("sudo");
    sudo.arg("apt-get");
    Ok(sudo)
}

fn is_root() -> bool {
    // Effective UID is the second field of the Uid: line. Reading /proc avoids
    // a libc dependency for one syscall.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// rust-src: `-Z build-std=core` compiles core from source for bpfel-unknown-none. clippy and
/// rustfmt: `cargo xtask lint`, which `cargo xtask test` runs first.
const COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];

fn ensure_components() -> Result<()> {
    let out = cmd::probe(Command::new("rustup").args(["component", "list", "--installed"]))?
        .context(
            "rustup not found: it is needed to install the rust-src, clippy and rustfmt components",
        )?;
    if !out.status.success() {
        bail!(
            "`rustup component list --installed` failed ({})",
            out.status
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    // Listed as "rust-src", "clippy-x86_64-unknown-linux-gnu", ...
    let present = |component: &str| {
        installed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|name| {
                name == component
                    || name
                        .strip_prefix(component)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
    };
    for component in COMPONENTS {
        if present(component) {
            eprintln!("ok {component} (present)");
            continue;
        }
        eprintln!("installing {component}");
        // rustup's proxy exported RUSTUP_TOOLCHAIN to us, so this targets the
        // toolchain the build will actually use.
        cmd::run(Command::new("rustup").args(["component", "add", component]))?;
        eprintln!("ok {component} (installed)");
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    match bpf_linker_version()? {
        Some(v) if v == BPF_LINKER_VERSION => {
            eprintln!("ok bpf-linker {v} (present)");
            return Ok(());
        }
        Some(v) => eprintln!("installing bpf-linker {BPF_LINKER_VERSION} (found {v})"),
        None => eprintln!("installing bpf-linker {BPF_LINKER_VERSION}"),
    }

    // Without LLVM_PREFIX the build cannot find libLLVM ("unable to find
    // library -lLLVM"). --force: a broken binary of the same version would
    // otherwise make cargo say "already installed" and do nothing. This
    // compiles for several minutes on two cores.
    let mut install = cmd::cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22", "--force"]);
    cmd::run(&mut install).context("installing bpf-linker failed")?;

    // rustc finds the linker through PATH, so check what PATH resolves to.
    match bpf_linker_version()? {
        Some(v) if v == BPF_LINKER_VERSION => {
            eprintln!("ok bpf-linker {v} (installed)");
            Ok(())
        }
        Some(v) => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but the one first on PATH is {v}; \
             remove it or put ~/.cargo/bin first"
        ),
        None => bail!("installed bpf-linker, but it is not on PATH; add ~/.cargo/bin to PATH"),
    }
}

/// `None` if bpf-linker is absent or does not run.
fn bpf_linker_version() -> Result<Option<String>> {
    let Some(out) = cmd::probe(Command::new("bpf-linker").arg("--version"))? else {
        return Ok(None);
    };
    if !out.status.success() {
        return Ok(None);
    }
    // Prints "bpf-linker 0.13.0".
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(
        text.split_whitespace()
            .nth(1)
            .unwrap_or("(unknown version)")
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_and_running_install_no_test_peer() {
        let build = packages(Scope::Build);
        for peer in TEST_PACKAGES.iter().chain(DEPLOY_PACKAGES) {
            assert!(
                !build.contains(peer),
                "{peer} is a test-time package, yet the build scope installs it"
            );
        }
        assert_eq!(build, BUILD_PACKAGES);
    }

    #[test]
    fn the_full_scope_has_peers_deploy_tools_and_no_duplicates() {
        let full = packages(Scope::Full);
        for p in BUILD_PACKAGES
            .iter()
            .chain(TEST_PACKAGES)
            .chain(DEPLOY_PACKAGES)
            .chain(VM_PACKAGES)
        {
            assert!(full.contains(p), "{p} missing from the full scope");
        }
        let unique: std::collections::HashSet<_> = full.iter().collect();
        assert_eq!(unique.len(), full.len(), "{full:?}");
    }
}
