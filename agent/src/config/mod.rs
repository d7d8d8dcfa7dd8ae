//! The config file: what should run where. The model, the parser and every
//! check that needs no plugin live in the `slipway-config` crate (pure, so
//! it can be fuzzed without wasmtime) and are re-exported here; this module
//! adds what needs the agent: the check of every step against its loaded
//! plugin ([`check`]) and reading secrets into the agent's log redaction
//! ([`resolve_secrets`]). Every key is documented in `docs/config.md`.

mod check;

pub use check::{Plugins, check};
pub use slipway_config::{
    AgentConfig, AppConfig, AppSource, CanaryConfig, Config, ConfigError, ConfigErrors,
    ConfigWarning, EnvConfig, HealthConfig, Loc, OnFailure, PluginConfig, Promote, Resolve,
    RunConfig, Secret, SecretConfig, SecretSource, StepConfig, TrafficConfig, TrafficMode,
    parse_duration, read,
};

use std::collections::BTreeMap;
use std::path::Path;

/// Read every secret's value from its source ([`Config::read_secrets`]) and
/// hide each value from the agent's own log lines from now on.
pub fn resolve_secrets(config: &mut Config, mode: Resolve) -> Result<(), ConfigErrors> {
    let result = config.read_secrets(mode);
    for secret in config.secrets.values() {
        if let Some(value) = &secret.value {
            crate::logging::redact(&secret.name, value.expose());
        }
    }
    result
}

/// Parse, read the secrets, then check against the plugins: every error of
/// all phases.
pub async fn load_checked(
    file: &Path,
    text: &str,
    runtime: &crate::runtime::Runtime,
    secrets: Resolve,
) -> Result<(Config, Plugins), ConfigErrors> {
    let (config, mut errors) = slipway_config::parse_partial(file, text);
    let Some(mut config) = config else {
        return Err(ConfigErrors(errors));
    };
    if let Err(ConfigErrors(more)) = resolve_secrets(&mut config, secrets) {
        errors.extend(more);
    }
    match check(&config, runtime).await {
        Ok(plugins) if errors.is_empty() => return Ok((config, plugins)),
        Ok(_) => {}
        Err(ConfigErrors(more)) => errors.extend(more),
    }
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    Err(ConfigErrors(errors))
}
