//! The agent's own log output, redacted of every secret value it has read.
//!
//! Step logs are redacted where they are made (`slipway_config::redact`); this is
//! the net under everything else the agent writes: an error that quotes a
//! command line, a debug field, a library's message. Every value the config
//! resolves is registered here ([`redact`]) and stays registered, so a
//! rotated secret's old value is still hidden; [`Redacted`] wraps the writer
//! `tracing_subscriber` formats each event into.

use crate::runtime::Redactor;
use std::io::Write;
use std::sync::{Mutex, RwLock};
use tracing_subscriber::fmt::MakeWriter;

/// Every (name, value) registered so far.
static SECRETS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// A redactor of [`SECRETS`], rebuilt when one is added.
static REDACTOR: RwLock<Option<Redactor>> = RwLock::new(None);

/// Hide `value` (shown as `[REDACTED:name]`) in every log line from now on.
pub fn redact(name: &str, value: &str) {
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if secrets.iter().any(|(n, v)| n == name && v == value) {
        return;
    }
    secrets.push((name.to_string(), value.to_string()));
    let redactor = Redactor::new(secrets.iter().cloned());
    *REDACTOR.write().unwrap_or_else(|e| e.into_inner()) = Some(redactor);
}

fn redactor() -> Option<Redactor> {
    REDACTOR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A `MakeWriter` whose writers redact every registered secret before the
/// text reaches `M`'s writer: `fmt().with_writer(Redacted(std::io::stderr))`.
#[derive(Debug, Clone, Copy)]
pub struct Redacted<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacted<M> {
    type Writer = RedactedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedWriter {
            inner: self.0.make_writer(),
            redactor: redactor(),
        }
    }
}

/// One event's writer. `tracing_subscriber` formats an event whole and
/// hands it over in one `write_all`, so a value is never split between two
/// writes.
pub struct RedactedWriter<W> {
    inner: W,
    redactor: Option<Redactor>,
}

impl<W: Write> Write for RedactedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.redactor {
            Some(redactor) => {
                let text = redactor.redact(&String::from_utf8_lossy(buf));
                self.inner.write_all(text.as_bytes())?;
            }
            None => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_are_redacted_of_every_registered_secret() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(Redacted(move || out.clone()))
            .finish();
        redact("logging-test-a", "first-value-x1");
        redact("logging-test-b", "second-value-y2");
        // Registering again (a reload) changes nothing.
        redact("logging-test-a", "first-value-x1");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(field = "second-value-y2", "running with first-value-x1");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("running with [REDACTED:logging-test-a]")
                && text.contains("field=\"[REDACTED:logging-test-b]\""),
            "{text}"
        );
        assert!(
            !text.contains("value-x1") && !text.contains("value-y2"),
            "{text}"
        );
    }
}
