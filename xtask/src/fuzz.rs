//! `cargo xtask fuzz --seconds N`: fuzzes the ring buffer record decoder.
//!
//! With cargo-fuzz (libFuzzer, coverage-guided, AddressSanitizer), which needs a nightly
//! toolchain: both are installed when missing (`rustup toolchain install nightly`,
//! `cargo install cargo-fuzz`). Where either cannot be had, the same target body
//! (`rst_trace::records::fuzz_one`) runs on stable over random and mutated records for the
//! same time, which finds panics but is not coverage-guided; the output says which ran.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;
use crate::workspace::Workspace;

const TARGET: &str = "record_decoder";
const NIGHTLY: &str = "nightly";

pub fn run(ws: &Workspace, bpf_object: &Path, seconds: u64) -> Result<u8> {
    match libfuzzer_ready() {
        Ok(()) => {
            let mut fuzz = Command::new("rustup");
            fuzz.current_dir(&ws.root)
                // The outer cargo's choices (its toolchain, its own path) must not leak into
                // the nightly build cargo-fuzz starts.
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO")
                .env(crate::ebpf::OBJECT_ENV, bpf_object)
                .args(["run", NIGHTLY, "cargo", "fuzz", "run", TARGET, "--fuzz-dir"])
                .arg(ws.root.join("fuzz"))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"));
            let status = cmd::status(&mut fuzz)?;
            if !status.success() {
                eprintln!(
                    "xtask: the fuzzer failed ({status}); a crashing input is under \
                     fuzz/artifacts/{TARGET}/"
                );
            }
            Ok(cmd::exit_code(status))
        }
        Err(why) => {
            eprintln!(
                "xtask: cargo-fuzz cannot run here ({why:#}); running the same target body on \
                 stable for {seconds} s instead (random and mutated records, not \
                 coverage-guided)"
            );
            let mut test = cmd::cargo();
            test.current_dir(&ws.root)
                .env(crate::ebpf::OBJECT_ENV, bpf_object)
                .env("RST_TRACE_FUZZ_SECONDS", seconds.to_string())
                .args(["test", "--release", "-p", "rst-trace", "--lib"])
                .args(["malformed::fuzz_record_decoder_stable", "--"])
                .args(["--ignored", "--exact", "--nocapture"]);
            let status = cmd::status(&mut test)?;
            Ok(cmd::exit_code(status))
        }
    }
}

/// Installs, if missing, the nightly toolchain and cargo-fuzz.
fn libfuzzer_ready() -> Result<()> {
    if !nightly_present()? {
        eprintln!("installing the {NIGHTLY} toolchain (cargo-fuzz needs -Z sanitizer flags)");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))
        .context("rustup toolchain install nightly failed")?;
    }
    eprintln!("ok {NIGHTLY} toolchain (present)");
    let fuzz_version = || {
        cmd::probe(Command::new("cargo").args(["fuzz", "--version"]))
            .ok()
            .flatten()
            .filter(|o| o.status.success())
    };
    if fuzz_version().is_none() {
        eprintln!("installing cargo-fuzz");
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))
            .context("cargo install cargo-fuzz failed")?;
    }
    let v = fuzz_version().context("cargo-fuzz installed but `cargo fuzz --version` fails")?;
    eprintln!("ok {}", String::from_utf8_lossy(&v.stdout).trim());
    Ok(())
}

fn nightly_present() -> Result<bool> {
    let out = cmd::probe(Command::new("rustup").args(["toolchain", "list"]))?
        .context("rustup not found: it is needed for the nightly toolchain")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(NIGHTLY)))
}
