//! The agent daemon: load the config, recover from the journal, deploy what
//! the config asks for, then keep watching the config until told to stop.
//!
//! On shutdown it stops every app process it supervises (SIGTERM, then
//! SIGKILL after `stop_grace`), so nothing outlives it by accident; a
//! deployment cut short is marked interrupted at the next start and redone.

use crate::config::{self, Config, ConfigErrors};
use crate::engine::Engine;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::Journal;
use crate::supervisor::Supervisor;
use std::path::Path;
use std::sync::Arc;

/// Why the agent could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Startup(String),
}

/// The runtime with its compile cache in the state dir.
pub fn runtime_for(state_dir: &Path) -> Result<Runtime, AgentError> {
    Runtime::new(&RuntimeConfig {
        cache_dir: Some(state_dir.join("cache")),
        ..RuntimeConfig::default()
    })
    .map_err(AgentError::Startup)
}

fn create_state_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| AgentError::Startup(format!("state dir {}: {e}", dir.display())))
}

/// Run the agent until `shutdown` resolves.
pub async fn run(config_file: &Path, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    // The text read here is the one in force: the watcher reports only
    // content different from it.
    let text = config::read(config_file)?;
    let config = Config::parse(config_file, &text)?;
    let state_dir = config.agent.state_dir.clone();
    create_state_dir(&state_dir)?;
    let runtime = runtime_for(&state_dir)?;
    let plugins = config::check(&config, &runtime).await?;
    let journal = Journal::open(&state_dir.join("journal.db"))
        .map_err(|e| AgentError::Startup(e.to_string()))?;
    let supervisor = Supervisor::new(state_dir.join("run"), config.agent.stop_grace);
    for (pidfile, pid) in supervisor.kill_orphans() {
        tracing::warn!(pidfile = %pidfile, pid, "killed an app process left over from a previous agent");
    }
    let supervisor = Arc::new(supervisor);
    let engine = Engine::new(Arc::new(journal), supervisor.clone(), state_dir.clone());
    tracing::info!(config = %config_file.display(), state_dir = %state_dir.display(), "agent starting");
    engine.recover(&config).await;
    let config = Arc::new(config);
    engine.apply(config.clone(), &plugins);

    let mut changes =
        crate::watch::watch(config_file, text).map_err(|e| AgentError::Startup(e.to_string()))?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(text) = changes.recv() => {
                reload(config_file, &text, &state_dir, &runtime, &engine).await;
            }
        }
    }
    tracing::info!("agent stopping: stopping app processes");
    supervisor.stop_all().await;
    Ok(())
}

/// Apply an edited config, or log why it was refused and keep the last good.
async fn reload(file: &Path, text: &str, state_dir: &Path, runtime: &Runtime, engine: &Engine) {
    let checked = match Config::load_checked(file, text, runtime).await {
        Ok((config, _)) if config.agent.state_dir != state_dir => Err(format!(
            "{}: `state_dir` cannot change while the agent runs (restart it to move state)",
            file.display()
        )),
        Ok(checked) => Ok(checked),
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok((config, plugins)) => {
            tracing::info!(config = %file.display(), "config change accepted");
            engine.apply(Arc::new(config), &plugins);
        }
        Err(errors) => {
            for line in errors.lines() {
                tracing::error!("{line}");
            }
            tracing::error!(
                "config change rejected: keeping the last good config; nothing was touched"
            );
        }
    }
}

/// `slipway validate`: parse and check a config; Ok with a summary.
pub async fn validate(config_file: &Path) -> Result<String, AgentError> {
    let text = config::read(config_file)?;
    // Use the agent's compile cache if it exists; never create a state dir
    // just to validate.
    let cache_dir = Config::parse(config_file, &text)
        .ok()
        .map(|c| c.agent.state_dir)
        .filter(|d| d.is_dir())
        .map(|d| d.join("cache"));
    let runtime = Runtime::new(&RuntimeConfig {
        cache_dir,
        ..RuntimeConfig::default()
    })
    .map_err(AgentError::Startup)?;
    let (config, plugins) = Config::load_checked(config_file, &text, &runtime).await?;
    Ok(format!(
        "{}: ok ({} apps, {} plugins)\n",
        config_file.display(),
        config.apps.len(),
        plugins.len()
    ))
}
