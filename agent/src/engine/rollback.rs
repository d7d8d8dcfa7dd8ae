//! Rollback: the one way an environment goes back to a good release,
//! whoever asks for it.
//!
//! - A failed gate (`deployment.rs`) rolls back within its own deployment,
//!   to the environment's last good release.
//! - The health guard (`guard.rs` notices, [`after_guard`] acts) rolls a
//!   settled environment back to the release of the last deployment that
//!   succeeded before, journaled as a deployment of its own.
//! - An operator (`slipway rollback`, [`for_operator`]) names the version,
//!   or takes the last good release; also a deployment of its own.
//!
//! All three go through [`roll_back_env`], which journals the switch before
//! acting, runs `on_rollback` and the rollback (or deploy) step, restarts
//! the target, and checks its health once more. With nothing good to go
//! back to, the environment is stopped rather than left on a release known
//! to be bad. The (version, config) rolled back from is pinned, so the
//! reconciler does not deploy it straight back.

use super::bake::{self, BakeEnd, BakePolicy};
use super::desired::Desired;
use super::error::{CheckResult, EngineError, RollbackError, StopCause};
use super::guard::Unhealthy;
use super::releases::{guard_target, release_ref, run_spec, startable};
use super::shared::Shared;
use super::steps::{StepCall, Subject};
use super::switch;
use crate::config::EnvConfig;
use crate::runtime::ReleaseRef;
use crate::store::DeploymentState;
use crate::vocab::{EnvChange, EnvOutcome, NotifyState, StepRole};
use std::fmt;
use std::sync::Arc;

/// Put `env` back on `target` (or stop it if there is none, or if it can no
/// longer start), then check its health once more. Ok if the environment
/// now runs `target`.
pub(super) async fn roll_back_env(
    shared: &Arc<Shared>,
    desired: &Desired,
    env: &EnvConfig,
    failed: &ReleaseRef,
    target: Option<&ReleaseRef>,
    deployment: Option<i64>,
) -> Result<(), RollbackError> {
    let app = &desired.app.name;
    let journal = &shared.journal;
    let stop = |why: StopCause| async move {
        tracing::warn!(app = %app, env = %env.name, "{why}: stopping the environment");
        let _ = journal.set_current_release(app, &env.name, None, deployment, EnvChange::Stopped);
        let _ = shared.supervisor.stop(app, &env.name).await;
        if env.traffic.is_some() {
            switch::clear(shared, app, env).await;
        }
        Err(RollbackError::Stopped {
            env: env.name.clone(),
            why,
        })
    };
    let Some(target) = target.filter(|t| t.id != failed.id) else {
        return stop(StopCause::NoGoodRelease).await;
    };
    // Never record (or report) a rollback to a release that cannot run:
    // its directory or binary may have been deleted under the agent.
    if let Err(why) = startable(shared, app, env, target) {
        let (release, why) = (target.id.clone(), why.to_string());
        return stop(StopCause::CannotStart { release, why }).await;
    }
    // The target becomes the last good release in the same transaction
    // (it passed its gates before): see `Journal::roll_back_to`.
    if let Err(e) = journal.roll_back_to(app, &env.name, &target.id, deployment) {
        tracing::error!(error = %e, "could not record the rollback; not acting on it");
        return Err(RollbackError::NotRecorded(e));
    }
    tracing::warn!(app = %app, env = %env.name, from = %failed.id, to = %target.id, "rolling back");
    let call = |role, step, release, previous| StepCall {
        desired,
        deployment,
        env: Some(&env.name),
        role,
        step,
        on: Subject::Release {
            release,
            previous: Some(previous),
            attempt: 1,
            port: switch::port_of(shared, app, &env.name, &release.id),
        },
    };
    if !env.on_rollback.is_empty() {
        // The failed release stops first: a restore must not race it.
        if env.run.is_some() {
            let _ = shared
                .supervisor
                .stop_release(app, &env.name, &failed.id)
                .await;
        }
        for (i, step) in env.on_rollback.iter().enumerate() {
            let outcome = shared
                .steps
                .run(&call(StepRole::OnRollback, step, target, failed))
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
        (Some(step), _) => Some(call(StepRole::Rollback, step, failed, target)),
        (None, Some(deploy)) => Some(call(StepRole::Deploy, deploy, target, failed)),
        (None, None) => None,
    };
    if let Some(reactivate) = reactivate {
        let outcome = shared.steps.run(&reactivate).await;
        if let Err(e) = outcome.result {
            tracing::error!(app = %app, env = %env.name, step = %reactivate.role, error = %e, "rollback step failed");
        }
    }
    match (&env.run, &env.traffic) {
        (Some(run), Some(traffic)) => {
            // Still running (within `keep_previous`): a switch back.
            // Otherwise it starts beside the failed release, which serves
            // until the target listens.
            let running = shared
                .supervisor
                .status_of(app, &env.name, &target.id)
                .filter(|s| s.pid.is_some())
                .and_then(|s| s.port);
            let port = match running {
                Some(port) => Ok(port),
                None => switch::start_beside(shared, app, env, run, traffic, target).await,
            };
            let switched = match port {
                Ok(port) => switch::switch(shared, app, env, &target.id, port).await,
                Err(why) => Err(why),
            };
            if let Err(why) = switched {
                let release = target.id.clone();
                return stop(StopCause::RestartFailed { release, why }).await;
            }
            switch::retire_others(shared, app, env, &target.id, std::time::Duration::ZERO);
        }
        (Some(run), None) => {
            let spec = run_spec(&shared.state_dir, app, env, run, target);
            if let Err(e) = shared
                .supervisor
                .start(app, &env.name, &target.id, spec)
                .await
            {
                let (release, why) = (target.id.clone(), e.to_string());
                return stop(StopCause::RestartFailed { release, why }).await;
            }
        }
        (None, _) => {}
    }
    if let Some(health) = &env.health {
        let port = switch::port_of(shared, app, &env.name, &target.id);
        let check = |attempt| StepCall {
            desired,
            deployment,
            env: Some(&env.name),
            role: StepRole::RollbackCheck,
            step: &health.step,
            on: Subject::Release {
                release: target,
                previous: None,
                attempt,
                port,
            },
        };
        let end = bake::bake(&shared.steps, BakePolicy::recheck(health), check).await;
        if end == BakeEnd::Healthy {
            tracing::info!(app = %app, env = %env.name, release = %target.id, "rolled back and healthy");
        } else {
            tracing::error!(app = %app, env = %env.name, release = %target.id, "rolled back, but the last good release is not healthy either");
        }
    }
    Ok(())
}

/// Why a rollback that is a deployment of its own was made: the first line
/// of its reason.
enum Cause {
    Unhealthy {
        env: String,
        failures: u32,
        last: CheckResult,
    },
    Operator {
        env: String,
        from: ReleaseRef,
        to: ReleaseRef,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Unhealthy {
                env,
                failures,
                last,
            } => write!(
                f,
                "{env}: turned unhealthy after promotion: {failures} consecutive failed health checks; last: {last}"
            ),
            Cause::Operator { env, from, to } => write!(
                f,
                "{env}: rolled back by an operator from {} ({}) to {} ({})",
                from.version, from.id, to.version, to.id
            ),
        }
    }
}

/// The reason a rollback deployment ends with: its cause, and why it did
/// not work if it did not.
fn reason(cause: &Cause, outcome: &Result<(), RollbackError>) -> String {
    match (cause, outcome) {
        (_, Ok(())) => cause.to_string(),
        (Cause::Unhealthy { .. }, Err(why)) => format!("{cause}\nnot rolled back: {why}"),
        (Cause::Operator { .. }, Err(why)) => format!("{cause}: could not be rolled back: {why}"),
    }
}

/// A rollback journaled as a deployment of its own (guard or operator).
struct OwnRollback<'a> {
    shared: &'a Arc<Shared>,
    desired: &'a Desired,
    env: EnvConfig,
    failed: ReleaseRef,
    target: Option<ReleaseRef>,
    cause: Cause,
    /// The spec the config asks for (`AppConfig::spec_hash`).
    hash: String,
    /// Whether the (version, config) rolled back from is that spec, and so
    /// is pinned.
    pins: bool,
}

impl OwnRollback<'_> {
    /// Journal its start (pinned before acting, in one transaction, if it
    /// pins: an agent that dies mid-rollback must not redeploy it).
    fn begin(&self) -> Result<i64, crate::store::StoreError> {
        let app = &self.desired.app;
        let reason = self.cause.to_string();
        self.shared.journal.start_rollback(
            &app.name,
            &self.failed.version,
            &self.hash,
            &app.spec_json(),
            &self.failed.id,
            self.pins.then_some(reason.as_str()),
        )
    }

    /// Act, then journal the end (re-pinned with the final reason),
    /// count it and notify.
    async fn run(self, id: i64) -> String {
        let Self {
            shared,
            desired,
            env,
            failed,
            target,
            cause,
            hash,
            pins,
        } = self;
        let app = &desired.app.name;
        let outcome =
            roll_back_env(shared, desired, &env, &failed, target.as_ref(), Some(id)).await;
        let rolled_back = outcome.is_ok();
        let state = if rolled_back {
            DeploymentState::RolledBack
        } else {
            DeploymentState::Failed
        };
        let reason = reason(&cause, &outcome);
        let metrics = crate::metrics::metrics();
        metrics.deployment(app, &env.name, EnvOutcome::after_rollback(rolled_back));
        let journal = &shared.journal;
        let _ = if pins {
            journal.finish_deployment_pinned(id, state, &reason, &hash)
        } else {
            journal.finish_deployment(id, state, Some(&reason))
        };
        let notice = NotifyState::after_rollback(rolled_back);
        let notifier = &shared.notifier;
        notifier.send(
            desired,
            id,
            Some(&env.name),
            &failed.version,
            notice,
            &reason,
        );
        reason
    }
}

/// Roll an environment that turned unhealthy back to the release of the
/// last deployment that succeeded before, journaled as its own deployment.
pub(super) async fn after_guard(shared: &Arc<Shared>, desired: &Desired, unhealthy: Unhealthy) {
    let Unhealthy {
        env,
        release,
        failures,
        last,
    } = unhealthy;
    let Some(failed) = release_ref(shared, &release) else {
        return;
    };
    let rollback = OwnRollback {
        shared,
        desired,
        target: guard_target(shared, &desired.app.name, &release),
        cause: Cause::Unhealthy {
            env: env.name.clone(),
            failures,
            last,
        },
        env,
        failed,
        hash: desired.app.spec_hash(),
        pins: true,
    };
    let id = match rollback.begin() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot journal the automatic rollback; not acting");
            return;
        }
    };
    let env = rollback.env.name.clone();
    let reason = rollback.run(id).await;
    tracing::warn!(app = %desired.app.name, env = %env, deployment = id, "{reason}");
}

/// An operator's rollback (`POST …/rollback`, `slipway rollback`): put
/// `env` on the release of version `to`, or on its last good release, as a
/// deployment of its own. The replaced (version, config) is pinned like an
/// automatic rollback, so the reconciler does not put it straight back.
/// `reply` gets the deployment id as soon as it is journaled.
pub(super) async fn for_operator(
    shared: &Arc<Shared>,
    desired: &Desired,
    env_name: &str,
    to: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<i64, EngineError>>,
) {
    let plan = match plan(shared, desired, env_name, to.as_deref()) {
        Ok(plan) => plan,
        Err(e) => {
            let _ = reply.send(Err(e));
            return;
        }
    };
    let Plan {
        env,
        failed,
        target,
        failed_spec,
    } = plan;
    let hash = desired.app.spec_hash();
    let rollback = OwnRollback {
        shared,
        desired,
        cause: Cause::Operator {
            env: env.name.clone(),
            from: failed.clone(),
            to: target.clone(),
        },
        env,
        failed,
        target: Some(target),
        // Pin what the config asks for only if that is what is rolled back.
        pins: failed_spec.as_deref() == Some(hash.as_str()),
        hash,
    };
    let id = match rollback.begin() {
        Ok(id) => id,
        Err(e) => {
            let _ = reply.send(Err(EngineError::Internal(format!(
                "cannot journal the rollback; not acting: {e}"
            ))));
            return;
        }
    };
    let _ = reply.send(Ok(id));
    let (app, env) = (&desired.app.name, &rollback.env.name);
    tracing::warn!(app = %app, env = %env, deployment = id, "{}", rollback.cause);
    rollback.run(id).await;
}

/// What an operator's rollback will do.
struct Plan {
    env: EnvConfig,
    /// The release the environment runs.
    failed: ReleaseRef,
    /// The release it goes to.
    target: ReleaseRef,
    /// The spec hash of the deployment that built `failed`.
    failed_spec: Option<String>,
}

/// The operator's rollback of `env_name` to `to`, or why not. Refused
/// before anything is stopped: what runs now keeps running.
fn plan(
    shared: &Shared,
    desired: &Desired,
    env_name: &str,
    to: Option<&str>,
) -> Result<Plan, EngineError> {
    let app = &desired.app.name;
    let journal = &shared.journal;
    let internal = |e: crate::store::StoreError| EngineError::Internal(e.to_string());
    let env = desired
        .app
        .environment(env_name)
        .ok_or_else(|| {
            EngineError::NotFound(format!("app `{app}` has no environment `{env_name}`"))
        })?
        .clone();
    let state = journal.env_state(app, env_name).map_err(internal)?;
    let current = state
        .as_ref()
        .and_then(|s| s.current_release.clone())
        .ok_or_else(|| {
            EngineError::Conflict(format!(
                "{app} runs nothing in {env_name}: nothing to roll back"
            ))
        })?;
    let failed = release_ref(shared, &current)
        .ok_or_else(|| EngineError::Internal(format!("release {current} is not in the journal")))?;
    let deployments = journal.deployments(Some(app), 1000).map_err(internal)?;
    let live = journal.releases(app).map_err(internal)?;
    let target_id = match to {
        Some(version) => live
            .iter()
            .find(|r| r.version == version && r.id != current)
            .map(|r| r.id.clone())
            .ok_or_else(|| {
                let kept: Vec<String> = live
                    .iter()
                    .map(|r| format!("{} ({})", r.version, r.id))
                    .collect();
                EngineError::NotFound(format!(
                    "no release of {app} {version} on this server other than the one running (releases kept: {})",
                    if kept.is_empty() { "none".into() } else { kept.join(", ") }
                ))
            })?,
        None => state
            .as_ref()
            .and_then(|s| s.last_good_release.clone())
            .filter(|r| *r != current)
            .or_else(|| {
                deployments
                    .iter()
                    .filter(|d| d.state == DeploymentState::Succeeded)
                    .filter_map(|d| d.release_id.clone())
                    .find(|r| *r != current)
            })
            .ok_or_else(|| {
                EngineError::Conflict(format!(
                    "{app} has no earlier good release in {env_name} to roll back to; name one with `to`"
                ))
            })?,
    };
    let target = release_ref(shared, &target_id)
        .filter(|t| t.dir.is_dir())
        .ok_or_else(|| {
            EngineError::Conflict(format!(
                "release {target_id} is no longer on disk; name another version with `to`"
            ))
        })?;
    startable(shared, app, &env, &target).map_err(|why| {
        EngineError::Conflict(format!(
            "release {} cannot start: {why}; name another version with `to`",
            target.id
        ))
    })?;
    let failed_spec = deployments
        .iter()
        .find(|d| d.release_id.as_deref() == Some(current.as_str()))
        .map(|d| d.spec_hash.clone());
    Ok(Plan {
        env,
        failed,
        target,
        failed_spec,
    })
}
