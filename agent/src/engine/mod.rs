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
//!
//! The modules depend on each other one way: each uses only modules listed
//! after it, and no two use each other.
//!
//! - this file: the engine's handle (`Deployer`) and the per-app workers;
//! - `deployment`: drives one deployment through the phases `machine`
//!   decides;
//! - `rollback`: the one rollback path of a failed gate, the guard and an
//!   operator;
//! - `guard`: watches settled environments (and only watches);
//! - `recover`: start-up after a stop or a crash;
//! - `switch`: environments behind the traffic layer: a release started
//!   beside the one serving, the switch, the drain, the retirement;
//! - `machine`: a deployment's transition table, pure;
//! - `bake`: the check loop and its tally;
//! - `releases`: release records, sources, run specs, rollback targets,
//!   pruning;
//! - `shared`: the handles the workers share;
//! - `notify`: the notification queue;
//! - `steps`: the step runner;
//! - `error`, `desired`: values.
//!
//! Where to look: what a failed gate does is `machine.rs`'s table, then
//! `rollback.rs`; the guard is `guard.rs`; recovery is `recover.rs`.

mod bake;
mod deployment;
mod desired;
mod error;
mod guard;
mod machine;
mod notify;
mod recover;
mod releases;
mod rollback;
mod shared;
mod steps;
mod switch;

pub use desired::Desired;
pub use error::{
    AppLog, BuildError, Cancelled, CheckResult, DeploymentError, EngineError, GateFailure,
    RollbackError, StopCause,
};
pub use shared::{PendingApproval, parallel_deployments};
pub use steps::HealthReport;

use crate::config::{Config, Plugins};
use crate::store::Journal;
use crate::supervisor::Supervisor;
use shared::Shared;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How long a stopping agent waits for queued notifications to go out.
const NOTIFY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A request for an app's worker, done between deployments.
enum Command {
    Rollback {
        env: String,
        to: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<i64, EngineError>>,
    },
}

struct Worker {
    desired: watch::Sender<Option<Desired>>,
    commands: tokio::sync::mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

/// The engine's handle: one worker task per app, fed the newest desired
/// state.
pub struct Deployer {
    shared: Arc<Shared>,
    workers: Mutex<HashMap<String, Worker>>,
    config: Mutex<Option<Arc<Config>>>,
    /// Where the health guard's checks run; stopped with the engine.
    _checks: guard::ChecksThread,
}

impl Deployer {
    pub fn new(journal: Arc<Journal>, supervisor: Arc<Supervisor>, state_dir: PathBuf) -> Self {
        let checks = guard::ChecksThread::start();
        let handle = checks.handle().clone();
        Self {
            shared: Arc::new(Shared::new(journal, supervisor, state_dir, handle)),
            workers: Mutex::new(HashMap::new()),
            config: Mutex::new(None),
            _checks: checks,
        }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.shared.journal
    }

    /// The config in force (the last one accepted).
    pub fn config(&self) -> Option<Arc<Config>> {
        self.config.lock().expect("engine config poisoned").clone()
    }

    /// The latest health check of an environment, if one ran since start.
    pub fn health(&self, app: &str, env: &str) -> Option<HealthReport> {
        self.shared.steps.health(app, env)
    }

    /// The supervised process of an environment, if the agent runs one.
    pub fn process(&self, app: &str, env: &str) -> Option<crate::supervisor::ProcessStatus> {
        let supervisor = &self.shared.supervisor;
        let current = self
            .shared
            .journal
            .env_state(app, env)
            .ok()
            .flatten()
            .and_then(|s| s.current_release);
        current
            .and_then(|release| supervisor.status_of(app, env, &release))
            .or_else(|| supervisor.status(app, env))
    }

    /// The traffic layer of this agent's state dir.
    pub fn traffic(&self) -> &crate::traffic::Control {
        &self.shared.traffic
    }

    /// The deployment waiting for approval before `env`, if any.
    pub fn pending_approval(&self, app: &str, env: &str) -> Option<PendingApproval> {
        self.shared.pending_approval(app, env)
    }

    /// Let the deployment waiting at `env`'s manual gate go on.
    pub fn approve(&self, app: &str, env: &str) -> Result<PendingApproval, EngineError> {
        self.known_env(app, env)?;
        let mut approvals = self.shared.approvals.lock().expect("approvals poisoned");
        let Some(approval) = approvals.remove(&(app.to_string(), env.to_string())) else {
            return Err(EngineError::Conflict(format!(
                "no deployment of {app} is waiting for approval to enter {env}"
            )));
        };
        let info = approval.info.clone();
        // The deployment may have been cancelled in the same instant.
        approval.approve.send(()).map_err(|()| {
            EngineError::Conflict(format!(
                "deployment {} stopped waiting before the approval arrived",
                info.deployment
            ))
        })?;
        tracing::info!(app, env, deployment = info.deployment, "promotion approved");
        Ok(info)
    }

    /// Roll `env` back to the version `to` (or its last good release) as a
    /// deployment of its own. Returns its id once it has started.
    pub async fn rollback(
        &self,
        app: &str,
        env: &str,
        to: Option<String>,
    ) -> Result<i64, EngineError> {
        self.known_env(app, env)?;
        if let Ok(running) = self.shared.journal.unfinished_deployments()
            && let Some(d) = running.iter().find(|d| d.app == app)
        {
            return Err(EngineError::Conflict(format!(
                "deployment {} of {app} {} is in progress; a failed gate rolls back on its own. Retry when it has ended (`slipway show {}`)",
                d.id, d.version, d.id
            )));
        }
        let commands = {
            let workers = self.workers.lock().expect("engine workers poisoned");
            let worker = workers
                .get(app)
                .ok_or_else(|| EngineError::NotFound(format!("no app `{app}`")))?;
            worker.commands.clone()
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        commands
            .send(Command::Rollback {
                env: env.to_string(),
                to,
                reply,
            })
            .await
            .map_err(|_| EngineError::Internal(format!("the worker of {app} has stopped")))?;
        answer
            .await
            .map_err(|_| EngineError::Internal(format!("the worker of {app} has stopped")))?
    }

    /// Stop every worker where it is and record it: a step in progress is
    /// closed as `interrupted`, its deployment as `interrupted` with the
    /// step named. The next start rolls an environment that had not passed
    /// its gates back to its last good release and redoes the deployment.
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = {
            let mut workers = self.workers.lock().expect("engine workers poisoned");
            workers.drain().map(|(_, w)| w.task).collect()
        };
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        self.shared.notifier.shutdown(NOTIFY_GRACE).await;
        let journal = &self.shared.journal;
        for d in journal.unfinished_deployments().unwrap_or_default() {
            let reason =
                recover::close_interrupted(journal, &d, "stopped", "redone at the next start");
            tracing::warn!(app = %d.app, deployment = d.id, "{reason}");
        }
    }

    fn known_env(&self, app: &str, env: &str) -> Result<(), EngineError> {
        let config = self
            .config()
            .ok_or_else(|| EngineError::Internal("no config loaded yet".into()))?;
        let app_cfg = config
            .apps
            .get(app)
            .ok_or_else(|| EngineError::NotFound(format!("no app `{app}` in the config")))?;
        if app_cfg.environment(env).is_none() {
            let envs: Vec<&str> = app_cfg
                .environments
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            return Err(EngineError::NotFound(format!(
                "app `{app}` has no environment `{env}` (it has: {})",
                envs.join(", ")
            )));
        }
        Ok(())
    }

    /// After a restart: close interrupted deployments, put every environment
    /// on a release the journal names as good, and start those processes.
    pub async fn recover(&self, config: &Config) {
        recover::recover(&self.shared, config).await;
        switch::sample(self.shared.clone());
    }

    /// An environment's traffic: its address, its releases with their
    /// shares, and rate, errors and p99 over the last minute.
    pub fn traffic_view(&self, app: &str, env: &str) -> Option<crate::api::TrafficView> {
        let f = switch::figures(&self.shared, app, env)?;
        let seconds = f.seconds;
        Some(crate::api::TrafficView {
            listen: f.listen.to_string(),
            releases: f
                .releases
                .iter()
                .map(|b| crate::api::ReleaseTraffic {
                    release: b.release.clone(),
                    weight: b.weight,
                    in_flight: b.in_flight,
                    open: b.open,
                })
                .collect(),
            window_s: seconds,
            rate: if seconds > 0.0 {
                f.window.requests as f64 / seconds
            } else {
                0.0
            },
            error_ratio: f.window.error_ratio(),
            p99_ms: f.window.quantile(0.99).map(|d| d.as_secs_f64() * 1000.0),
        })
    }

    /// Hand a newly accepted config to the app workers. A newer desired
    /// state replaces one still waiting; a running deployment finishes first.
    pub fn apply(&self, config: Arc<Config>, plugins: &Plugins) {
        let reloaded = self
            .config
            .lock()
            .expect("engine config poisoned")
            .replace(config.clone())
            .is_some();
        if reloaded {
            // Routes follow the config (recovery configured the first one).
            let (shared, config) = (self.shared.clone(), config.clone());
            tokio::spawn(async move { switch::configure(&shared, &config).await });
        }
        let mut workers = self.workers.lock().expect("engine workers poisoned");
        for app in config.apps.values() {
            let desired = Desired {
                app: app.clone(),
                config: config.clone(),
                plugins: plugins.clone(),
            };
            match workers.get(&app.name) {
                Some(w) => {
                    w.desired.send_replace(Some(desired));
                }
                None => {
                    let (tx, rx) = watch::channel(Some(desired));
                    let (commands, command_rx) = tokio::sync::mpsc::channel(8);
                    let task = tokio::spawn(worker(
                        self.shared.clone(),
                        app.name.clone(),
                        rx,
                        command_rx,
                    ));
                    workers.insert(
                        app.name.clone(),
                        Worker {
                            desired: tx,
                            commands,
                            task,
                        },
                    );
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
async fn worker(
    shared: Arc<Shared>,
    app: String,
    mut rx: watch::Receiver<Option<Desired>>,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
) {
    loop {
        let desired = rx.borrow_and_update().clone();
        let changed = match desired {
            Some(desired) => {
                deployment::reconcile(&shared, &desired, rx.clone()).await;
                tokio::select! {
                    changed = rx.changed() => changed,
                    unhealthy = guard::guard(shared.clone(), desired.clone()) => {
                        rollback::after_guard(&shared, &desired, unhealthy).await;
                        Ok(())
                    }
                    Some(command) = commands.recv() => {
                        match command {
                            Command::Rollback { env, to, reply } => {
                                rollback::for_operator(&shared, &desired, &env, to, reply).await;
                            }
                        }
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
