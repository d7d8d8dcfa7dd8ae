//! Keeps secret values out of every log line, error and report. The
//! [`Redactor`] lives with the secrets in `slipway-config`
//! ([`slipway_config::redact`]); this path keeps working for the runtime.

pub use slipway_config::redact::Redactor;
