//! Loads the embedded eBPF object with the running kernel's layout and attaches each
//! program on its own: a hook this kernel lacks degrades the causes it serves, never the agent.
use std::collections::BTreeMap;

use aya::{
    programs::{KProbe, Program, ProgramError},
    Btf, Ebpf, EbpfLoader,
};
use rst_trace_common::event;
use rst_trace_common::{
    names::{program, KERNEL_LOG_LEVEL_GLOBAL, RAW_TRACEPOINTS_ENV},
    KernelLayout, LAYOUT_GLOBAL,
};
use serde_json::Value;
use thiserror::Error;

use crate::cause::Cause;

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded at compile time.
static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rst-trace.bpf.o"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {0}. Is this kernel built with BPF and BTF (CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF) and ≥ 5.8 (BPF ring buffer)?")]
    Object(#[source] aya::EbpfError),
    #[error("no eBPF program could be attached; rst-trace cannot observe anything on this kernel")]
    NothingAttached,
}

/// One program and where it attaches.
pub struct Hook {
    /// The program tried first, and the hook's name in reports. A BTF tracepoint program
    /// (typed arguments, plain loads) needs the kernel's BTF.
    pub program: &'static str,
    /// A raw tracepoint program for the same tracepoints, tried where `program` is refused.
    pub fallback: Option<&'static str>,
    pub tracepoints: &'static [(&'static str, &'static str)],
    pub serves: &'static [Cause],
    /// Without it the agent still runs, but loses evidence rather than causes.
    pub purpose: &'static str,
}

pub const HOOKS: &[Hook] = &[
    Hook {
        program: program::TCP_SEND_RESET,
        fallback: Some(program::TCP_SEND_RESET_RAW),
        tracepoints: &[("tcp", "tcp_send_reset")],
        serves: &[
            Cause::NoListener,
            Cause::AbortOnClose,
            Cause::AbortByApplication,
            Cause::AbortOnMemory,
            Cause::KeepaliveTimeout,
            Cause::TimewaitSegment,
            Cause::ProtocolViolation,
            Cause::Unclassified,
        ],
        purpose: "RSTs sent by the TCP stack",
    },
    Hook {
        program: program::TCP_RECEIVE_RESET,
        fallback: Some(program::TCP_RECEIVE_RESET_RAW),
        tracepoints: &[("tcp", "tcp_receive_reset")],
        serves: &[Cause::ResetByPeer, Cause::ConnectionRefused],
        purpose: "RSTs received",
    },
    Hook {
        program: program::INET_SOCK_SET_STATE,
        fallback: None,
        tracepoints: &[("sock", "inet_sock_set_state")],
        // connect() that finds no local port falls back from SYN_SENT to CLOSE with port 0.
        serves: &[Cause::EphemeralPortExhaustion],
        purpose:
            "socket ownership in the kernel (listen, connect, close) and connect() EADDRNOTAVAIL",
    },
    Hook {
        program: program::KFREE_SKB,
        fallback: None,
        tracepoints: &[("skb", "kfree_skb")],
        // What it serves depends on the drop reasons this kernel has: listed by `doctor`.
        serves: &[],
        purpose: "segments dropped with a reason (ACK-time accept queue overflow, netfilter)",
    },
    Hook {
        program: program::NET_DEV_QUEUE,
        fallback: Some(program::NET_DEV_QUEUE_RAW),
        tracepoints: &[("net", "net_dev_queue")],
        serves: &[Cause::FirewallReject],
        purpose: "RSTs transmitted without a socket (netfilter REJECT)",
    },
    Hook {
        program: program::TCP_RETRANSMIT_SYNACK,
        fallback: None,
        tracepoints: &[("tcp", "tcp_retransmit_synack")],
        serves: &[],
        purpose: "half-open connections: when to read a namespace's SYN-queue counters",
    },
    Hook {
        program: program::SYS_ENTER_LISTEN,
        fallback: None,
        tracepoints: &[("syscalls", "sys_enter_listen")],
        serves: &[],
        purpose: "the backlog passed to listen()",
    },
    Hook {
        program: program::SYS_ENTER_ACCEPT,
        fallback: None,
        tracepoints: &[
            ("syscalls", "sys_enter_accept4"),
            ("syscalls", "sys_enter_accept"),
        ],
        serves: &[],
        purpose: "accept() arguments",
    },
    Hook {
        program: program::SYS_EXIT_ACCEPT,
        fallback: None,
        tracepoints: &[
            ("syscalls", "sys_exit_accept4"),
            ("syscalls", "sys_exit_accept"),
        ],
        serves: &[Cause::FdExhaustion],
        purpose: "accepted-socket ownership and EMFILE/ENFILE",
    },
];

/// How a hook ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Attached at `at` ("tcp:tcp_send_reset", "fexit:tcp_v4_syn_recv_sock", ...). `errors`
    /// are what failed on the way: a tier tried first, or one of several attach points.
    Attached {
        at: Vec<String>,
        errors: Vec<String>,
    },
    /// Left out: this kernel reports the same events another way (`why` says which).
    NotNeeded { why: String },
    /// Did not attach. `why` is the last failure (the last tier tried); `errors` the ones
    /// before it.
    Failed { why: String, errors: Vec<String> },
}

/// What happened to one hook (a tracepoint program, or a function hook by its report name).
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub program: &'static str,
    pub outcome: HookOutcome,
}

/// Prefix of a left-out hook's error in the JSON reports, kept for readers of the older
/// format; the `status` field says the same.
const NOT_NEEDED_PREFIX: &str = "not needed: ";

impl HookStatus {
    /// Left out: `why` names what reports the same events on this kernel.
    fn not_needed(program: &'static str, why: impl Into<String>) -> Self {
        Self {
            program,
            outcome: HookOutcome::NotNeeded { why: why.into() },
        }
    }

    /// Attach points and errors gathered while trying: attached if any point attached.
    fn from_attempt(program: &'static str, at: Vec<String>, mut errors: Vec<String>) -> Self {
        let outcome = if !at.is_empty() {
            HookOutcome::Attached { at, errors }
        } else {
            let why = errors
                .pop()
                .unwrap_or_else(|| "no attach point was tried".to_owned());
            HookOutcome::Failed { why, errors }
        };
        HookStatus { program, outcome }
    }

    pub fn is_attached(&self) -> bool {
        matches!(self.outcome, HookOutcome::Attached { .. })
    }

    /// Attached, or left out because another hook reports the same events.
    pub fn is_serving(&self) -> bool {
        matches!(
            self.outcome,
            HookOutcome::Attached { .. } | HookOutcome::NotNeeded { .. }
        )
    }

    /// Where it attached (empty unless attached).
    pub fn attached(&self) -> &[String] {
        match &self.outcome {
            HookOutcome::Attached { at, .. } => at,
            _ => &[],
        }
    }

    /// Why it is not attached, for reports: "not needed: " and the reason it was left out,
    /// or its last failure.
    pub fn why_not(&self) -> Option<String> {
        match &self.outcome {
            HookOutcome::Attached { .. } => None,
            HookOutcome::NotNeeded { why } => Some(format!("{NOT_NEEDED_PREFIX}{why}")),
            HookOutcome::Failed { why, .. } => Some(why.clone()),
        }
    }

    /// The status as the started line and `doctor` report it: `status`, where it attached,
    /// and `errors` only when there are any.
    pub fn to_event(&self) -> event::HookStatus {
        let (status, errors) = match &self.outcome {
            HookOutcome::Attached { errors, .. } => (event::HookState::Attached, errors.clone()),
            HookOutcome::NotNeeded { .. } => (
                event::HookState::NotNeeded,
                self.why_not().into_iter().collect(),
            ),
            HookOutcome::Failed { why, errors } => (
                event::HookState::Failed,
                errors.iter().chain(std::iter::once(why)).cloned().collect(),
            ),
        };
        event::HookStatus {
            status,
            attached: self.attached().to_vec(),
            errors,
        }
    }

    /// The same, as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_event()).unwrap_or(Value::Null)
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The level the kernel programs log at (aya-log's numbering; 0: off).
    pub kernel_log_level: u8,
}

impl Loaded {
    pub fn unavailable_causes(&self) -> Vec<Cause> {
        HOOKS
            .iter()
            .zip(&self.hooks)
            .filter(|(_, s)| !s.is_serving())
            .flat_map(|(h, _)| h.serves.iter().copied())
            .collect()
    }

    /// Every program, by name: where it attached, and why not (the started line, doctor).
    pub fn hook_statuses(&self) -> BTreeMap<String, event::HookStatus> {
        self.hooks
            .iter()
            .map(|s| (s.program.to_owned(), s.to_event()))
            .collect()
    }
}

/// Report names of the function hooks: their keys in the started line's `hooks` and in
/// `doctor` (a tracepoint hook is reported under its program's name).
pub mod hook {
    pub const INET_CSK_ACCEPT: &str = "inet_csk_accept";
    pub const TCP_V4_SEND_RESET: &str = "tcp_v4_send_reset";
    pub const TCP_V6_SEND_RESET: &str = "tcp_v6_send_reset";
    pub const TCP_CONN_REQUEST: &str = "tcp_conn_request";
    pub const TCP_SYN_RECV_SOCK: &str = "tcp_syn_recv_sock";
    pub const SYS_LISTEN_ACCEPT4: &str = "sys_listen_accept4";
}

/// The syscall tracepoints that only keep arguments for later: where the registers saved at
/// entry can be read (`StructOffsets::regs_arg0`), the arguments are read there instead.
const SYSCALL_ENTRY_PROGRAMS: [&str; 2] = [program::SYS_ENTER_LISTEN, program::SYS_ENTER_ACCEPT];

/// The syscall tracepoint programs that [`SYSCALL_FUNCTIONS`] makes redundant where it attaches.
const SYSCALL_TRACEPOINT_PROGRAMS: [&str; 3] = [
    program::SYS_ENTER_LISTEN,
    program::SYS_ENTER_ACCEPT,
    program::SYS_EXIT_ACCEPT,
];

/// listen() and accept() seen at the kernel functions both syscalls call, instead of at syscall
/// tracepoints. A single syscall tracepoint sends every syscall of every process on the host
/// through the slow entry and exit path (about +90 ns on a 200 ns getppid() on the reference
/// machine, see docs/kernel-notes.md), whatever syscall it traces; a trampoline costs only the
/// calls it traces. Trampolines only: accept() blocks, and a kretprobe misses the returns of
/// calls blocked beyond its instance limit. Both or neither: one syscall tracepoint left
/// attached is enough to cost every syscall.
const SYSCALL_FUNCTIONS: FunctionHook = FunctionHook {
    name: hook::SYS_LISTEN_ACCEPT4,
    trampoline: &[
        // accept first: reports name the first attach point, and it is the one serving a cause.
        (program::SYS_ACCEPT4_FEXIT, "__sys_accept4"),
        (program::SYS_LISTEN_FENTRY, "__sys_listen"),
    ],
    probes: &[],
    serves: &[Cause::FdExhaustion],
    purpose: "listen()'s backlog and accept()'s result (accepted-socket ownership, EMFILE/ENFILE) without syscall tracepoints, which slow every syscall on the host",
    per: "call",
};

/// A kernel function hook, tried as fentry/fexit first, then as kprobe/kretprobe.
pub struct FunctionHook {
    /// Name in reports (`doctor`, the started line).
    pub name: &'static str,
    /// (program, kernel function) pairs of the BTF trampoline tier.
    pub trampoline: &'static [(&'static str, &'static str)],
    /// (program, kernel function, return probe) of the kprobe tier.
    pub probes: &'static [(&'static str, &'static str, bool)],
    pub serves: &'static [Cause],
    pub purpose: &'static str,
    /// What one run of it is ("packet", "call"): how doctor describes the way it serves a cause.
    pub per: &'static str,
}

pub const FUNCTION_HOOKS: &[FunctionHook] = &[
    SYSCALL_FUNCTIONS,
    FunctionHook {
        name: hook::INET_CSK_ACCEPT,
        // The fexit program is chosen by the function's arity in BTF (see FEXIT_BY_ARITY).
        trampoline: &[("inet_csk_accept_fexit", "inet_csk_accept")],
        probes: &[(program::INET_CSK_ACCEPT_KRETPROBE, "inet_csk_accept", true)],
        serves: &[],
        purpose: "accepted-socket ownership where the kernel creates the socket",
        per: "packet",
    },
    FunctionHook {
        name: hook::TCP_V4_SEND_RESET,
        trampoline: &[(program::TCP_V4_SEND_RESET_FENTRY, "tcp_v4_send_reset")],
        probes: &[(program::SEND_RESET_KPROBE, "tcp_v4_send_reset", false)],
        serves: &[Cause::NoListener, Cause::TimewaitSegment],
        purpose: "RSTs without a full socket (no listener, TIME_WAIT) where tcp:tcp_send_reset fires only for full sockets (< 6.10)",
        per: "packet",
    },
    FunctionHook {
        name: hook::TCP_V6_SEND_RESET,
        trampoline: &[(program::TCP_V6_SEND_RESET_FENTRY, "tcp_v6_send_reset")],
        probes: &[(program::SEND_RESET_KPROBE, "tcp_v6_send_reset", false)],
        serves: &[Cause::NoListener, Cause::TimewaitSegment],
        purpose: "IPv6 RSTs without a full socket where tcp:tcp_send_reset fires only for full sockets (< 6.10)",
        per: "packet",
    },
    FunctionHook {
        name: hook::TCP_CONN_REQUEST,
        trampoline: &[(program::TCP_CONN_REQUEST_FENTRY, "tcp_conn_request")],
        probes: &[(program::TCP_CONN_REQUEST_KPROBE, "tcp_conn_request", false)],
        serves: &[Cause::AcceptQueueOverflow, Cause::SynQueueOverflow],
        purpose: "SYN-time accept/SYN queue overflow per packet, with the queues' state",
        per: "packet",
    },
    FunctionHook {
        name: hook::TCP_SYN_RECV_SOCK,
        trampoline: &[
            ("tcp_v4_syn_recv_sock_fexit", "tcp_v4_syn_recv_sock"),
            ("tcp_v6_syn_recv_sock_fexit", "tcp_v6_syn_recv_sock"),
        ],
        // Entry probes: the function's first test is the accept queue, so no return probe is
        // needed (x86 trampolines before 6.6 cannot take its seven arguments).
        probes: &[
            (program::TCP_V4_SYN_RECV_SOCK_KPROBE, "tcp_v4_syn_recv_sock", false),
            (program::TCP_V6_SYN_RECV_SOCK_KPROBE, "tcp_v6_syn_recv_sock", false),
        ],
        serves: &[Cause::AcceptQueueOverflow],
        purpose: "ACK-time accept queue overflow per packet on kernels without the TCP_LISTEN_OVERFLOW drop reason",
        per: "packet",
    },
];

impl FunctionHook {
    /// "fentry" or "fexit": the kind of the hook's trampoline programs, for reports.
    pub fn trampoline_kind(&self) -> &'static str {
        match self.trampoline.first() {
            Some((program, _)) if program.contains("fexit") => "fexit",
            _ => "fentry",
        }
    }
}

/// fexit programs per arity of the traced function. An fexit program reads the return value at
/// the context slot after the last argument, and that offset must be a constant for the
/// verifier, so a function whose arity differs across kernels has one program per arity.
const FEXIT_BY_ARITY: &[(&str, &[(usize, &str)])] = &[
    // The return value is read after the fourth argument: any other arity is not this call.
    (
        program::SYS_ACCEPT4_FEXIT,
        &[(4, program::SYS_ACCEPT4_FEXIT)],
    ),
    // 4 arguments before 6.10 (flags, err, kern), 2 since.
    (
        "inet_csk_accept_fexit",
        &[
            (2, program::INET_CSK_ACCEPT_FEXIT2),
            (4, program::INET_CSK_ACCEPT_FEXIT4),
        ],
    ),
    // 7 where opt_child_init exists (6.18; Debian's 6.1 and 6.12 stable kernels), 6 before.
    (
        "tcp_v4_syn_recv_sock_fexit",
        &[
            (6, program::TCP_V4_SYN_RECV_SOCK_FEXIT6),
            (7, program::TCP_V4_SYN_RECV_SOCK_FEXIT7),
        ],
    ),
    (
        "tcp_v6_syn_recv_sock_fexit",
        &[
            (6, program::TCP_V6_SYN_RECV_SOCK_FEXIT6),
            (7, program::TCP_V6_SYN_RECV_SOCK_FEXIT7),
        ],
    ),
];

/// The program to load for `program` on `function`, chosen by the function's arity in BTF.
fn trampoline_for(
    program: &'static str,
    function: &str,
    arity: &dyn Fn(&str) -> Option<usize>,
) -> Result<&'static str, String> {
    let Some((_, variants)) = FEXIT_BY_ARITY.iter().find(|(p, _)| *p == program) else {
        return Ok(program);
    };
    let n = arity(function);
    variants
        .iter()
        .find(|(a, _)| Some(*a) == n)
        .map(|(_, p)| *p)
        .ok_or_else(|| match n {
            Some(n) => format!("fexit {function}: no program for a function of {n} arguments"),
            None => format!("fexit {function}: no prototype in the kernel's BTF"),
        })
}

/// An error and its causes on one line: aya's attach errors keep the errno in `source()`.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// How much of a refusing verifier's log a hook's error keeps: the verdict is at its end.
const VERIFIER_LOG_TAIL_LINES: usize = 12;

/// Why `what` ("fentry tcp_conn_request", "tcp_send_reset") did not load.
fn load_failure(what: &str, e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => refusal(what, io_error, &verifier_log.to_string()),
        other => format!("{what}: {}", with_sources(other)),
    }
}

/// A failed BPF_PROG_LOAD. A verifier's log runs to thousands of lines, and the hook's error
/// goes into the started line, which a log shipper may cut or drop past a few KiB: the error
/// keeps the log's end, where the verdict is, and the whole log goes to the debug log.
fn refusal(what: &str, io_error: &std::io::Error, log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        // EPERM with an empty log: the kernel refuses this kind of program, not this one.
        return format!("{what}: the BPF_PROG_LOAD syscall returned {io_error}");
    }
    log::debug!("verifier log of {what}:\n{log}");
    let tail = &lines[lines.len().saturating_sub(VERIFIER_LOG_TAIL_LINES)..];
    let verdict = if io_error.kind() == std::io::ErrorKind::PermissionDenied {
        "verifier rejected"
    } else {
        "failed to load"
    };
    format!(
        "{verdict} {what} ({io_error}); the verifier's log ends (all {} lines at --log-level debug):\n{}",
        lines.len(),
        tail.join("\n")
    )
}

/// x86 BPF trampolines took at most six arguments before 6.6; loading succeeds there and
/// only attaching fails, with an errno that does not say why.
const TRAMPOLINE_MAX_ARGS_BEFORE_6_6: usize = 6;

fn attach_error(
    kind: &str,
    function: &str,
    e: &dyn std::error::Error,
    arity: Option<usize>,
) -> String {
    let mut msg = format!("{kind} {function}: {}", with_sources(e));
    if let Some(n) = arity.filter(|n| *n > TRAMPOLINE_MAX_ARGS_BEFORE_6_6) {
        msg.push_str(&format!(
            " ({function} takes {n} arguments; trampolines on kernels before 6.6 take at most {TRAMPOLINE_MAX_ARGS_BEFORE_6_6})"
        ));
    }
    msg
}

fn attach_trampolines(
    ebpf: &mut Ebpf,
    btf: &Btf,
    hook: &FunctionHook,
    at: &mut Vec<String>,
    arity: &dyn Fn(&str) -> Option<usize>,
) -> Result<(), String> {
    for (program, function) in hook.trampoline {
        let program = trampoline_for(program, function, arity)?;
        let prog = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} missing"))?;
        match prog {
            aya::programs::Program::FEntry(p) => {
                p.load(function, btf)
                    .map_err(|e| load_failure(&format!("fentry {function}"), &e))?;
                p.attach()
                    .map_err(|e| attach_error("fentry", function, &e, arity(function)))?;
                at.push(format!("fentry:{function}"));
            }
            aya::programs::Program::FExit(p) => {
                p.load(function, btf)
                    .map_err(|e| load_failure(&format!("fexit {function}"), &e))?;
                p.attach()
                    .map_err(|e| attach_error("fexit", function, &e, arity(function)))?;
                at.push(format!("fexit:{function}"));
            }
            _ => return Err(format!("{program} is not a trampoline program")),
        }
    }
    Ok(())
}

fn attach_probes(ebpf: &mut Ebpf, hook: &FunctionHook, at: &mut Vec<String>) -> Result<(), String> {
    for (program, function, ret) in hook.probes {
        let p: &mut KProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} missing"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| load_failure(&format!("kprobe {function}"), &e))?;
        }
        let kind = if *ret { "kretprobe" } else { "kprobe" };
        p.attach(function, 0).map_err(|e| {
            if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                format!("{kind} {function}: {}", with_sources(&e))
            } else {
                format!("{kind} {function}: kprobes are not available on this kernel (built without CONFIG_KPROBES)")
            }
        })?;
        at.push(format!("{kind}:{function}"));
    }
    Ok(())
}

/// Attaches each function hook with the best tier this kernel accepts. `skip` names hooks
/// the kernel makes redundant (e.g. a drop reason that already reports the same drop).
/// Unloads the programs of a tier that failed part-way, detaching whatever they attached.
/// Programs that never loaded report an error here, which says nothing new.
fn unload_tier<'a>(ebpf: &mut Ebpf, programs: impl Iterator<Item = &'a str>) {
    for name in programs {
        let result = match ebpf.program_mut(name) {
            Some(aya::programs::Program::FEntry(p)) => p.unload(),
            Some(aya::programs::Program::FExit(p)) => p.unload(),
            Some(aya::programs::Program::KProbe(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = result {
            log::debug!("unload {name}: {e}");
        }
    }
}

/// The kernel's BTF, as aya loads programs with it and as the agent reads prototypes from it;
/// read once for every function hook.
struct FunctionBtf {
    btf: Option<Btf>,
    kernel: Option<crate::kernel::btf::KernelBtf>,
}

impl FunctionBtf {
    fn load() -> Self {
        Self {
            btf: Btf::from_sys_fs().ok(),
            kernel: crate::kernel::btf::KernelBtf::load().ok(),
        }
    }

    fn arity(&self, function: &str) -> Option<usize> {
        self.kernel
            .as_ref()
            .and_then(|b| b.func_param_count(function))
    }
}

/// Attaches `hook` with the best tier this kernel accepts.
fn attach_function_hook(ebpf: &mut Ebpf, fbtf: &FunctionBtf, hook: &FunctionHook) -> HookStatus {
    let arity = |f: &str| fbtf.arity(f);
    let mut at = Vec::new();
    let mut errors = Vec::new();
    let trampoline = match &fbtf.btf {
        Some(btf) => attach_trampolines(ebpf, btf, hook, &mut at, &arity),
        None => Err("no kernel BTF".into()),
    };
    if let Err(e) = trampoline {
        // A half-attached tier would double count: detach what it attached first.
        unload_tier(
            ebpf,
            hook.trampoline
                .iter()
                .map(|(p, f)| trampoline_for(p, f, &arity).unwrap_or(p)),
        );
        at.clear();
        errors.push(e);
        if !hook.probes.is_empty() {
            if let Err(e) = attach_probes(ebpf, hook, &mut at) {
                unload_tier(ebpf, hook.probes.iter().map(|(p, _, _)| *p));
                at.clear();
                errors.push(e);
            }
        }
    }
    let status = HookStatus::from_attempt(hook.name, at, errors);
    log::info!("hook {}: {:?}", hook.name, status.outcome);
    status
}

/// Attaches each function hook but [`SYSCALL_FUNCTIONS`] (attached before the tracepoints).
fn attach_function_hooks(
    ebpf: &mut Ebpf,
    fbtf: &FunctionBtf,
    skip: &[(&str, &str)],
) -> Vec<HookStatus> {
    let mut out = Vec::new();
    for hook in FUNCTION_HOOKS
        .iter()
        .filter(|h| h.name != SYSCALL_FUNCTIONS.name)
    {
        if let Some((_, why)) = skip.iter().find(|(name, _)| *name == hook.name) {
            out.push(HookStatus::not_needed(hook.name, *why));
            continue;
        }
        out.push(attach_function_hook(ebpf, fbtf, hook));
    }
    out
}

/// Loads the object and attaches every hook this kernel allows. `ack_drop_reason`: the
/// kernel frees an overflowing handshake ACK with reason TCP_LISTEN_OVERFLOW.
pub fn load(layout: &KernelLayout, ack_drop_reason: bool) -> Result<Loaded, LoadError> {
    let kernel_log_level = crate::kernel_log::level();
    // One region of the fold array per possible CPU (a program writes its own CPU's).
    let fold_slots = aya::util::nr_cpus()
        .ok()
        .and_then(|cpus| u32::try_from(crate::sensor::folds::slots_for(cpus)).ok())
        .unwrap_or(rst_trace_common::fold::FOLD_CPU_SLOTS);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(rst_trace_common::fold::FOLDS_MAP, fold_slots)
        .override_global(LAYOUT_GLOBAL, layout, true)
        // Always set: the programs' default (0xff) would log everything.
        .override_global(KERNEL_LOG_LEVEL_GLOBAL, &kernel_log_level, true)
        .load(BPF_OBJECT)
        .map_err(LoadError::Object)?;
    let fbtf = FunctionBtf::load();
    // First, so that the syscall tracepoints are not attached at all where it works.
    let syscall_functions = attach_function_hook(&mut ebpf, &fbtf, &SYSCALL_FUNCTIONS);
    let mut hooks = Vec::new();
    // Syscall tracepoints left out where something cheaper for the host's other syscalls
    // reports the same.
    let mut tracepoints_served: Vec<(&str, String)> = Vec::new();
    if syscall_functions.is_attached() {
        let why = format!(
            "{} serves it ({}), and a syscall tracepoint would slow every syscall on the host",
            hook::SYS_LISTEN_ACCEPT4,
            syscall_functions.attached().join(", ")
        );
        tracepoints_served.extend(SYSCALL_TRACEPOINT_PROGRAMS.map(|p| (p, why.clone())));
    } else if layout.st.regs_arg0 != rst_trace_common::MEMBER_NONE {
        let why = "the arguments are read from the registers saved at syscall entry (bpf_task_pt_regs), and an entry tracepoint would add work to every syscall's entry on the host";
        tracepoints_served.extend(SYSCALL_ENTRY_PROGRAMS.map(|p| (p, why.to_owned())));
    }
    let raw_only = std::env::var(RAW_TRACEPOINTS_ENV).is_ok_and(|v| v == "1");
    for hook in HOOKS {
        if let Some((_, why)) = tracepoints_served.iter().find(|(p, _)| *p == hook.program) {
            hooks.push(HookStatus::not_needed(hook.program, why.clone()));
            continue;
        }
        let mut at = Vec::new();
        let mut errors = Vec::new();
        let first = if hook.fallback.is_some() && raw_only {
            Err(format!(
                "{}: not tried, {RAW_TRACEPOINTS_ENV}=1 asks for raw tracepoints",
                hook.program
            ))
        } else {
            attach(
                &mut ebpf,
                hook.program,
                hook,
                fbtf.btf.as_ref(),
                &mut at,
                &mut errors,
            )
        };
        if let Err(e) = first {
            errors.push(e);
            if let Some(fallback) = hook.fallback {
                at.clear();
                if let Err(e) = attach(&mut ebpf, fallback, hook, None, &mut at, &mut errors) {
                    errors.push(e);
                }
            }
        }
        for e in &errors {
            log::warn!("hook {}: {e}", hook.program);
        }
        hooks.push(HookStatus::from_attempt(hook.program, at, errors));
    }
    // ≥ 6.15 frees the overflowing ACK with reason TCP_LISTEN_OVERFLOW, seen by kfree_skb.
    let mut skip: Vec<(&str, &str)> = Vec::new();
    if ack_drop_reason {
        skip.push((
            hook::TCP_SYN_RECV_SOCK,
            "skb:kfree_skb reports ACK-time overflow with reason TCP_LISTEN_OVERFLOW",
        ));
    }
    // The tracepoint with a reason field (≥ 6.10) also fires without a full socket.
    if layout.tp.rst_reason != rst_trace_common::OFFSET_NONE {
        let why = "tcp:tcp_send_reset fires for every RST on this kernel (reason field present)";
        skip.extend([
            (hook::TCP_V4_SEND_RESET, why),
            (hook::TCP_V6_SEND_RESET, why),
        ]);
    }
    hooks.push(syscall_functions);
    hooks.extend(attach_function_hooks(&mut ebpf, &fbtf, &skip));
    drop(fbtf);
    // Successful accepts are then reported where the socket is created, not again at exit.
    let accept_hooked = hooks
        .iter()
        .any(|h| h.program == hook::INET_CSK_ACCEPT && h.is_attached());
    if accept_hooked {
        let set = ebpf
            .map_mut(rst_trace_common::RUNTIME_MAP)
            .ok_or_else(|| "runtime map missing".to_owned())
            .and_then(|m| aya::maps::Array::<_, u32>::try_from(m).map_err(|e| e.to_string()))
            .and_then(|mut a| {
                a.set(rst_trace_common::RUNTIME_ACCEPT_VIA_FUNCTION, 1, 0)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = set {
            log::warn!("inet_csk_accept is hooked but the flag could not be set ({e}); accepts may be reported twice");
        }
    }
    if !hooks.iter().any(HookStatus::is_attached) {
        return Err(LoadError::NothingAttached);
    }
    Ok(Loaded {
        ebpf,
        hooks,
        kernel_log_level,
    })
}

/// Loads `name`, one of a hook's programs, and attaches it to each of the hook's tracepoints:
/// as a classic tracepoint ("tcp:tcp_send_reset"), as a raw one ("raw_tp:inet_sock_set_state")
/// where the program is built for raw arguments, or as a BTF one ("tp_btf:net_dev_queue")
/// where it is built for typed arguments (`btf` needed). Fails when the program cannot be
/// loaded, or when a BTF one cannot be attached (it is then unloaded, for a fallback to take
/// the hook); a tracepoint that refuses a classic or raw one is an error in `errors`.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: &Hook,
    btf: Option<&Btf>,
    at: &mut Vec<String>,
    errors: &mut Vec<String>,
) -> Result<(), String> {
    let rejected = |e: ProgramError| load_failure(name, &e);
    match ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
    {
        Program::BtfTracePoint(program) => {
            let btf = btf.ok_or_else(|| format!("{name}: no kernel BTF for a BTF tracepoint"))?;
            for (_, tracepoint) in hook.tracepoints {
                // A BTF tracepoint program is verified against one tracepoint's arguments.
                if !at.is_empty() {
                    errors.push(format!(
                        "{BTF_TRACEPOINT}:{tracepoint}: one tracepoint per program"
                    ));
                    continue;
                }
                program.load(tracepoint, btf).map_err(rejected)?;
                match program.attach() {
                    Ok(_) => at.push(format!("{BTF_TRACEPOINT}:{tracepoint}")),
                    Err(e) => {
                        let failed = format!("{BTF_TRACEPOINT}:{tracepoint}: {}", with_sources(&e));
                        // Unloaded, so that a fallback program takes the hook alone.
                        let _ = program.unload();
                        return Err(failed);
                    }
                }
            }
        }
        Program::TracePoint(program) => {
            program.load().map_err(rejected)?;
            for (category, name) in hook.tracepoints {
                match program.attach(category, name) {
                    Ok(_) => at.push(format!("{category}:{name}")),
                    Err(e) => errors.push(format!("{category}:{name}: {}", with_sources(&e))),
                }
            }
        }
        Program::RawTracePoint(program) => {
            program.load().map_err(rejected)?;
            for (_, name) in hook.tracepoints {
                match program.attach(name) {
                    Ok(_) => at.push(format!("{RAW_TRACEPOINT}:{name}")),
                    Err(e) => errors.push(format!("{RAW_TRACEPOINT}:{name}: {}", with_sources(&e))),
                }
            }
        }
        other => {
            return Err(format!(
                "{} is a {:?} program, not a tracepoint",
                hook.program,
                other.prog_type()
            ))
        }
    }
    Ok(())
}

/// How a raw tracepoint attach point is named in reports.
pub const RAW_TRACEPOINT: &str = "raw_tp";
/// How a BTF tracepoint attach point is named in reports.
pub const BTF_TRACEPOINT: &str = "tp_btf";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arity_of(table: &'static [(&'static str, usize)]) -> impl Fn(&str) -> Option<usize> {
        move |f: &str| table.iter().find(|(n, _)| *n == f).map(|(_, a)| *a)
    }

    #[test]
    fn a_refusal_keeps_the_verdict_not_the_whole_log() {
        let log: String = (0..3000)
            .map(|i| format!("{i}: (bf) r{} = r1\n", i % 10))
            .chain(["\n2716: (bf) r9 = r2\nR2 !read_ok\nprocessed 10542 insns\n".to_owned()])
            .collect();
        let said = refusal(
            "tcp_send_reset",
            &std::io::Error::from_raw_os_error(13),
            &log,
        );
        assert!(
            said.starts_with("verifier rejected tcp_send_reset (Permission denied"),
            "{said}"
        );
        assert!(said.contains("all 3003 lines"), "{said}");
        assert!(
            said.ends_with("R2 !read_ok\nprocessed 10542 insns"),
            "{said}"
        );
        assert_eq!(said.lines().count(), 1 + VERIFIER_LOG_TAIL_LINES, "{said}");

        // A kernel that refuses every program of a kind says so with EPERM and no log.
        let said = refusal(
            "fentry tcp_conn_request",
            &std::io::Error::from_raw_os_error(1),
            "",
        );
        assert_eq!(
            said,
            "fentry tcp_conn_request: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn fexit_program_follows_the_prototype() {
        let debian_6_1 = arity_of(&[("tcp_v4_syn_recv_sock", 7), ("inet_csk_accept", 4)]);
        let debian_5_10 = arity_of(&[("tcp_v4_syn_recv_sock", 6), ("inet_csk_accept", 4)]);
        let v6_12 = arity_of(&[("inet_csk_accept", 2)]);
        assert_eq!(
            trampoline_for(
                "tcp_v4_syn_recv_sock_fexit",
                "tcp_v4_syn_recv_sock",
                &debian_6_1
            ),
            Ok("tcp_v4_syn_recv_sock_fexit7")
        );
        assert_eq!(
            trampoline_for(
                "tcp_v4_syn_recv_sock_fexit",
                "tcp_v4_syn_recv_sock",
                &debian_5_10
            ),
            Ok("tcp_v4_syn_recv_sock_fexit6")
        );
        assert_eq!(
            trampoline_for("inet_csk_accept_fexit", "inet_csk_accept", &v6_12),
            Ok("inet_csk_accept_fexit2")
        );
        assert_eq!(
            trampoline_for("inet_csk_accept_fexit", "inet_csk_accept", &debian_5_10),
            Ok("inet_csk_accept_fexit4")
        );
    }

    #[test]
    fn unknown_arity_degrades_the_hook_with_a_reason() {
        let odd = arity_of(&[("tcp_v4_syn_recv_sock", 8)]);
        let err = trampoline_for("tcp_v4_syn_recv_sock_fexit", "tcp_v4_syn_recv_sock", &odd)
            .expect_err("no program for 8 arguments");
        assert!(err.contains("8 arguments"), "{err}");
        let err = trampoline_for("tcp_v6_syn_recv_sock_fexit", "tcp_v6_syn_recv_sock", &odd)
            .expect_err("no prototype");
        assert!(err.contains("no prototype"), "{err}");
    }

    #[test]
    fn programs_without_variants_are_loaded_as_named() {
        let none = arity_of(&[]);
        assert_eq!(
            trampoline_for("tcp_conn_request_fentry", "tcp_conn_request", &none),
            Ok("tcp_conn_request_fentry")
        );
    }

    /// Every program and map the loader and the agent open by name is in the embedded object,
    /// and every program in the object is one the loader attaches: the names cross a crate
    /// boundary as strings (the kernel crate's macros take only literals).
    #[test]
    fn object_has_every_name() {
        use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
        let obj = object::File::parse(BPF_OBJECT).expect("the embedded eBPF object parses");
        let section_name = |s: &object::Symbol<'_, '_>| {
            s.section_index()
                .and_then(|i| obj.section_by_index(i).ok())
                .and_then(|sec| sec.name().ok().map(str::to_owned))
                .unwrap_or_default()
        };
        let mut programs = std::collections::BTreeSet::new();
        let mut maps = std::collections::BTreeSet::new();
        let mut globals = std::collections::BTreeSet::new();
        for sym in obj.symbols().filter(|s| s.is_global()) {
            let Ok(name) = sym.name() else { continue };
            let section = section_name(&sym);
            match sym.kind() {
                SymbolKind::Text if section != ".text" => {
                    programs.insert(name.to_owned());
                }
                _ if section == "maps" => {
                    maps.insert(name.to_owned());
                }
                _ if section.starts_with(".rodata") || section.starts_with(".data") => {
                    globals.insert(name.to_owned());
                }
                _ => {}
            }
        }

        let mut wanted: Vec<&str> = HOOKS
            .iter()
            .flat_map(|h| std::iter::once(h.program).chain(h.fallback))
            .collect();
        for hook in FUNCTION_HOOKS {
            for (family, _) in hook.trampoline {
                match FEXIT_BY_ARITY.iter().find(|(f, _)| f == family) {
                    Some((_, variants)) => wanted.extend(variants.iter().map(|(_, p)| *p)),
                    None => wanted.push(family),
                }
            }
            wanted.extend(hook.probes.iter().map(|(p, _, _)| *p));
        }
        for p in &wanted {
            assert!(
                programs.contains(*p),
                "program {p} is not in the eBPF object: {programs:?}"
            );
        }
        for p in &programs {
            assert!(
                wanted.contains(&p.as_str()),
                "the eBPF object has program {p}, which no loader table attaches"
            );
        }
        for m in rst_trace_common::names::MAPS {
            assert!(
                maps.contains(m),
                "map {m} is not in the eBPF object: {maps:?}"
            );
        }
        let log_map = rst_trace_common::names::KERNEL_LOG_MAP;
        assert!(
            maps.contains(log_map),
            "map {log_map} is not in the eBPF object: {maps:?}"
        );
        for g in [LAYOUT_GLOBAL, KERNEL_LOG_LEVEL_GLOBAL] {
            assert!(
                globals.contains(g),
                "global {g} is not in the eBPF object: {globals:?}"
            );
        }
    }

    #[test]
    fn hook_outcomes_keep_the_report_shape() {
        let attached =
            HookStatus::from_attempt("h", vec!["fexit:f".into()], vec!["fentry f: no BTF".into()]);
        assert!(attached.is_attached());
        assert_eq!(
            attached.to_json(),
            json!({"status": "attached", "attached": ["fexit:f"], "errors": ["fentry f: no BTF"]})
        );
        let failed = HookStatus::from_attempt("h", vec![], vec!["a".into(), "b".into()]);
        assert_eq!(failed.why_not().as_deref(), Some("b"));
        assert_eq!(
            failed.to_json(),
            json!({"status": "failed", "attached": [], "errors": ["a", "b"]})
        );
        let skipped = HookStatus::not_needed("h", "tp");
        assert!(!skipped.is_attached());
        // Left out for another hook that reports the same: its causes stay available.
        assert!(skipped.is_serving());
        assert!(!failed.is_serving());
        assert_eq!(
            skipped.to_json(),
            json!({"status": "not_needed", "attached": [], "errors": ["not needed: tp"]})
        );
        let clean = HookStatus::from_attempt("h", vec!["tcp:x".into()], vec![]);
        assert_eq!(
            clean.to_json(),
            json!({"status": "attached", "attached": ["tcp:x"]})
        );
    }

    #[test]
    fn every_trampoline_with_variants_is_listed_in_a_hook() {
        for (program, _) in FEXIT_BY_ARITY {
            assert!(
                FUNCTION_HOOKS
                    .iter()
                    .any(|h| h.trampoline.iter().any(|(p, _)| p == program)),
                "{program} is not used by any function hook"
            );
        }
    }
}
