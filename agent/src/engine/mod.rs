//! The workflow engine: makes the server match the config, one app at a
//! time per app, every transition journaled before it is acted on.
//!
//! Per app: build once into `releases/APP/VERSION-ID/`, then for each
//! environment in promotion order: activate (deploy plugin, then the
//! supervised process), smoke-test, bake under health checks. A failed gate
//! rolls that environment back to its last good release, records the
//! deployment as failed and pins the (version, source, params) so it is not
//! retried until the config changes; later environments are never touched.
//!
//! It is not the scheduler of the whole agent (`agent.rs`) nor the sandbox
//! (`runtime`): it decides what to run, records it, and asks them.

mod guard;
mod pipeline;
mod recover;

use crate::config::{AppConfig, Config, Plugins};
use crate::store::Journal;
use crate::supervisor::Supervisor;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What one app should be: its config and the plugins it was checked with.
#[derive(Clone)]
pub struct Desired {
    pub app: AppConfig,
    pub config: Arc<Config>,
    pub plugins: Plugins,
}

/// Shared by the app workers.
pub(crate) struct Shared {
    pub journal: Arc<Journal>,
    pub supervisor: Arc<Supervisor>,
    pub state_dir: PathBuf,
}

/// The engine: one worker task per app, fed the newest desired state.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Mutex<HashMap<String, watch::Sender<Option<Desired>>>>,
}

impl Engine {
    pub fn new(journal: Arc<Journal>, supervisor: Arc<Supervisor>, state_dir: PathBuf) -> Self {
        Self {
            shared: Arc::new(Shared {
                journal,
                supervisor,
                state_dir,
            }),
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// After a restart: close interrupted deployments, put every environment
    /// on a release the journal names as good, and start those processes.
    pub async fn recover(&self, config: &Config) {
        recover::recover(&self.shared, config).await;
    }

    /// Hand a newly accepted config to the app workers. A newer desired
    /// state replaces one still waiting; a running deployment finishes first.
    pub fn apply(&self, config: Arc<Config>, plugins: &Plugins) {
        let mut workers = self.workers.lock().expect("engine workers poisoned");
        for app in config.apps.values() {
            let desired = Desired {
                app: app.clone(),
                config: config.clone(),
                plugins: plugins.clone(),
            };
            match workers.get(&app.name) {
                Some(tx) => {
                    tx.send_replace(Some(desired));
                }
                None => {
                    let (tx, rx) = watch::channel(Some(desired));
                    tokio::spawn(worker(self.shared.clone(), app.name.clone(), rx));
                    workers.insert(app.name.clone(), tx);
                }
            }
        }
        for name in workers.keys() {
            if !config.apps.contains_key(name) {
                tracing::warn!(app = %name, "app removed from the config: left running as it is");
            }
        }
    }
}

/// One app's worker: deploy the newest desired state, one at a time; in
/// between, guard the environments' health.
async fn worker(shared: Arc<Shared>, app: String, mut rx: watch::Receiver<Option<Desired>>) {
    loop {
        let desired = rx.borrow_and_update().clone();
        let changed = match desired {
            Some(desired) => {
                pipeline::reconcile(&shared, &desired).await;
                tokio::select! {
                    changed = rx.changed() => changed,
                    unhealthy = guard::guard(shared.clone(), desired.clone()) => {
                        guard::roll_back(&shared, &desired, unhealthy).await;
                        Ok(())
                    }
                }
            }
            None => rx.changed().await,
        };
        if changed.is_err() {
            tracing::debug!(app = %app, "engine worker stops");
            return;
        }
    }
}
