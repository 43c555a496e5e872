//! Where the workspace and its build outputs live.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Debug or release build of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// The directory cargo puts this profile's binaries in.
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl Workspace {
    /// Asks cargo rather than guessing, so a target dir configured in
    /// .cargo/config.toml or CARGO_BUILD_TARGET_DIR is respected too.
    pub fn locate() -> Result<Workspace> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let mut metadata = cmd::cargo();
        metadata
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(&manifest)
            .stderr(Stdio::inherit());
        let out =
            cmd::probe(&mut metadata)?.context("cargo not found (is ~/.cargo/bin on PATH?)")?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}); the workspace manifest may be broken",
                cmd::display(&metadata),
                out.status
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid JSON")?;
        let field = |name: &str| -> Result<PathBuf> {
            json.get(name)
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
                .with_context(|| format!("cargo metadata output has no `{name}`"))
        };
        let root = field("workspace_root")?;

        // cargo metadata already reflects CARGO_TARGET_DIR; reading it here as
        // well keeps us right even if that ever changes, and resolves a
        // relative value the way cargo does (against the working directory).
        let target_dir = match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    env::current_dir()
                        .context("cannot read the current directory")?
                        .join(dir)
                }
            }
            None => field("target_directory")?,
        };

        Ok(Workspace { root, target_dir })
    }

    pub fn ebpf_crate(&self) -> PathBuf {
        self.root.join("rst-trace-ebpf")
    }

    /// Kept inside the workspace target dir, not rst-trace-ebpf/target, so
    /// builds leave `git status` clean and `cargo clean` removes them.
    pub fn ebpf_build_dir(&self) -> PathBuf {
        self.target_dir.join("bpf-build")
    }

    pub fn bpf_object(&self) -> PathBuf {
        self.target_dir.join("bpf").join("rst-trace.bpf.o")
    }

    pub fn agent_binary(&self, profile: Profile) -> PathBuf {
        self.target_dir.join(profile.dir_name()).join("rst-trace")
    }
}
