//! What the config and the agent know of a plugin without running it: the
//! step kinds, where a plugin comes from, the builtin names, and the check
//! of what its `describe()` returned.
//!
//! It is not the runtime that loads and runs a plugin
//! (`slipway::runtime`): these are the plain data and checks it shares
//! with the config, kept here so they can be fuzzed without wasmtime.

use semver::Version;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The builtin plugins (`source = "builtin:NAME"`) the agent embeds; the
/// agent's `runtime::builtin` has the bytes, and a test there keeps the two
/// lists the same.
pub const BUILTINS: &[&str] = &["command", "http-check", "tcp-check", "webhook"];

/// The largest memory limit a step may ask for; the pooling allocator
/// reserves address space for this much per instance slot.
pub const MAX_MEMORY_BYTES: usize = 1024 * 1024 * 1024;

/// The step kinds (the WIT `step-kind`); a plugin's kinds are data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Build,
    Deploy,
    SmokeTest,
    HealthCheck,
    Rollback,
    Notify,
}

impl StepKind {
    pub const ALL: [StepKind; 6] = [
        StepKind::Build,
        StepKind::Deploy,
        StepKind::SmokeTest,
        StepKind::HealthCheck,
        StepKind::Rollback,
        StepKind::Notify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Build => "build",
            StepKind::Deploy => "deploy",
            StepKind::SmokeTest => "smoke-test",
            StepKind::HealthCheck => "health-check",
            StepKind::Rollback => "rollback",
            StepKind::Notify => "notify",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `describe()` said, checked.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub api_version: Version,
    pub kinds: Vec<StepKind>,
    pub params_schema: serde_json::Value,
    pub description: String,
}

impl PluginInfo {
    /// Check raw `describe()` output: versions parse, the schema is a valid
    /// JSON Schema, and every declared kind is really exported. Every
    /// refusal names the field it is about.
    pub fn check(
        name: String,
        version: String,
        api_version: String,
        kinds: Vec<StepKind>,
        params_schema: String,
        description: String,
        exported: &[StepKind],
    ) -> Result<(Self, jsonschema::Validator), String> {
        let api_version = Version::parse(&api_version)
            .map_err(|e| format!("api-version `{api_version}` is not semver: {e}"))?;
        Version::parse(&version).map_err(|e| format!("version `{version}` is not semver: {e}"))?;
        if name.is_empty() {
            return Err("name is empty".into());
        }
        if kinds.is_empty() {
            return Err("declares no step kinds".into());
        }
        if let Some(k) = kinds.iter().find(|k| !exported.contains(k)) {
            return Err(format!(
                "declares kind `{k}` but does not export its interface"
            ));
        }
        let params_schema: serde_json::Value = serde_json::from_str(&params_schema)
            .map_err(|e| format!("params-schema is not JSON: {e}"))?;
        let validator = jsonschema::validator_for(&params_schema)
            .map_err(|e| format!("params-schema is not a valid JSON Schema: {e}"))?;
        Ok((
            Self {
                name,
                version,
                api_version,
                kinds,
                params_schema,
                description,
            },
            validator,
        ))
    }
}

/// Where a plugin comes from: `builtin:NAME` or a path to a `.wasm` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PluginSource {
    Builtin(String),
    File(PathBuf),
}

impl PluginSource {
    /// Parse a config `source`; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Self {
        match text.strip_prefix("builtin:") {
            Some(name) => PluginSource::Builtin(name.to_string()),
            None => PluginSource::File(base.join(text)),
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Builtin(name) => write!(f, "builtin:{name}"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}
