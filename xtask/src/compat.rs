//! `cargo xtask compat-table`: the README's kernel × cause table, generated from what the
//! agent itself reported (`rst_trace.started` in each QEMU kernel of the matrix, and
//! `rst-trace doctor` on the host), never written by hand.
use std::{collections::BTreeMap, fs, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

const BEGIN: &str = "<!-- compat-table:begin (cargo xtask compat-table) -->";
const END: &str = "<!-- compat-table:end -->";

/// "tracepoint tcp:tcp_send_reset" → "tp tcp_send_reset", and so on: short enough for a cell.
fn short(via: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for w in via.split("; ") {
        let w = w.replace(" (per packet)", "").replace(" (per call)", "");
        let s = if let Some(rest) = w.strip_prefix("tracepoint skb:kfree_skb reason ") {
            format!("kfree_skb {}", rest.split_whitespace().next().unwrap_or(""))
        } else if let Some(rest) = w.strip_prefix("tracepoint ") {
            let names: Vec<&str> = rest
                .split(" + ")
                .map(|t| t.split(':').nth(1).unwrap_or(t))
                .collect();
            format!("tp {}", names.join("+"))
        } else if w.starts_with("polling") {
            "polling".to_owned()
        } else if let Some((kind, func)) = w.split_once(':') {
            format!("{kind} {}", func.split_whitespace().next().unwrap_or(func))
        } else {
            w.clone()
        };
        if !parts.contains(&s) {
            parts.push(s);
        }
    }
    parts.join(", ")
}

/// Per hook: how it attached ("fexit", "kprobe", "tp", …), "not needed" where the kernel
/// reports the same events another way, "—" where it failed.
fn hook_column(hooks: &Value) -> BTreeMap<String, String> {
    let mut col = BTreeMap::new();
    if let Some(map) = hooks.as_object() {
        for (hook, h) in map {
            let mut kinds: Vec<&str> = Vec::new();
            for a in h["attached"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                // "fexit:tcp_v4_syn_recv_sock", or "tcp:tcp_send_reset" for a tracepoint.
                let kind = a
                    .as_str()
                    .and_then(|a| a.split_once(':'))
                    .map(|(k, _)| k)
                    .filter(|k| {
                        matches!(
                            *k,
                            "fentry" | "fexit" | "kprobe" | "kretprobe" | "raw_tp" | "tp_btf"
                        )
                    })
                    .unwrap_or("tp");
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            let not_needed = h["status"] == "not_needed";
            let cell = if !kinds.is_empty() {
                kinds.join("+")
            } else if not_needed {
                "not needed".to_owned()
            } else {
                "—".to_owned()
            };
            col.insert(hook.clone(), cell);
        }
    }
    col
}

/// A markdown table: one row per key found in any column, one column per kernel.
fn table(first: &str, columns: &[(String, BTreeMap<String, String>)]) -> String {
    let rows: std::collections::BTreeSet<&String> =
        columns.iter().flat_map(|(_, c)| c.keys()).collect();
    let mut out = format!(
        "| {first} | {} |\n|---|{}\n",
        columns
            .iter()
            .map(|(k, _)| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(columns.len())
    );
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, c)| c.get(row).cloned().unwrap_or_else(|| "—".into()))
            .collect();
        out.push_str(&format!("| `{row}` | {} |\n", cells.join(" | ")));
    }
    out
}

fn column(causes: &Value) -> BTreeMap<String, String> {
    let mut col = BTreeMap::new();
    if let Some(map) = causes.as_object() {
        for (cause, v) in map {
            let cell = match v["via"].as_str() {
                Some(via) => {
                    let inferred = v["note"].as_str().is_some_and(|n| n.contains("inferred"));
                    format!(
                        "{}{}",
                        short(via),
                        if inferred { " *(inferred)*" } else { "" }
                    )
                }
                None => "—".to_owned(),
            };
            col.insert(cause.clone(), cell);
        }
    }
    col
}

pub fn write(summary: &Path, agent: &Path, readme: &Path) -> Result<()> {
    let text = fs::read_to_string(summary).with_context(|| {
        format!(
            "reading {} (run `cargo xtask integration-test vm --kernel all` first)",
            summary.display()
        )
    })?;
    let summary: Value = serde_json::from_str(&text).context("parsing the matrix summary")?;
    let mut columns: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut hook_columns: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for k in summary["kernels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let release = k["release"].as_str().unwrap_or("?").to_owned();
        columns.push((release.clone(), column(&k["agent_started"]["causes"])));
        hook_columns.push((release, hook_column(&k["agent_started"]["hooks"])));
    }
    let out = Command::new(agent)
        .args(["doctor", "--format", "json"])
        .output()
        .with_context(|| format!("running {} doctor", agent.display()))?;
    if !out.status.success() {
        bail!(
            "rst-trace doctor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let host: Value = serde_json::from_slice(&out.stdout).context("parsing doctor output")?;
    let host_name = format!("{} (host)", host["kernel"].as_str().unwrap_or("?"));
    columns.push((host_name.clone(), column(&host["causes"])));
    hook_columns.push((host_name, hook_column(&host["hooks"])));

    let mut table = format!(
        "{BEGIN}\n{}\nHooks per kernel (`tp`: tracepoint; `raw_tp`: raw tracepoint (arguments as the kernel passes them, no formatted record); `tp_btf`: BTF tracepoint (the same, typed: members are plain loads); `not needed`: the kernel reports the same events through a tracepoint or a drop reason; `—`: did not load or attach, `rst-trace doctor` says why):\n\n{}",
        self::table("cause", &columns),
        self::table("hook", &hook_columns)
    );
    table.push_str(END);

    let readme_text =
        fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(a), Some(b)) = (readme_text.find(BEGIN), readme_text.find(END)) else {
        bail!("README has no {BEGIN} … {END} markers");
    };
    let new = format!(
        "{}{}{}",
        &readme_text[..a],
        table,
        &readme_text[b + END.len()..]
    );
    fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_short() {
        assert_eq!(
            short("tracepoint tcp:tcp_send_reset; fentry:tcp_v4_send_reset (per packet)"),
            "tp tcp_send_reset, fentry tcp_v4_send_reset"
        );
        assert_eq!(short("tracepoint skb:kfree_skb reason TCP_LISTEN_OVERFLOW (ACK-time, per packet); polling sock_diag drop counters"), "kfree_skb TCP_LISTEN_OVERFLOW, polling");
        assert_eq!(
            short("tracepoint syscalls:sys_exit_accept4 + syscalls:sys_exit_accept"),
            "tp sys_exit_accept4+sys_exit_accept"
        );
    }

    #[test]
    fn hook_cells_name_the_tier() {
        let hooks = serde_json::json!({
            "tcp_syn_recv_sock": {"attached": ["kprobe:tcp_v4_syn_recv_sock", "kprobe:tcp_v6_syn_recv_sock"],
                                  "errors": ["fexit tcp_v4_syn_recv_sock: errno 524"]},
            "tcp_send_reset": {"attached": ["tcp:tcp_send_reset"]},
            "tcp_v4_send_reset": {"status": "not_needed", "attached": [], "errors": ["not needed: tcp:tcp_send_reset fires for every RST"]},
            "tcp_conn_request": {"attached": [], "errors": ["kprobes are not available"]},
        });
        let col = hook_column(&hooks);
        assert_eq!(col["tcp_syn_recv_sock"], "kprobe");
        assert_eq!(col["tcp_send_reset"], "tp");
        assert_eq!(col["tcp_v4_send_reset"], "not needed");
        assert_eq!(col["tcp_conn_request"], "—");
        let t = table("hook", &[("6.1".into(), col)]);
        assert!(t.starts_with("| hook | `6.1` |\n|---|---|\n"), "{t}");
        assert!(t.contains("| `tcp_syn_recv_sock` | kprobe |"), "{t}");
    }
}
