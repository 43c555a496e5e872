//! Fields every JSON line carries for log backends: which host wrote it (`host.name`) and
//! which shape of line it is (`rst_trace.schema_version`), so lines from many hosts and agent
//! versions can share one index. OpenTelemetry-style names, dots written as nesting, like the
//! rest of the line.
use std::sync::OnceLock;

use serde_json::{json, Value};

/// Version of the JSON line shape (docs/agent-interface.md), `MAJOR.MINOR`: the minor number
/// grows when fields are added, the major one when a field changes meaning or goes away.
/// 1.0 was the shape before these fields existed; 1.1 added `host.name`,
/// `rst_trace.schema_version` and `network.community_id`.
pub const SCHEMA_VERSION: &str = "1.1";

/// The node name (`uname -n`) of the UTS namespace the agent runs in, read once: a log line
/// must not change host because the name changed mid-run. Empty when uname fails, which
/// Linux does not do in practice.
pub fn host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        nix::sys::utsname::uname()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// `host` of every line.
pub fn host() -> rst_trace_common::event::Host {
    rst_trace_common::event::Host {
        name: host_name().into(),
    }
}

/// `rst_trace` of every line.
pub fn line_meta() -> rst_trace_common::event::LineMeta {
    rst_trace_common::event::LineMeta {
        schema_version: SCHEMA_VERSION.into(),
    }
}

/// Adds `host.name` and `rst_trace.schema_version` to a JSON object, keeping whatever the line
/// already has under `host` and `rst_trace`. Non-objects are left alone.
pub fn stamp(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    merge(obj, "host", "name", json!(host_name()));
    merge(obj, "rst_trace", "schema_version", json!(SCHEMA_VERSION));
}

fn merge(obj: &mut serde_json::Map<String, Value>, outer: &str, inner: &str, value: Value) {
    let slot = obj
        .entry(outer.to_owned())
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !slot.is_object() {
        // A scalar in the way would be a bug of ours; the documented field wins.
        *slot = Value::Object(serde_json::Map::new());
    }
    if let Some(m) = slot.as_object_mut() {
        m.insert(inner.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_host_and_schema_version() {
        let mut v = json!({"event": {"name": "rst_trace.stats"}, "host": {"arch": "x"}});
        stamp(&mut v);
        assert_eq!(v["host"]["name"], host_name());
        assert_eq!(v["host"]["arch"], "x", "existing host fields are kept");
        assert_eq!(v["rst_trace"]["schema_version"], SCHEMA_VERSION);
        let mut s = json!(3);
        stamp(&mut s);
        assert_eq!(s, json!(3));
    }

    #[test]
    fn host_name_is_uname_nodename() {
        let want = nix::sys::utsname::uname()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .expect("uname");
        assert_eq!(host_name(), want);
        assert!(!host_name().is_empty());
    }
}
