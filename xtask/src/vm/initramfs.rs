//! The guest's initramfs: a gzip'd newc cpio written here (no cpio tool needed) holding busybox,
//! the agent, the test peer, the scenario runner, their shared libraries and an /init script.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::vm::kernel::Module;

const BUSYBOX: &str = "/bin/busybox";

/// Legacy iptables (the nf_tables flavour needs modules some series build in and others do
/// not), installed in the guest as `iptables` and `ip6tables`. Its extensions are loaded with
/// dlopen from XTABLES_LIBDIR, so ldd does not list them: the ones the scenarios use are named
/// here.
const IPTABLES: &str = "/usr/sbin/xtables-legacy-multi";
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
const XTABLES_EXTENSIONS: &[&str] = &[
    "libxt_standard.so",
    "libxt_tcp.so",
    "libipt_REJECT.so",
    "libip6t_REJECT.so",
];

/// The host files that go into every guest.
pub struct Payload {
    pub agent: PathBuf,
    pub peer: PathBuf,
    pub vmcheck: PathBuf,
}

/// /init. Console protocol: see tests/src/bin/rst-trace-vmcheck.rs; RST-VM-DONE comes last.
/// `rst.only=a,b` on the kernel command line narrows the scenarios.
const INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing || echo "RST-NOTE tracefs mount failed"
mount -t debugfs debugfs /sys/kernel/debug || echo "RST-NOTE debugfs mount failed"
mount -t bpf bpf /sys/fs/bpf || echo "RST-NOTE bpffs mount failed"
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
echo "RST-KERNEL $(uname -r)"
for m in $(cat /etc/rst-modules); do
  if insmod /lib/modules/$m.ko; then echo "RST-MODULE $m loaded"; else echo "RST-MODULE $m FAILED"; fi
done
only=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in rst.only=*) only="--only ${arg#rst.only=}" ;; esac
done
echo "RST-VM-START uptime=$(cut -d' ' -f1 /proc/uptime)"
/bin/rst-trace-vmcheck --workdir /tmp $only
rc=$?
echo "RST-VMCHECK-EXIT $rc uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ "$rc" != 0 ]; then
  dmesg | tail -n 80 | sed 's/^/RST-DMESG /'
fi
echo "RST-VM-DONE"
poweroff -f
"#;

/// Writes <dir>/initrd.img for a kernel with these modules; returns its path.
pub fn build(dir: &Path, payload: &Payload, modules: &[Module]) -> Result<PathBuf> {
    let mut cpio = Cpio::default();
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/etc",
        "/lib/modules",
    ] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for /init's stdio before anything is mounted.
    cpio.node("/dev/console", 0o020600, 5, 1);

    cpio.file(BUSYBOX, 0o755, &read(Path::new(BUSYBOX))?);
    // busybox-static needs nothing; a dynamic busybox would need its libraries too.
    let mut libs: BTreeSet<PathBuf> = shared_libraries(Path::new(BUSYBOX))?.into_iter().collect();
    for applet in busybox_applets()? {
        let path = format!("/bin/{applet}");
        if path != BUSYBOX {
            cpio.symlink(&path, "busybox");
        }
    }

    let bins = [
        (&payload.agent, "/bin/rst-trace"),
        (&payload.peer, "/bin/rst-trace-peer"),
        (&payload.vmcheck, "/bin/rst-trace-vmcheck"),
    ];
    for (host, guest) in bins {
        cpio.file(guest, 0o755, &read(host)?);
        libs.extend(shared_libraries(host)?);
    }
    let iptables = Path::new(IPTABLES);
    if !iptables.is_file() {
        bail!("{IPTABLES} not found (the iptables package provides it; `cargo xtask setup` installs it)");
    }
    cpio.file("/bin/xtables-legacy-multi", 0o755, &read(iptables)?);
    cpio.symlink("/bin/iptables", "xtables-legacy-multi");
    cpio.symlink("/bin/ip6tables", "xtables-legacy-multi");
    libs.extend(shared_libraries(iptables)?);
    for ext in XTABLES_EXTENSIONS {
        let host = Path::new(XTABLES_DIR).join(ext);
        cpio.file(&host.to_string_lossy(), 0o644, &read(&host)?);
        libs.extend(shared_libraries(&host)?);
    }
    for lib in libs {
        let guest = lib.to_string_lossy().into_owned();
        cpio.file(&guest, 0o755, &read(&lib)?);
    }

    let mut names = String::new();
    for m in modules {
        cpio.file(&format!("/lib/modules/{}.ko", m.name), 0o644, &m.data);
        names.push_str(&m.name);
        names.push('\n');
    }
    cpio.file("/etc/rst-modules", 0o644, names.as_bytes());
    cpio.file("/init", 0o755, INIT.as_bytes());

    let out = dir.join("initrd.img");
    let tmp = dir.join(".initrd.img.tmp");
    gzip(&cpio.finish(), &tmp)?;
    fs::rename(&tmp, &out).with_context(|| format!("cannot move {}", tmp.display()))?;
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn busybox_applets() -> Result<Vec<String>> {
    let out = cmd::probe(Command::new(BUSYBOX).arg("--list"))?
        .context("busybox not found (the busybox-static package provides /bin/busybox)")?;
    if !out.status.success() {
        bail!("`busybox --list` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// What `ldd` lists: `name => /path (addr)` and the loader's `/path (addr)`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    let out = cmd::probe(&mut ldd)?.context("ldd not found")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static executable: glibc's ldd says so on stderr and exits 1.
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(&ldd),
            out.status,
            err.trim()
        );
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn gzip(data: &[u8], out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut child = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot run gzip")?;
    // Writing everything before waiting is fine: gzip streams to the file, never back to us.
    child
        .stdin
        .take()
        .context("gzip stdin")?
        .write_all(data)
        .context("writing to gzip")?;
    let status = child.wait()?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    Ok(())
}

/// A newc ("070701") cpio archive, as the kernel's initramfs unpacker reads it.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime: reproducible archives
            u32::try_from(size).expect("initramfs member over 4 GiB"),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("name length"),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !parent.is_empty() {
                self.dir(parent);
            }
        }
    }

    pub fn dir(&mut self, path: &str) {
        if self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_owned());
        self.header(path, 0o040755, 0, (0, 0));
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.parents(path);
        self.header(path, 0o100000 | perm, data.len(), (0, 0));
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.header(path, 0o120777, target.len(), (0, 0));
        self.buf.extend_from_slice(target.as_bytes());
        self.pad();
    }

    pub fn node(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.header(path, mode, 0, (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f5e)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5e)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f5e)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::default();
        c.file("/bin/x", 0o755, b"abc");
        let data = c.finish();
        // /bin, /bin/x, trailer; every header starts 4-aligned with the newc magic.
        assert_eq!(data.windows(6).filter(|w| *w == b"070701").count(), 3);
        assert_eq!(data.len() % 4, 0);
        assert!(data.windows(3).any(|w| w == b"abc"));
    }
}
