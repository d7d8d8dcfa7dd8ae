//! The parsed document being walked: where each error and warning is
//! collected with its line and column, and the typed readers (table,
//! string, integer, duration...) that report a wrong type at its place.

use crate::*;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

pub(super) struct Doc<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) base: PathBuf,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigWarning>,
    /// The names under `[secrets]`, for checking `grants.secrets`.
    pub(super) secret_names: Vec<String>,
    /// `[agent] state_dir`, for checking that no grant reaches into it.
    pub(super) state_dir: Option<PathBuf>,
    /// Each `traffic.listen` seen: (address, where, `[apps.A.environments.E]`).
    pub(super) listens: Vec<(std::net::SocketAddr, Range<usize>, String)>,
}

impl<'a> Doc<'a> {
    pub(super) fn loc(&self, offset: usize) -> Loc {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Loc { line, col }
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let Loc { line, col } = self.loc(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    pub(super) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = self.loc(span.start);
        self.warnings
            .push(ConfigError::at(self.file, at, message).into());
    }

    /// Report keys of `table` not in `known`; `what` names the table.
    pub(super) fn known_keys(&mut self, table: &DeTable<'_>, what: &str, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_ref()) {
                self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in {what} (expected one of: {})",
                        key.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }

    pub(super) fn table<'v, 'i>(
        &mut self,
        v: &'v Value<'i>,
        what: &str,
    ) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be a table, not {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, v: &Value<'_>, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn integer(&mut self, v: &Value<'_>, what: &str, min: i64) -> Option<i64> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match n {
            Some(n) if n >= min => Some(n),
            Some(n) => {
                self.error(v.span(), format!("{what} must be at least {min}, not {n}"));
                None
            }
            None => {
                self.error(v.span(), format!("{what} must be an integer"));
                None
            }
        }
    }

    /// A count of checks (at least 1; it is kept as a `u32`).
    pub(super) fn count(&mut self, v: &Value<'_>, what: &str) -> Option<u32> {
        let n = self.integer(v, what, 1)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    v.span(),
                    format!("{what} may be at most {}, not {n}", u32::MAX),
                );
                None
            }
        }
    }

    pub(super) fn strings(&mut self, v: &Value<'_>, what: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(v.span(), format!("{what} must be an array of strings"));
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            out.push(self.string(item, &format!("each item of {what}"))?);
        }
        Some(out)
    }

    pub(super) fn string_map(
        &mut self,
        v: &Value<'_>,
        what: &str,
    ) -> Option<BTreeMap<String, String>> {
        let table = self.table(v, what)?;
        let mut out = BTreeMap::new();
        for (k, val) in table {
            let s = self.string(val, &format!("{what}.{}", k.get_ref()))?;
            out.insert(k.get_ref().to_string(), s);
        }
        Some(out)
    }

    pub(super) fn boolean(&mut self, v: &Value<'_>, what: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be true or false, not {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, v: &Value<'_>, what: &str) -> Option<Duration> {
        let text = self.string(v, what)?;
        match parse_duration(&text) {
            Ok(d) if d > Duration::ZERO => Some(d),
            Ok(_) => {
                self.error(v.span(), format!("{what} must be longer than zero"));
                None
            }
            Err(e) => {
                self.error(v.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// A duration that may be zero ("0s": none of that wait).
    pub(super) fn duration_or_zero(&mut self, v: &Value<'_>, what: &str) -> Option<Duration> {
        let text = self.string(v, what)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    pub(super) fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// A required key: its value, or an error at the table's position.
pub(super) fn required<'v, 'i>(
    doc: &mut Doc<'_>,
    table: &'v DeTable<'i>,
    key: &str,
    what: &str,
    at: Range<usize>,
) -> Option<&'v Value<'i>> {
    let v = table.get(key);
    if v.is_none() {
        doc.error(at, format!("{what} needs `{key}`"));
    }
    v
}
