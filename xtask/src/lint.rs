//! Style gates, run by `cargo xtask lint` and before the tests of `cargo xtask test`: rustfmt
//! and clippy with warnings denied, on the host workspace and on the eBPF crate (which is
//! outside the workspace and built for its own target). They fail fast: a lint failure costs
//! seconds, the test suite it would otherwise precede costs minutes.
use anyhow::{Context, Result};

use crate::{cmd, ebpf, workspace::Workspace};

pub fn run(ws: &Workspace) -> Result<()> {
    let mut fmt = cmd::cargo();
    fmt.current_dir(&ws.root).args(["fmt", "--all", "--check"]);
    cmd::run(&mut fmt).context("the workspace is not formatted (run `cargo fmt --all`)")?;

    let mut fmt_ebpf = cmd::cargo();
    fmt_ebpf
        .current_dir(ws.ebpf_crate())
        .args(["fmt", "--check"]);
    cmd::run(&mut fmt_ebpf)
        .context("the eBPF crate is not formatted (run `cargo fmt` in rst-trace-ebpf)")?;

    // The agent's build script embeds the eBPF object: on a fresh clone there is none yet.
    let bpf_object = ebpf::build(ws)?;
    let mut clippy = cmd::cargo();
    clippy
        .current_dir(&ws.root)
        .env(ebpf::OBJECT_ENV, &bpf_object)
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
    cmd::run(&mut clippy).context("clippy found problems in the workspace")?;

    ebpf::clippy(ws)
}
