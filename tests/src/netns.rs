//! A throw-away network namespace, deleted on drop (also when the test panics).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

const PREFIX: &str = "rsttest-";

static SEQ: AtomicU32 = AtomicU32::new(0);
static REAP: Once = Once::new();

/// A network namespace `rsttest-<pid>-<seq>` with `lo` up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): stdout={:?} stderr={:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Delete `rsttest-<pid>-*` namespaces left behind by harness processes that no longer exist
/// (a test binary killed with SIGKILL cannot run its Drop guards). Never touches other names, nor
/// those of live processes (concurrent test binaries).
fn reap_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for ent in dir.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Netns {
    /// Create the namespace and bring `lo` up. Panics on failure.
    pub fn new() -> Netns {
        crate::require_root();
        REAP.call_once(reap_stale);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard owns the namespace: a panic below still deletes it.
        let ns = Netns { name };
        run_checked(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        // Per namespace: the host's own range is left alone.
        ns.exec(
            "sysctl",
            &[
                "-q",
                "-w",
                &format!("net.ipv4.ip_local_port_range={}", crate::EPHEMERAL_PORTS),
            ],
        );
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// /run/netns/NAME
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace's inode (st_ino of /run/netns/NAME, a bind mount of the nsfs file): the value the
    /// agent reports as `netns`.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.path())
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path().display()))
            .ino()
    }

    /// A `Command` running `program args…` inside the namespace (`ip netns exec NAME …`).
    /// `ip netns exec` execs the program, so the spawned child's pid is the program's pid.
    pub fn command<S: AsRef<OsStr>>(&self, program: impl AsRef<OsStr>, args: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        for a in args {
            c.arg(a);
        }
        c
    }

    /// Run a command inside the namespace to completion; panics unless it succeeds. Returns stdout.
    pub fn exec<S: AsRef<OsStr>>(&self, program: impl AsRef<OsStr>, args: &[S]) -> String {
        let out = run_checked(&mut self.command(program, args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Set a per-netns sysctl inside this namespace (e.g. `net.ipv4.tcp_abort_on_overflow`, "1").
    /// Never touches the host's value. Panics if the key is not per-netns (write fails) .
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
        let now = self.sysctl_get(key);
        assert_eq!(
            now.split_whitespace().collect::<Vec<_>>(),
            value.split_whitespace().collect::<Vec<_>>(),
            "sysctl {key} in {} did not take",
            self.name
        );
    }

    /// Read a sysctl as seen inside this namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        self.exec("sysctl", &["-n", key]).trim().to_string()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let st = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match st {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns delete {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run ip netns delete {}: {e}", self.name),
        }
    }
}
