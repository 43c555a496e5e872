//! Running external programs.
//!
//! Every command is echoed to stderr before it runs so a CI log shows exactly
//! what was executed, and every exit status is checked: a silently failed step
//! would surface later as a confusing error far from its cause.

use std::env;
use std::ffi::OsString;
use std::io;
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The cargo that started us: it carries the toolchain rustup selected for this
/// workspace, which a bare `cargo` from PATH might not.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// Renders a command roughly as a shell would show it, including the
/// environment variables we set, so it can be copied and re-run by hand.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    let line = parts.join(" ");
    match cmd.get_current_dir() {
        Some(dir) => format!("(cd {} && {line})", quote(&dir.to_string_lossy())),
        None => line,
    }
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!(
            "'{}'",
            s.replace('\'', r"'\''").replace('\x1f', r"'$'\x1f''")
        )
    }
}

/// Runs with inherited stdio and returns the exit status without judging it,
/// for commands whose exit code we pass on (the test suite).
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    cmd.status()
        .with_context(|| format!("could not start `{shown}`"))
}

/// Runs with inherited stdio and fails unless the command exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a read-only check quietly and captures its output. `None` means the
/// program is not installed, which the caller usually treats as "missing"
/// rather than as an error.
pub fn probe(cmd: &mut Command) -> Result<Option<Output>> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not start `{}`", display(cmd))),
    }
}

/// Maps a child's status to the code we exit with; a signal death becomes
/// 128 + signal, as a shell would report it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}
