//! `[secrets.NAME]`: where a secret's value is read from (one of `env`,
//! `file`, `credential`); never the value itself.

use super::doc::{Doc, Value};
use crate::*;

/// `[secrets.NAME]`: exactly one source. The value is read later
/// ([`Config::read_secrets`]), never taken from the config text.
pub(super) fn secret(doc: &mut Doc<'_>, name: &str, v: &Value<'_>) -> Option<SecretConfig> {
    let what = format!("[secrets.{name}]");
    let table = doc.table(v, &what)?;
    if let Some(literal) = table.get("value") {
        doc.error(
            literal.span(),
            format!(
                "{what} `value`: a secret's value never goes in the config; name where to read it: `env = \"VAR\"`, `file = \"PATH\"` or `credential = \"NAME\"` (systemd)"
            ),
        );
        return None;
    }
    doc.known_keys(table, &what, &["env", "file", "credential"]);
    let given: Vec<(&str, &Value<'_>)> = ["env", "file", "credential"]
        .into_iter()
        .filter_map(|key| Some((key, table.get(key)?)))
        .collect();
    let (key, source_v) = match given.as_slice() {
        [one] => *one,
        [] => {
            doc.error(
                v.span(),
                format!("{what} needs one source: `env`, `file` or `credential`"),
            );
            return None;
        }
        [_, second, ..] => {
            let keys: Vec<String> = given.iter().map(|(k, _)| format!("`{k}`")).collect();
            doc.error(
                second.1.span(),
                format!(
                    "{what} has more than one source ({}): keep one",
                    keys.join(", ")
                ),
            );
            return None;
        }
    };
    let text = doc.string(source_v, &format!("{what} `{key}`"))?;
    let bad = |why: &str| format!("{what} `{key}` {why}");
    let source = match key {
        "env" if text.is_empty() || text.contains('=') || text.contains('\0') => {
            doc.error(source_v.span(), bad("must be an environment variable name"));
            return None;
        }
        "env" => SecretSource::Env(text),
        "file" if text.is_empty() => {
            doc.error(source_v.span(), bad("must be a path"));
            return None;
        }
        "file" => SecretSource::File(doc.path(&text)),
        _ if text.is_empty() || text.contains('/') || text == "." || text == ".." => {
            doc.error(
                source_v.span(),
                bad("must be a credential name (as in `LoadCredential=NAME:…`), not a path"),
            );
            return None;
        }
        _ => SecretSource::Credential(text),
    };
    Some(SecretConfig {
        name: name.to_string(),
        source,
        at: doc.loc(source_v.span().start),
        value: None,
    })
}
