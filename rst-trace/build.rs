//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=RST_TRACE_BPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("../target"), PathBuf::from);
    let object = env::var_os("RST_TRACE_BPF_OBJECT")
        .map_or_else(|| target.join("bpf/rst-trace.bpf.o"), PathBuf::from);
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("rst-trace.bpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        panic!(
            "the eBPF object {} is missing ({e}); build it first with `cargo xtask build-ebpf` \
             (or set RST_TRACE_BPF_OBJECT to a built object)",
            object.display()
        );
    }
}
