//! What the `slipway` commands do, as functions that return the text to
//! print. `main.rs` parses arguments, calls these and prints; nothing here
//! writes to stdout.

use crate::runtime::{LoadError, Plugin, PluginSource, Runtime, RuntimeConfig, builtin, version};
use serde_json::json;
use std::path::Path;

/// A command failed; `code` is the process exit code (1 failed, 2 usage).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

fn runtime() -> Result<Runtime, CliError> {
    Runtime::new(&RuntimeConfig::default()).map_err(CliError::failed)
}

/// `NAME` is a builtin; anything with a `/` or ending in `.wasm` is a path.
pub(crate) fn source_of(target: &str) -> PluginSource {
    if target.contains('/') || target.ends_with(".wasm") || target.starts_with("builtin:") {
        PluginSource::parse(target, Path::new("."))
    } else {
        PluginSource::Builtin(target.to_string())
    }
}

fn plugin_json(plugin: &Plugin) -> serde_json::Value {
    let info = plugin.info();
    json!({
        "source": plugin.source.to_string(),
        "sha256": plugin.sha256,
        "name": info.name,
        "version": info.version,
        "api_version": info.api_version.to_string(),
        "api_compatible": version::compatible(&info.api_version),
        "host_api_version": version::HOST_API.to_string(),
        "kinds": info.kinds,
        "description": info.description,
        "params_schema": info.params_schema,
    })
}

/// `slipway plugins list`: the builtin plugins and what they do.
pub async fn plugins_list(json_output: bool) -> Result<String, CliError> {
    let runtime = runtime()?;
    let mut rows = Vec::new();
    for name in builtin::names() {
        let plugin = runtime
            .load(&PluginSource::Builtin(name.to_string()), None)
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        rows.push(plugin);
    }
    if json_output {
        let list: Vec<_> = rows.iter().map(plugin_json).collect();
        return Ok(serde_json::to_string_pretty(&list).expect("json"));
    }
    let mut out = format!(
        "{:<12} {:<8} {:<6} {:<26} {}\n",
        "NAME", "VERSION", "API", "KINDS", "SOURCE"
    );
    for p in &rows {
        let info = p.info();
        let kinds: Vec<&str> = info.kinds.iter().map(|k| k.as_str()).collect();
        out.push_str(&format!(
            "{:<12} {:<8} {:<6} {:<26} {}\n",
            info.name,
            info.version,
            info.api_version.to_string(),
            kinds.join(","),
            p.source
        ));
    }
    Ok(out)
}

/// `slipway plugins inspect NAME|PATH`: what `describe()` returns and
/// whether this agent can run the plugin.
pub async fn plugins_inspect(target: &str, json_output: bool) -> Result<String, CliError> {
    let runtime = runtime()?;
    let source = source_of(target);
    let plugin = match runtime.load(&source, None).await {
        Ok(p) => p,
        Err(LoadError::IncompatibleApi {
            plugin_api,
            host_api,
            ..
        }) if json_output => {
            let body = json!({
                "source": source.to_string(),
                "api_version": plugin_api.to_string(),
                "api_compatible": false,
                "host_api_version": host_api.to_string(),
            });
            return Err(CliError::failed(
                serde_json::to_string_pretty(&body).expect("json"),
            ));
        }
        Err(e) => return Err(CliError::failed(e.to_string())),
    };
    if json_output {
        return Ok(serde_json::to_string_pretty(&plugin_json(&plugin)).expect("json"));
    }
    let info = plugin.info();
    let kinds: Vec<&str> = info.kinds.iter().map(|k| k.as_str()).collect();
    Ok(format!(
        "{name} {version}\n  {description}\n  source:  {source}\n  sha256:  {sha}\n  api:     {api} (compatible with this agent's {host})\n  kinds:   {kinds}\n  params (JSON Schema):\n{schema}\n",
        name = info.name,
        version = info.version,
        description = info.description,
        source = plugin.source,
        sha = plugin.sha256,
        api = info.api_version,
        host = version::HOST_API,
        kinds = kinds.join(", "),
        schema = indent(
            &serde_json::to_string_pretty(&info.params_schema).expect("json"),
            4
        ),
    ))
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
