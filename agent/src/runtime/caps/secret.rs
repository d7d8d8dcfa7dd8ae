//! The `secret` capability: a plugin reads only the secrets it is granted.
//! Values come from the agent's secret sources, never from the config text.

use crate::runtime::caps::log::{Level, Source, StepLog};
use crate::runtime::state::Setup;
use std::collections::BTreeMap;

/// The secrets one step may read: granted names with their resolved values.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl Secrets {
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self { values }
    }

    /// The step's granted secrets, resolved by the caller.
    pub(crate) fn for_step(setup: &Setup<'_>) -> Self {
        Self::new(setup.request.secrets.clone())
    }

    /// The host function `secret(name)`: the value, or a denial that is
    /// also written to the step's log (a plugin may swallow the error).
    pub fn serve(&self, name: &str, log: &StepLog) -> Result<String, String> {
        let value = self.get(name);
        if let Err(e) = &value {
            log.push(Level::Warn, Source::Host, e, Vec::new());
        }
        value
    }

    pub fn get(&self, name: &str) -> Result<String, String> {
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| format!("denied: secret `{name}` is not granted to this plugin"))
    }
}
