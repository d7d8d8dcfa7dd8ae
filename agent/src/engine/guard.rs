//! The health guard: health is watched after a deployment too, not only during its bake: the
//! most common gap of VM deploy tools is a release that passes its gates and
//! turns unhealthy an hour later. While an app has no deployment running,
//! every environment with a `health` step is checked at its `interval`; after
//! `unhealthy_after` consecutive failures it is handed to
//! `rollback::after_guard`, which rolls it back by the same rules as a
//! failed gate. This module only watches: it never changes what runs.
//!
//! Checks made here are logged, not journaled one by one: a check every
//! second for months would bury the deployments the journal is for.

use super::bake::{Tally, check_result};
use super::desired::Desired;
use super::error::CheckResult;
use super::releases::release_ref;
use super::shared::Shared;
use super::steps::{PreparedStep, StepCall, Subject, prepare};
use crate::config::{EnvConfig, OnFailure};
use crate::runtime::ReleaseRef;
use crate::vocab::StepRole;
use std::sync::Arc;

/// An environment that turned unhealthy while settled: what the guard
/// hands to `rollback::after_guard`.
pub(super) struct Unhealthy {
    pub env: EnvConfig,
    pub release: String,
    pub failures: u32,
    pub last: CheckResult,
}

/// Check every environment's health; return the first one that turns
/// unhealthy. Dropped (cancelling the checks) when a new desired state
/// arrives; the rollback itself is done by `rollback::after_guard`, outside
/// any cancellable select, so it always completes.
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
    let mut tally = Tally::default();
    // Checks are due every `interval` from the guard's start, whatever a
    // check takes; one that outlasts the interval makes the agent skip the
    // checks it covered, and say so, rather than drift or burst.
    // Spread over the interval by (app, env): environments deployed
    // together would otherwise check in the same millisecond forever,
    // queueing behind each other (BENCHMARKS.md, "Where the load goes").
    let start = tokio::time::Instant::now() + phase(&app, &env.name, health.interval);
    let mut ticks = tokio::time::interval_at(start, health.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_tick, mut skipping) = (None, None);
    let mut known: Option<crate::runtime::ReleaseRef> = None;
    // The check's prepared step, for the release it was made for.
    let mut prepared: Option<(String, Option<u16>, PreparedStep)> = None;
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
            tally.reset();
            continue;
        };
        if state.last_good_release.as_ref() != Some(&current) {
            tally.reset();
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
        // pass (a stat per check was a measurable share of the load bench's
        // CPU), and always before a failure is counted.
        let now = tokio::time::Instant::now();
        if dir_seen.is_none_or(|at| now - at >= DIR_RECHECK) {
            if release_dir_missing(&app, &env.name, &release, &mut skipping) {
                tally.reset();
                continue;
            }
            dir_seen = Some(now);
        }
        skipping = None;
        known = Some(release.clone());
        // The step's request only changes with the release: made once.
        // The port too: a release started again after its keep window runs on another.
        let port = super::switch::port_of(&shared, &app, &env.name, &release.id);
        let kept = prepared
            .take()
            .filter(|(id, p, _)| *id == release.id && *p == port);
        let step = match kept {
            Some(kept) => Ok(kept),
            None => prepare(&StepCall {
                desired: &desired,
                deployment: None,
                env: Some(&env.name),
                role: StepRole::HealthCheck,
                step: &health.step,
                on: Subject::Release {
                    release: &release,
                    previous: None,
                    attempt: 1,
                    port,
                },
            })
            .map(|p| (release.id.clone(), port, p)),
        };
        let outcome = match step {
            Ok(step) => {
                let outcome = shared.steps.run_prepared(&step.2).await;
                prepared = Some(step);
                outcome
            }
            // Its plugin is not loaded: a failed check.
            Err(outcome) => outcome,
        };
        let last = check_result(&outcome);
        if last.is_healthy() {
            tally.record(&last);
            continue;
        }
        if release_dir_missing(&app, &env.name, &release, &mut skipping) {
            tally.reset();
            continue;
        }
        tally.record(&last);
        let failures = tally.failures;
        tracing::warn!(app = %app, env = %env.name, release = %current, failures, "health check failed: {last}");
        if failures >= health.unhealthy_after {
            return Unhealthy {
                env,
                release: current,
                failures,
                last,
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
/// move that work to the other core and wake it from sleep, which cost more
/// than the checks (BENCHMARKS.md, "Where the load goes"). Checks are
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
