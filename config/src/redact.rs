//! Keeps secret values out of every log line, error and report.
//!
//! The agent knows every secret value it resolved; anything a plugin (or a
//! program it ran) returns or logs passes through [`Redactor::redact`] before
//! it is stored or printed. Matching is on the literal value, so a secret that
//! a plugin transforms (base64, reversed) is not caught: grants are the real
//! boundary, redaction is the safety net.

use std::sync::Arc;

/// Replaces known secret values with `[REDACTED:name]`. Its `Debug` shows
/// only the names.
#[derive(Clone, Default, PartialEq)]
pub struct Redactor {
    /// (name, value), longest value first so overlapping secrets redact fully.
    secrets: Arc<Vec<(String, String)>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.secrets.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Redactor").field("secrets", &names).finish()
    }
}

impl Redactor {
    /// Values shorter than this are not redacted: "a" would shred every line.
    pub const MIN_LEN: usize = 4;

    pub fn new(secrets: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut secrets: Vec<_> = secrets
            .into_iter()
            .filter(|(_, v)| v.len() >= Self::MIN_LEN)
            .collect();
        secrets.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        Self {
            secrets: Arc::new(secrets),
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (name, value) in self.secrets.iter() {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[REDACTED:{name}]"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Redactor;

    #[test]
    fn debug_shows_names_not_values() {
        let r = Redactor::new([("db".to_string(), "hunter2hunter2".to_string())]);
        let shown = format!("{r:?}");
        assert!(
            shown.contains("db") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn redacts_every_occurrence_longest_first() {
        let r = Redactor::new([
            ("token".to_string(), "s3cr3t".to_string()),
            ("long".to_string(), "s3cr3t-and-more".to_string()),
            ("tiny".to_string(), "x".to_string()),
        ]);
        assert_eq!(
            r.redact("a s3cr3t b s3cr3t-and-more x"),
            "a [REDACTED:token] b [REDACTED:long] x"
        );
    }
}
