//! The JSON Schema of every line, generated from the types (docs/events.schema.json) and of
//! the doctor report (docs/doctor.schema.json). A test fails when a committed file is stale;
//! `RST_TRACE_BLESS=1 cargo test -p rst-trace-common --features schema` rewrites them.
use std::{format, vec::Vec};

use serde_json::json;

use super::{Doctor, Family, Line};
use crate::cause::Cause;

/// Binds each cause to its family's evidence type: `if cause is X then evidence is XEvidence`.
pub(crate) fn evidence_by_cause(schema: &mut schemars::Schema) {
    let rules: Vec<serde_json::Value> = Cause::ALL
        .iter()
        .map(|c| {
            json!({
                "if": {"properties": {"cause": {"const": c.as_str()}}},
                "then": {"properties": {"evidence": {
                    "$ref": format!("#/$defs/{}", Family::of(*c).type_name())
                }}},
            })
        })
        .collect();
    schema.insert("allOf".into(), rules.into());
}

/// Schema of one line of the agent's output.
pub fn events() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Line)).unwrap_or_default()
}

/// Schema of `rst-trace doctor --format json`.
pub fn doctor() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Doctor)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::{format, fs, path::PathBuf, string::String};

    fn check(file: &str, schema: serde_json::Value) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(file);
        let mut want = serde_json::to_string_pretty(&schema).expect("schema renders");
        want.push('\n');
        if std::env::var_os("RST_TRACE_BLESS").is_some() {
            fs::write(&path, &want).expect("writing the schema");
        }
        let have = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: run RST_TRACE_BLESS=1 cargo test -p rst-trace-common --features schema",
            path.display()
        );
    }

    #[test]
    fn committed_schemas_are_current() {
        check("events.schema.json", super::events());
        check("doctor.schema.json", super::doctor());
    }

    #[test]
    fn every_cause_event_names_its_evidence_type() {
        let s = format!("{}", super::events());
        for name in [
            "NoListenerEvidence",
            "ListenQueueEvidence",
            "FirewallEvidence",
        ] {
            assert!(s.contains(name), "{name}");
        }
        let _: String = s;
    }
}
