//! Builds the eBPF object from rst-trace-ebpf/.
//!
//! That crate is outside the host workspace (it targets bpfel-unknown-none and
//! has its own Cargo.lock), so it is built by a separate cargo invocation.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::cmd;
use crate::workspace::Workspace;

const TARGET: &str = "bpfel-unknown-none";

/// The variable through which the agent's build script is given the object to embed.
pub const OBJECT_ENV: &str = "RST_TRACE_BPF_OBJECT";

/// Builds, verifies and installs the object at `Workspace::bpf_object`,
/// returning that path. Prerequisites must already be in place
/// (`setup::ensure`).
pub fn build(ws: &Workspace) -> Result<PathBuf> {
    let mut cargo = cargo_for_bpf(ws, "build")?;
    cmd::run(&mut cargo).context("building the eBPF object failed")?;
    let build_dir = ws.ebpf_build_dir();

    let built = build_dir.join(TARGET).join("release").join("rst-trace");
    let data = fs::read(&built)
        .with_context(|| format!("cargo succeeded but {} cannot be read", built.display()))?;
    verify(&data).with_context(|| format!("{} is not a usable eBPF object", built.display()))?;

    // Leave an identical object untouched: the agent embeds it, and a new
    // mtime would make cargo rebuild the agent on every invocation.
    let out = ws.bpf_object();
    if fs::read(&out).is_ok_and(|old| old == data) {
        return Ok(out);
    }
    // Write the bytes we verified, via a rename, so a concurrent reader (a
    // test run, the agent's build) never sees a half-written object.
    let out_dir = out.parent().context("bpf object path has no parent")?;
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let tmp = out_dir.join(".rst-trace.bpf.o.tmp");
    fs::write(&tmp, &data).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))?;
    Ok(out)
}

/// `cargo SUBCOMMAND` for the eBPF crate, with the target, flags and build directory of
/// `build` (so `clippy` checks exactly what is built).
fn cargo_for_bpf(ws: &Workspace, subcommand: &str) -> Result<Command> {
    let crate_dir = ws.ebpf_crate();
    if !crate_dir.join("Cargo.toml").is_file() {
        bail!("no eBPF crate at {}", crate_dir.display());
    }
    let build_dir = ws.ebpf_build_dir();
    // bpf_target_arch tells aya-ebpf which architecture's pt_regs/syscall
    // layout to use: the one the agent will run on, i.e. this host.
    // -Clink-arg=--btf makes bpf-linker emit the .BTF section the loader
    // relies on; it is easy to lose, hence the check below.
    // CARGO_ENCODED_RUSTFLAGS (0x1f-separated) overrides any RUSTFLAGS in the
    // environment, which are meant for host builds.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");

    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&crate_dir)
        // -Z build-std is unstable; this lets the stable toolchain accept it,
        // as aya-build does, instead of requiring a nightly install.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .args([
            subcommand,
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&build_dir);
    Ok(cargo)
}

/// clippy on the eBPF crate, warnings denied.
pub fn clippy(ws: &Workspace) -> Result<()> {
    let mut cargo = cargo_for_bpf(ws, "clippy")?;
    cargo.args(["--", "-D", "warnings"]);
    cmd::run(&mut cargo).context("clippy found problems in the eBPF crate")
}

fn verify(data: &[u8]) -> Result<()> {
    let elf = object::File::parse(data).context("not an ELF object")?;
    if elf.architecture() != object::Architecture::Bpf {
        bail!(
            "ELF machine is {:?}, expected eBPF (EM_BPF)",
            elf.architecture()
        );
    }
    match elf.section_by_name(".BTF") {
        None => bail!("no .BTF section (was bpf-linker given --btf?)"),
        Some(s) if s.size() == 0 => bail!("the .BTF section is empty"),
        Some(_) => {}
    }
    let panics: Vec<String> = elf
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|name| name.contains("panicking"))
        .collect();
    if !panics.is_empty() {
        // A division or an index the compiler could not prove safe leaves a call into
        // core::panicking, which ends in a call rather than an exit: the verifier refuses
        // every program that reaches it ("last insn is not an exit or jmp"), on whichever
        // kernel loads that program, which may not be the one the tests run on.
        bail!(
            "the object keeps a panic path ({}): make the operation that leads there checked \
             (checked_div, get, …)",
            panics.join(", ")
        );
    }
    let loops = byte_loops(&elf, STORM_PROGRAMS);
    if !loops.is_empty() {
        bail!(
            "programs on an RST storm's path call the object's byte-at-a-time {}: zero or copy \
             word by word (mem::zero, mem::copy) or into a per-CPU scratch map",
            loops.join(", ")
        );
    }
    Ok(())
}

/// The sections of the programs that run once or more per RST of a storm (the function hooks
/// on kernels whose tracepoint does not see socket-less RSTs; `kprobe` holds only the
/// send-reset kprobe).
const STORM_PROGRAMS: &[&str] = &[
    "tp_btf/tcp_send_reset",
    "tp_btf/tcp_receive_reset",
    "raw_tp/tcp_send_reset",
    "raw_tp/tcp_receive_reset",
    "fentry/tcp_v4_send_reset",
    "fentry/tcp_v6_send_reset",
    "kprobe",
];

/// Calls from `sections` to `memset`, `memcpy` or `memmove` ("section: symbol"). The BPF
/// backend emits them for struct literals with zeroed arrays, values returned by copy and
/// `..Default::default()` when it does not inline them; the object's own versions move one
/// byte per loop turn, which made a 96-byte key cost a storm's programs more than the ring
/// buffer record it replaced.
fn byte_loops(elf: &object::File, sections: &[&str]) -> Vec<String> {
    use object::RelocationTarget;
    let mut found = Vec::new();
    for section in elf.sections() {
        let Ok(name) = section.name() else { continue };
        if !sections.contains(&name) {
            continue;
        }
        for (_, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else {
                continue;
            };
            let Ok(symbol) = elf.symbol_by_index(index) else {
                continue;
            };
            let Ok(callee) = symbol.name() else { continue };
            if matches!(callee, "memset" | "memcpy" | "memmove") {
                let call = format!("{name}: {callee}");
                if !found.contains(&call) {
                    found.push(call);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_host_executable() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let err = verify(&data).unwrap_err().to_string();
        assert!(err.contains("expected eBPF"), "{err}");
    }

    #[test]
    fn rejects_a_non_elf() {
        assert!(verify(b"not an object").is_err());
    }

    #[test]
    fn accepts_the_built_object_and_rejects_its_truncations() {
        // The object the last build-ebpf wrote, when there is one (xtask's tests do not build
        // it themselves).
        let Ok(ws) = Workspace::locate() else { return };
        let Ok(data) = std::fs::read(ws.bpf_object()) else {
            return;
        };
        verify(&data).unwrap();
        for len in [0, 16, 63, 64, data.len() / 2] {
            assert!(
                verify(&data[..len]).is_err(),
                "a prefix of {len} bytes passed"
            );
        }
    }
}
