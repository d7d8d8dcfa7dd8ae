//! Finds secret values written literally in the config: a warning, not an
//! error, so a config that works keeps working while its author moves the
//! value to a `[secrets.NAME]` source.
//!
//! Two simple rules, kept precise so the warning is believed: a string
//! under a key named like a credential (`password`, `token`, `api_key`, ...;
//! not `..._file`, `..._url` and other references to one), and a string that
//! has the shape of a well-known credential (a private key, GitHub, Slack,
//! Stripe and AWS keys, a URL with a password). The `[secrets]` section
//! itself, and values that name a declared secret, are references, not
//! values.

use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Parts of key names that say "the value is a credential".
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "access_key",
    "credential",
    "authorization",
];

/// Key endings that say "the value points at a credential, it is not one".
const REFERENCE_SUFFIXES: &[&str] = &["_file", "_path", "_dir", "_env", "_name", "_var", "_url"];

/// Every literal secret in the config: (span of the value, message).
/// `declared` are the `[secrets]` names.
pub(super) fn scan(root: &DeTable<'_>, declared: &[String]) -> Vec<(Range<usize>, String)> {
    let mut found = Vec::new();
    for (key, value) in root {
        if key.get_ref() != "secrets" {
            walk(key.get_ref(), key.get_ref(), value, declared, &mut found);
        }
    }
    // Tables iterate by key; report in file order.
    found.sort_by_key(|(span, _)| span.start);
    found
}

fn walk(
    path: &str,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    declared: &[String],
    found: &mut Vec<(Range<usize>, String)>,
) {
    match value.get_ref() {
        DeValue::String(text) => {
            let message = if let Some(kind) = credential_shape(text) {
                format!("`{path}` looks like {kind} written in the config")
            } else if names_a_secret(key)
                && !text.trim().is_empty()
                && !declared.iter().any(|d| d == text.as_ref())
            {
                format!(
                    "`{path}` is a literal secret in the config (its key is named like a credential)"
                )
            } else {
                return;
            };
            found.push((
                value.span(),
                format!("{message}: move the value to a [secrets.NAME] source (`env`, `file` or `credential`) and grant it to the plugin"),
            ));
        }
        DeValue::Table(table) => {
            for (k, v) in table {
                let k = k.get_ref();
                walk(&format!("{path}.{k}"), k, v, declared, found);
            }
        }
        DeValue::Array(items) => {
            // Items are values, not named: only their shape is checked.
            for (i, item) in items.iter().enumerate() {
                walk(&format!("{path}[{i}]"), "", item, declared, found);
            }
        }
        _ => {}
    }
}

fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    SECRET_WORDS.iter().any(|w| key.contains(w))
        && !REFERENCE_SUFFIXES.iter().any(|s| key.ends_with(s))
}

/// A token format: one of `prefixes` at a word start, then at least `min`
/// characters that `allowed` accepts.
struct Shape {
    prefixes: &'static [&'static str],
    min: usize,
    allowed: fn(char) -> bool,
    kind: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        prefixes: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        min: 30,
        allowed: |c| c.is_ascii_alphanumeric(),
        kind: "a GitHub token",
    },
    Shape {
        prefixes: &["github_pat_"],
        min: 20,
        allowed: |c| c.is_ascii_alphanumeric() || c == '_',
        kind: "a GitHub token",
    },
    Shape {
        prefixes: &["xoxb-", "xoxp-", "xoxa-", "xoxs-", "xoxr-"],
        min: 10,
        allowed: |c| c.is_ascii_alphanumeric() || c == '-',
        kind: "a Slack token",
    },
    Shape {
        prefixes: &["sk_live_", "rk_live_"],
        min: 16,
        allowed: |c| c.is_ascii_alphanumeric(),
        kind: "a Stripe live key",
    },
];

/// What well-known credential `text` contains, if any.
fn credential_shape(text: &str) -> Option<&'static str> {
    if text.contains("-----BEGIN") && text.contains("PRIVATE KEY") {
        return Some("a private key");
    }
    for shape in SHAPES {
        if shape
            .prefixes
            .iter()
            .any(|p| prefixed(text, p, shape.min, shape.allowed))
        {
            return Some(shape.kind);
        }
    }
    // An AWS access key id is exactly 20 characters: AKIA and 16 more.
    for (at, _) in text.match_indices("AKIA") {
        let run = text[at + 4..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .count();
        if run == 16 && !before_is(text, at, |c| c.is_ascii_alphanumeric()) {
            return Some("an AWS access key id");
        }
    }
    if url_with_password(text) {
        return Some("a URL with a password");
    }
    None
}

/// `prefix` at a word start, followed by at least `min` allowed characters.
fn prefixed(text: &str, prefix: &str, min: usize, allowed: fn(char) -> bool) -> bool {
    text.match_indices(prefix).any(|(at, _)| {
        !before_is(text, at, |c| c.is_ascii_alphanumeric())
            && text[at + prefix.len()..]
                .chars()
                .take_while(|c| allowed(*c))
                .count()
                >= min
    })
}

fn before_is(text: &str, at: usize, class: impl Fn(char) -> bool) -> bool {
    text[..at].chars().next_back().is_some_and(class)
}

/// `scheme://user:password@host`, with a non-empty password.
fn url_with_password(text: &str) -> bool {
    text.match_indices("://").any(|(at, _)| {
        let scheme_ok = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let rest = &text[at + 3..];
        let authority = &rest[..rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len())];
        let userinfo = authority.rfind('@').map(|i| &authority[..i]);
        scheme_ok
            && userinfo
                .and_then(|u| u.split_once(':'))
                .is_some_and(|(_, password)| !password.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, message) of every finding in `text`.
    fn findings(text: &str) -> Vec<(usize, String)> {
        let root = DeTable::parse(text).unwrap();
        let declared: Vec<String> = root
            .get_ref()
            .get("secrets")
            .and_then(|s| match s.get_ref() {
                DeValue::Table(t) => Some(t.keys().map(|k| k.get_ref().to_string()).collect()),
                _ => None,
            })
            .unwrap_or_default();
        scan(root.get_ref(), &declared)
            .into_iter()
            .map(|(span, message)| (text[..span.start].matches('\n').count() + 1, message))
            .collect()
    }

    #[test]
    fn keys_named_like_credentials_with_literal_values() {
        let text = r#"
[plugins.deploy]
source = "builtin:command"
grants = { env = { API_TOKEN = "abc123abc123" } }

[apps.web.environments.prod]
run = { command = "./web", env = { DB_PASSWORD = "hunter2hunter2", PORT = "8080" } }
deploy = { plugin = "deploy", params = { run = ["true"], password = "hunter2hunter2" } }
smoke = { plugin = "http", params = { url = "http://127.0.0.1/", headers = { X-Api-Key = "k-1234567", Authorization = "Bearer abc" } } }
pre_deploy = [{ plugin = "deploy", params = { run = ["true"], secret = "s3cr3t-value" } }]
"#;
        let found = findings(text);
        let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 7, 8, 9, 9, 10], "{found:#?}");
        assert!(
            found[0].1.starts_with(
                "`plugins.deploy.grants.env.API_TOKEN` is a literal secret in the config"
            ),
            "{found:#?}"
        );
        assert!(
            found[2]
                .1
                .contains("`apps.web.environments.prod.deploy.params.password`")
        );
        assert!(found[5].1.contains("pre_deploy[0].params.secret"));
        for (_, message) in &found {
            assert!(
                !message.contains("hunter2"),
                "the warning repeats the secret: {message}"
            );
        }
    }

    #[test]
    fn values_shaped_like_credentials_anywhere() {
        let ghp = format!("ghp_{}", "a1B2".repeat(9));
        let text = format!(
            r#"
[apps.web.environments.prod]
deploy = {{ plugin = "d", params = {{ run = ["curl -H 'x: {ghp}' http://h/"] }} }}
smoke = {{ plugin = "h", params = {{ url = "https://deploy:pa55word@example.com/x" }} }}
health = {{ plugin = "h", params = {{ note = "AKIAIOSFODNN7EXAMPLE", key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc" }} }}
rollback = {{ plugin = "d", params = {{ a = "xoxb-1234567890-abcdef", b = "sk_live_4eC39HqLyjWDarjtT1zdp7dc", c = "github_pat_11ABCDEFG0123456789_abcdefghijkl" }} }}
"#
        );
        let found = findings(&text);
        let kinds: Vec<(usize, &str)> = found
            .iter()
            .map(|(l, m)| {
                (
                    *l,
                    m.split(" looks like ")
                        .nth(1)
                        .unwrap_or(m)
                        .split(" written")
                        .next()
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (3, "a GitHub token"),
                (4, "a URL with a password"),
                (5, "an AWS access key id"),
                (5, "a private key"),
                (6, "a Slack token"),
                (6, "a Stripe live key"),
                (6, "a GitHub token"),
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn references_and_ordinary_values_are_not_secrets() {
        let text = r#"
[secrets.db-password]
file = "/etc/slipway/db-password"
[secrets.credential-thing]
credential = "api-token"

[plugins.backup]
source = "builtin:command"
grants = { exec = ["pg_dump"], secrets = ["db-password"] }

[apps.web]
version = "1.0.0"
source = { path = "app" }
build = { plugin = "c", params = { run = ["cargo build"], max_tokens = 5, token_url = "https://auth.example.com/token", password_file = "/run/pw", secret_env = { PGPASSWORD = "db-password" } } }

[apps.web.environments.prod]
run = { command = "./web", env = { PORT = "8080", DATABASE_URL = "postgres://app@db/app", TOKEN_ENV = "API_TOKEN", PASSWORD = "" } }
smoke = { plugin = "h", params = { url = "http://user@127.0.0.1:8080/", note = "AKIAIOSFODNN7EXAMPLEX ghp_short sk_live_x" } }
"#;
        assert_eq!(findings(text), []);
    }

    #[test]
    fn the_quickstart_has_no_literal_secrets() {
        let text = include_str!("../../examples/quickstart/slipway.toml");
        assert_eq!(findings(text), []);
    }
}
