//! `[plugins.NAME]`: where a plugin comes from, its pin, its limits, and
//! the grants of its sandbox (directories, hosts, programs, env, secrets).

use super::doc::{Doc, Value, required};
use crate::grants::{DirGrant, HostPattern};
use crate::plugin::{BUILTINS, MAX_MEMORY_BYTES};
use crate::*;
use toml::de::DeValue;

pub(super) fn plugin(doc: &mut Doc<'_>, name: &str, v: &Value<'_>) -> Option<PluginConfig> {
    let what = format!("[plugins.{name}]");
    let table = doc.table(v, &what)?;
    doc.known_keys(
        table,
        &what,
        &["source", "sha256", "grants", "timeout", "memory_mb", "warm"],
    );
    let at = doc.loc(v.span().start);
    let source_v = required(doc, table, "source", &what, v.span())?;
    let source_text = doc.string(source_v, "`source`")?;
    let source = match source_text.strip_prefix("builtin:") {
        Some(b) if !BUILTINS.contains(&b) => {
            doc.error(
                source_v.span(),
                format!(
                    "unknown builtin plugin `{b}` (builtins: {})",
                    BUILTINS.join(", ")
                ),
            );
            return None;
        }
        Some(b) => PluginSource::Builtin(b.to_string()),
        None => PluginSource::File(doc.path(&source_text)),
    };
    let sha256 = match table.get("sha256") {
        Some(v) => {
            let s = doc.string(v, "`sha256`")?;
            if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                doc.error(v.span(), "`sha256` must be 64 hex digits");
            }
            Some(s.to_ascii_lowercase())
        }
        None => None,
    };
    let grants = match table.get("grants") {
        Some(v) => grants(doc, v, &format!("{what} grants"))?,
        None => Grants::default(),
    };
    let timeout = match table.get("timeout") {
        Some(v) => Some(doc.duration(v, "`timeout`")?),
        None => None,
    };
    let memory = match table.get("memory_mb") {
        Some(v) => {
            let mb = doc.integer(v, "`memory_mb`", 1)? as usize;
            if mb > MAX_MEMORY_BYTES >> 20 {
                doc.error(
                    v.span(),
                    format!("`memory_mb` may be at most {}", MAX_MEMORY_BYTES >> 20),
                );
            }
            Some(mb << 20)
        }
        None => None,
    };
    let warm = match table.get("warm") {
        Some(v) => doc.boolean(v, "`warm`")?,
        None => true,
    };
    Some(PluginConfig {
        name: name.to_string(),
        source,
        sha256,
        grants,
        timeout,
        memory,
        warm,
        at,
    })
}

/// Why a directory grant may not be given: it is the agent's state dir,
/// holds it, or lies in it (the journal, the API token and the compiled
/// plugins the agent loads are there). A release dir is granted by the
/// engine to the steps of its own deployment, never by the config.
fn reaches_state_dir(state_dir: Option<&Path>, grant: &Path) -> Option<String> {
    let state_dir = state_dir?;
    // Both resolved the same way, existing or not: the deepest ancestor
    // that exists canonicalized (symlinks followed), the rest appended.
    let resolve = |p: &Path| {
        let p = crate::grants::normalize(p).unwrap_or_else(|| p.to_path_buf());
        let mut rest = Vec::new();
        let mut base = p.as_path();
        loop {
            if let Ok(real) = base.canonicalize() {
                return rest.iter().rev().fold(real, |acc, part| acc.join(part));
            }
            match (base.parent(), base.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    base = parent;
                }
                _ => return p.clone(),
            }
        }
    };
    let (state, granted) = (resolve(state_dir), resolve(grant));
    if state.starts_with(&granted) {
        Some(format!(
            "would give the plugin the agent's state dir {} (its journal, API token and compile cache): grant a directory outside it",
            state.display()
        ))
    } else if granted.starts_with(&state) {
        Some(format!(
            "lies in the agent's state dir {}: a step gets its release dir without a grant; grant a directory outside the state dir",
            state.display()
        ))
    } else {
        None
    }
}

fn grants(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Option<Grants> {
    let table = doc.table(v, what)?;
    doc.known_keys(
        table,
        what,
        &["dirs", "dirs_rw", "http", "tcp", "exec", "env", "secrets"],
    );
    let mut g = Grants::default();
    for (key, write) in [("dirs", false), ("dirs_rw", true)] {
        if let Some(v) = table.get(key) {
            for dir in doc.strings(v, &format!("`{key}`"))? {
                let path = doc.path(&dir);
                if let Some(why) = reaches_state_dir(doc.state_dir.as_deref(), &path) {
                    doc.error(v.span(), format!("`{key}`: `{dir}` {why}"));
                    continue;
                }
                g.dirs.push(DirGrant { path, write });
            }
        }
    }
    for key in ["http", "tcp"] {
        let Some(v) = table.get(key) else { continue };
        let DeValue::Array(items) = v.get_ref() else {
            doc.error(
                v.span(),
                format!("`{key}` must be an array of \"host:port\" strings"),
            );
            continue;
        };
        let mut patterns = Vec::new();
        for item in items {
            let Some(text) = doc.string(item, &format!("each item of `{key}`")) else {
                continue;
            };
            match HostPattern::parse(&text) {
                Ok(p) => patterns.push(p),
                Err(e) => doc.error(item.span(), format!("`{key}`: {e}")),
            }
        }
        if key == "http" {
            g.http = patterns
        } else {
            g.tcp = patterns
        }
    }
    if let Some(v) = table.get("exec") {
        g.exec = doc.strings(v, "`exec`")?;
    }
    if let Some(v) = table.get("env") {
        g.env = doc.string_map(v, "`env`")?;
    }
    if let Some(v) = table.get("secrets") {
        g.secrets = doc.strings(v, "`secrets`")?;
        if let DeValue::Array(items) = v.get_ref() {
            for (name, item) in g.secrets.iter().zip(items) {
                if !doc.secret_names.contains(name) {
                    doc.error(
                        item.span(),
                        format!(
                            "`secrets`: no secret `{name}` is declared: add [secrets.{name}] with its source (`env`, `file` or `credential`)"
                        ),
                    );
                }
            }
        }
    }
    Some(g)
}
