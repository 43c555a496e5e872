//! The agent's refusals: without privileges it names the missing capability on one stderr line and
//! exits 1 (no panic, no backtrace); an unknown flag is a clap usage error, exit 2.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use rst_trace_tests::{agent_binary, require_root};

/// A private, world-readable copy of the agent binary, so that user nobody can execute it whatever
/// the permissions of the build directory are. Removed on drop.
struct NobodyCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl NobodyCopy {
    fn new() -> NobodyCopy {
        let src = agent_binary();
        let dir = std::env::temp_dir().join(format!("rsttest-nobody-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let guard = NobodyCopy {
            bin: dir.join("rst-trace"),
            dir,
        };
        std::fs::set_permissions(&guard.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(&src, &guard.bin)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), guard.bin.display()));
        std::fs::set_permissions(&guard.bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        guard
    }
}

impl Drop for NobodyCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .current_dir("/")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1");
    // The agent may not even get to parse its flags: bound the run.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn unprivileged_run_names_cap_bpf_and_exits_1() {
    require_root();
    let copy = NobodyCopy::new();
    let out = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&copy.bin)
        .arg("run"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status as nobody: {:?}; stderr: {stderr:?}; stdout: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "stderr must be exactly one line; got {stderr:?}"
    );
    assert!(
        lines[0].contains("CAP_BPF"),
        "stderr must name CAP_BPF: {stderr:?}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(
            !stderr.contains(bad),
            "stderr shows a panic ({bad}): {stderr:?}"
        );
    }
}

#[test]
fn unknown_flag_exits_2() {
    require_root();
    let bin = agent_binary();
    let out = run(Command::new(&bin).args(["run", "--no-such-flag"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status for an unknown flag: {:?}; stderr: {stderr:?}",
        out.status
    );
    assert!(
        stderr.contains("--no-such-flag"),
        "clap error should name the flag: {stderr:?}"
    );
    assert!(
        !stderr.contains("panicked"),
        "stderr shows a panic: {stderr:?}"
    );
}
