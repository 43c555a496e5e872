//! `cargo xtask integration-test vm`: the same release agent binary, on real Debian kernels,
//! booted under QEMU (TCG), running the cause scenarios of tests/src/bin/rst-trace-vmcheck.rs.
//!
//! Per kernel: resolve the newest Debian cloud kernel of the series and cache it under
//! <target>/vm-cache/<release>/ (kernel.rs), build an initramfs with busybox, the agent, the peer
//! and the scenario runner (initramfs.rs), boot it with a hard timeout, streaming the serial
//! console to <target>/vm-cache/logs/<release>.log (qemu.rs), and read the result lines
//! (report.rs). Writes <target>/vm-cache/results/<series>.json per kernel and
//! <target>/vm-cache/summary.json for the run (its path is printed on stdout).

mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::agent;
use crate::cmd;
use crate::setup::{self, Scope};
use crate::workspace::{Profile, Workspace};

use report::KernelResult;

/// Kernel modules Debian builds as modules that the guest needs: sock_diag for TCP sockets
/// (listener queues and drop counters, for the agent), and legacy iptables' and ip6tables'
/// filter tables, tcp match and REJECT targets (for the firewall and keepalive scenarios of
/// both families; present as modules in all three series, unlike the nf_tables pieces).
/// Dependencies are added from .modinfo.
const GUEST_MODULES: &[&str] = &[
    "tcp_diag",
    "iptable_filter",
    "ip6table_filter",
    "xt_tcpudp",
    "ipt_REJECT",
    "ip6t_REJECT",
];

#[derive(Subcommand)]
pub enum Suite {
    /// Boot real Debian kernels under QEMU (TCG) and run the cause scenarios there.
    ///
    /// Downloads the newest Debian cloud kernel of each series (cached under
    /// <target>/vm-cache/), builds the release agent, rst-trace-peer and
    /// rst-trace-vmcheck, packs them with busybox into an initramfs, boots it
    /// (qemu-system-x86_64 -accel tcg) and runs the cause scenarios of
    /// rst-trace-vmcheck in the guest. Prints a scenario × kernel table on stderr and the path of a JSON
    /// summary on stdout; exits 1 if any scenario failed or a VM never finished.
    ///
    /// Example: cargo xtask integration-test vm --kernel all
    Vm(VmArgs),
}

#[derive(Args)]
pub struct VmArgs {
    /// Kernel series to boot, or `all` (5.10, 6.1 and 6.12, one after another).
    #[arg(long, value_parser = ["5.10", "6.1", "6.12", "all"])]
    kernel: String,

    /// Hard limit per kernel for the VM, in seconds (QEMU is killed after it).
    #[arg(long, default_value_t = 480, value_name = "SECS")]
    timeout: u64,

    /// Only these scenarios (comma-separated), e.g. no_listener_v4,abort_on_close_v6.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    scenario: Vec<String>,

    /// Use the agent already at <target>/release/rst-trace instead of building it (the
    /// guest's two test binaries are still built; cargo skips them when up to date).
    #[arg(long)]
    no_build: bool,

    /// Do not ask Debian's archive for the newest kernel; use the newest cached one.
    #[arg(long)]
    offline: bool,
}

pub fn run(suite: Suite) -> Result<u8> {
    match suite {
        Suite::Vm(args) => run_vm(args),
    }
}

fn run_vm(args: VmArgs) -> Result<u8> {
    let wanted: Vec<&str> = if args.scenario.is_empty() {
        report::SCENARIOS.to_vec()
    } else {
        for s in &args.scenario {
            if !report::SCENARIOS.contains(&s.as_str()) {
                bail!(
                    "unknown scenario {s:?}; known: {}",
                    report::SCENARIOS.join(", ")
                );
            }
        }
        report::SCENARIOS
            .iter()
            .copied()
            .filter(|s| args.scenario.iter().any(|a| a == s))
            .collect()
    };
    let series: Vec<&'static kernel::Series> = if args.kernel == "all" {
        kernel::SERIES.iter().collect()
    } else {
        vec![kernel::series(&args.kernel).context("unknown kernel series")?]
    };

    let started = Instant::now();
    setup::ensure(Scope::Vm)?;
    let ws = Workspace::locate()?;
    let payload = binaries(&ws, args.no_build)?;
    let agent_sha = sha256(&payload.agent)?;
    eprintln!(
        "xtask: agent {} (sha256 {agent_sha})",
        payload.agent.display()
    );

    let cache = ws.target_dir.join("vm-cache");
    let logs = cache.join("logs");
    let results_dir = cache.join("results");
    for d in [&cache, &logs, &results_dir] {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    let mut results = Vec::new();
    for s in series {
        let result = run_kernel(&cache, &logs, s, &payload, &args, &wanted);
        let path = results_dir.join(format!("{}.json", s.name));
        let doc = json!({
            "agent": {"binary": payload.agent, "sha256": agent_sha},
            "finished_unix": unix_now(),
            "kernel": result.to_json(),
        });
        write_json(&path, &doc)?;
        results.push(result);
    }

    eprintln!("\n{}", report::table(&results, &wanted));
    let all_passed = results.iter().all(KernelResult::passed);
    let summary = json!({
        "agent": {"binary": payload.agent, "sha256": agent_sha},
        "finished_unix": unix_now(),
        "total_secs": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "passed": all_passed,
        "scenarios": wanted,
        "kernels": results.iter().map(KernelResult::to_json).collect::<Vec<_>>(),
    });
    let summary_path = cache.join("summary.json");
    write_json(&summary_path, &summary)?;
    eprintln!(
        "xtask: {} in {:.0} s; summary {}",
        if all_passed {
            "all scenarios passed"
        } else {
            "FAILED"
        },
        started.elapsed().as_secs_f64(),
        summary_path.display()
    );
    println!("{}", summary_path.display());
    Ok(if all_passed { 0 } else { 1 })
}

/// Builds (unless `no_build`) the release agent the same way `cargo xtask build` does, and the
/// two test binaries the guest runs.
fn binaries(ws: &Workspace, no_build: bool) -> Result<initramfs::Payload> {
    let release = ws.target_dir.join(Profile::Release.dir_name());
    let payload = initramfs::Payload {
        agent: ws.agent_binary(Profile::Release),
        peer: release.join("rst-trace-peer"),
        vmcheck: release.join("rst-trace-vmcheck"),
    };
    if !no_build {
        agent::build(ws, Profile::Release)?;
    }
    let mut cargo = cmd::cargo();
    cargo.current_dir(&ws.root).args([
        "build",
        "--release",
        "-p",
        "rst-trace-tests",
        "--bin",
        "rst-trace-peer",
        "--bin",
        "rst-trace-vmcheck",
    ]);
    cmd::run(&mut cargo).context("building the test binaries failed")?;
    for p in [&payload.agent, &payload.peer, &payload.vmcheck] {
        if !p.is_file() {
            bail!(
                "{} does not exist (build it: run without --no-build)",
                p.display()
            );
        }
    }
    // Snapshot the binaries: the target dir is shared, and a rebuild in the middle of
    // `--kernel all` must not give later kernels another agent than earlier ones.
    let snap = ws.target_dir.join("vm-cache").join("bin");
    fs::create_dir_all(&snap).with_context(|| format!("cannot create {}", snap.display()))?;
    let copy = |from: &PathBuf| -> Result<PathBuf> {
        let to = snap.join(from.file_name().context("binary without a file name")?);
        fs::copy(from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(to)
    };
    Ok(initramfs::Payload {
        agent: copy(&payload.agent)?,
        peer: copy(&payload.peer)?,
        vmcheck: copy(&payload.vmcheck)?,
    })
}

fn run_kernel(
    cache: &Path,
    logs: &Path,
    series: &'static kernel::Series,
    payload: &initramfs::Payload,
    args: &VmArgs,
    wanted: &[&str],
) -> KernelResult {
    let start = Instant::now();
    let mut result = KernelResult {
        series: series.name.to_owned(),
        release: series.name.to_owned(),
        ..KernelResult::default()
    };
    eprintln!("\nxtask: === kernel {} ===", series.name);
    if let Err(e) = boot_kernel(cache, logs, series, payload, args, wanted, &mut result) {
        eprintln!("xtask: kernel {}: {e:#}", series.name);
        result.error = Some(format!("{e:#}"));
        // Every wanted scenario is then a failure.
        for &name in wanted {
            if !result.scenarios.iter().any(|s| s.name == name) {
                result.scenarios.push(report::Scenario {
                    name: name.to_owned(),
                    pass: false,
                    detail: json!({"error": "not run"}),
                });
            }
        }
    }
    result.total_secs = start.elapsed().as_secs_f64();
    result
}

fn boot_kernel(
    cache: &Path,
    logs: &Path,
    series: &'static kernel::Series,
    payload: &initramfs::Payload,
    args: &VmArgs,
    wanted: &[&str],
    result: &mut KernelResult,
) -> Result<()> {
    let k = kernel::fetch(cache, series, args.offline)?;
    result.package = k.package.clone();
    result.release = k.release.clone();
    check_config(&k);
    let modules = kernel::modules(&k, GUEST_MODULES)?;
    let initrd = initramfs::build(&k.dir, payload, &modules)?;
    let mut append = "console=ttyS0 panic=-1 quiet".to_owned();
    if wanted.len() != report::SCENARIOS.len() {
        append.push_str(&format!(" rst.only={}", wanted.join(",")));
    }
    let log = logs.join(format!("{}.log", k.release));
    result.log = log.display().to_string();
    let qemu = qemu::command(&k.vmlinuz, &initrd, &append);
    let tag = format!("[vm {}]", series.name);
    let console = qemu::boot(qemu, &log, Duration::from_secs(args.timeout), &tag)?;
    result.read_console(&console, wanted);
    Ok(())
}

/// Warns about kernel options the agent cannot do without; the run goes on, so the failure
/// shows up where it happens.
fn check_config(k: &kernel::Kernel) {
    let Ok(config) = k.config() else { return };
    for opt in [
        "CONFIG_BPF_SYSCALL=y",
        "CONFIG_DEBUG_INFO_BTF=y",
        "CONFIG_BPF_EVENTS=y",
        "CONFIG_FTRACE_SYSCALLS=y",
    ] {
        if !config.lines().any(|l| l == opt) {
            eprintln!("xtask: warning: {} lacks {opt}", k.release);
        }
    }
}

fn sha256(path: &Path) -> Result<String> {
    let mut c = Command::new("sha256sum");
    c.arg(path);
    let out = cmd::probe(&mut c)?.context("sha256sum not found")?;
    if !out.status.success() {
        bail!("`{}` failed ({})", cmd::display(&c), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_json(path: &PathBuf, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        suite: Suite,
    }

    #[test]
    fn arguments() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "x",
            "vm",
            "--kernel",
            "all",
            "--scenario",
            "no_listener_v4,abort_on_close_v6",
        ])
        .unwrap();
        let Suite::Vm(args) = cli.suite;
        assert_eq!(args.kernel, "all");
        assert_eq!(args.scenario, ["no_listener_v4", "abort_on_close_v6"]);
        assert_eq!(args.timeout, 480);
        assert!(Cli::try_parse_from(["x", "vm", "--kernel", "4.19"]).is_err());
    }

    #[test]
    fn every_series_is_known() {
        for name in ["5.10", "6.1", "6.12"] {
            assert!(kernel::series(name).is_some(), "{name}");
        }
    }
}
