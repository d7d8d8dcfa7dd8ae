//! Structured logs: they land in the agent's log stream and the deployment
//! journal, tagged with the plugin, app, environment and step.

use crate::bindings::slipway::plugin::host;

fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host::log(level, message, &fields);
}

/// Log with key/value fields, e.g. `log::with(Level::Info, "probe", &[("status", "200")])`.
pub fn with(level: Level, message: &str, fields: &[(&str, &str)]) {
    emit(level, message, fields);
}

pub fn debug(message: &str) {
    emit(Level::Debug, message, &[]);
}

pub fn info(message: &str) {
    emit(Level::Info, message, &[]);
}

pub fn warn(message: &str) {
    emit(Level::Warn, message, &[]);
}

pub fn error(message: &str) {
    emit(Level::Error, message, &[]);
}

pub use crate::bindings::slipway::plugin::host::Level;
