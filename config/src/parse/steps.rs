//! Plugin steps in an app or environment: one step (`plugin`, `params`,
//! `timeout`), an array of them, the health check with its interval and
//! thresholds, and the TOML params turned into the JSON a plugin receives.

use super::doc::{Doc, Value, required};
use crate::*;
use toml::de::{DeTable, DeValue};

/// An array of steps (`pre_deploy = [ { plugin = .., params = .. }, .. ]`),
/// run in order; a bad item is reported and left out.
pub(super) fn steps(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Vec<StepConfig> {
    let DeValue::Array(items) = v.get_ref() else {
        doc.error(
            v.span(),
            format!("{what} must be an array of steps, like [{{ plugin = \"command\", params = {{ .. }} }}]"),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| step(doc, item, &format!("{what}[{i}]")))
        .collect()
}

pub(super) fn step(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Option<StepConfig> {
    let table = doc.table(v, what)?;
    doc.known_keys(table, what, &["plugin", "params", "timeout"]);
    step_fields(doc, v, table, what)
}

fn step_fields(
    doc: &mut Doc<'_>,
    v: &Value<'_>,
    table: &DeTable<'_>,
    what: &str,
) -> Option<StepConfig> {
    let plugin = required(doc, table, "plugin", what, v.span())?;
    let plugin = doc.string(plugin, "`plugin`")?;
    let (params, params_at) = match table.get("params") {
        Some(p) => (to_json(p.get_ref()), doc.loc(p.span().start)),
        None => (serde_json::json!({}), doc.loc(v.span().start)),
    };
    let timeout = match table.get("timeout") {
        Some(t) => Some(doc.duration(t, "`timeout`")?),
        None => None,
    };
    Some(StepConfig {
        plugin,
        params,
        timeout,
        at: doc.loc(v.span().start),
        params_at,
    })
}

pub(super) fn health(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<HealthConfig> {
    let table = doc.table(v, "`health`")?;
    doc.known_keys(
        table,
        "`health`",
        &[
            "plugin",
            "params",
            "timeout",
            "interval",
            "healthy_after",
            "unhealthy_after",
            "bake",
        ],
    );
    let step = step_fields(doc, v, table, "`health`")?;
    let interval = match table.get("interval") {
        Some(v) => doc.duration(v, "`interval`")?,
        None => Duration::from_secs(2),
    };
    let healthy_after = match table.get("healthy_after") {
        Some(v) => doc.count(v, "`healthy_after`")?,
        None => 1,
    };
    let unhealthy_after = match table.get("unhealthy_after") {
        Some(v) => doc.count(v, "`unhealthy_after`")?,
        None => 2,
    };
    let Some(passing) = interval
        .checked_mul(healthy_after)
        .filter(|d| *d <= MAX_DURATION)
    else {
        doc.error(
            v.span(),
            "`interval` × `healthy_after` is longer than 100 years: the release would never pass",
        );
        return None;
    };
    let bake = match table.get("bake") {
        Some(v) => doc.duration(v, "`bake`")?,
        None => passing,
    };
    if bake < passing {
        doc.error(
            v.span(),
            format!(
                "`bake` ({} ms) is shorter than `interval` × `healthy_after` ({} ms): the release could never pass",
                bake.as_millis(),
                passing.as_millis()
            ),
        );
    }
    Some(HealthConfig {
        step,
        interval,
        healthy_after,
        unhealthy_after,
        bake,
    })
}

/// TOML params to the JSON a plugin receives.
fn to_json(v: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(J::from)
            .unwrap_or(J::Null),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number)
            .unwrap_or(J::Null),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(a) => J::Array(a.iter().map(|x| to_json(x.get_ref())).collect()),
        DeValue::Table(t) => J::Object(
            t.iter()
                .map(|(k, x)| (k.get_ref().to_string(), to_json(x.get_ref())))
                .collect(),
        ),
    }
}
