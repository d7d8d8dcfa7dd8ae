//! `[apps.NAME]`: an app's version, its source (a directory or a pinned
//! URL), its build and notify steps, and its environments in promotion
//! order.

use super::doc::{Doc, Value, required};
use super::environments::environment;
use super::steps::{step, steps};
use crate::*;
use std::ops::Range;

pub(super) fn app(
    doc: &mut Doc<'_>,
    name: &str,
    name_span: Range<usize>,
    v: &Value<'_>,
) -> Option<AppConfig> {
    let what = format!("[apps.{name}]");
    let table = doc.table(v, &what)?;
    doc.known_keys(
        table,
        &what,
        &[
            "version",
            "source",
            "build",
            "keep_releases",
            "environments",
            "notify",
        ],
    );
    let version = required(doc, table, "version", &what, name_span.clone()).and_then(|v| {
        let text = doc.string(v, "`version`")?;
        match Version::parse(&text) {
            Ok(version) => Some(version),
            Err(e) => {
                doc.error(
                    v.span(),
                    format!("`version` `{text}` is not semver (like 1.4.2): {e}"),
                );
                // Keep going with a placeholder so the steps are checked too.
                Some(Version::new(0, 0, 0))
            }
        }
    });
    let source =
        required(doc, table, "source", &what, name_span.clone()).and_then(|v| app_source(doc, v));
    let build = table.get("build").and_then(|v| step(doc, v, "`build`"));
    let keep_releases = match table.get("keep_releases") {
        Some(v) => doc.integer(v, "`keep_releases`", 1).map(|n| n as usize),
        None => Some(5),
    };
    let mut environments = Vec::new();
    match table.get("environments") {
        Some(v) => {
            if let Some(envs) = doc.table(v, "`environments`") {
                if envs.is_empty() {
                    doc.error(
                        v.span(),
                        format!("{what} has no `[apps.{name}.environments.ENV]`"),
                    );
                }
                for (env_name, env_v) in envs {
                    if let Some(e) = environment(doc, name, env_name.get_ref(), env_v) {
                        environments.push((e, env_name.span()));
                    }
                }
            }
        }
        None => doc.error(
            name_span.clone(),
            format!("{what} has no `[apps.{name}.environments.ENV]`"),
        ),
    }
    let notify = table
        .get("notify")
        .map(|v| steps(doc, v, "`notify`"))
        .unwrap_or_default();
    let environments = promotion_order(doc, name, environments)?;
    Some(AppConfig {
        name: name.to_string(),
        version: version?,
        source: source?,
        build,
        keep_releases: keep_releases?,
        environments,
        notify,
    })
}

/// `source`: `{ path = "dir" }` or `{ url = "https://…", sha256 = "…" }`.
fn app_source(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<AppSource> {
    let t = doc.table(v, "`source`")?;
    doc.known_keys(t, "`source`", &["path", "url", "sha256"]);
    match (t.get("path"), t.get("url")) {
        (Some(_), Some(u)) => {
            doc.error(u.span(), "`source` has both `path` and `url`: keep one");
            None
        }
        (None, None) => {
            doc.error(
                v.span(),
                "`source` needs `path` (a directory) or `url` (with `sha256`)",
            );
            None
        }
        (Some(p), None) => {
            if let Some(s) = t.get("sha256") {
                doc.error(
                    s.span(),
                    "`source.sha256` goes with `url`; a `path` source is not pinned",
                );
            }
            let path = doc.string(p, "`source.path`")?;
            let path = doc.path(&path);
            if !path.is_dir() {
                doc.error(
                    p.span(),
                    format!("`source.path` {} is not a directory", path.display()),
                );
            }
            Some(AppSource::Path(path))
        }
        (None, Some(u)) => {
            let url = doc.string(u, "`source.url`")?;
            if let Err(e) = crate::source_url::check_url(&url) {
                doc.error(u.span(), format!("`source.url`: {e}"));
            }
            let Some(s) = t.get("sha256") else {
                doc.error(
                    v.span(),
                    "`source` with `url` needs `sha256` (64 hex digits: `sha256sum FILE`)",
                );
                return None;
            };
            let sha256 = doc.string(s, "`source.sha256`")?;
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                doc.error(
                    s.span(),
                    format!("`source.sha256` must be 64 hex digits, not `{sha256}`"),
                );
            }
            Some(AppSource::Url {
                url,
                sha256: sha256.to_ascii_lowercase(),
            })
        }
    }
}

/// Order environments so each follows its `promote_from`; report unknown
/// references and cycles.
fn promotion_order(
    doc: &mut Doc<'_>,
    app: &str,
    envs: Vec<(EnvConfig, Range<usize>)>,
) -> Option<Vec<EnvConfig>> {
    let names: Vec<String> = envs.iter().map(|(e, _)| e.name.clone()).collect();
    let mut ok = true;
    for (e, span) in &envs {
        if let Some(from) = e.promote_from.as_ref().filter(|f| !names.contains(f)) {
            doc.error(
                span.clone(),
                format!(
                    "[apps.{app}.environments.{}] promote_from `{from}`: no such environment",
                    e.name
                ),
            );
            ok = false;
        }
    }
    if !ok {
        // Keep the file order so the steps are still checked.
        return Some(envs.into_iter().map(|(e, _)| e).collect());
    }
    let mut ordered: Vec<EnvConfig> = Vec::new();
    let mut pending = envs;
    while !pending.is_empty() {
        let before = pending.len();
        let (ready, rest): (Vec<_>, Vec<_>) =
            pending
                .into_iter()
                .partition(|(e, _)| match &e.promote_from {
                    None => true,
                    Some(from) => ordered.iter().any(|o| &o.name == from),
                });
        ordered.extend(ready.into_iter().map(|(e, _)| e));
        pending = rest;
        if pending.len() == before {
            let cycle: Vec<&str> = pending.iter().map(|(e, _)| e.name.as_str()).collect();
            doc.error(
                pending[0].1.clone(),
                format!(
                    "[apps.{app}] environments promote from each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            );
            return None;
        }
    }
    Some(ordered)
}
