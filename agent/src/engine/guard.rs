//! Health is guarded after a deployment too, not only during its bake: the
//! most common gap of VM deploy tools is a release that passes its gates and
//! turns unhealthy an hour later. While an app has no deployment running,
//! every environment with a `health` step is checked at its `interval`; after
//! `unhealthy_after` consecutive failures it is rolled back, by the same
//! rules as a failed gate, to the release of the last deployment that
//! succeeded before this one. The rollback is journaled as a deployment of
//! its own (state `rolled-back`, with the reason), and the bad (version,
//! config) is pinned so the reconciler does not put it back.
//!
//! Checks made here are logged, not journaled one by one: a check every
//! second for months would bury the deployments the journal is for.

use super::notify::State;
use super::pipeline::{release_ref, rollback, run_step};
use super::{Desired, EngineError, Shared};
use crate::config::{EnvConfig, OnFailure};
use crate::runtime::{Health, StepKind, StepValue};
use crate::store::DeploymentState;
use std::sync::Arc;

/// An environment that turned unhealthy while settled.
pub(super) struct Unhealthy {
    env: EnvConfig,
    release: String,
    message: String,
}

/// Check every environment's health; return the first one that turns
/// unhealthy. Dropped (cancelling the checks) when a new desired state
/// arrives; the rollback itself is done by [`roll_back`], outside any
/// cancellable select, so it always completes.
pub(super) async fn guard(shared: Arc<Shared>, desired: Desired) -> Unhealthy {
    let mut tasks = tokio::task::JoinSet::new();
    for env in desired
        .app
        .environments
        .iter()
        .filter(|e| e.health.is_some() && e.on_failure == OnFailure::Rollback)
    {
        tasks.spawn(guard_env(shared.clone(), desired.clone(), env.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(unhealthy) = done {
            return unhealthy;
        }
    }
    std::future::pending().await
}

async fn guard_env(shared: Arc<Shared>, desired: Desired, env: EnvConfig) -> Unhealthy {
    let health = env.health.clone().expect("filtered on health");
    let app = desired.app.name.clone();
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(health.interval).await;
        // Only a settled environment (running its last good release) is
        // guarded; anything else is a deployment's business.
        let Ok(Some(state)) = shared.journal.env_state(&app, &env.name) else {
            continue;
        };
        let Some(current) = state
            .current_release
            .filter(|c| state.last_good_release.as_ref() == Some(c))
        else {
            failures = 0;
            continue;
        };
        let Some(release) = release_ref(&shared, &current) else {
            continue;
        };
        let outcome = run_step(
            &shared,
            &desired,
            None,
            Some(&env),
            StepKind::HealthCheck,
            &health.step,
            &release,
            None,
            1,
        )
        .await;
        let message = match &outcome.result {
            Ok(StepValue::Health {
                status: Health::Healthy,
                ..
            }) => {
                failures = 0;
                continue;
            }
            Ok(StepValue::Health { message, .. }) => message.clone(),
            Ok(other) => format!("unexpected result {other:?}"),
            Err(e) => e.to_string(),
        };
        failures += 1;
        tracing::warn!(app = %app, env = %env.name, release = %current, failures, "health check failed: {message}");
        if failures >= health.unhealthy_after {
            return Unhealthy {
                env,
                release: current,
                message,
            };
        }
    }
}

/// Roll an environment that turned unhealthy back to the release of the
/// last deployment that succeeded before, journaled as its own deployment.
pub(super) async fn roll_back(shared: &Arc<Shared>, desired: &Desired, unhealthy: Unhealthy) {
    let Unhealthy {
        env,
        release: current,
        message,
    } = unhealthy;
    let (env, current) = (&env, current.as_str());
    let Some(health) = &env.health else {
        return;
    };
    let app = &desired.app.name;
    let journal = &shared.journal;
    let Some(failed) = release_ref(shared, current) else {
        return;
    };
    // The release of the last deployment that succeeded before this one
    // and is still on disk.
    let target = journal
        .deployments(Some(app), 100)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.state == DeploymentState::Succeeded)
        .filter_map(|d| d.release_id)
        .filter(|r| r != current)
        .filter_map(|r| release_ref(shared, &r))
        .find(|r| r.dir.is_dir());
    let reason = format!(
        "{}: turned unhealthy after promotion: {} consecutive failed health checks; last: {message}",
        env.name, health.unhealthy_after
    );
    let hash = desired.app.spec_hash();
    let id = match journal.start_deployment(app, &failed.version, &hash, &desired.app.spec_json()) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot journal the automatic rollback; not acting");
            return;
        }
    };
    let _ = journal.set_deployment_release(id, &failed.id);
    let rolled_back = rollback(shared, desired, env, &failed, target.as_ref(), Some(id)).await;
    if let (true, Some(target)) = (rolled_back, &target) {
        let _ = journal.set_last_good_release(app, &env.name, &target.id);
    }
    let state = if rolled_back {
        DeploymentState::RolledBack
    } else {
        DeploymentState::Failed
    };
    let metric = if rolled_back { "rolled_back" } else { "failed" };
    crate::metrics::metrics().deployment(app, &env.name, metric);
    let _ = journal.finish_deployment(id, state, Some(&reason));
    let _ = journal.pin(app, &hash, &reason, id);
    tracing::warn!(app = %app, env = %env.name, deployment = id, "{reason}");
    let (notice, version) = (State::after_rollback(rolled_back), &failed.version);
    let notifier = &shared.notifier;
    notifier.send(desired, id, Some(&env.name), version, notice, reason);
}

/// An operator's rollback (`POST …/rollback`, `slipway rollback`): put
/// `env` on the release of version `to`, or on its last good release, as a
/// deployment of its own. The replaced (version, config) is pinned like an
/// automatic rollback, so the reconciler does not put it straight back.
/// `reply` gets the deployment id as soon as it is journaled.
pub(super) async fn operator_rollback(
    shared: &Arc<Shared>,
    desired: &Desired,
    env_name: &str,
    to: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<i64, EngineError>>,
) {
    let plan = match plan_rollback(shared, desired, env_name, to.as_deref()) {
        Ok(plan) => plan,
        Err(e) => {
            let _ = reply.send(Err(e));
            return;
        }
    };
    let (env, failed, target, failed_spec) = plan;
    let app = &desired.app.name;
    let journal = &shared.journal;
    let hash = desired.app.spec_hash();
    let id = match journal.start_deployment(app, &failed.version, &hash, &desired.app.spec_json()) {
        Ok(id) => id,
        Err(e) => {
            let _ = reply.send(Err(EngineError::Internal(format!(
                "cannot journal the rollback; not acting: {e}"
            ))));
            return;
        }
    };
    let _ = journal.set_deployment_release(id, &failed.id);
    let _ = reply.send(Ok(id));
    let reason = format!(
        "{}: rolled back by an operator from {} ({}) to {} ({})",
        env.name, failed.version, failed.id, target.version, target.id
    );
    tracing::warn!(app = %app, env = %env.name, deployment = id, "{reason}");
    let rolled_back = rollback(shared, desired, &env, &failed, Some(&target), Some(id)).await;
    if rolled_back {
        let _ = journal.set_last_good_release(app, &env.name, &target.id);
        crate::metrics::metrics().deployment(app, &env.name, "rolled_back");
    } else {
        crate::metrics::metrics().deployment(app, &env.name, "failed");
    }
    let (state, reason) = if rolled_back {
        (DeploymentState::RolledBack, reason)
    } else {
        (
            DeploymentState::Failed,
            format!("{reason}: could not start the target release"),
        )
    };
    let _ = journal.finish_deployment(id, state, Some(&reason));
    let (notice, version) = (State::after_rollback(rolled_back), &failed.version);
    let notifier = &shared.notifier;
    notifier.send(desired, id, Some(&env.name), version, notice, &reason);
    // Pin what the config asks for only if that is what was rolled back.
    if failed_spec.as_deref() == Some(hash.as_str()) {
        let _ = journal.pin(app, &hash, &reason, id);
    }
}

type RollbackPlan = (
    EnvConfig,
    crate::runtime::ReleaseRef,
    crate::runtime::ReleaseRef,
    Option<String>,
);

/// (environment, release it runs, release to go to, spec hash of the
/// deployment that built the release it runs), or why not.
fn plan_rollback(
    shared: &Shared,
    desired: &Desired,
    env_name: &str,
    to: Option<&str>,
) -> Result<RollbackPlan, EngineError> {
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
    let failed_spec = deployments
        .iter()
        .find(|d| d.release_id.as_deref() == Some(current.as_str()))
        .map(|d| d.spec_hash.clone());
    Ok((env, failed, target, failed_spec))
}
