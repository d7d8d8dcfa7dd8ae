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
use super::pipeline::{PreparedStep, prepare_step, release_ref, rollback, run_prepared};
use super::{Desired, EngineError, Shared};
use crate::config::{EnvConfig, OnFailure};
use crate::runtime::ReleaseRef;
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
        tasks.spawn_on(
            guard_env(shared.clone(), desired.clone(), env.clone()),
            &shared.checks,
        );
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
    // Checks are due every `interval` from the guard's start, whatever a
    // check takes; one that outlasts the interval makes the agent skip the
    // checks it covered, and say so, rather than drift or burst.
    // Spread over the interval by (app, env): environments deployed
    // together would otherwise check in the same millisecond forever,
    // queueing behind each other (27 ms p50 instead of ~1 ms at 200 apps).
    let start = tokio::time::Instant::now() + phase(&app, &env.name, health.interval);
    let mut ticks = tokio::time::interval_at(start, health.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_tick, mut skipping) = (None, None);
    let mut known: Option<crate::runtime::ReleaseRef> = None;
    // The check's prepared step, for the release it was made for.
    let mut prepared: Option<(String, PreparedStep)> = None;
    // When the release dir was last seen (see DIR_RECHECK).
    let mut dir_seen: Option<tokio::time::Instant> = None;
    // The environment's journal state, with the journal generation read at.
    let mut read: Option<(u64, Option<crate::store::EnvState>)> = None;
    loop {
        let tick = ticks.tick().await;
        if let Some(last) = last_tick.replace(tick) {
            let periods = (tick - last).as_nanos() / health.interval.as_nanos().max(1);
            let missed = periods.saturating_sub(1) as u64;
            if missed > 0 {
                skipped(&app, &env.name, "overrun", missed, &mut skipping);
            }
        }
        // Only a settled environment (running its last good release) is
        // guarded; anything else is a deployment's business. Read again
        // only after the journal changed (400 reads a second otherwise).
        let generation = shared.journal.generation();
        let state = match read.take().filter(|(g, _)| *g == generation) {
            Some((_, state)) => state,
            None => match shared.journal.env_state(&app, &env.name) {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!(app = %app, env = %env.name, error = %e, "health guard cannot read the journal");
                    skipped(&app, &env.name, "journal", 1, &mut skipping);
                    continue;
                }
            },
        };
        read = Some((generation, state.clone()));
        // Nothing deployed here (yet): no check is due.
        let Some(state) = state else { continue };
        let Some(current) = state.current_release.clone() else {
            // Nothing runs (a rollback could not start one): nothing to check.
            failures = 0;
            continue;
        };
        if state.last_good_release.as_ref() != Some(&current) {
            failures = 0;
            skipped(&app, &env.name, "not_settled", 1, &mut skipping);
            continue;
        }
        // The release record only changes with `current`: read it once.
        let release = match known.take().filter(|r| r.id == current) {
            Some(r) => r,
            None => match release_ref(&shared, &current) {
                Some(r) => {
                    // A new release: its dir is looked for at once.
                    dir_seen = None;
                    r
                }
                None => {
                    skipped(&app, &env.name, "release_unknown", 1, &mut skipping);
                    continue;
                }
            },
        };
        // A deleted release dir is looked for every few seconds while checks
        // pass (a stat per check was 3% of the agent's CPU at 400 checks a
        // second), and always before a failure is counted.
        let now = tokio::time::Instant::now();
        if dir_seen.is_none_or(|at| now - at >= DIR_RECHECK) {
            if release_dir_missing(&app, &env.name, &release, &mut skipping) {
                failures = 0;
                continue;
            }
            dir_seen = Some(now);
        }
        skipping = None;
        known = Some(release.clone());
        // The step's request only changes with the release: made once.
        let kept = prepared.take().filter(|(id, _)| *id == release.id);
        let step = match kept {
            Some(kept) => Ok(kept),
            None => prepare_step(
                &desired,
                None,
                Some(&env),
                (StepKind::HealthCheck, StepKind::HealthCheck.as_str()),
                &health.step,
                &release,
                None,
                1,
            )
            .map(|p| (release.id.clone(), p)),
        };
        let outcome = match step {
            Ok(step) => {
                let outcome = run_prepared(&shared, &step.1).await;
                prepared = Some(step);
                outcome
            }
            // Its plugin is not loaded: a failed check.
            Err(outcome) => outcome,
        };
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
        if release_dir_missing(&app, &env.name, &release, &mut skipping) {
            failures = 0;
            continue;
        }
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

/// How often a passing environment's release dir is looked for.
const DIR_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `release`'s dir is gone (deleted by hand?), counting the check
/// as skipped if so. Its process may still serve, but it can be neither
/// checked (the step's dir grant) nor restarted. That says nothing of the
/// app's health, and stopping a serving app over it would be the harm; a
/// new deployment is the fix.
fn release_dir_missing(
    app: &str,
    env: &str,
    release: &ReleaseRef,
    skipping: &mut Option<&'static str>,
) -> bool {
    if release.dir.is_dir() {
        return false;
    }
    if *skipping != Some("release_dir_missing") {
        tracing::error!(app = %app, env = %env, release = %release.id, dir = %release.dir.display(),
            "the release directory is gone (deleted by hand?): health checks are skipped until a deployment replaces it");
    }
    skipped(app, env, "release_dir_missing", 1, skipping);
    true
}

/// The thread an engine's health guard makes its checks on.
///
/// A check is a few tasks that wake each other in turn (the guard, the
/// plugin's request). On the agent's multi-threaded runtime a wake-up could
/// move that work to the other core and wake it from sleep: 11.2% of a core
/// for 400 checks a second, 9.0% on one thread in the same hour (the load
/// bench; its runs vary by about ±1.5 points). Checks are
/// short, and a slow one only delays the others, which then say so
/// (`overrun` in slipway_health_checks_skipped_total).
///
/// Owned by the engine: dropping it stops the thread and every check on it
/// (an engine's checks never outlive it, as they would on a thread shared
/// by the whole process).
pub(super) struct ChecksThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChecksThread {
    pub(super) fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("starting the health-check runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("slipway-checks".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropping the runtime drops every check still on it.
                drop(runtime);
            })
            .expect("starting the health-check thread");
        Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ChecksThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// A fixed offset in (0, interval] for (app, env)'s checks.
fn phase(app: &str, env: &str, interval: std::time::Duration) -> std::time::Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (app, env).hash(&mut h);
    let fraction = (h.finish() % 1000 + 1) as u32;
    interval * fraction / 1000
}

/// Count `n` due checks of (app, env) that were not made; log it when the
/// reason changes (not every tick of a long stretch).
fn skipped(app: &str, env: &str, reason: &'static str, n: u64, skipping: &mut Option<&str>) {
    crate::metrics::metrics().health_skipped(app, env, reason, n);
    if *skipping != Some(reason) {
        tracing::warn!(app = %app, env = %env, reason, skipped = n, "health checks skipped (counted in slipway_health_checks_skipped_total)");
    }
    *skipping = Some(reason);
}

/// The release the guard would put an environment running `current` back
/// on: the release of the last deployment that succeeded before and is
/// still on disk, and that no rollback has already moved away from. A
/// health check that fails for every release (a wrong path in a new
/// config) would otherwise flip the environment between its two newest
/// good releases forever (the engine's model test found it); with none
/// left the environment is stopped, as with no earlier good release.
/// A rollback the agent died in counts as one (its deployment names the
/// release it moved away from, and ends `interrupted`); other interrupted
/// deployments name only a release of their own that never succeeded.
/// Release pruning keeps this one (the crash matrix found both).
pub(super) fn guard_target(shared: &Shared, app: &str, current: &str) -> Option<ReleaseRef> {
    let deployments = shared
        .journal
        .deployments(Some(app), 100)
        .unwrap_or_default();
    let rolled_back_from: Vec<&str> = deployments
        .iter()
        .filter(|d| {
            matches!(
                d.state,
                DeploymentState::RolledBack
                    | DeploymentState::Failed
                    | DeploymentState::Interrupted
            )
        })
        .filter_map(|d| d.release_id.as_deref())
        .collect();
    deployments
        .iter()
        .filter(|d| d.state == DeploymentState::Succeeded)
        .filter_map(|d| d.release_id.as_deref())
        .filter(|r| *r != current && !rolled_back_from.contains(r))
        .filter_map(|r| release_ref(shared, r))
        .find(|r| r.dir.is_dir())
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
    let target = guard_target(shared, app, current);
    let reason = format!(
        "{}: turned unhealthy after promotion: {} consecutive failed health checks; last: {message}",
        env.name, health.unhealthy_after
    );
    let hash = desired.app.spec_hash();
    // Journaled with its release and pinned before acting: if the agent
    // dies mid-rollback, the restart must not deploy this version again
    // (the end re-pins with the outcome).
    let spec = desired.app.spec_json();
    let id = match journal.start_rollback(
        app,
        &failed.version,
        &hash,
        &spec,
        &failed.id,
        Some(&reason),
    ) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot journal the automatic rollback; not acting");
            return;
        }
    };
    let outcome = rollback(shared, desired, env, &failed, target.as_ref(), Some(id)).await;
    let rolled_back = outcome.is_ok();
    let state = if rolled_back {
        DeploymentState::RolledBack
    } else {
        DeploymentState::Failed
    };
    let reason = match outcome {
        Ok(()) => reason,
        Err(why) => format!("{reason}\nnot rolled back: {why}"),
    };
    let metric = if rolled_back { "rolled_back" } else { "failed" };
    crate::metrics::metrics().deployment(app, &env.name, metric);
    let _ = journal.finish_deployment_pinned(id, state, &reason, &hash);
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
    let reason = format!(
        "{}: rolled back by an operator from {} ({}) to {} ({})",
        env.name, failed.version, failed.id, target.version, target.id
    );
    // Pin what the config asks for only if that is what is rolled back, and
    // before acting (with the start, in one transaction), so an agent that
    // dies mid-rollback does not redeploy it.
    let pins = failed_spec.as_deref() == Some(hash.as_str());
    let spec = desired.app.spec_json();
    let pin = pins.then_some(reason.as_str());
    let id = match journal.start_rollback(app, &failed.version, &hash, &spec, &failed.id, pin) {
        Ok(id) => id,
        Err(e) => {
            let _ = reply.send(Err(EngineError::Internal(format!(
                "cannot journal the rollback; not acting: {e}"
            ))));
            return;
        }
    };
    let _ = reply.send(Ok(id));
    tracing::warn!(app = %app, env = %env.name, deployment = id, "{reason}");
    let outcome = rollback(shared, desired, &env, &failed, Some(&target), Some(id)).await;
    let rolled_back = outcome.is_ok();
    let metric = if rolled_back { "rolled_back" } else { "failed" };
    crate::metrics::metrics().deployment(app, &env.name, metric);
    let (state, reason) = match outcome {
        Ok(()) => (DeploymentState::RolledBack, reason),
        Err(why) => (
            DeploymentState::Failed,
            format!("{reason}: could not be rolled back: {why}"),
        ),
    };
    // The end re-pins with the final reason, in one transaction.
    let _ = if pins {
        journal.finish_deployment_pinned(id, state, &reason, &hash)
    } else {
        journal.finish_deployment(id, state, Some(&reason))
    };
    let (notice, version) = (State::after_rollback(rolled_back), &failed.version);
    let notifier = &shared.notifier;
    notifier.send(desired, id, Some(&env.name), version, notice, &reason);
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
    // Refused before anything is stopped: what runs now keeps running.
    super::pipeline::startable(shared, app, &env, &target).map_err(|why| {
        EngineError::Conflict(format!(
            "release {} cannot start: {why}; name another version with `to`",
            target.id
        ))
    })?;
    let failed_spec = deployments
        .iter()
        .find(|d| d.release_id.as_deref() == Some(current.as_str()))
        .map(|d| d.spec_hash.clone());
    Ok((env, failed, target, failed_spec))
}
