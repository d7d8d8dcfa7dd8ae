//! A plugin's `describe()` output → `PluginInfo::check`, as the runtime does
//! at load. Whatever a plugin returns, the check must not panic, a refusal
//! must say which field is wrong, and an accepted schema must validate
//! params without panicking.
//!
//! Input format (so seeds can be written by hand from real plugins): five
//! lines — name, version, api-version, declared kinds, exported kinds (both
//! comma-separated; unknown names are dropped) — then a description line,
//! then the params schema (the rest, as text).

#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_config::plugin::{PluginInfo, StepKind};

fn kinds(line: &str) -> Vec<StepKind> {
    line.split(',')
        .filter_map(|k| StepKind::parse(k.trim()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(7, '\n');
    let mut next = || parts.next().unwrap_or("").to_string();
    let (name, version, api_version) = (next(), next(), next());
    let (declared, exported) = (kinds(&next()), kinds(&next()));
    let (description, schema) = (next(), next());
    match PluginInfo::check(
        name.clone(),
        version,
        api_version,
        declared.clone(),
        schema,
        description,
        &exported,
    ) {
        Ok((info, validator)) => {
            assert!(!info.name.is_empty());
            assert_eq!(info.name, name);
            assert!(!info.kinds.is_empty());
            assert!(info.kinds.iter().all(|k| exported.contains(k)));
            // Params as a config could give them: whatever they are, the
            // validator answers, and explains every refusal.
            for params in [
                serde_json::json!({}),
                serde_json::json!({ "url": "http://127.0.0.1:1/", "expect_status": 200 }),
                serde_json::json!([1, "two", null, 4.5, { "a": [] }]),
                info.params_schema.clone(),
            ] {
                for error in validator.iter_errors(&params) {
                    assert!(!error.to_string().is_empty());
                }
            }
        }
        Err(message) => {
            let fields = ["name", "version", "api-version", "kind", "params-schema"];
            assert!(
                fields.iter().any(|f| message.contains(f)),
                "a refusal that names no field: {message}"
            );
        }
    }
});
