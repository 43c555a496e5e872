//! The deployable agent: one statically linked executable with the eBPF object inside.
//!
//! glibc's static mode (`-C target-feature=+crt-static` on the gnu target) is used rather than
//! musl: it builds with the toolchain already installed (no extra Rust target to download),
//! the agent resolves no host names or users (so glibc's NSS, which static glibc cannot load,
//! is never needed), and it keeps glibc's allocator under RST storms.
//!
//! The build is the documented `cargo install --path rst-trace` command, so what the README
//! tells an operator to run and what CI checks are the same thing. `--target` is explicit so
//! the flag reaches only the agent: build scripts and proc macros stay dynamic, as they must.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use object::Object;

use crate::cmd;
use crate::ebpf;
use crate::workspace::Workspace;

/// The static agent: glibc linked in, so the binary runs on any distribution.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// The gnu target of this host, e.g. x86_64-unknown-linux-gnu.
pub fn host_gnu_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Where `cargo xtask dist` installs: <target>/dist/bin/rst-trace.
pub fn dist_root(ws: &Workspace) -> PathBuf {
    ws.target_dir.join("dist")
}

pub fn dist_binary(ws: &Workspace) -> PathBuf {
    dist_root(ws).join("bin").join("rst-trace")
}

/// Builds the eBPF object, then installs the static agent embedding it; returns its path.
pub fn build(ws: &Workspace) -> Result<PathBuf> {
    let bpf_object = ebpf::build(ws)?;
    let root = dist_root(ws);

    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&ws.root)
        .env(ebpf::OBJECT_ENV, &bpf_object)
        .env("RUSTFLAGS", rustflags())
        // --locked: the workspace's Cargo.lock, not whatever versions are newest today.
        // --target-dir: reuse the workspace's build cache instead of a throw-away one.
        .args(["install", "--locked", "--force", "--path", "rst-trace"])
        .arg("--target")
        .arg(host_gnu_target())
        .arg("--target-dir")
        .arg(&ws.target_dir)
        .arg("--root")
        .arg(&root);
    cmd::run(&mut cargo).context("building the static rst-trace agent failed")?;

    let binary = dist_binary(ws);
    verify(&binary, &bpf_object)?;
    Ok(binary)
}

/// The caller's RUSTFLAGS (if any) plus crt-static.
fn rustflags() -> String {
    match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} {STATIC_RUSTFLAGS}"),
        _ => STATIC_RUSTFLAGS.to_owned(),
    }
}

/// Static (no program interpreter, and `ldd` agrees) and carrying the exact eBPF object.
pub fn verify(binary: &Path, bpf_object: &Path) -> Result<()> {
    let data = fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let elf =
        object::File::parse(&*data).with_context(|| format!("{} is not ELF", binary.display()))?;
    // A dynamically linked executable names its loader in .interp; a static(-pie) one has none.
    if elf.section_by_name(".interp").is_some() {
        bail!(
            "{} has a program interpreter (.interp): it is dynamically linked",
            binary.display()
        );
    }
    if let Some(out) = cmd::probe(Command::new("ldd").arg(binary))? {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !ldd_says_static(&text) {
            bail!("ldd does not call {} static:\n{text}", binary.display());
        }
    }
    let object =
        fs::read(bpf_object).with_context(|| format!("cannot read {}", bpf_object.display()))?;
    if !contains(&data, &object) {
        bail!(
            "{} does not embed the eBPF object {} byte for byte",
            binary.display(),
            bpf_object.display()
        );
    }
    Ok(())
}

/// glibc's ldd prints "statically linked" for static-pie and "not a dynamic executable" for
/// static non-PIE executables.
pub fn ldd_says_static(output: &str) -> bool {
    output.contains("statically linked") || output.contains("not a dynamic executable")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_wording() {
        assert!(ldd_says_static("\tstatically linked\n"));
        assert!(ldd_says_static("\tnot a dynamic executable\n"));
        assert!(!ldd_says_static(
            "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6\n"
        ));
    }

    #[test]
    fn finds_embedded_bytes() {
        assert!(contains(b"xxELFobjectyy", b"ELFobject"));
        assert!(!contains(b"xxELFobjecyy", b"ELFobject"));
        assert!(!contains(b"abc", b""));
    }

    #[test]
    fn the_test_binary_itself_is_not_static() {
        // The xtask test binary is an ordinary dynamic executable: verify must refuse it.
        let exe = std::env::current_exe().unwrap();
        let err = verify(&exe, &exe).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }
}
