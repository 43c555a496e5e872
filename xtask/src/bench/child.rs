//! Processes the bench starts (the agent, tcpdump, bpftrace, load generators), each ended by
//! its own pid: a signal to the pid we spawned, never to a name, and never after it was reaped
//! (its pid could belong to someone else by then). Dropping a guard kills what is still
//! running, so an error anywhere leaves nothing behind.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// How long a process that ignored its first stop signal gets after the second.
const RESIGNAL_WAIT: Duration = Duration::from_secs(15);

pub struct Process {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `command`; `name` labels it in messages.
    pub fn spawn(name: &str, command: &mut Command) -> Result<Process> {
        let mut shown = cmd::display(command);
        if shown.chars().count() > 300 {
            shown = shown.chars().take(300).collect::<String>() + " …";
        }
        eprintln!("xtask: bench: $ {shown}");
        let child = command
            .spawn()
            .with_context(|| format!("could not start {name}: `{shown}`"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's stdout, when it was spawned with a pipe there (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status if it has exited (and is now reaped).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Fails if the process has exited: for the checks that it is still doing its job.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_exit()? {
            bail!("{} (pid {}) exited early ({status})", self.name, self.pid());
        }
        Ok(())
    }

    /// Sends `signal` unless the process is already reaped.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped
        // child, so it cannot have been recycled.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!("signalling {} (pid {pid}): {err}", self.name);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the process to stop with `signal` and waits up to `timeout` for it, then sends
    /// `signal` once more and waits [`RESIGNAL_WAIT`]. One that does not stop by then is
    /// killed: `None`.
    pub fn stop(&mut self, signal: libc::c_int, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.signal(signal)?;
        if let Some(status) = self.wait_timeout(timeout)? {
            return Ok(Some(status));
        }
        // A signal that lands between a tracer's check of its exit flag and its next blocking
        // wait is not seen until something wakes that wait: a second one does.
        eprintln!(
            "xtask: bench: {} (pid {}) did not stop within {timeout:?} of signal {signal}; sending it again",
            self.name,
            self.pid()
        );
        self.signal(signal)?;
        if let Some(status) = self.wait_timeout(RESIGNAL_WAIT)? {
            return Ok(Some(status));
        }
        eprintln!(
            "xtask: bench: {} (pid {}) did not stop after signal {signal} twice; killing it",
            self.name,
            self.pid()
        );
        self.signal(libc::SIGKILL)?;
        if self.wait_timeout(Duration::from_secs(10))?.is_none() {
            bail!(
                "{} (pid {}) survived SIGKILL for 10 s",
                self.name,
                self.pid()
            );
        }
        Ok(None)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing stdin first lets a load generator that waits on it leave on its own.
        drop(self.child.stdin.take());
        let running = matches!(self.try_exit(), Ok(None));
        if running
            && self
                .wait_timeout(Duration::from_millis(200))
                .ok()
                .flatten()
                .is_none()
        {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(5));
        }
    }
}
