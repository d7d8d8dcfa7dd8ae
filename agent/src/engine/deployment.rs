//! One deployment of one app, driven through the phases `machine.rs`
//! decides: this module does each phase's work (build, approval, steps,
//! activation, bake, rollback), journals it, and feeds back how it went.
//! It also decides whether a deployment is due at all ([`reconcile`]).

use super::bake::{self, BakeEnd, BakePolicy};
use super::desired::Desired;
use super::error::{BuildError, Cancelled, GateFailure};
use super::machine::{self, End, Event, Failure, Phase, Plan, Report};
use super::releases::{self, app_log, env_release, release_ref, run_spec};
use super::rollback::roll_back_env;
use super::shared::{Approval, PendingApproval, Shared, parallel_deployments};
use super::steps::{StepCall, Subject};
use super::switch;
use crate::config::{EnvConfig, StepConfig};
use crate::runtime::{ReleaseRef, StepOutcome, StepValue};
use crate::store::{DeploymentState, Release};
use crate::vocab::{EnvChange, NotifyState, StepRole};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

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
                "waiting for a deployment slot ({} run at once)", parallel_deployments());
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
    match DeploymentRun::start(shared.clone(), desired.clone(), hash, updates, turn) {
        Ok(mut d) => d.run().await,
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
struct DeploymentRun {
    shared: Arc<Shared>,
    desired: Desired,
    plan: Plan,
    hash: String,
    id: i64,
    /// Newer desired states of the app: one cancels a wait at a manual gate.
    updates: watch::Receiver<Option<Desired>>,
    /// The environment being promoted, for notifications.
    env: Option<String>,
    /// This deployment's turn among those running at once; given back
    /// while it waits at a manual gate.
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The release built, once it is.
    release: Option<ReleaseRef>,
    /// What the environment being promoted ran before it.
    previous: Option<ReleaseRef>,
}

impl DeploymentRun {
    fn start(
        shared: Arc<Shared>,
        desired: Desired,
        hash: String,
        updates: watch::Receiver<Option<Desired>>,
        turn: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Self, crate::store::StoreError> {
        let app = &desired.app;
        let id = shared.journal.start_deployment(
            &app.name,
            &app.version.to_string(),
            &hash,
            &app.spec_json(),
        )?;
        tracing::info!(app = %app.name, version = %app.version, deployment = id, "deployment started");
        let version = app.version.to_string();
        let message = format!("deploying {} {version}", app.name);
        shared
            .notifier
            .send(&desired, id, None, &version, NotifyState::Started, message);
        Ok(Self {
            plan: Plan::of(&desired.app),
            shared,
            desired,
            hash,
            id,
            updates,
            env: None,
            turn: Some(turn),
            release: None,
            previous: None,
        })
    }

    fn app(&self) -> &str {
        &self.desired.app.name
    }

    /// Each phase's work, then the machine's next phase, to the end.
    async fn run(&mut self) {
        let mut phase = Phase::Build;
        let end = loop {
            if let Phase::End(end) = phase {
                break end;
            }
            if let Some(i) = phase.env() {
                self.env = Some(self.plan.envs[i].name.clone());
            }
            let event = self.work(&phase).await;
            let (next, reports) = machine::next(&self.plan, phase, event);
            for report in reports {
                self.report(report);
            }
            phase = next;
        };
        self.end(end);
        // Failed releases count too: a bad afternoon must not fill the disk.
        releases::prune(&self.shared, self.app(), self.desired.app.keep_releases);
    }

    /// Do `phase`'s work and say how it went.
    async fn work(&mut self, phase: &Phase) -> Event {
        let gate = |r: Result<(), GateFailure>| match r {
            Ok(()) => Event::Passed,
            Err(g) => Event::Failed(Failure::Gate(g)),
        };
        match phase {
            Phase::Build => match self.build().await {
                Ok(release) => {
                    self.release = Some(release);
                    Event::Passed
                }
                Err(e) => Event::Failed(Failure::Build(e)),
            },
            Phase::Approve(i) => {
                let env = self.env_config(*i);
                // No turn is held while waiting for a person; a cancelled
                // deployment ends without taking one again.
                self.turn = None;
                match self.await_approval(&env).await {
                    Ok(()) => {
                        self.turn = self.shared.deploying.clone().acquire_owned().await.ok();
                        Event::Passed
                    }
                    Err(why) => Event::Cancelled(why),
                }
            }
            Phase::PreDeploy(i) => self.pre_deploy(&self.env_config(*i)).await,
            Phase::Activate(i) => gate(self.activate(&self.env_config(*i)).await),
            Phase::Smoke(i) => gate(self.smoke(&self.env_config(*i)).await),
            Phase::Bake(i) => gate(self.bake(&self.env_config(*i)).await),
            Phase::MarkGood(i) => gate(self.mark_good(&self.env_config(*i)).await),
            Phase::RollBack(i, _) => {
                let env = self.env_config(*i);
                let last_good = env_release(&self.shared, self.app(), &env.name, |s| {
                    s.last_good_release.clone()
                });
                let failed = self.release();
                let rolled_back = roll_back_env(
                    &self.shared,
                    &self.desired,
                    &env,
                    &failed,
                    last_good.as_ref(),
                    Some(self.id),
                )
                .await;
                match rolled_back {
                    Ok(()) => Event::Passed,
                    Err(why) => Event::Failed(Failure::Rollback(why)),
                }
            }
            Phase::End(_) => Event::Passed,
        }
    }

    fn env_config(&self, i: usize) -> EnvConfig {
        self.desired.app.environments[i].clone()
    }

    /// The release built; every phase after `Build` has one.
    fn release(&self) -> ReleaseRef {
        self.release
            .clone()
            .expect("phases after Build have a release")
    }

    fn report(&self, report: Report) {
        match report {
            Report::Outcome { env, outcome } => {
                let env = env.map_or("build", |i| self.plan.envs[i].name.as_str());
                crate::metrics::metrics().deployment(self.app(), env, outcome);
            }
            Report::Promoted(i) => {
                let (release, env) = (self.release(), &self.plan.envs[i].name);
                self.notify(
                    NotifyState::Promoted,
                    format!("{} passed its gates in {env}", release.id),
                );
            }
        }
    }

    /// Journal the end; a failure is pinned with it, so an automatic
    /// rollback never turns into a redeploy loop.
    fn end(&mut self, end: End) {
        let (state, reason) = match end {
            End::Succeeded => {
                self.finish(DeploymentState::Succeeded, None);
                let release = self.release();
                tracing::info!(app = %self.app(), version = %release.version, deployment = self.id, "deployment succeeded");
                self.env = None;
                self.notify(
                    NotifyState::Succeeded,
                    format!("{} runs everywhere", release.id),
                );
                return;
            }
            End::Cancelled(why) => {
                let reason = why.to_string();
                // Not pinned: nothing failed; the next config change or
                // agent start asks again.
                tracing::warn!(app = %self.app(), deployment = self.id, reason = %reason, "deployment cancelled");
                self.finish(DeploymentState::Cancelled, Some(&reason));
                self.notify(NotifyState::Cancelled, reason);
                return;
            }
            End::Failed(e) => (DeploymentState::Failed, e.to_string()),
            End::RolledBack(e) => (DeploymentState::RolledBack, e.to_string()),
        };
        tracing::warn!(app = %self.app(), deployment = self.id, state = %state, reason = %reason, "deployment failed");
        // The end and the pin together: an ended, unpinned failure would
        // be deployed again by the next start.
        if let Err(e) = self
            .shared
            .journal
            .finish_deployment_pinned(self.id, state, &reason, &self.hash)
        {
            tracing::error!(deployment = self.id, error = %e, "could not record the end of the deployment and pin the failed version");
        }
        let rolled_back = state == DeploymentState::RolledBack;
        self.notify(NotifyState::after_rollback(rolled_back), reason);
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

    /// Tell the app's `notify` steps, in the background.
    fn notify(&self, state: NotifyState, message: impl Into<String>) {
        let version = self.desired.app.version.to_string();
        let env = self.env.as_deref();
        let desired = &self.desired;
        let notifier = &self.shared.notifier;
        notifier.send(desired, self.id, env, &version, state, message);
    }

    /// Run a step of this deployment on the new release.
    async fn step(
        &self,
        env: Option<&EnvConfig>,
        role: StepRole,
        step: &StepConfig,
        attempt: u32,
    ) -> StepOutcome {
        let release = self.release();
        let port =
            env.and_then(|e| switch::port_of(&self.shared, self.app(), &e.name, &release.id));
        let call = StepCall {
            desired: &self.desired,
            deployment: Some(self.id),
            env: env.map(|e| e.name.as_str()),
            role,
            step,
            on: Subject::Release {
                release: &release,
                previous: self.previous.as_ref(),
                attempt,
                port,
            },
        };
        self.shared.steps.run(&call).await
    }

    /// Put the source into a new release dir (copied, or downloaded and
    /// unpacked) and run the build step there.
    async fn build(&mut self) -> Result<ReleaseRef, BuildError> {
        let app = &self.desired.app;
        let id = format!("{}-{}", app.version, self.id);
        let dir = self
            .shared
            .state_dir
            .join("releases")
            .join(&app.name)
            .join(&id);
        let limits = crate::artifact::UnpackLimits {
            max_bytes: self.desired.config.agent.max_release_bytes,
            ..Default::default()
        };
        if let Err(e) =
            releases::place_source(&self.shared.state_dir, &app.source, &dir, limits).await
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| BuildError::Source(format!("{}: {e}", dir.display())))?;
        self.release = Some(ReleaseRef {
            version: app.version.to_string(),
            id: id.clone(),
            dir: dir.clone(),
        });
        let mut artifact_dir = dir.clone();
        if let Some(step) = app.build.clone() {
            let outcome = self.step(None, StepRole::Build, &step, 1).await;
            match outcome.result {
                Ok(StepValue::Artifact { dir: a, .. }) => artifact_dir = PathBuf::from(a),
                Ok(other) => return Err(BuildError::NotAnArtifact(format!("{other:?}"))),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(BuildError::Step(e));
                }
            }
        }
        let app = &self.desired.app;
        let record = Release {
            id: id.clone(),
            app: app.name.clone(),
            version: app.version.to_string(),
            dir: dir.display().to_string(),
            artifact_dir: artifact_dir.display().to_string(),
            created_at: crate::store::now_ms(),
        };
        self.shared.journal.record_release(&record)?;
        self.shared.journal.set_deployment_release(self.id, &id)?;
        Ok(self.release())
    }

    /// Wait at `env`'s manual gate for `slipway approve`; cancelled by the
    /// gate's timeout or by a newer config for the app (`Err`: why, as the
    /// cancelled deployment's reason).
    async fn await_approval(&mut self, env: &EnvConfig) -> Result<(), Cancelled> {
        let release = self.release();
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
            NotifyState::WaitingApproval,
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
            () = timeout => Err(Cancelled::NotApproved {
                env: env.name.clone(),
                within: env.approval_timeout.unwrap_or_default(),
            }),
            _ = self.updates.changed() => Err(Cancelled::Superseded { env: env.name.clone() }),
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
    async fn pre_deploy(&mut self, env: &EnvConfig) -> Event {
        self.previous = env_release(&self.shared, self.app(), &env.name, |s| {
            s.current_release.clone()
        });
        for (index, step) in env.pre_deploy.iter().enumerate() {
            let outcome = self.step(Some(env), StepRole::PreDeploy, step, 1).await;
            if let Err(error) = outcome.result {
                let plugin = step.plugin.clone();
                return Event::Failed(Failure::PreDeploy {
                    index,
                    plugin,
                    error,
                });
            }
        }
        Event::Passed
    }

    /// Point `env` at the release, then the deploy plugin and the
    /// supervised process.
    async fn activate(&mut self, env: &EnvConfig) -> Result<(), GateFailure> {
        let release = self.release();
        self.previous = env_release(&self.shared, self.app(), &env.name, |s| {
            s.current_release.clone()
        });
        self.shared.journal.set_current_release(
            self.app(),
            &env.name,
            Some(&release.id),
            Some(self.id),
            EnvChange::Activating,
        )?;
        if let Some(deploy) = &env.deploy {
            let outcome = self.step(Some(env), StepRole::Deploy, deploy, 1).await;
            outcome.result.map_err(GateFailure::Deploy)?;
        }
        match (&env.run, &env.traffic) {
            (Some(run), Some(traffic)) => {
                // Beside the release serving, which keeps the traffic.
                switch::start_beside(&self.shared, self.app(), env, run, traffic, &release)
                    .await
                    .map_err(|why| {
                        GateFailure::Start(format!(
                            "{why}{}",
                            app_log(&self.shared, self.app(), env)
                        ))
                    })?;
            }
            (Some(run), None) => {
                let spec = run_spec(&self.shared.state_dir, self.app(), env, run, &release);
                self.shared
                    .supervisor
                    .start(self.app(), &env.name, &release.id, spec)
                    .await
                    .map_err(|e| GateFailure::Start(e.to_string()))?;
            }
            (None, _) => {}
        }
        Ok(())
    }

    async fn smoke(&self, env: &EnvConfig) -> Result<(), GateFailure> {
        let smoke = env.smoke.as_ref().expect("the plan has a smoke test");
        let outcome = self.step(Some(env), StepRole::SmokeTest, smoke, 1).await;
        outcome
            .result
            .map(|_| ())
            .map_err(|error| GateFailure::Smoke {
                error,
                app_log: app_log(&self.shared, self.app(), env),
            })
    }

    /// Health checks every `interval` for `bake` (see `bake.rs`).
    async fn bake(&self, env: &EnvConfig) -> Result<(), GateFailure> {
        let health = env.health.as_ref().expect("the plan has a health check");
        let release = self.release();
        let port = switch::port_of(&self.shared, self.app(), &env.name, &release.id);
        let call = |attempt| StepCall {
            desired: &self.desired,
            deployment: Some(self.id),
            env: Some(&env.name),
            role: StepRole::HealthCheck,
            step: &health.step,
            on: Subject::Release {
                release: &release,
                previous: self.previous.as_ref(),
                attempt,
                port,
            },
        };
        let end = bake::bake(&self.shared.steps, BakePolicy::gate(health), call).await;
        let app_log = || app_log(&self.shared, self.app(), env);
        match end {
            BakeEnd::Healthy => Ok(()),
            BakeEnd::Unhealthy { failures, last } => Err(GateFailure::Unhealthy {
                failures,
                last,
                app_log: app_log(),
            }),
            BakeEnd::NotHealthy { passes, last } => Err(GateFailure::NotHealthy {
                bake_ms: health.bake.as_millis(),
                passes,
                needed: health.healthy_after,
                last,
                app_log: app_log(),
            }),
        }
    }

    async fn mark_good(&self, env: &EnvConfig) -> Result<(), GateFailure> {
        let release = self.release();
        if let Some(traffic) = &env.traffic {
            // Gates passed: the release takes the traffic now, and the one
            // switched away from drains (and waits out `keep_previous`).
            let port = switch::port_of(&self.shared, self.app(), &env.name, &release.id)
                .ok_or_else(|| {
                    GateFailure::Switch("the release's process is not running".into())
                })?;
            let stable = switch::serving_backend(&self.shared, self.app(), &env.name)
                .await
                .filter(|(serving, _)| *serving != release.id);
            if let (Some(canary), Some((stable, stable_port))) = (&traffic.canary, stable) {
                let judged = switch::canary(
                    &self.shared,
                    self.app(),
                    env,
                    canary,
                    (&stable, stable_port),
                    (&release.id, port),
                )
                .await;
                match judged {
                    Ok(summary) => {
                        tracing::info!(app = %self.app(), env = %env.name, "{summary}");
                    }
                    Err(summary) => return Err(GateFailure::Canary(summary)),
                }
            }
            switch::switch(&self.shared, self.app(), env, &release.id, port)
                .await
                .map_err(GateFailure::Switch)?;
            switch::retire_others(
                &self.shared,
                self.app(),
                env,
                &release.id,
                traffic.keep_previous,
            );
        }
        self.shared
            .journal
            .set_last_good_release(self.app(), &env.name, &release.id)?;
        tracing::info!(app = %self.app(), env = %env.name, release = %release.id, "environment healthy");
        Ok(())
    }
}
