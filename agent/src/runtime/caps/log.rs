//! The `log` capability: plugin log lines into the agent's `tracing` stream
//! and into the step's record, redacted and capped.

use serde::Serialize;
use slipway_config::redact::Redactor;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Severity of a step log line (the WIT `level`, plus host lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Who wrote a line: the plugin itself, its stdout/stderr, or the agent
/// about the plugin (denials, exec results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Plugin,
    Stdout,
    Stderr,
    Host,
}

/// One line of a step's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
    pub level: Level,
    pub source: Source,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

mod unix_millis {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        s.serialize_u64(ms)
    }
}

/// Labels every line of one step carries in the agent's log stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepLabels {
    pub plugin: String,
    pub kind: String,
    pub app: String,
    pub environment: String,
    pub deployment: String,
}

/// The lines of one step, shared by the capabilities that write to it.
#[derive(Debug, Clone)]
pub struct StepLog {
    inner: Arc<Mutex<Inner>>,
    labels: Arc<StepLabels>,
    redactor: Redactor,
}

#[derive(Debug)]
struct Inner {
    lines: Vec<LogLine>,
    bytes: usize,
    max_bytes: usize,
    dropped: usize,
}

impl StepLog {
    pub fn new(labels: StepLabels, redactor: Redactor, max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                lines: Vec::new(),
                bytes: 0,
                max_bytes,
                dropped: 0,
            })),
            labels: Arc::new(labels),
            redactor,
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Record a line (redacted) and emit it to `tracing`.
    pub fn push(&self, level: Level, source: Source, message: &str, fields: Vec<(String, String)>) {
        let message = self.redactor.redact(message);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(k, v)| (self.redactor.redact(&k), self.redactor.redact(&v)))
            .collect();
        self.record(level, source, message, fields);
    }

    /// Record a line already redacted and emit it to `tracing`.
    fn record(&self, level: Level, source: Source, message: String, fields: Vec<(String, String)>) {
        self.emit(level, source, &message, &fields);
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let mut inner = self.inner.lock().expect("step log poisoned");
        if inner.bytes + size > inner.max_bytes {
            inner.dropped += 1;
            return;
        }
        inner.bytes += size;
        inner.lines.push(LogLine {
            at: SystemTime::now(),
            level,
            source,
            message,
            fields,
        });
    }

    /// The host function `log(level, message, fields)`.
    pub fn serve(&self, level: Level, message: &str, fields: Vec<(String, String)>) {
        self.push(level, Source::Plugin, message, fields);
    }

    /// Record captured stdout/stderr, one line each. Redacted whole first,
    /// so a secret that spans lines is caught too.
    pub fn push_output(&self, source: Source, bytes: &[u8]) {
        let text = self.redactor.redact(&String::from_utf8_lossy(bytes));
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.record(Level::Info, source, line.to_string(), Vec::new());
        }
    }

    /// The lines so far, emptied, with the byte budget reset: a warm
    /// instance's log is taken per call.
    pub fn take_lines(&self) -> Vec<LogLine> {
        let mut inner = self.inner.lock().expect("step log poisoned");
        let mut lines = std::mem::take(&mut inner.lines);
        if inner.dropped > 0 {
            lines.push(dropped_line(inner.dropped, inner.max_bytes));
        }
        inner.bytes = 0;
        inner.dropped = 0;
        lines
    }

    /// The lines so far; a last line says how many were dropped over the cap.
    pub fn lines(&self) -> Vec<LogLine> {
        let inner = self.inner.lock().expect("step log poisoned");
        let mut lines = inner.lines.clone();
        if inner.dropped > 0 {
            lines.push(dropped_line(inner.dropped, inner.max_bytes));
        }
        lines
    }

    fn emit(&self, level: Level, source: Source, message: &str, fields: &[(String, String)]) {
        let l = &*self.labels;
        let fields = if fields.is_empty() {
            String::new()
        } else {
            fields
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        macro_rules! event {
            ($lvl:expr) => {
                tracing::event!(
                    target: "slipway::plugin",
                    $lvl,
                    plugin = %l.plugin,
                    step = %l.kind,
                    app = %l.app,
                    env = %l.environment,
                    deployment = %l.deployment,
                    source = ?source,
                    fields = %fields,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => event!(tracing::Level::TRACE),
            Level::Debug => event!(tracing::Level::DEBUG),
            Level::Info => event!(tracing::Level::INFO),
            Level::Warn => event!(tracing::Level::WARN),
            Level::Error => event!(tracing::Level::ERROR),
        }
    }
}

/// The line that says how many lines a step's log limit dropped.
fn dropped_line(dropped: usize, max_bytes: usize) -> LogLine {
    LogLine {
        at: SystemTime::now(),
        level: Level::Warn,
        source: Source::Host,
        message: format!(
            "{dropped} more log lines dropped: over the step's {max_bytes} byte log limit"
        ),
        fields: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_bytes_and_reports_dropped_lines() {
        let log = StepLog::new(StepLabels::default(), Redactor::default(), 10);
        log.push(Level::Info, Source::Plugin, "12345", Vec::new());
        log.push(Level::Info, Source::Plugin, "123456", Vec::new());
        let lines = log.lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].message.starts_with("1 more log lines dropped"));
    }

    #[test]
    fn redacts_messages_and_fields() {
        let r = Redactor::new([("tok".to_string(), "hunter22".to_string())]);
        let log = StepLog::new(StepLabels::default(), r, 1000);
        log.push(
            Level::Info,
            Source::Plugin,
            "token=hunter22",
            vec![("t".into(), "xhunter22x".into())],
        );
        let line = &log.lines()[0];
        assert_eq!(line.message, "token=[REDACTED:tok]");
        assert_eq!(line.fields[0].1, "x[REDACTED:tok]x");
    }

    /// A secret used as a field key, and one printed across two lines.
    #[test]
    fn redacts_field_keys_and_secrets_spanning_lines() {
        let r = Redactor::new([
            ("tok".to_string(), "hunter22".to_string()),
            (
                "pem".to_string(),
                "-----BEGIN KEY-----\nMIIEabc".to_string(),
            ),
        ]);
        let log = StepLog::new(StepLabels::default(), r, 1000);
        log.push(
            Level::Info,
            Source::Plugin,
            "keyed",
            vec![("hunter22".into(), "v".into())],
        );
        log.push_output(
            Source::Stdout,
            b"key:\n-----BEGIN KEY-----\nMIIEabc\ndone\n",
        );
        let lines = log.lines();
        assert_eq!(lines[0].fields[0].0, "[REDACTED:tok]");
        let printed: Vec<&str> = lines[1..].iter().map(|l| l.message.as_str()).collect();
        assert_eq!(printed, ["key:", "[REDACTED:pem]", "done"], "{printed:?}");
    }
}
