//! The `secret` capability: a plugin reads only the secrets it is granted.
//! Values come from the agent's secret sources, never from the config text.

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

    pub fn get(&self, name: &str) -> Result<String, String> {
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| format!("denied: secret `{name}` is not granted to this plugin"))
    }
}
