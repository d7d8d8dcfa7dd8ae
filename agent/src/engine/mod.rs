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
mod notify;
mod pipeline;
mod recover;

use crate::config::{AppConfig, Config, Plugins};
use crate::store::Journal;
use crate::supervisor::Supervisor;
use serde::Serialize;
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

/// How long a stopping agent waits for queued notifications to go out.
const NOTIFY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Shared by the app workers.
pub(crate) struct Shared {
    pub journal: Arc<Journal>,
    /// The runtime of the health guard's checks (see `guard::ChecksThread`).
    pub checks: tokio::runtime::Handle,
    pub supervisor: Arc<Supervisor>,
    pub state_dir: PathBuf,
    /// The latest health check result per (app, environment).
    /// Latest check by app, then environment (looked up by `&str`: written
    /// 400 times a second under the load bench).
    health: Mutex<HashMap<String, HashMap<String, HealthReport>>>,
    /// Deployments waiting at a manual gate, per (app, environment).
    approvals: Mutex<HashMap<(String, String), Approval>>,
    /// Tells each app's `notify` steps of its deployments, off their path.
    notifier: notify::Notifier,
    /// The warm health-check instance of each (app, environment).
    warm: Mutex<HashMap<(String, String), WarmSlot>>,
    /// Deployments running at once (`parallel_deployments`): 200 apps
    /// deploying together on 2 cores starved their own bake checks into
    /// timeouts (the load test found it).
    deploying: Arc<tokio::sync::Semaphore>,
}

/// How many deployments run at once: eight per core, at least 16. Most of
/// a deployment is waiting (bakes, smoke retries), so the cap is well above
/// the cores: at 4 at once the load test's 200 apps took 460 s to deploy
/// instead of 75 s; with 25 at once their checks kept time on 2 cores. The
/// others wait their turn (a deployment waiting at a manual gate does not
/// hold a turn).
pub fn parallel_deployments() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (8 * cores).max(16)
}

pub(crate) type WarmSlot = Arc<tokio::sync::Mutex<Option<crate::runtime::Warm>>>;

impl Shared {
    /// The warm-instance slot of (app, env): never shared between apps.
    pub(crate) fn warm_slot(&self, app: &str, env: &str) -> WarmSlot {
        let mut warm = self.warm.lock().expect("warm slots poisoned");
        warm.entry((app.to_string(), env.to_string()))
            .or_default()
            .clone()
    }

    pub(crate) fn record_health(&self, app: &str, env: &str, result: &str, message: &str) {
        let at = crate::store::now_ms();
        let mut health = self.health.lock().expect("health map poisoned");
        let envs = match health.get_mut(app) {
            Some(envs) => envs,
            None => health.entry(app.to_string()).or_default(),
        };
        match envs.get_mut(env) {
            // Written in place: a passing check's message is the same
            // length second after second.
            Some(report) => {
                report.result.clear();
                report.result.push_str(result);
                report.message.clear();
                report.message.push_str(message);
                report.at = at;
            }
            None => {
                let report = HealthReport {
                    result: result.to_string(),
                    message: message.to_string(),
                    at,
                };
                envs.insert(env.to_string(), report);
            }
        }
    }
}

/// The latest health check of an environment (during a bake or after).
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// healthy, unhealthy, unknown, or how the step failed (timeout, trap...).
    pub result: String,
    pub message: String,
    /// When, ms since the epoch.
    pub at: i64,
}

/// A deployment waiting for `slipway approve` before an environment.
pub(crate) struct Approval {
    pub info: PendingApproval,
    pub approve: tokio::sync::oneshot::Sender<()>,
}

/// What the API shows of a waiting deployment.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    pub deployment: i64,
    pub version: String,
    pub release: String,
    /// Waiting since, ms since the epoch.
    pub since: i64,
    /// Cancelled at, ms since the epoch, if the gate has a timeout.
    pub deadline: Option<i64>,
}

/// Why the engine refused an operator's request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

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

/// The engine: one worker task per app, fed the newest desired state.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Mutex<HashMap<String, Worker>>,
    config: Mutex<Option<Arc<Config>>>,
    /// Where the health guard's checks run; stopped with the engine.
    _checks: guard::ChecksThread,
}

impl Engine {
    pub fn new(journal: Arc<Journal>, supervisor: Arc<Supervisor>, state_dir: PathBuf) -> Self {
        let checks = guard::ChecksThread::start();
        Self {
            shared: Arc::new(Shared {
                checks: checks.handle().clone(),
                supervisor,
                state_dir,
                health: Mutex::new(HashMap::new()),
                approvals: Mutex::new(HashMap::new()),
                notifier: notify::Notifier::new(journal.clone()),
                warm: Mutex::new(HashMap::new()),
                deploying: Arc::new(tokio::sync::Semaphore::new(parallel_deployments())),
                journal,
            }),
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
        let health = self.shared.health.lock().expect("health map poisoned");
        health.get(app)?.get(env).cloned()
    }

    /// The supervised process of an environment, if the agent runs one.
    pub fn process(&self, app: &str, env: &str) -> Option<crate::supervisor::ProcessStatus> {
        self.shared.supervisor.status(app, env)
    }

    /// The deployment waiting for approval before `env`, if any.
    pub fn pending_approval(&self, app: &str, env: &str) -> Option<PendingApproval> {
        let approvals = self.shared.approvals.lock().expect("approvals poisoned");
        approvals
            .get(&(app.to_string(), env.to_string()))
            .map(|a| a.info.clone())
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
    }

    /// Hand a newly accepted config to the app workers. A newer desired
    /// state replaces one still waiting; a running deployment finishes first.
    pub fn apply(&self, config: Arc<Config>, plugins: &Plugins) {
        *self.config.lock().expect("engine config poisoned") = Some(config.clone());
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
                pipeline::reconcile(&shared, &desired, rx.clone()).await;
                tokio::select! {
                    changed = rx.changed() => changed,
                    unhealthy = guard::guard(shared.clone(), desired.clone()) => {
                        guard::roll_back(&shared, &desired, unhealthy).await;
                        Ok(())
                    }
                    Some(command) = commands.recv() => {
                        match command {
                            Command::Rollback { env, to, reply } => {
                                guard::operator_rollback(&shared, &desired, &env, to, reply).await;
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
