//! The artifacts that ship: the static agent of `cargo xtask dist`, and the container image
//! built from it by deploy/Containerfile.
//! * `ldd` calls the agent static, and it embeds the eBPF object byte for byte.
//! * `podman build` with the README's command gives an image of one layer holding only
//!   /rst-trace, identical to the static agent, with `rst-trace run` as its entrypoint.
//!
//! Starting the image is not tested: podman cannot start containers on the development
//! machines (crun's setrlimit is refused). The agent inside is the static binary that
//! deploy_capabilities.rs runs with the unit's (and the DaemonSet's) capabilities.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rst_trace_tests::deploy::{deploy_file, dist_binary};
use rst_trace_tests::require_root;
use serde_json::Value;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_dist_agent_is_static_and_embeds_the_ebpf_object() {
    let bin = dist_binary();
    let out = Command::new("ldd")
        .arg(&bin)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ldd: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("statically linked") || text.contains("not a dynamic executable"),
        "ldd {} does not call it static:\n{text}",
        bin.display()
    );
    let object = std::env::var_os("RST_TRACE_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| rst_trace_tests::workspace_root().join("target/bpf/rst-trace.bpf.o"));
    let object = std::fs::read(&object).unwrap_or_else(|e| {
        panic!(
            "read the eBPF object {} ({e}); build it with cargo xtask build-ebpf",
            object.display()
        )
    });
    let data = std::fs::read(&bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    assert!(
        data.windows(object.len()).any(|w| w == object.as_slice()),
        "{} does not embed the eBPF object byte for byte",
        bin.display()
    );
    let version = run(Command::new(&bin).arg("--version"));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("rst-trace "));
}

/// An image tag of this test run, removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The entries of a tar file (`tar -tvf`), one line each.
fn tar_listing(tar: &Path) -> Vec<String> {
    let out = run(Command::new("tar").arg("-tvf").arg(tar));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn podman_builds_an_image_holding_only_the_static_agent() {
    require_root();
    let bin = dist_binary();
    let context = bin.parent().expect("the binary has a directory");
    let image = Image(format!("localhost/rst-trace:test-{}", std::process::id()));
    // The README's command, with this run's tag.
    let probe = Command::new("podman").arg("--version").output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "podman is not installed ({probe:?}): cargo xtask setup installs it"
    );
    run(Command::new("podman")
        .args(["build", "-f"])
        .arg(deploy_file("Containerfile"))
        .args(["-t", &image.0])
        .arg(context));

    let out = run(Command::new("podman").args(["image", "inspect", &image.0]));
    let inspect: Value = serde_json::from_slice(&out.stdout).expect("podman image inspect JSON");
    let config = &inspect[0]["Config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/rst-trace", "run"]),
        "{config}"
    );
    assert_eq!(
        inspect[0]["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "FROM scratch + one COPY is one layer: {}",
        inspect[0]["RootFS"]
    );

    // The layer's content, from the image archive.
    let dir = Scratch(std::env::temp_dir().join(format!("rsttest-image-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let archive = dir.0.join("image.tar");
    run(Command::new("podman")
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&archive)
        .arg(&image.0));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir.0));
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.0.join("manifest.json")).expect("manifest.json in the archive"),
    )
    .expect("manifest.json is JSON");
    let layers = manifest[0]["Layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = dir.0.join(layers[0].as_str().expect("layer path"));
    let listing = tar_listing(&layer);
    let files: Vec<&String> = listing.iter().filter(|l| !l.starts_with('d')).collect();
    assert_eq!(
        files.len(),
        1,
        "the image must hold the agent and nothing else:\n{}",
        listing.join("\n")
    );
    assert!(
        files[0].starts_with("-rwx") && files[0].ends_with(" rst-trace"),
        "an executable /rst-trace: {}",
        files[0]
    );
    let unpacked = dir.0.join("layer");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&unpacked));
    let inside = std::fs::read(unpacked.join("rst-trace")).expect("rst-trace in the layer");
    let shipped = std::fs::read(&bin).expect("read the static agent");
    assert!(
        inside == shipped,
        "the image's /rst-trace differs from {}",
        bin.display()
    );
}
