//! Debian cloud kernels for the VM tests: resolve the newest of a series, download, unpack, cache.
//!
//! Each series has its own apt state under <target>/vm-cache/apt/<suite>/ (sources list, lists,
//! cache), passed with -o Dir::…, so the host's apt configuration, lists and caches are never
//! touched. A kernel, once unpacked, lives in <target>/vm-cache/<release>/ and is reused.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};

use crate::cmd;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
/// Package lists older than this are refreshed before resolving "the newest kernel".
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel series and where Debian publishes it.
pub struct Series {
    pub name: &'static str,
    /// Name of the private apt state (shared by series from the same release).
    apt_state: &'static str,
    /// (archive, suite) pairs, component main.
    suites: &'static [(&'static str, &'static str)],
}

const BOOKWORM: &[(&str, &str)] = &[
    (MIRROR, "bookworm"),
    (MIRROR, "bookworm-updates"),
    (SECURITY, "bookworm-security"),
    (MIRROR, "bookworm-backports"),
];

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        apt_state: "bullseye",
        suites: &[(MIRROR, "bullseye"), (SECURITY, "bullseye-security")],
    },
    Series {
        name: "6.1",
        apt_state: "bookworm",
        suites: BOOKWORM,
    },
    // 6.12 is in bookworm-security (+deb12) and bookworm-backports (+bpo): the newest wins.
    Series {
        name: "6.12",
        apt_state: "bookworm",
        suites: BOOKWORM,
    },
];

pub fn series(name: &str) -> Option<&'static Series> {
    SERIES.iter().find(|s| s.name == name)
}

/// An unpacked kernel package.
pub struct Kernel {
    pub package: String,
    /// `uname -r`, e.g. 6.1.0-56-cloud-amd64.
    pub release: String,
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    /// The unpacked package root (boot/, lib/modules/<release>/).
    fn root(&self) -> PathBuf {
        self.dir.join("pkg")
    }

    fn modules_dir(&self) -> PathBuf {
        self.root().join("lib/modules").join(&self.release)
    }

    pub fn config(&self) -> Result<String> {
        let path = self
            .root()
            .join("boot")
            .join(format!("config-{}", self.release));
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Resolves the newest kernel of the series (unless `offline`) and makes sure it is unpacked in
/// the cache.
pub fn fetch(cache: &Path, series: &'static Series, offline: bool) -> Result<Kernel> {
    let resolved = if offline {
        None
    } else {
        match newest_package(cache, series) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!(
                    "xtask: warning: cannot resolve the newest {} kernel from Debian's archive: {e:#}",
                    series.name
                );
                None
            }
        }
    };
    let package = match resolved {
        Some(p) => p,
        None => newest_cached(cache, series)?.with_context(|| {
            format!(
                "no {} kernel in {} and the archive could not be asked",
                series.name,
                cache.display()
            )
        })?,
    };
    let release = package
        .strip_prefix("linux-image-")
        .context("package name without linux-image- prefix")?
        .to_owned();
    let dir = cache.join(&release);
    let vmlinuz = dir.join("pkg/boot").join(format!("vmlinuz-{release}"));
    if vmlinuz.is_file() && dir.join("package").is_file() {
        eprintln!("ok kernel {release} (cached in {})", dir.display());
    } else {
        download(cache, series, &package, &dir)?;
        if !vmlinuz.is_file() {
            bail!("{package} has no {}", vmlinuz.display());
        }
        eprintln!("ok kernel {release} (downloaded to {})", dir.display());
    }
    Ok(Kernel {
        package,
        release,
        dir,
        vmlinuz,
    })
}

/// Cached kernels of the series (directories with a completed download), newest first.
fn newest_cached(cache: &Path, series: &Series) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Ok(None);
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let package = format!("linux-image-{name}");
        if is_series_package(&package, series.name) && e.path().join("package").is_file() {
            found.push(package);
        }
    }
    found.sort_by(|a, b| natural_cmp(a, b));
    Ok(found.pop())
}

/// linux-image-<series>.<digits>…-cloud-amd64, not -dbg/-unsigned.
fn is_series_package(name: &str, series: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("linux-image-{series}.")) else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_digit())
        && rest.ends_with("-cloud-amd64")
        && !rest.contains("-dbg")
        && !rest.contains("unsigned")
}

/// Compares version-like strings: digit runs numerically, the rest bytewise.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

struct AptState {
    dir: PathBuf,
}

impl AptState {
    fn prepare(cache: &Path, series: &Series) -> Result<AptState> {
        let dir = cache.join("apt").join(series.apt_state);
        for sub in ["lists/partial", "cache/archives/partial", "parts"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        // target=Packages: the kernel is all we want; no translations, no DEP-11 metadata.
        let sources: String = series
            .suites
            .iter()
            .map(|(uri, suite)| {
                format!("deb [signed-by={KEYRING} target=Packages] {uri} {suite} main\n")
            })
            .collect();
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&path, &sources)
                .with_context(|| format!("cannot write {}", path.display()))?;
            // Lists of another source set would be stale: force an update.
            let _ = fs::remove_file(dir.join("updated"));
        }
        Ok(AptState { dir })
    }

    fn options(&self, cmd: &mut Command) {
        let d = &self.dir;
        for (key, value) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", d.join("parts")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        // The files are ours (root's); the _apt sandbox user may not reach them.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }

    fn update_if_stale(&self) -> Result<()> {
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        let mut update = Command::new("apt-get");
        self.options(&mut update);
        update.args(["-q", "update"]);
        cmd::run(&mut update).context("apt-get update (private VM kernel lists) failed")?;
        fs::write(&stamp, b"").with_context(|| format!("cannot write {}", stamp.display()))?;
        Ok(())
    }
}

fn newest_package(cache: &Path, series: &Series) -> Result<String> {
    let apt = AptState::prepare(cache, series)?;
    apt.update_if_stale()?;
    let mut names = Command::new("apt-cache");
    apt.options(&mut names);
    names.args(["pkgnames", "linux-image-"]);
    let out = cmd::probe(&mut names)?.context("apt-cache not found")?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd::display(&names),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| is_series_package(n, series.name))
        .map(str::to_owned)
        .collect();
    found.sort_by(|a, b| natural_cmp(a, b));
    found
        .pop()
        .with_context(|| format!("no linux-image-{}.*-cloud-amd64 package", series.name))
}

fn download(cache: &Path, series: &Series, package: &str, dir: &Path) -> Result<()> {
    let apt = AptState::prepare(cache, series)?;
    // Start clean: a half-finished earlier attempt must not be mistaken for a kernel.
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut get = Command::new("apt-get");
    apt.options(&mut get);
    get.current_dir(dir).args(["-q", "download", package]);
    cmd::run(&mut get).with_context(|| format!("downloading {package} failed"))?;
    let deb = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
    cmd::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("pkg")),
    )
    .with_context(|| format!("unpacking {} failed", deb.display()))?;
    fs::remove_file(&deb).with_context(|| format!("cannot remove {}", deb.display()))?;
    // Written last: marks the directory as a complete kernel.
    let deb_name = deb.file_name().unwrap_or_default().to_string_lossy();
    fs::write(dir.join("package"), format!("{package}\n{deb_name}\n"))?;
    Ok(())
}

/// A loadable module, decompressed, in load order (dependencies first).
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// The modules among `wanted` that this kernel builds as modules, with their dependencies, in
/// load order. Built-in ones (modules.builtin) are skipped; unknown names are an error.
pub fn modules(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<Module>> {
    let dir = kernel.modules_dir();
    let builtin: Vec<String> = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();
    let mut files = HashMap::new();
    index_modules(&dir.join("kernel"), &mut files)?;

    let mut order: Vec<Module> = Vec::new();
    let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false = visiting, true = done
    for &name in wanted {
        let name = module_name(name);
        if builtin.contains(&name) {
            continue;
        }
        add_module(&name, &files, &builtin, &mut state, &mut order)?;
    }
    Ok(order)
}

fn add_module(
    name: &str,
    files: &HashMap<String, PathBuf>,
    builtin: &[String],
    state: &mut BTreeMap<String, bool>,
    order: &mut Vec<Module>,
) -> Result<()> {
    match state.get(name) {
        Some(true) => return Ok(()),
        Some(false) => bail!("module dependency cycle at {name}"),
        None => {}
    }
    if builtin.iter().any(|b| b == name) {
        return Ok(());
    }
    state.insert(name.to_owned(), false);
    let path = files
        .get(name)
        .with_context(|| format!("module {name} is neither built in nor in the package"))?;
    let data = read_module(path)?;
    for dep in depends(&data).with_context(|| format!("reading {}", path.display()))? {
        add_module(&dep, files, builtin, state, order)?;
    }
    state.insert(name.to_owned(), true);
    order.push(Module {
        name: name.to_owned(),
        data,
    });
    Ok(())
}

fn module_name(file: &str) -> String {
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

fn index_modules(dir: &Path, out: &mut HashMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            index_modules(&path, out)?;
        } else {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.contains(".ko") {
                out.insert(module_name(&f), path);
            }
        }
    }
    Ok(())
}

/// The module's bytes, decompressed (insmod hands them to init_module as they are).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("cannot read {}", path.display())),
        Some(tool) => {
            let mut c = Command::new(tool);
            c.arg("-dc").arg(path);
            let out = cmd::probe(&mut c)?
                .with_context(|| format!("{tool} is needed to decompress {}", path.display()))?;
            if !out.status.success() {
                bail!("`{}` failed ({})", cmd::display(&c), out.status);
            }
            Ok(out.stdout)
        }
    }
}

/// `depends=` of the module's .modinfo section.
fn depends(data: &[u8]) -> Result<Vec<String>> {
    let elf = object::File::parse(data).context("not an ELF object")?;
    let Some(sec) = elf.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let modinfo = sec
        .data()
        .context(".modinfo extends past the end of the file")?;
    for field in modinfo.split(|&b| b == 0) {
        if let Some(list) = field.strip_prefix(b"depends=") {
            return Ok(String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(module_name)
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_of_a_series() {
        let mut v = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-10-cloud-amd64",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v.last(), Some(&"linux-image-6.1.0-56-cloud-amd64"));
        assert!(natural_cmp("6.12.117+deb12", "6.12.57+bpo").is_gt());
    }

    #[test]
    fn series_names_do_not_overlap() {
        assert!(is_series_package("linux-image-6.1.0-56-cloud-amd64", "6.1"));
        assert!(!is_series_package(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.1"
        ));
        assert!(is_series_package(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.12"
        ));
        assert!(!is_series_package("linux-image-6.12-cloud-amd64", "6.12"));
        assert!(!is_series_package(
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "6.1"
        ));
        assert!(is_series_package(
            "linux-image-5.10.0-46-cloud-amd64",
            "5.10"
        ));
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("tcp_diag.ko.xz"), "tcp_diag");
        assert_eq!(module_name("nf-conntrack.ko"), "nf_conntrack");
    }
}
