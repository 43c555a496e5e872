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
        let w = w.replace(" (per packet)", "");
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
    for k in summary["kernels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let release = k["release"].as_str().unwrap_or("?").to_owned();
        columns.push((release, column(&k["agent_started"]["causes"])));
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
    columns.push((
        format!("{} (host)", host["kernel"].as_str().unwrap_or("?")),
        column(&host["causes"]),
    ));

    let causes: Vec<String> = columns
        .iter()
        .flat_map(|(_, c)| c.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut table = format!(
        "{BEGIN}\n| cause | {} |\n|---|{}\n",
        columns
            .iter()
            .map(|(k, _)| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(columns.len())
    );
    for cause in &causes {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, c)| c.get(cause).cloned().unwrap_or_else(|| "—".into()))
            .collect();
        table.push_str(&format!("| `{cause}` | {} |\n", cells.join(" | ")));
    }
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
}
