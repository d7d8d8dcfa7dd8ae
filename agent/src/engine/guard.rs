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

use super::pipeline::{release_ref, rollback, run_step};
use super::{Desired, Shared};
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
    // The release of the last deployment that succeeded before this one.
    let target = journal
        .deployments(Some(app), 100)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.state == DeploymentState::Succeeded)
        .filter_map(|d| d.release_id)
        .find(|r| r != current)
        .and_then(|r| release_ref(shared, &r));
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
    let _ = journal.finish_deployment(id, state, Some(&reason));
    let _ = journal.pin(app, &hash, &reason, id);
    tracing::warn!(app = %app, env = %env.name, deployment = id, "{reason}");
}
