//! `rst-trace doctor`: for every cause, how this kernel lets rst-trace observe it — or why
//! it cannot. The programs are really loaded and attached, then detached, so the answer is
//! what `run` will do, not a guess from the kernel version.
use rst_trace_common::event::{self, Doctor, Observability};
use rst_trace_common::{names::program, WatchedDrop};

use crate::{
    cause::Cause,
    cli::{DoctorArgs, Format},
    kernel::{btf::KernelBtf, layout::KernelFacts, tracefs::Tracefs},
    loader::{self, HookStatus, Loaded, HOOKS},
    preflight,
};

/// One way of observing a cause, and whether it works here.
#[derive(Debug, Clone)]
pub struct Way {
    pub how: String,
    pub works: bool,
    pub note: Option<String>,
}

const INFERRED_NOTE: &str = "no reason field on this kernel: cause inferred from socket state";

fn attached(loaded: &Loaded, program: &str) -> bool {
    loaded
        .hooks
        .iter()
        .any(|h| h.program == program && h.is_attached())
}

/// The ways each cause is observed, best first.
pub fn ways(loaded: &Loaded, facts: &KernelFacts) -> Vec<(Cause, Vec<Way>)> {
    let has_reason = facts.layout.tp.rst_reason != rst_trace_common::OFFSET_NONE;
    let drop_watched = |name: &str| {
        facts.drop_reasons.value(name).is_some_and(|v| {
            facts
                .drop_reason_slot(u32::try_from(v).unwrap_or(u32::MAX))
                .is_some()
        })
    };
    Cause::ALL
        .iter()
        .map(|&cause| {
            let mut ways = Vec::new();
            for h in HOOKS.iter().filter(|h| h.serves.contains(&cause)) {
                let tps: Vec<String> =
                    h.tracepoints.iter().map(|(c, n)| format!("{c}:{n}")).collect();
                let inferred = h.program == program::TCP_SEND_RESET && !has_reason;
                ways.push(Way {
                    how: format!("tracepoint {}", tps.join(" + ")),
                    works: attached(loaded, h.program),
                    note: inferred.then(|| INFERRED_NOTE.to_owned()),
                });
            }
            for h in crate::loader::FUNCTION_HOOKS.iter().filter(|h| h.serves.contains(&cause)) {
                let status = loaded.hooks.iter().find(|s| s.program == h.name);
                let works = status.is_some_and(HookStatus::is_attached);
                let tier = status.and_then(|s| s.attached().first()).map_or_else(
                    || format!("{}/kprobe {}", h.trampoline_kind(), h.name),
                    |a| a.clone(),
                );
                // Where the hook did not attach, its last error says why (not needed, no
                // kprobes, the verifier's complaint, ...).
                let why = (!works)
                    .then(|| status.and_then(HookStatus::why_not).map(|e| first_line(&e)))
                    .flatten();
                ways.push(Way {
                    how: format!("{tier} (per {})", h.per),
                    works,
                    note: why,
                });
            }
            match cause {
                Cause::AcceptQueueOverflow => {
                    ways.push(Way {
                        how: "tracepoint skb:kfree_skb reason TCP_LISTEN_OVERFLOW (ACK-time, per packet)".into(),
                        works: attached(loaded, program::KFREE_SKB) && drop_watched(WatchedDrop::TcpListenOverflow.kernel_name()),
                        note: None,
                    });
                    ways.push(Way {
                        how: "tracepoint tcp:tcp_send_reset on the listener (tcp_abort_on_overflow=1)".into(),
                        works: attached(loaded, program::TCP_SEND_RESET),
                        note: None,
                    });
                    ways.push(Way { how: "polling sock_diag drop counters + TcpExt MIB (SYN-time)".into(), works: true, note: None });
                }
                Cause::AbortOnTimeout => ways.push(Way {
                    how: "none: Linux sends no RST when retransmissions run out (the socket fails with ETIMEDOUT)".into(),
                    works: false,
                    note: Some("keepalive expiry does send an RST: see keepalive_timeout".into()),
                }),
                Cause::SynQueueOverflow => {
                    ways.push(Way { how: "polling TcpExt TCPReqQFull* + request sockets (sock_diag)".into(), works: true, note: None });
                }
                Cause::FirewallDrop | Cause::FirewallReject => {
                    ways.push(Way {
                        how: "tracepoint skb:kfree_skb reason NETFILTER_DROP".into(),
                        works: attached(loaded, program::KFREE_SKB) && drop_watched(WatchedDrop::NetfilterDrop.kernel_name()),
                        note: None,
                    });
                }
                _ => {}
            }
            (cause, ways)
        })
        .collect()
}

/// The first line of a hook error, bounded: verifier logs run to hundreds of lines, and the
/// whole text is in the `hooks` section anyway.
fn first_line(e: &str) -> String {
    let line = e.lines().next().unwrap_or("");
    match line.char_indices().nth(240) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

pub fn report(loaded: &Loaded, facts: &KernelFacts) -> Doctor {
    let causes = ways(loaded, facts)
        .into_iter()
        .map(|(cause, ways)| (cause, observability(&ways)))
        .collect();
    Doctor {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .ok(),
        causes,
        hooks: loaded.hook_statuses(),
        warnings: facts.warnings.clone(),
    }
}

/// How one cause is observed: the ways that work, else why none does.
fn observability(ways: &[Way]) -> Observability {
    let working: Vec<&Way> = ways.iter().filter(|w| w.works).collect();
    let via = (!working.is_empty()).then(|| {
        working
            .iter()
            .map(|w| w.how.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    });
    // The cause's note comes from a way that serves it; only when none does, from the ways
    // that failed (why it cannot be observed).
    let note = working.iter().find_map(|w| w.note.clone()).or_else(|| {
        if working.is_empty() {
            ways.iter().find_map(|w| w.note.clone())
        } else {
            None
        }
    });
    Observability {
        observable: !working.is_empty(),
        via,
        note,
        ways: ways
            .iter()
            .map(|w| event::Way {
                how: w.how.clone(),
                works: w.works,
                why_not: if w.works { None } else { w.note.clone() },
            })
            .collect(),
    }
}

pub fn text(report: &Doctor) -> String {
    let mut s = format!("kernel {}\n", report.kernel.as_deref().unwrap_or("?"));
    for (cause, v) in &report.causes {
        let via = v.via.as_deref().unwrap_or("NOT OBSERVABLE on this kernel");
        s.push_str(&format!("  {:<26} {via}", cause.as_str()));
        if let Some(note) = &v.note {
            s.push_str(&format!(" ({note})"));
        }
        s.push('\n');
    }
    for w in &report.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    let tracefs = Tracefs::locate_or_mount()?;
    let btf = KernelBtf::load()?;
    let facts = KernelFacts::discover(&tracefs, &btf);
    preflight::raise_memlock();
    let loaded = loader::load(
        &facts.layout,
        facts
            .drop_reasons
            .value(WatchedDrop::TcpListenOverflow.kernel_name())
            .is_some(),
    )?;
    let r = report(&loaded, &facts);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&r)?),
        Format::Text => print!("{}", text(&r)),
    }
    Ok(())
}
