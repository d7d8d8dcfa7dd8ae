//! What one app should be, as the engine receives it from the config.

use crate::config::{AppConfig, Config, Plugins};
use std::sync::Arc;

/// What one app should be: its config and the plugins it was checked with.
#[derive(Clone)]
pub struct Desired {
    pub app: AppConfig,
    pub config: Arc<Config>,
    pub plugins: Plugins,
}
