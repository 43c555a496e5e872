//! `cargo xtask`: project tasks for rst-trace (see `cargo xtask --help`).
//!
//! Output convention: progress and diagnostics go to stderr; stdout carries
//! only results meant for scripts (artifact paths), so `cargo xtask run` does
//! not pollute the agent's JSON output.

mod agent;
mod bench;
mod cmd;
mod compat;
mod dist;
mod ebpf;
mod examples;
mod fuzz;
mod lint;
mod setup;
mod soak;
mod vm;
mod workspace;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use setup::Scope;
use workspace::{Profile, Workspace};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test rst-trace",
    long_about = "Set up, build, run and test rst-trace.\n\n\
        Every command installs what it needs first (Debian packages, the rust-src \
        component, bpf-linker), skipping whatever is already present. Installing \
        packages needs root (or sudo)."
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install all build and test prerequisites, skipping those present.
    ///
    /// Debian packages (llvm-22-dev, libpolly-22-dev; the test peers
    /// iproute2, nginx-light, hping3, wrk, iptables, socat, util-linux, rsyslog; the
    /// deployment tools systemd, podman, python3-venv; the VM packages), the
    /// rust-src component, and bpf-linker 0.13.0 built against LLVM 22.
    /// Safe to re-run.
    Setup,

    /// Build the eBPF object and check it carries BTF.
    ///
    /// Installs the build prerequisites if missing, builds rst-trace-ebpf for
    /// bpfel-unknown-none, verifies the ELF has a .BTF section, and prints the
    /// path of <target>/bpf/rst-trace.bpf.o.
    BuildEbpf,

    /// Build the eBPF object, then the rst-trace agent embedding it.
    ///
    /// Prints the path of the agent binary.
    Build {
        /// Build the agent without --release.
        #[arg(long)]
        debug: bool,
    },

    /// Build the deployable agent: statically linked, the eBPF object embedded.
    ///
    /// Runs `cargo install --locked --path rst-trace --target <arch>-unknown-linux-gnu` with
    /// RUSTFLAGS="-C target-feature=+crt-static" into <target>/dist, checks the result has no
    /// program interpreter (and that ldd calls it static) and embeds the eBPF object, and
    /// prints the path of <target>/dist/bin/rst-trace. Installs only the build prerequisites.
    Dist,

    /// Set up the build prerequisites, build (release), then run the agent.
    ///
    /// Installs only what building and running the agent needs (not the test peers).
    /// Arguments after `--` go to the agent; without any it runs `rst-trace run`.
    ///
    /// Example: cargo xtask run -- run --format json --duration 10
    Run {
        /// Arguments for rst-trace (default: run).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "AGENT_ARGS"
        )]
        args: Vec<OsString>,
    },

    /// Set up (test peers included), lint, build (release and dist), then run `cargo test --workspace --release`.
    ///
    /// The lint step (`cargo xtask lint`) runs first and stops the run on a finding.
    /// The tests get RST_TRACE_BPF_OBJECT, RST_TRACE_BIN and RST_TRACE_DIST_BIN (the static
    /// agent of `cargo xtask dist`), as absolute paths.
    /// Arguments after `--` go to cargo test (a test-name filter, or a second
    /// `--` followed by test-harness flags). --workspace is always passed, so
    /// -p does not narrow the run; use a filter.
    ///
    /// Example: cargo xtask test -- reset -- --nocapture
    Test {
        /// Arguments for cargo test.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CARGO_TEST_ARGS"
        )]
        args: Vec<OsString>,
    },

    /// Check formatting and lints: `cargo fmt --check` and `cargo clippy --all-targets -- -D
    /// warnings` on the workspace, the same on the eBPF crate for its target.
    Lint,

    /// Regenerate the README's kernel × cause table from the QEMU matrix and host doctor.
    ///
    /// Reads <target>/vm-cache/summary.json (from `integration-test vm --kernel all`) and
    /// runs the release agent's `doctor` on this host.
    CompatTable,

    /// Regenerate docs/event-examples.md from the event logs of a test run.
    ///
    /// Run the tests with RST_TRACE_EVENT_LOG=DIR (the harness keeps every agent line
    /// there), then `cargo xtask examples DIR`.
    Examples {
        /// Directory of *.jsonl event logs.
        logs: std::path::PathBuf,
    },

    /// Measure what the always-on agent costs: rates, CPU, memory, per-program kernel time.
    ///
    /// Healthy connection churn, an RST storm, idle namespaces and start-up next to many
    /// established connections, each in fresh network namespaces, untraced and under
    /// rst-trace (the storm also under tcpdump and a bpftrace one-liner), rounds interleaved.
    /// Prints a markdown report and writes docs/performance.md (target/bench/performance.md
    /// with --short or --only) and target/bench/summary.json. Missed targets are reported,
    /// not failed; the command fails only when a workload cannot run. Needs root.
    ///
    /// Example: cargo xtask bench --short
    Bench(bench::BenchArgs),

    /// The bench's load generator, run by `bench` inside its namespaces.
    #[command(hide = true, subcommand)]
    BenchLoad(bench::Load),

    /// Run the agent under a mixed workload for N minutes and fail on unbounded growth.
    ///
    /// Healthy churn through a listener restarted every cycle, RST storms, accept-queue
    /// overflows and namespace churn; RSS, fds, threads, CPU and every table's occupancy are
    /// sampled every 10 s. Fails when a series grows over the second half beyond its stated
    /// tolerance, a table passes its bound, or a total drifts from the kernel's counters.
    /// Writes docs/reliability.md when N >= 30, else target/soak/reliability.md. Needs root.
    Soak(soak::SoakArgs),

    /// Fuzz the ring buffer record decoder for N seconds.
    ///
    /// cargo-fuzz (libFuzzer + AddressSanitizer) on the nightly toolchain, both installed when
    /// missing; where they cannot be had, the same target body runs on stable (random and
    /// mutated records, not coverage-guided) and says so. A crash exits non-zero and leaves
    /// its input under fuzz/artifacts/.
    Fuzz {
        /// How long to fuzz.
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u64,
    },

    /// Integration tests outside the host kernel (see `integration-test vm --help`).
    IntegrationTest {
        #[command(subcommand)]
        suite: vm::Suite,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What each task installs first. Building and running the agent need only the build chain;
/// the test peers, deployment tools and VM packages come with `setup` and `test`.
fn setup_scope(task: &Task) -> Option<Scope> {
    match task {
        Task::Setup | Task::Test { .. } => Some(Scope::Full),
        Task::Lint => Some(Scope::Build),
        Task::BuildEbpf | Task::Build { .. } | Task::Dist | Task::Run { .. } => Some(Scope::Build),
        // compat-table and examples only read files; integration-test, bench and fuzz set up
        // their own (bench-load is bench's own helper process).
        Task::CompatTable
        | Task::Examples { .. }
        | Task::IntegrationTest { .. }
        | Task::Bench(_)
        | Task::BenchLoad(_)
        | Task::Fuzz { .. } => None,
        // The same peers and tools as the tests (hping3, iproute2).
        Task::Soak(_) => Some(Scope::Full),
    }
}

fn run(cli: Cli) -> Result<u8> {
    if let Some(scope) = setup_scope(&cli.command) {
        setup::ensure(scope)?;
    }
    match cli.command {
        Task::CompatTable => {
            let ws = Workspace::locate()?;
            compat::write(
                &ws.target_dir.join("vm-cache/summary.json"),
                &ws.target_dir.join("release/rst-trace"),
                &ws.root.join("README.md"),
            )?;
            eprintln!("xtask: README compatibility table regenerated");
        }
        Task::Examples { logs } => {
            let ws = Workspace::locate()?;
            let out = ws.root.join("docs/event-examples.md");
            let n = examples::write(&logs, &out)?;
            eprintln!("xtask: {n} example events written to {}", out.display());
        }
        Task::Setup => {
            eprintln!("xtask: all prerequisites present");
        }
        Task::BuildEbpf => {
            let ws = Workspace::locate()?;
            println!("{}", ebpf::build(&ws)?.display());
        }
        Task::Build { debug } => {
            let ws = Workspace::locate()?;
            let profile = if debug {
                Profile::Debug
            } else {
                Profile::Release
            };
            println!("{}", agent::build(&ws, profile)?.binary.display());
        }
        Task::Dist => {
            let ws = Workspace::locate()?;
            println!("{}", dist::build(&ws)?.display());
        }
        Task::Run { args } => {
            let ws = Workspace::locate()?;
            let built = agent::build(&ws, Profile::Release)?;
            let args = if args.is_empty() {
                vec![OsString::from("run")]
            } else {
                args
            };
            return Err(agent::exec(&built.binary, &args));
        }
        Task::Lint => lint::run(&Workspace::locate()?)?,
        Task::Test { args } => {
            let ws = Workspace::locate()?;
            lint::run(&ws)?;
            let built = agent::build(&ws, Profile::Release)?;
            let dist = dist::build(&ws)?;
            return agent::test(&ws, &built, &dist, &args);
        }
        Task::Fuzz { seconds } => {
            // The agent crate embeds the eBPF object, so the fuzz build needs it too.
            setup::ensure(Scope::Build)?;
            let ws = Workspace::locate()?;
            let bpf_object = ebpf::build(&ws)?;
            return fuzz::run(&ws, &bpf_object, seconds);
        }
        Task::IntegrationTest { suite } => return vm::run(suite),
        Task::Bench(args) => return bench::run(args),
        Task::Soak(args) => return soak::run(args),
        Task::BenchLoad(load) => return bench::run_load(load),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_and_build_install_only_the_build_chain_and_test_installs_the_peers() {
        let scope = |args: &[&str]| setup_scope(&Cli::try_parse_from(args).unwrap().command);
        assert_eq!(scope(&["xtask", "run"]), Some(Scope::Build));
        assert_eq!(scope(&["xtask", "run", "--", "doctor"]), Some(Scope::Build));
        assert_eq!(scope(&["xtask", "build"]), Some(Scope::Build));
        assert_eq!(scope(&["xtask", "build-ebpf"]), Some(Scope::Build));
        assert_eq!(scope(&["xtask", "dist"]), Some(Scope::Build));
        assert_eq!(scope(&["xtask", "test"]), Some(Scope::Full));
        assert_eq!(scope(&["xtask", "setup"]), Some(Scope::Full));
        assert!(!setup::packages(Scope::Build).contains(&"nginx-light"));
        assert!(setup::packages(Scope::Full).contains(&"nginx-light"));
    }

    #[test]
    fn everything_after_the_separator_is_passed_through() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "reset", "--", "--nocapture"]).unwrap();
        let Task::Test { args } = cli.command else {
            panic!("parsed as another task");
        };
        assert_eq!(args, ["reset", "--", "--nocapture"]);

        let cli = Cli::try_parse_from(["xtask", "run", "--", "run", "--format", "json"]).unwrap();
        let Task::Run { args } = cli.command else {
            panic!("parsed as another task");
        };
        assert_eq!(args, ["run", "--format", "json"]);
    }
}
