//! One deployment of one app: build → per environment (activate → smoke →
//! health bake) → done, or a failed gate → rollback of that environment.

use super::notify::State;
use super::{Approval, PendingApproval};
use super::{Desired, Shared};
use crate::config::{EnvConfig, HealthConfig, OnFailure, Promote, StepConfig};
use crate::runtime::{
    DirGrant, Health, Limits, Plugin, ReleaseRef, StepContext, StepError, StepInput, StepKind,
    StepLabels, StepOutcome, StepRequest, StepValue,
};
use crate::store::{DeploymentState, Journal, LogRecord, Release};
use crate::supervisor::{RunSpec, log_tail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Default wall time of a build step, and of every other step.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Deploy the desired state unless it is already there or pinned as bad.
pub(super) async fn reconcile(
    shared: &Arc<Shared>,
    desired: &Desired,
    updates: watch::Receiver<Option<Desired>>,
) {
    let app = &desired.app;
    let hash = app.spec_hash();
    let journal = &shared.journal;
    match journal.pin_for(&app.name, &hash) {
        Ok(Some(pin)) => {
            tracing::info!(app = %app.name, version = %app.version, reason = %pin.reason,
                "not deploying: this version and config failed before (change the config to retry)");
            return;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(app = %app.name, error = %e, "journal unreadable; not deploying");
            return;
        }
    }
    if let Ok(Some(last)) = journal.latest_deployment_for_spec(&app.name, &hash)
        && last.state == DeploymentState::Succeeded
        && all_envs_run(shared, desired, last.release_id.as_deref())
    {
        tracing::debug!(app = %app.name, version = %app.version, "up to date");
        return;
    }
    let turn = match shared.deploying.clone().try_acquire_owned() {
        Ok(turn) => turn,
        Err(_) => {
            tracing::info!(app = %app.name, version = %app.version,
                "waiting for a deployment slot ({} run at once)", super::parallel_deployments());
            let Ok(turn) = shared.deploying.clone().acquire_owned().await else {
                return;
            };
            // A newer config came while waiting: the worker deploys that.
            if updates.has_changed().unwrap_or(true) {
                return;
            }
            turn
        }
    };
    let mut run = Deployment::start(shared.clone(), desired.clone(), hash, updates, turn);
    match run.as_mut() {
        Ok(d) => d.run().await,
        Err(e) => tracing::error!(app = %app.name, error = %e, "could not start a deployment"),
    }
}

fn all_envs_run(shared: &Shared, desired: &Desired, release: Option<&str>) -> bool {
    // A release whose directory is gone (a journal restored onto a new
    // server) runs nowhere, whatever the journal last recorded.
    let on_disk = release
        .and_then(|id| release_ref(shared, id))
        .is_some_and(|r| r.dir.is_dir());
    on_disk
        && desired.app.environments.iter().all(|env| {
            matches!(shared.journal.env_state(&desired.app.name, &env.name),
            Ok(Some(s)) if s.current_release.as_deref() == release)
        })
}

/// A deployment in progress.
struct Deployment {
    shared: Arc<Shared>,
    desired: Desired,
    hash: String,
    id: i64,
    /// Newer desired states of the app: one cancels a wait at a manual gate.
    updates: watch::Receiver<Option<Desired>>,
    /// The environment being promoted, for notifications.
    env: Option<String>,
    /// This deployment's turn among those running at once; given back
    /// while it waits at a manual gate.
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Why a deployment stopped before the end.
enum Stop {
    /// A step or gate failed; `rolled_back`: the environment is back on its
    /// last good release.
    Failed { reason: String, rolled_back: bool },
    /// A manual gate was not passed; nothing past it was touched.
    Cancelled(String),
}

impl Deployment {
    fn start(
        shared: Arc<Shared>,
        desired: Desired,
        hash: String,
        updates: watch::Receiver<Option<Desired>>,
        turn: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Self, String> {
        let app = &desired.app;
        let id = shared
            .journal
            .start_deployment(&app.name, &app.version.to_string(), &hash, &app.spec_json())
            .map_err(|e| e.to_string())?;
        tracing::info!(app = %app.name, version = %app.version, deployment = id, "deployment started");
        let version = app.version.to_string();
        let message = format!("deploying {} {version}", app.name);
        shared
            .notifier
            .send(&desired, id, None, &version, State::Started, message);
        Ok(Self {
            shared,
            desired,
            hash,
            id,
            updates,
            env: None,
            turn: Some(turn),
        })
    }

    fn app(&self) -> &str {
        &self.desired.app.name
    }

    async fn run(&mut self) {
        let release = match self.build().await {
            Ok(r) => r,
            Err(reason) => {
                crate::metrics::metrics().deployment(self.app(), "build", "failed");
                return self.fail(&reason);
            }
        };
        match self.promote_all(&release).await {
            Ok(()) => {
                self.finish(DeploymentState::Succeeded, None);
                tracing::info!(app = %self.app(), version = %release.version, deployment = self.id, "deployment succeeded");
                self.env = None;
                self.notify(State::Succeeded, format!("{} runs everywhere", release.id));
            }
            Err(Stop::Failed {
                reason,
                rolled_back,
            }) => self.fail_as(
                if rolled_back {
                    DeploymentState::RolledBack
                } else {
                    DeploymentState::Failed
                },
                &reason,
            ),
            Err(Stop::Cancelled(reason)) => {
                // Not pinned: nothing failed; the next config change or
                // agent start asks again.
                tracing::warn!(app = %self.app(), deployment = self.id, reason = %reason, "deployment cancelled");
                self.finish(DeploymentState::Cancelled, Some(&reason));
                self.notify(State::Cancelled, reason);
            }
        }
        // Failed releases count too: a bad afternoon must not fill the disk.
        self.prune_releases();
    }

    /// Every environment in promotion order; stops at the first failed gate,
    /// after putting that environment back on its last good release, or at
    /// a manual gate that is not passed.
    async fn promote_all(&mut self, release: &ReleaseRef) -> Result<(), Stop> {
        let metrics = crate::metrics::metrics();
        for env in self.desired.app.environments.clone() {
            self.env = Some(env.name.clone());
            if env.promote == Promote::Manual {
                self.turn = None;
                self.await_approval(&env, release).await.inspect_err(|_| {
                    metrics.deployment(self.app(), &env.name, "cancelled");
                })?;
                self.turn = self.shared.deploying.clone().acquire_owned().await.ok();
            }
            if let Err(reason) = self.pre_deploy(&env, release).await {
                metrics.deployment(self.app(), &env.name, "failed");
                return Err(Stop::Failed {
                    reason: format!("{}: {reason}", env.name),
                    rolled_back: false,
                });
            }
            metrics.deployment(self.app(), &env.name, "started");
            if let Err(reason) = self.promote(&env, release).await {
                let rolled_back = self.gate_failed(&env, release).await;
                let state = if rolled_back.is_ok() {
                    "rolled_back"
                } else {
                    "failed"
                };
                metrics.deployment(self.app(), &env.name, state);
                let reason = match &rolled_back {
                    Ok(()) => format!("{}: {reason}", env.name),
                    Err(why) => format!("{}: {reason}\nnot rolled back: {why}", env.name),
                };
                return Err(Stop::Failed {
                    reason,
                    rolled_back: rolled_back.is_ok(),
                });
            }
            metrics.deployment(self.app(), &env.name, "succeeded");
            self.notify(
                State::Promoted,
                format!("{} passed its gates in {}", release.id, env.name),
            );
        }
        Ok(())
    }

    /// Wait at `env`'s manual gate for `slipway approve`; cancelled by the
    /// gate's timeout or by a newer config for the app.
    async fn await_approval(&mut self, env: &EnvConfig, release: &ReleaseRef) -> Result<(), Stop> {
        let (approve, approved) = tokio::sync::oneshot::channel();
        let since = crate::store::now_ms();
        let key = (self.app().to_string(), env.name.clone());
        let info = PendingApproval {
            deployment: self.id,
            version: release.version.clone(),
            release: release.id.clone(),
            since,
            deadline: env.approval_timeout.map(|t| since + t.as_millis() as i64),
        };
        self.shared
            .approvals
            .lock()
            .expect("approvals poisoned")
            .insert(key.clone(), Approval { info, approve });
        tracing::warn!(app = %self.app(), env = %env.name, deployment = self.id, version = %release.version,
            "waiting for approval: run `slipway approve {} --env {}`", self.app(), env.name);
        self.notify(
            State::WaitingApproval,
            format!("run `slipway approve {} --env {}`", self.app(), env.name),
        );
        let timeout = async {
            match env.approval_timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            Ok(()) = approved => Ok(()),
            () = timeout => Err(Stop::Cancelled(format!(
                "{}: not approved within {} s; {} was not touched",
                env.name,
                env.approval_timeout.unwrap_or_default().as_secs(),
                env.name
            ))),
            _ = self.updates.changed() => Err(Stop::Cancelled(format!(
                "{}: superseded by a newer config while waiting for approval; {} was not touched",
                env.name, env.name
            ))),
        };
        // Approve removed it already; a timeout or a new config did not.
        let mut approvals = self.shared.approvals.lock().expect("approvals poisoned");
        if approvals
            .get(&key)
            .is_some_and(|a| a.info.deployment == self.id)
        {
            approvals.remove(&key);
        }
        result
    }

    /// `pre_deploy` steps, in order, before `env` is touched.
    async fn pre_deploy(&self, env: &EnvConfig, release: &ReleaseRef) -> Result<(), String> {
        let previous = self.env_release(&env.name, |s| s.current_release.clone());
        for (i, step) in env.pre_deploy.iter().enumerate() {
            let outcome = run_step_as(
                &self.shared,
                &self.desired,
                Some(self.id),
                Some(env),
                (StepKind::Deploy, "pre-deploy"),
                step,
                release,
                previous.as_ref(),
                1,
            )
            .await;
            if let Err(e) = outcome.result {
                return Err(format!(
                    "pre_deploy[{i}] ({}) failed, release not activated: {e}",
                    step.plugin
                ));
            }
        }
        Ok(())
    }

    /// Record the failure and pin this (version, source, params), so an
    /// automatic rollback never turns into a redeploy loop.
    fn fail(&self, reason: &str) {
        self.fail_as(DeploymentState::Failed, reason);
    }

    fn fail_as(&self, state: DeploymentState, reason: &str) {
        tracing::warn!(app = %self.app(), deployment = self.id, state = %state, reason = %reason, "deployment failed");
        // The end and the pin together: an ended, unpinned failure would
        // be deployed again by the next start.
        if let Err(e) = self
            .shared
            .journal
            .finish_deployment_pinned(self.id, state, reason, &self.hash)
        {
            tracing::error!(deployment = self.id, error = %e, "could not record the end of the deployment and pin the failed version");
        }
        let rolled_back = state == DeploymentState::RolledBack;
        self.notify(State::after_rollback(rolled_back), reason);
    }

    /// Tell the app's `notify` steps, in the background.
    fn notify(&self, state: State, message: impl Into<String>) {
        let version = self.desired.app.version.to_string();
        let env = self.env.as_deref();
        let desired = &self.desired;
        let notifier = &self.shared.notifier;
        notifier.send(desired, self.id, env, &version, state, message);
    }

    fn finish(&self, state: DeploymentState, reason: Option<&str>) {
        if let Err(e) = self
            .shared
            .journal
            .finish_deployment(self.id, state, reason)
        {
            tracing::error!(deployment = self.id, error = %e, "could not record the end of the deployment");
        }
    }

    /// Put the source into a new release dir (copied, or downloaded and
    /// unpacked) and run the build step there.
    async fn build(&mut self) -> Result<ReleaseRef, String> {
        let app = &self.desired.app;
        let id = format!("{}-{}", app.version, self.id);
        let dir = self
            .shared
            .state_dir
            .join("releases")
            .join(&app.name)
            .join(&id);
        if let Err(e) = place_source(&self.shared.state_dir, &app.source, &dir).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let release = ReleaseRef {
            version: app.version.to_string(),
            id: id.clone(),
            dir: dir.clone(),
        };
        let mut artifact_dir = dir.clone();
        if let Some(step) = app.build.clone() {
            let outcome = self
                .step(None, StepKind::Build, &step, &release, None, 1)
                .await;
            match outcome.result {
                Ok(StepValue::Artifact { dir: a, .. }) => artifact_dir = PathBuf::from(a),
                Ok(other) => return Err(format!("build returned {other:?}, not an artifact")),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(format!("build failed: {e}"));
                }
            }
        }
        let record = Release {
            id: id.clone(),
            app: app.name.clone(),
            version: app.version.to_string(),
            dir: dir.display().to_string(),
            artifact_dir: artifact_dir.display().to_string(),
            created_at: crate::store::now_ms(),
        };
        self.shared
            .journal
            .record_release(&record)
            .map_err(|e| e.to_string())?;
        self.shared
            .journal
            .set_deployment_release(self.id, &id)
            .map_err(|e| e.to_string())?;
        Ok(release)
    }

    /// Activate, smoke-test and bake one environment.
    async fn promote(&mut self, env: &EnvConfig, release: &ReleaseRef) -> Result<(), String> {
        let journal = &self.shared.journal;
        let previous = self.env_release(&env.name, |s| s.current_release.clone());
        journal
            .set_current_release(
                self.app(),
                &env.name,
                Some(&release.id),
                Some(self.id),
                "activating",
            )
            .map_err(|e| e.to_string())?;
        self.activate(env, release, previous.as_ref()).await?;
        if let Some(smoke) = &env.smoke {
            let outcome = self
                .step(
                    Some(env),
                    StepKind::SmokeTest,
                    smoke,
                    release,
                    previous.as_ref(),
                    1,
                )
                .await;
            if let Err(e) = outcome.result {
                return Err(format!("smoke test failed: {e}{}", self.app_log(env)));
            }
        }
        if let Some(health) = &env.health {
            self.bake(env, health, release, previous.as_ref()).await?;
        }
        journal
            .set_last_good_release(self.app(), &env.name, &release.id)
            .map_err(|e| e.to_string())?;
        tracing::info!(app = %self.app(), env = %env.name, release = %release.id, "environment healthy");
        Ok(())
    }

    /// Deploy plugin, then the supervised process.
    async fn activate(
        &self,
        env: &EnvConfig,
        release: &ReleaseRef,
        previous: Option<&ReleaseRef>,
    ) -> Result<(), String> {
        if let Some(deploy) = &env.deploy {
            let outcome = self
                .step(Some(env), StepKind::Deploy, deploy, release, previous, 1)
                .await;
            if let Err(e) = outcome.result {
                return Err(format!("deploy failed: {e}"));
            }
        }
        if let Some(run) = &env.run {
            let spec = run_spec(&self.shared.state_dir, self.app(), env, run, release);
            self.shared
                .supervisor
                .start(self.app(), &env.name, &release.id, spec)
                .await
                .map_err(|e| format!("could not start the app: {e}"))?;
        }
        Ok(())
    }

    /// Health checks every `interval` for `bake`: fail at `unhealthy_after`
    /// consecutive failures; pass with `healthy_after` consecutive passes.
    async fn bake(
        &self,
        env: &EnvConfig,
        health: &HealthConfig,
        release: &ReleaseRef,
        previous: Option<&ReleaseRef>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + health.bake;
        let (mut passes, mut failures, mut attempt) = (0u32, 0u32, 0u32);
        let mut last: String;
        loop {
            attempt += 1;
            let outcome = self
                .step(
                    Some(env),
                    StepKind::HealthCheck,
                    &health.step,
                    release,
                    previous,
                    attempt,
                )
                .await;
            match outcome.result {
                Ok(StepValue::Health {
                    status: Health::Healthy,
                    message,
                }) => {
                    passes += 1;
                    failures = 0;
                    last = message;
                }
                Ok(StepValue::Health { status, message }) => {
                    passes = 0;
                    failures += 1;
                    last = format!("{status:?}: {message}").to_lowercase();
                }
                other => {
                    passes = 0;
                    failures += 1;
                    last = match other {
                        Err(e) => e.to_string(),
                        Ok(v) => format!("unexpected result {v:?}"),
                    };
                }
            }
            if failures >= health.unhealthy_after {
                return Err(format!(
                    "unhealthy: {failures} consecutive failed health checks; last: {last}{}",
                    self.app_log(env)
                ));
            }
            if Instant::now() + health.interval > deadline {
                break;
            }
            tokio::time::sleep(health.interval).await;
        }
        if passes >= health.healthy_after {
            Ok(())
        } else {
            Err(format!(
                "not healthy within {} ms ({passes} of {} consecutive passes); last: {last}{}",
                health.bake.as_millis(),
                health.healthy_after,
                self.app_log(env)
            ))
        }
    }

    /// Return a failed environment to its last good release (or leave it,
    /// with `on_failure = "stop"`).
    async fn gate_failed(&self, env: &EnvConfig, failed: &ReleaseRef) -> Result<(), String> {
        if env.on_failure == OnFailure::Stop {
            tracing::warn!(app = %self.app(), env = %env.name, "gate failed; on_failure = stop: leaving the release in place");
            return Err("on_failure = stop: the release was left in place".into());
        }
        let last_good = self.env_release(&env.name, |s| s.last_good_release.clone());
        rollback(
            &self.shared,
            &self.desired,
            env,
            failed,
            last_good.as_ref(),
            Some(self.id),
        )
        .await
    }

    fn env_release(
        &self,
        env: &str,
        pick: impl Fn(&crate::store::EnvState) -> Option<String>,
    ) -> Option<ReleaseRef> {
        let state = self
            .shared
            .journal
            .env_state(self.app(), env)
            .ok()
            .flatten()?;
        release_ref(&self.shared, &pick(&state)?)
    }

    /// The tail of the app's own log, for a failed gate's reason.
    fn app_log(&self, env: &EnvConfig) -> String {
        if env.run.is_none() {
            return String::new();
        }
        let tail = log_tail(&log_file(&self.shared.state_dir, self.app(), &env.name), 10);
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("\napp log (last lines):\n{tail}")
        }
    }

    async fn step(
        &self,
        env: Option<&EnvConfig>,
        kind: StepKind,
        step: &StepConfig,
        release: &ReleaseRef,
        previous: Option<&ReleaseRef>,
        attempt: u32,
    ) -> StepOutcome {
        run_step(
            &self.shared,
            &self.desired,
            Some(self.id),
            env,
            kind,
            step,
            release,
            previous,
            attempt,
        )
        .await
    }

    /// Keep the newest `keep_releases` releases; never remove one an
    /// environment runs or would roll back to.
    fn prune_releases(&self) {
        let journal = &self.shared.journal;
        let Ok(releases) = journal.releases(self.app()) else {
            return;
        };
        let states: Vec<_> = journal
            .env_states()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.app == self.app())
            .collect();
        // What runs, what a failed gate goes back to, and what the health
        // guard would roll what runs back to.
        let guard_targets: Vec<String> = states
            .iter()
            .filter_map(|s| s.current_release.as_deref())
            .filter_map(|c| super::guard::guard_target(&self.shared, self.app(), c))
            .map(|r| r.id)
            .collect();
        let in_use: Vec<String> = states
            .into_iter()
            .flat_map(|s| [s.current_release, s.last_good_release])
            .flatten()
            .chain(guard_targets)
            .collect();
        for old in releases.iter().skip(self.desired.app.keep_releases) {
            if in_use.contains(&old.id) {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(&old.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(release = %old.id, error = %e, "could not remove an old release");
                continue;
            }
            let _ = journal.mark_release_removed(&old.id);
            tracing::info!(app = %self.app(), release = %old.id, "removed old release");
        }
    }
}

/// Put `env` back on `target` (or stop it if there is none, or if it can no
/// longer start), then check its health once more. Ok if the environment
/// now runs `target`; otherwise why not, for the deployment's reason.
pub(super) async fn rollback(
    shared: &Arc<Shared>,
    desired: &Desired,
    env: &EnvConfig,
    failed: &ReleaseRef,
    target: Option<&ReleaseRef>,
    deployment: Option<i64>,
) -> Result<(), String> {
    let app = &desired.app.name;
    let journal = &shared.journal;
    let stop = |why: String| async move {
        tracing::warn!(app = %app, env = %env.name, "{why}: stopping the environment");
        let _ = journal.set_current_release(app, &env.name, None, deployment, "stopped");
        let _ = shared.supervisor.stop(app, &env.name).await;
        Err(format!("{why}; {} was stopped", env.name))
    };
    let Some(target) = target.filter(|t| t.id != failed.id) else {
        return stop("no earlier good release".to_string()).await;
    };
    // Never record (or report) a rollback to a release that cannot run:
    // its directory or binary may have been deleted under the agent.
    if let Err(why) = startable(shared, app, env, target) {
        return stop(format!(
            "the last good release {} cannot start: {why}",
            target.id
        ))
        .await;
    }
    // The target becomes the last good release in the same transaction
    // (it passed its gates before): see `Journal::roll_back_to`.
    if let Err(e) = journal.roll_back_to(app, &env.name, &target.id, deployment, "rolled-back") {
        tracing::error!(error = %e, "could not record the rollback; not acting on it");
        return Err(format!(
            "could not record the rollback, so it was not done: {e}"
        ));
    }
    tracing::warn!(app = %app, env = %env.name, from = %failed.id, to = %target.id, "rolling back");
    if !env.on_rollback.is_empty() {
        // The failed release stops first: a restore must not race it.
        if env.run.is_some() {
            let _ = shared.supervisor.stop(app, &env.name).await;
        }
        for (i, step) in env.on_rollback.iter().enumerate() {
            let outcome = run_step_as(
                shared,
                desired,
                deployment,
                Some(env),
                (StepKind::Rollback, "on-rollback"),
                step,
                target,
                Some(failed),
                1,
            )
            .await;
            if let Err(e) = outcome.result {
                tracing::error!(app = %app, env = %env.name, error = %e,
                    "on_rollback[{i}] ({}) failed; going on with the rollback", step.plugin);
            }
        }
    }
    // The rollback step returns from `failed` to `target`; without one, the
    // deploy step re-activates `target`.
    let reactivate = match (&env.rollback, &env.deploy) {
        (Some(step), _) => Some((StepKind::Rollback, step, failed, target)),
        (None, Some(deploy)) => Some((StepKind::Deploy, deploy, target, failed)),
        (None, None) => None,
    };
    if let Some((kind, step, release, previous)) = reactivate {
        let outcome = run_step(
            shared,
            desired,
            deployment,
            Some(env),
            kind,
            step,
            release,
            Some(previous),
            1,
        )
        .await;
        if let Err(e) = outcome.result {
            tracing::error!(app = %app, env = %env.name, step = %kind, error = %e, "rollback step failed");
        }
    }
    if let Some(run) = &env.run {
        let spec = run_spec(&shared.state_dir, app, env, run, target);
        if let Err(e) = shared
            .supervisor
            .start(app, &env.name, &target.id, spec)
            .await
        {
            return stop(format!(
                "could not restart the last good release {}: {e}",
                target.id
            ))
            .await;
        }
    }
    if let Some(health) = &env.health {
        let deadline = Instant::now() + health.bake;
        let mut passes = 0;
        let mut attempt = 0;
        while passes < health.healthy_after && Instant::now() < deadline {
            attempt += 1;
            let outcome = run_step(
                shared,
                desired,
                deployment,
                Some(env),
                StepKind::HealthCheck,
                &health.step,
                target,
                None,
                attempt,
            )
            .await;
            if matches!(
                outcome.result,
                Ok(StepValue::Health {
                    status: Health::Healthy,
                    ..
                })
            ) {
                passes += 1;
            } else {
                passes = 0;
            }
            if passes < health.healthy_after {
                tokio::time::sleep(health.interval).await;
            }
        }
        if passes >= health.healthy_after {
            tracing::info!(app = %app, env = %env.name, release = %target.id, "rolled back and healthy");
        } else {
            tracing::error!(app = %app, env = %env.name, release = %target.id, "rolled back, but the last good release is not healthy either");
        }
    }
    Ok(())
}

/// Whether `release` could run in `env` now: its directory is there and,
/// for a supervised app, its command is an executable file in it.
pub(super) fn startable(
    shared: &Shared,
    app: &str,
    env: &EnvConfig,
    release: &ReleaseRef,
) -> Result<(), String> {
    if !release.dir.is_dir() {
        return Err(format!("its directory {} is gone", release.dir.display()));
    }
    if let Some(run) = &env.run {
        let spec = run_spec(&shared.state_dir, app, env, run, release);
        shared
            .supervisor
            .check(app, &env.name, &spec)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Run one step of a plugin and journal it (start, end, outcome, logs).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_step(
    shared: &Shared,
    desired: &Desired,
    deployment: Option<i64>,
    env: Option<&EnvConfig>,
    kind: StepKind,
    step: &StepConfig,
    release: &ReleaseRef,
    previous: Option<&ReleaseRef>,
    attempt: u32,
) -> StepOutcome {
    let label = (kind, kind.as_str());
    run_step_as(
        shared, desired, deployment, env, label, step, release, previous, attempt,
    )
    .await
}

/// [`run_step`], journaled and measured under `label.1` (`pre-deploy`,
/// `on-rollback`) while the plugin is called as kind `label.0`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_step_as(
    shared: &Shared,
    desired: &Desired,
    deployment: Option<i64>,
    env: Option<&EnvConfig>,
    (kind, label): (StepKind, &str),
    step: &StepConfig,
    release: &ReleaseRef,
    previous: Option<&ReleaseRef>,
    attempt: u32,
) -> StepOutcome {
    let prepared = match prepare_step(
        desired,
        deployment,
        env,
        (kind, label),
        step,
        release,
        previous,
        attempt,
    ) {
        Ok(prepared) => prepared,
        Err(outcome) => return outcome,
    };
    let step_id = deployment.and_then(|d| {
        shared
            .journal
            .start_step(
                d,
                env.map(|e| e.name.as_str()),
                label,
                &step.plugin,
                attempt,
            )
            .map_err(|e| tracing::error!(error = %e, "could not journal a step"))
            .ok()
    });
    let outcome = run_prepared(shared, &prepared).await;
    if let Some(step_id) = step_id {
        finish_step(&shared.journal, step_id, &outcome);
    }
    outcome
}

/// A step ready to run: its plugin and the request [`run_step_as`] makes
/// for it. The health guard keeps one per environment and release, so a
/// check every second does not rebuild it.
pub(super) struct PreparedStep {
    plugin: Arc<Plugin>,
    /// Health checks of a `warm` plugin reuse an instance.
    warm: bool,
    request: StepRequest,
    /// Looked up at the first run instead of at every one: the warm slot,
    /// and the metrics a passing health check counts in.
    slot: std::sync::OnceLock<super::WarmSlot>,
    passed: std::sync::OnceLock<(
        prometheus_client::metrics::histogram::Histogram,
        prometheus_client::metrics::counter::Counter,
    )>,
}

/// The request of a step, or the outcome of a step that cannot run (its
/// plugin is not loaded).
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare_step(
    desired: &Desired,
    deployment: Option<i64>,
    env: Option<&EnvConfig>,
    (kind, label): (StepKind, &str),
    step: &StepConfig,
    release: &ReleaseRef,
    previous: Option<&ReleaseRef>,
    attempt: u32,
) -> Result<PreparedStep, StepOutcome> {
    let app = &desired.app.name;
    let env_name = env.map(|e| e.name.clone());
    let (Some(plugin), Some(plugin_cfg)) = (
        desired.plugins.get(&step.plugin),
        desired.config.plugins.get(&step.plugin),
    ) else {
        return Err(StepOutcome {
            result: Err(StepError::Setup(format!(
                "plugin `{}` is not loaded",
                step.plugin
            ))),
            logs: Vec::new(),
            duration: Duration::ZERO,
        });
    };
    let mut grants = plugin_cfg.grants.clone();
    grants.dirs.push(DirGrant {
        path: release.dir.clone(),
        write: kind == StepKind::Build,
    });
    let default_timeout = if kind == StepKind::Build {
        BUILD_TIMEOUT
    } else {
        STEP_TIMEOUT
    };
    let limits = Limits {
        wall_time: step
            .timeout
            .or(plugin_cfg.timeout)
            .unwrap_or(default_timeout),
        memory_bytes: plugin_cfg.memory.unwrap_or(Limits::default().memory_bytes),
        ..Limits::default()
    };
    let request = StepRequest {
        kind,
        input: StepInput::Step(StepContext {
            app: app.clone(),
            environment: env_name.clone(),
            release: release.clone(),
            previous_release: previous.cloned(),
            params: step.params.clone(),
            attempt,
        }),
        grants,
        limits,
        // Exactly the plugin's granted secrets; redaction of all of them.
        secrets: desired.config.step_secrets(&plugin_cfg.grants.secrets),
        redactor: desired.config.redactor(),
        labels: StepLabels {
            plugin: step.plugin.clone(),
            kind: label.to_string(),
            app: app.clone(),
            environment: env_name.unwrap_or_default(),
            deployment: deployment.map(|d| d.to_string()).unwrap_or_default(),
        },
    };
    Ok(PreparedStep {
        plugin: plugin.clone(),
        warm: kind == StepKind::HealthCheck && plugin_cfg.warm,
        request,
        slot: Default::default(),
        passed: Default::default(),
    })
}

/// Run a prepared step: log it, count it in /metrics and, for a health
/// check, keep it as the environment's latest.
pub(super) async fn run_prepared(shared: &Shared, prepared: &PreparedStep) -> StepOutcome {
    let PreparedStep {
        plugin,
        warm,
        request,
        slot,
        passed,
    } = prepared;
    let labels = &request.labels;
    let outcome = if *warm {
        // One warm instance per (app, environment): checks every
        // `interval` do not pay instantiation (see `Plugin::run_warm`).
        let slot = slot.get_or_init(|| shared.warm_slot(&labels.app, &labels.environment));
        let mut slot = slot.lock().await;
        plugin.run_warm(&mut slot, request).await
    } else {
        plugin.run(request).await
    };
    log_outcome(plugin, request, &outcome);
    let (result_word, message) = describe(&outcome);
    let metrics = crate::metrics::metrics();
    let health = request.kind == StepKind::HealthCheck;
    if health && result_word == "healthy" {
        let (took, checks) = passed.get_or_init(|| {
            (
                metrics.step_metric(&labels.kind, &labels.plugin, result_word),
                metrics.health_metric(&labels.app, &labels.environment, result_word),
            )
        });
        took.observe(outcome.duration.as_secs_f64());
        checks.inc();
    } else {
        metrics.step(&labels.kind, &labels.plugin, result_word, outcome.duration);
        if health {
            metrics.health(&labels.app, &labels.environment, result_word);
        }
    }
    if health {
        shared.record_health(&labels.app, &labels.environment, result_word, &message);
    }
    outcome
}

/// Journal how a step ended: its result word, message and logs.
pub(super) fn finish_step(journal: &Journal, step_id: i64, outcome: &StepOutcome) {
    let (result, message) = describe(outcome);
    let logs: Vec<LogRecord> = outcome
        .logs
        .iter()
        .map(|l| LogRecord {
            at: l
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            level: format!("{:?}", l.level).to_lowercase(),
            source: format!("{:?}", l.source).to_lowercase(),
            message: l.message.clone(),
            fields: l.fields.clone(),
        })
        .collect();
    if let Err(e) = journal.finish_step(step_id, result, &message, &logs) {
        tracing::error!(error = %e, "could not journal a step result");
    }
}

/// (outcome word, message) for the journal.
pub(super) fn describe(outcome: &StepOutcome) -> (&'static str, String) {
    match &outcome.result {
        Ok(StepValue::Health {
            status: Health::Healthy,
            message,
        }) => ("healthy", message.clone()),
        Ok(StepValue::Health {
            status: Health::Unhealthy,
            message,
        }) => ("unhealthy", message.clone()),
        Ok(StepValue::Health {
            status: Health::Unknown,
            message,
        }) => ("unknown", message.clone()),
        Ok(StepValue::Passed { report }) => ("ok", report.clone()),
        Ok(StepValue::Artifact { dir, .. }) => ("ok", format!("artifact {dir}")),
        Ok(StepValue::Done) => ("ok", String::new()),
        Err(StepError::Failed(m)) => ("failed", m.clone()),
        Err(e @ StepError::Timeout(_)) => ("timeout", e.to_string()),
        Err(e @ StepError::ResourceLimit(_)) => ("limit", e.to_string()),
        Err(e @ StepError::Trap(_)) => ("trap", e.to_string()),
        Err(e) => ("error", e.to_string()),
    }
}

pub(super) fn log_outcome(plugin: &Plugin, request: &StepRequest, outcome: &StepOutcome) {
    let (result, message) = describe(outcome);
    let l = &request.labels;
    // The health guard's routine passes (no deployment; every `interval`
    // for every environment: 400 lines a second for 200 apps) are debug;
    // they are counted in /metrics and the latest shows in `slipway status`.
    if l.deployment.is_empty() && result == "healthy" {
        tracing::debug!(
            app = %l.app, env = %l.environment, step = %l.kind, plugin = %plugin.info().name,
            result, took_ms = outcome.duration.as_millis() as u64,
            "{}", message.lines().next().unwrap_or("")
        );
        return;
    }
    tracing::info!(
        app = %l.app, env = %l.environment, deployment = %l.deployment, step = %l.kind,
        plugin = %plugin.info().name, result, took_ms = outcome.duration.as_millis() as u64,
        "{}", message.lines().next().unwrap_or("")
    );
}

/// The journal's record of a release, as a step sees it.
pub(super) fn release_ref(shared: &Shared, id: &str) -> Option<ReleaseRef> {
    let r = shared.journal.release(id).ok().flatten()?;
    Some(ReleaseRef {
        version: r.version,
        id: r.id,
        dir: PathBuf::from(r.dir),
    })
}

pub(super) fn log_file(state_dir: &Path, app: &str, env: &str) -> PathBuf {
    state_dir.join("logs").join(app).join(format!("{env}.log"))
}

/// How the supervisor runs `release` in `env`.
pub(super) fn run_spec(
    state_dir: &Path,
    app: &str,
    env: &EnvConfig,
    run: &crate::config::RunConfig,
    release: &ReleaseRef,
) -> RunSpec {
    let mut vars = run.env.clone();
    vars.insert("SLIPWAY_APP".into(), app.to_string());
    vars.insert("SLIPWAY_ENVIRONMENT".into(), env.name.clone());
    vars.insert("SLIPWAY_VERSION".into(), release.version.clone());
    vars.insert("SLIPWAY_RELEASE_ID".into(), release.id.clone());
    let cwd = match &run.cwd {
        Some(c) => release.dir.join(c),
        None => release.dir.clone(),
    };
    RunSpec {
        command: run.command.clone(),
        args: run.args.clone(),
        env: vars,
        cwd,
        log_file: log_file(state_dir, app, &env.name),
    }
}

/// Copy an app's source tree, leaving out build output and VCS data.
/// The app's source into the new release directory `dir`: a `path` is
/// copied; a `url` is downloaded (or found in `state_dir/downloads`),
/// verified and unpacked. Nothing is activated yet, so a failure here only
/// fails the deployment.
async fn place_source(
    state_dir: &Path,
    source: &crate::config::AppSource,
    dir: &Path,
) -> Result<(), String> {
    use crate::config::AppSource;
    match source {
        AppSource::Path(source) => {
            let (src, dst) = (source.clone(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || copy_dir(&src, &dst))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| {
                    format!(
                        "copying the source {} to {}: {e}",
                        source.display(),
                        dir.display()
                    )
                })
        }
        AppSource::Url { url, sha256 } => {
            let options = crate::artifact::FetchOptions::default();
            let downloads = state_dir.join("downloads");
            let fetched = crate::artifact::fetch(&downloads, url, sha256, &options)
                .await
                .map_err(|e| e.to_string())?;
            let (url, dst) = (url.clone(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || crate::artifact::unpack(&fetched.path, &url, &dst))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name == ".git" || name == ".slipway" {
            continue;
        }
        let ty = entry.file_type()?;
        let dest = to.join(&name);
        if ty.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
