//! Keeps secret values out of every log line, error and report.
//!
//! The agent knows every secret value it resolved; anything a plugin (or a
//! program it ran) returns or logs passes through [`Redactor::redact`] before
//! it is stored or printed. It matches each value as written and in the
//! forms text takes on the way to a log: escaped for JSON (`--log-format
//! json`) and for Rust's `{:?}`, percent-encoded (in a URL), and base64 (as
//! in an HTTP Basic header). A value a plugin transforms any other way
//! (reversed, hashed, split, encrypted) is not caught: grants are the real
//! boundary, redaction is the safety net.

use std::sync::Arc;

/// Replaces known secret values with `[REDACTED:name]`. Its `Debug` shows
/// only the names.
#[derive(Clone, Default, PartialEq)]
pub struct Redactor {
    /// (name, a form of its value), longest first so overlapping secrets
    /// redact fully.
    secrets: Arc<Vec<(String, String)>>,
}

/// The base64 of a value that follows 0, 1 or 2 other bytes (mod 3: `user:`
/// in a Basic header) and is followed by more: the characters that depend
/// on the value's bytes only. The first ones mix in the bytes before it,
/// the last the bytes after it.
fn shifted_base64(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for shift in [0usize, 1, 2] {
        let mut bytes = vec![0u8; shift];
        bytes.extend_from_slice(value.as_bytes());
        let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        // Characters wholly inside the value: from the first group boundary
        // after the prefix's bits, up to the last 6 bits made of value bits.
        let start = (shift * 8).div_ceil(6);
        let value_bits = value.len() * 8;
        let end = (shift * 8 + value_bits) / 6;
        if let Some(part) = text.get(start..end.min(text.len()))
            && part.len() >= 6
        {
            out.push(part.to_string());
        }
    }
    out
}

/// The forms a value takes in text on its way to a log: as written, escaped
/// for JSON and for `{:?}`, percent-encoded, base64. Deduplicated.
fn forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let json = serde_json::to_string(value).expect("a string serializes");
    let debug = format!("{value:?}");
    let percent: String = value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let mut all = vec![
        value.to_string(),
        json[1..json.len() - 1].to_string(),
        debug[1..debug.len() - 1].to_string(),
        percent,
        form,
        base64::engine::general_purpose::STANDARD.encode(value),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(value),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
    ];
    all.extend(shifted_base64(value));
    all.sort();
    all.dedup();
    all
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.secrets.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
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
            .flat_map(|(name, value)| forms(&value).into_iter().map(move |f| (name.clone(), f)))
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

    /// A value with a quote, a backslash and a newline, as JSON logs,
    /// `{:?}`, a URL and a Basic header carry it.
    #[test]
    fn redacts_the_escaped_and_encoded_forms_of_a_value() {
        use base64::Engine as _;
        let secret = "p@ss \"w\\rd\"\nline2";
        let r = Redactor::new([("db".to_string(), secret.to_string())]);
        let json =
            serde_json::json!({ "message": format!("connecting with {secret}") }).to_string();
        let debug = format!("{:?}", format!("pw={secret}"));
        let url = format!(
            "https://db.example/?pw={}",
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        );
        let basic = |user: &str| {
            format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
            )
        };
        for text in [
            json,
            debug,
            url,
            basic("ab"),
            basic("abc"),
            basic("abcd"),
            format!("multi\n{secret}\nlines"),
        ] {
            let out = r.redact(&text);
            assert!(out.contains("[REDACTED:db]"), "{text} -> {out}");
            assert!(
                !out.contains("w\\rd") && !out.contains("line2"),
                "{text} -> {out}"
            );
        }
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
