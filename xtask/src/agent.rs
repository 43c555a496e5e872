//! Building, running and testing the userspace agent.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::ebpf;
use crate::workspace::{Profile, Workspace};

/// Read by rst-trace at compile time to embed the eBPF object.
/// Read by the integration tests to find the agent binary.
const AGENT_BIN_ENV: &str = "RST_TRACE_BIN";
/// Read by the deployment tests: the static agent that the unit, image and DaemonSet ship.
const DIST_BIN_ENV: &str = "RST_TRACE_DIST_BIN";

pub struct Built {
    pub bpf_object: PathBuf,
    pub binary: PathBuf,
}

/// Builds the eBPF object, then the agent embedding it.
pub fn build(ws: &Workspace, profile: Profile) -> Result<Built> {
    let bpf_object = ebpf::build(ws)?;

    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&ws.root)
        .env(ebpf::OBJECT_ENV, &bpf_object)
        .args(["build", "--package", "rst-trace"]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building the rst-trace agent failed")?;

    let binary = ws.agent_binary(profile);
    if !binary.is_file() {
        bail!("cargo succeeded but {} does not exist", binary.display());
    }
    Ok(Built { bpf_object, binary })
}

/// Replaces this process with the agent, so signals (Ctrl-C, SIGTERM) reach
/// it directly and its exit status is ours without any relaying.
/// Returns only if the exec failed.
pub fn exec(binary: &Path, args: &[OsString]) -> anyhow::Error {
    let mut agent = Command::new(binary);
    agent.args(args);
    eprintln!("xtask: exec {}", cmd::display(&agent));
    let err = agent.exec();
    anyhow::Error::new(err).context(format!("could not execute {}", binary.display()))
}

/// Runs the workspace tests against a built agent; returns cargo's exit code.
pub fn test(ws: &Workspace, built: &Built, dist: &Path, extra_args: &[OsString]) -> Result<u8> {
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&ws.root)
        // Same value as for the build, so cargo does not rebuild rst-trace
        // with a different embedded object.
        .env(ebpf::OBJECT_ENV, &built.bpf_object)
        .env(AGENT_BIN_ENV, &built.binary)
        .env(DIST_BIN_ENV, dist)
        .args(["test", "--workspace", "--release"])
        .args(extra_args);
    let status = cmd::status(&mut cargo)?;
    if !status.success() {
        eprintln!("xtask: tests failed ({status})");
    }
    Ok(cmd::exit_code(status))
}
