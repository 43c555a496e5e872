//! Boots a kernel + initramfs in QEMU (TCG: KVM guests hang on the CI machine kind) and collects
//! the serial console, with a hard timeout.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cmd;

/// After RST-VM-DONE the guest powers off at once; this bounds a hung poweroff.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// Console lines echoed to our stderr are cut here (the log file has them whole).
const ECHO_MAX: usize = 400;

pub struct Console {
    /// Console lines, `\r` stripped, with the seconds since QEMU started.
    pub lines: Vec<(f64, String)>,
    pub done: bool,
    pub timed_out: bool,
    pub exit: Option<ExitStatus>,
    pub secs: f64,
}

enum Msg {
    Console(String),
    Stderr(String),
    Eof,
}

pub fn command(kernel: &Path, initrd: &Path, append: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append);
    qemu
}

/// Runs QEMU until the guest powers off, `timeout` passes (QEMU is then killed), or QEMU dies.
/// Every console line goes to `log` and, prefixed with `tag`, to our stderr.
// Long on purpose: one poll loop over the console, the deadline and QEMU's exit, whose
// branches share the loop's state.
pub fn boot(mut qemu: Command, log: &Path, timeout: Duration, tag: &str) -> Result<Console> {
    let mut log_file =
        File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    writeln!(log_file, "# {}", cmd::display(&qemu))?;
    eprintln!("xtask: $ {}", cmd::display(&qemu));
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (package qemu-system-x86)")?;

    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("qemu stdout")?;
    let err = child.stderr.take().context("qemu stderr")?;
    let tx_out = tx.clone();
    let readers = [
        thread::spawn(move || read_lines(out, tx_out, Msg::Console)),
        thread::spawn(move || read_lines(err, tx, Msg::Stderr)),
    ];

    let deadline = start + timeout;
    let mut console = Console {
        lines: Vec::new(),
        done: false,
        timed_out: false,
        exit: None,
        secs: 0.0,
    };
    let mut eofs = 0;
    let mut done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let limit = match done_at {
            Some(t) => deadline.min(t + POWEROFF_GRACE),
            None => deadline,
        };
        if now >= limit {
            if done_at.is_none() {
                console.timed_out = true;
                eprintln!(
                    "{tag} timed out after {} s: killing QEMU (pid {})",
                    timeout.as_secs(),
                    child.id()
                );
                writeln!(log_file, "# xtask: timed out after {} s", timeout.as_secs())?;
            } else {
                eprintln!("{tag} QEMU did not exit after RST-VM-DONE: killing it");
            }
            let _ = child.kill();
            break;
        }
        match rx.recv_timeout(limit - now) {
            Ok(Msg::Console(line)) => {
                let line = line.trim_end_matches(['\r', '\n']).replace('\r', "");
                // Seconds since QEMU started, as dmesg does: where the time goes under TCG.
                writeln!(log_file, "[{:7.1}] {line}", start.elapsed().as_secs_f64())?;
                echo(tag, &line);
                if line.contains("RST-VM-DONE") {
                    console.done = true;
                    done_at = Some(Instant::now());
                }
                console.lines.push((start.elapsed().as_secs_f64(), line));
            }
            Ok(Msg::Stderr(line)) => {
                writeln!(log_file, "# qemu stderr: {line}")?;
                eprintln!("{tag} qemu: {line}");
            }
            Ok(Msg::Eof) => {
                eofs += 1;
                if eofs == 2 {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    console.exit = Some(child.wait().context("waiting for QEMU")?);
    for r in readers {
        let _ = r.join();
    }
    console.secs = start.elapsed().as_secs_f64();
    writeln!(
        log_file,
        "# xtask: QEMU exited ({}) after {:.1} s",
        console.exit.map_or("?".into(), |s| s.to_string()),
        console.secs
    )?;
    Ok(console)
}

fn echo(tag: &str, line: &str) {
    if line.len() > ECHO_MAX {
        let mut cut = ECHO_MAX;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        eprintln!(
            "{tag} {}… ({} bytes, see the log)",
            &line[..cut],
            line.len()
        );
    } else {
        eprintln!("{tag} {line}");
    }
}

fn read_lines(stream: impl std::io::Read, tx: mpsc::Sender<Msg>, wrap: fn(String) -> Msg) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx
                    .send(wrap(String::from_utf8_lossy(&buf).into_owned()))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Msg::Eof);
}
