//! What the deployment tests share: the static agent that ships, the systemd unit's settings
//! (read from deploy/systemd/rst-trace.service, the one source of the capability set), and
//! running the agent as an unprivileged user holding exactly a given set of capabilities.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The unprivileged user the capability tests run the agent as (nobody), like the unit's
/// DynamicUser: no root uid, no supplementary groups.
pub const UNPRIVILEGED_UID: u32 = 65534;

/// The static agent of `cargo xtask dist`: $RST_TRACE_DIST_BIN (set by `cargo xtask test`),
/// else <workspace>/target/dist/bin/rst-trace. Panics when neither exists.
pub fn dist_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RST_TRACE_DIST_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RST_TRACE_DIST_BIN={} does not exist; build it with cargo xtask dist",
            p.display()
        );
        return p;
    }
    let p = crate::workspace_root().join("target/dist/bin/rst-trace");
    assert!(
        p.is_file(),
        "no static agent: $RST_TRACE_DIST_BIN is unset and {} does not exist — run the tests \
         with `cargo xtask test` (it builds it), or build it with `cargo xtask dist`",
        p.display()
    );
    p
}

/// A file of the repository's deploy/ directory.
pub fn deploy_file(rel: &str) -> PathBuf {
    crate::workspace_root().join("deploy").join(rel)
}

/// The systemd unit as shipped.
pub fn unit_path() -> PathBuf {
    deploy_file("systemd/rst-trace.service")
}

/// Every value of `key=` in the unit, in order (systemd allows a key to repeat).
pub fn unit_values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
        .collect()
}

/// The capabilities the unit grants, e.g. ["CAP_SYS_ADMIN", …]. Panics unless the bounding
/// set and the ambient set are the same list: the measurement is only valid for one set.
pub fn unit_capabilities() -> Vec<String> {
    let path = unit_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let set = |key: &str| -> Vec<String> {
        let mut caps: Vec<String> = unit_values(&text, key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        caps.sort();
        caps.dedup();
        caps
    };
    let bounding = set("CapabilityBoundingSet");
    let ambient = set("AmbientCapabilities");
    assert!(
        !ambient.is_empty(),
        "{} grants no AmbientCapabilities",
        path.display()
    );
    assert_eq!(
        bounding,
        ambient,
        "{}: CapabilityBoundingSet and AmbientCapabilities differ",
        path.display()
    );
    ambient
}

/// The agent's arguments in the unit's ExecStart (without the binary).
pub fn unit_exec_args() -> Vec<String> {
    let path = unit_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let exec = unit_values(&text, "ExecStart");
    assert_eq!(exec.len(), 1, "{}: one ExecStart= wanted", path.display());
    exec[0]
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

/// A world-readable copy of a binary in a private directory, so an unprivileged user can
/// execute it whatever the permissions of the build tree. Removed on drop.
pub struct PrivateCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivateCopy {
    pub fn new(src: &Path, tag: &str) -> PrivateCopy {
        // Unique per copy: tests of one binary run in parallel, each with its own.
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rsttest-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let name = src.file_name().unwrap_or_else(|| "bin".as_ref());
        let copy = PrivateCopy {
            bin: dir.join(name),
            dir,
        };
        std::fs::set_permissions(&copy.dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", copy.dir.display()));
        std::fs::copy(src, &copy.bin)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), copy.bin.display()));
        std::fs::set_permissions(&copy.bin, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", copy.bin.display()));
        copy
    }

    pub fn path(&self) -> &Path {
        &self.bin
    }
}

impl Drop for PrivateCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `CAP_SYS_ADMIN` → `sys_admin`, as setpriv spells capabilities.
fn setpriv_name(cap: &str) -> String {
    cap.trim_start_matches("CAP_").to_ascii_lowercase()
}

/// `setpriv` running `bin args…` as [`UNPRIVILEGED_UID`] with exactly `caps` (permitted,
/// effective, inheritable, ambient and bounding), as systemd starts the unit with
/// `DynamicUser=yes` and `AmbientCapabilities=`.
pub fn with_exactly(caps: &[String], bin: &Path, args: &[String]) -> Command {
    let list: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", setpriv_name(c))))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={UNPRIVILEGED_UID}"))
        .arg(format!("--regid={UNPRIVILEGED_UID}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={list}"))
        .arg(format!("--ambient-caps={list}"))
        .arg(format!("--bounding-set={list}"))
        .arg("--")
        .arg(bin)
        .args(args)
        .current_dir("/");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_values_and_setpriv_names() {
        let text = "[Service]\nAmbientCapabilities=CAP_A CAP_B\n  AmbientCapabilities=CAP_C\nX=1\n";
        assert_eq!(
            unit_values(text, "AmbientCapabilities"),
            ["CAP_A CAP_B", "CAP_C"]
        );
        assert_eq!(setpriv_name("CAP_SYS_ADMIN"), "sys_admin");
        let cmd = with_exactly(
            &["CAP_BPF".into(), "CAP_PERFMON".into()],
            Path::new("/x"),
            &["run".into()],
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.contains(&"--ambient-caps=-all,+bpf,+perfmon".to_owned()),
            "{args:?}"
        );
        assert_eq!(args.last().map(String::as_str), Some("run"));
    }
}
