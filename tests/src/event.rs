//! Accessors for the agent's JSON lines (docs/agent-interface.md). Paths are written with dots,
//! as in the document ("network.local.port"); the JSON itself is nested.
//!
//! Every line the harness reads is checked with [`check`]: against docs/events.schema.json
//! (generated from the types) and by reading it into the agent's own types
//! (`rst_trace_common::event`), where a cause's evidence must be its family's type.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rst_trace_common::event::{CauseEvent, Line};
use serde_json::Value;

/// The committed schema of every line the agent writes.
const EVENTS_SCHEMA: &str = include_str!("../../docs/events.schema.json");

fn validator() -> Result<&'static jsonschema::Validator, String> {
    static V: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(EVENTS_SCHEMA)
            .map_err(|e| format!("docs/events.schema.json is not JSON: {e}"))?;
        jsonschema::validator_for(&schema)
            .map_err(|e| format!("docs/events.schema.json is not a schema: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Checks one line against the schema and reads it into its type; the error says what is wrong.
pub fn check(v: &Value) -> Result<Line, String> {
    let errors: Vec<String> = validator()?
        .iter_errors(v)
        .take(5)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "violates docs/events.schema.json: {}",
            errors.join("; ")
        ));
    }
    Line::from_value(v.clone()).map_err(|e| format!("does not read as its type: {e}"))
}

/// A cause event as its type (None for other lines or a line that does not read).
pub fn typed_cause(v: &Value) -> Option<CauseEvent> {
    if !is_cause_event(v) {
        return None;
    }
    CauseEvent::from_value(v.clone()).ok()
}

/// The value at a dotted path ("network.local.port"), or None if any step is missing.
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.get(k)?;
    }
    Some(cur)
}

/// A string at a dotted path.
pub fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path)?.as_str()
}

/// An unsigned integer at a dotted path.
pub fn u64_at(v: &Value, path: &str) -> Option<u64> {
    get(v, path)?.as_u64()
}

/// `event.name`
pub fn name(v: &Value) -> Option<&str> {
    str_at(v, "event.name")
}

/// `event.kind`: "state" | "cause" | "metric"
pub fn kind(v: &Value) -> Option<&str> {
    str_at(v, "event.kind")
}

pub fn is_started(v: &Value) -> bool {
    name(v) == Some("rst_trace.started")
}

pub fn is_cause_event(v: &Value) -> bool {
    kind(v) == Some("cause")
}

pub fn is_stats(v: &Value) -> bool {
    name(v) == Some("rst_trace.stats")
}

/// Stats line with `"final": true`.
pub fn is_final_stats(v: &Value) -> bool {
    is_stats(v) && v.get("final").and_then(Value::as_bool) == Some(true)
}

/// `cause` of a cause event.
pub fn cause(v: &Value) -> Option<&str> {
    str_at(v, "cause")
}

/// A cause event with `cause == c`.
pub fn has_cause(v: &Value, c: &str) -> bool {
    is_cause_event(v) && cause(v) == Some(c)
}

pub fn direction(v: &Value) -> Option<&str> {
    str_at(v, "direction")
}

pub fn origin(v: &Value) -> Option<&str> {
    str_at(v, "origin")
}

pub fn reason(v: &Value) -> Option<&str> {
    str_at(v, "reason")
}

/// `count` (1 unless aggregated)
pub fn count(v: &Value) -> Option<u64> {
    u64_at(v, "count")
}

/// `network.netns`
pub fn netns(v: &Value) -> Option<u64> {
    u64_at(v, "network.netns")
}

/// `network.local.port`
pub fn local_port(v: &Value) -> Option<u16> {
    u64_at(v, "network.local.port").and_then(|p| u16::try_from(p).ok())
}

/// `network.peer.port`
pub fn peer_port(v: &Value) -> Option<u16> {
    u64_at(v, "network.peer.port").and_then(|p| u16::try_from(p).ok())
}

/// `network.local.address`
pub fn local_address(v: &Value) -> Option<&str> {
    str_at(v, "network.local.address")
}

/// `network.peer.address`
pub fn peer_address(v: &Value) -> Option<&str> {
    str_at(v, "network.peer.address")
}

/// `owner`: Some(&Value::Null) when the agent says "no owner", None when the key is missing.
pub fn owner(v: &Value) -> Option<&Value> {
    v.get("owner")
}

/// `owner.process.pid`
pub fn owner_pid(v: &Value) -> Option<u32> {
    u64_at(v, "owner.process.pid").and_then(|p| u32::try_from(p).ok())
}

/// `owner.process.executable.name`
pub fn owner_comm(v: &Value) -> Option<&str> {
    str_at(v, "owner.process.executable.name")
}

/// Per-cause total from a stats line: `causes.<cause>` (0 when the cause is absent).
pub fn stats_cause(v: &Value, cause: &str) -> u64 {
    v.get("causes")
        .and_then(|c| c.get(cause))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Runs the kernel skipped, per program, from a stats line (`kernel.skipped_runs`: absent
/// where there were none).
pub fn skipped_runs(stats: &Value) -> BTreeMap<String, u64> {
    stats["kernel"]["skipped_runs"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(p, n)| Some((p.clone(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the kernel skipped of the named programs, from a final stats line; 0 without one.
pub fn stats_skipped_runs(stats: Option<&Value>, programs: &[&str]) -> u64 {
    let all = stats.map(skipped_runs).unwrap_or_default();
    programs.iter().filter_map(|p| all.get(*p)).sum()
}

/// `records.lost` of a stats line.
pub fn stats_lost(v: &Value) -> Option<u64> {
    u64_at(v, "records.lost")
}

/// One line per event for failure messages, keeping only the telling fields.
pub fn summarize(events: &[Value]) -> String {
    events
        .iter()
        .map(|v| {
            format!(
                "{} cause={:?} dir={:?} reason={:?} local={:?}:{:?} peer={:?}:{:?} netns={:?} owner_pid={:?}",
                name(v).unwrap_or("?"),
                cause(v),
                direction(v),
                reason(v),
                local_address(v),
                local_port(v),
                peer_address(v),
                peer_port(v),
                netns(v),
                owner_pid(v)
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cause_line(evidence: Value) -> Value {
        json!({
            "time":"2026-11-23T23:59:01.123456789Z",
            "event":{"name":"rst_trace.reset_sent","kind":"cause"},
            "cause":"no_listener","direction":"sent","origin":"tcp_stack","reason":"NO_SOCKET",
            "inferred":false,"count":1,
            "network":{"transport":"tcp","type":"ipv4","netns":4026532001u64,
                "local":{"address":"127.0.0.1","port":8080},"peer":{"address":"127.0.0.1","port":51234},
                "community_id":null},
            "tcp":{"state":"CLOSE"},
            "owner":null,"evidence":evidence,"advice":"…","related":null,
            "host":{"name":"h"},"rst_trace":{"schema_version":"1.1"}
        })
    }

    #[test]
    fn lines_are_checked_against_the_schema_and_the_types() {
        let ok = cause_line(
            json!({"kernel_reason":"NO_SOCKET","listening_elsewhere":["10.0.0.1:8080"]}),
        );
        assert!(matches!(check(&ok), Ok(Line::Cause(_))), "{:?}", check(&ok));
        assert_eq!(typed_cause(&ok).map(|c| c.count), Some(1));
        // A key no evidence type has.
        let unknown = cause_line(json!({"no_such_key": 1}));
        assert!(check(&unknown).is_err());
        // A key of another family's evidence (the listen queues') on a no_listener event: the
        // schema binds each cause to its family's evidence type.
        let wrong_family = cause_line(json!({"syncookie_handshake": true}));
        let schema = validator().expect("schema");
        assert!(
            !schema.is_valid(&wrong_family),
            "the schema alone rejects it"
        );
        assert!(check(&wrong_family).is_err());
        let mut missing = ok.clone();
        missing.as_object_mut().map(|o| o.remove("advice"));
        assert!(check(&missing).is_err());
        assert!(check(&json!({"event":{"name":"x","kind":"state"}})).is_err());
    }

    #[test]
    fn reads_the_documented_fields() {
        let v = json!({
            "time":"2026-11-23T23:59:01.123456789Z",
            "event":{"name":"rst_trace.reset_sent","kind":"cause"},
            "cause":"no_listener","direction":"sent","origin":"tcp_stack","reason":"NO_SOCKET",
            "inferred":false,"count":1,
            "network":{"transport":"tcp","type":"ipv4","netns":4026532001u64,
                "local":{"address":"127.0.0.1","port":8080},"peer":{"address":"127.0.0.1","port":51234}},
            "tcp":{"state":"CLOSE"},
            "owner":null,"evidence":{},"advice":"…","related":null
        });
        assert!(is_cause_event(&v));
        assert!(has_cause(&v, "no_listener"));
        assert_eq!(local_port(&v), Some(8080));
        assert_eq!(peer_port(&v), Some(51234));
        assert_eq!(netns(&v), Some(4026532001));
        assert_eq!(direction(&v), Some("sent"));
        assert_eq!(origin(&v), Some("tcp_stack"));
        assert_eq!(reason(&v), Some("NO_SOCKET"));
        assert_eq!(count(&v), Some(1));
        assert_eq!(owner(&v), Some(&Value::Null));
        assert_eq!(owner_pid(&v), None);
        let o = json!({"owner":{"process":{"pid":4242,"executable":{"name":"myapp"}}}});
        assert_eq!(owner_pid(&o), Some(4242));
        assert_eq!(owner_comm(&o), Some("myapp"));
        assert_eq!(owner(&json!({})), None);
    }

    #[test]
    fn reads_stats() {
        let s = json!({"event":{"name":"rst_trace.stats","kind":"metric"},"final":true,
            "causes":{"no_listener":5},"records":{"delivered":5,"lost":0,"suppressed":0}});
        assert!(is_final_stats(&s));
        assert_eq!(stats_cause(&s, "no_listener"), 5);
        assert_eq!(stats_cause(&s, "reset_by_peer"), 0);
        assert_eq!(stats_lost(&s), Some(0));
        let nf = json!({"event":{"name":"rst_trace.stats","kind":"metric"},"final":false});
        assert!(!is_final_stats(&nf));
    }
}
