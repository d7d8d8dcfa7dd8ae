//! Start-up after a stop or a crash. The journal is the truth: deployments
//! still marked running were interrupted; an environment whose current
//! release never passed its gates goes back to its last good release
//! (unless a failed deployment left it there for a person: `on_failure =
//! "stop"`, which a restart does not undo); then
//! every environment's release is started again. The reconciler then sees
//! the interrupted version as not deployed (it is not pinned) and deploys it
//! afresh: interrupted work is redone, never half-trusted.
//!
//! A release whose directory is gone (a journal restored onto a new server,
//! a hand cleanup) is marked removed and never started; the environments
//! that ran it are recorded as stopped, so the reconciler deploys the
//! config's version again instead of taking the journal's word for it.

use super::releases::{release_ref, run_spec};
use super::shared::Shared;
use super::switch;
use crate::config::{Config, EnvConfig, OnFailure, RunConfig};
use crate::runtime::ReleaseRef;
use crate::store::{Deployment, DeploymentState, Journal};
use crate::supervisor::RunSpec;
use crate::vocab::{EnvChange, Verdict};
use std::path::Path;
use std::sync::Arc;

pub(super) async fn recover(shared: &Arc<Shared>, config: &Config) {
    let journal = &shared.journal;
    match journal.unfinished_deployments() {
        Ok(list) => {
            for d in list {
                let reason = close_interrupted(
                    journal,
                    &d,
                    "stopped abruptly (a crash, kill -9 or power loss)",
                    "redone now",
                );
                tracing::warn!(app = %d.app, deployment = d.id, version = %d.version, "{reason}");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read unfinished deployments"),
    }
    forget_missing_releases(shared);
    let states = match journal.env_states() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot read environment state; starting nothing");
            return;
        }
    };
    for state in states {
        let (app, env) = (&state.app, &state.environment);
        let target = match (&state.current_release, &state.last_good_release) {
            (Some(current), good)
                if good.as_ref() != Some(current)
                    && left_for_a_person(journal, config, app, env, current) =>
            {
                tracing::warn!(app = %app, env = %env, release = %current,
                    "left on the release that failed its gate for a person (on_failure = \"stop\"), as before the restart");
                Some(current.clone())
            }
            (Some(current), Some(good)) if current != good => {
                tracing::warn!(app = %app, env = %env, from = %current, to = %good,
                    "release had not passed its gates when the agent stopped: rolling back");
                if journal
                    .set_current_release(
                        app,
                        env,
                        Some(good),
                        None,
                        EnvChange::RolledBackInRecovery,
                    )
                    .is_err()
                {
                    continue;
                }
                Some(good.clone())
            }
            (Some(current), None) => {
                tracing::warn!(app = %app, env = %env, release = %current,
                    "release had not passed its gates and there is no earlier good one: stopped");
                let change = EnvChange::StoppedInRecovery;
                let _ = journal.set_current_release(app, env, None, None, change);
                None
            }
            (current, _) => current.clone(),
        };
        let Some(target) = target.and_then(|id| release_ref(shared, &id)) else {
            continue;
        };
        let Some(env_cfg) = config.apps.get(app).and_then(|a| a.environment(env)) else {
            tracing::warn!(app = %app, env = %env, "in the journal but not in the config: not started");
            continue;
        };
        if let Some(run) = &env_cfg.run {
            let spec = run_spec(&shared.state_dir, app, env_cfg, run, &target);
            let started = start(shared, app, env_cfg, run, &target, spec).await;
            if let Err(why) = started {
                // Like a release whose directory is gone: recorded as
                // stopped, so the reconciler deploys the config's
                // version again instead of trusting a release that
                // cannot run (its binary deleted, say).
                tracing::error!(app = %app, env = %env, release = %target.id, error = %why,
                    "could not start: recorded as stopped; the config's version is deployed again");
                let _ = journal.set_current_release(
                    app,
                    env,
                    None,
                    None,
                    EnvChange::StoppedCouldNotStart,
                );
            }
        }
    }
    // What a previous agent left running that no environment runs now.
    for (pidfile, pid) in shared.supervisor.stop_unclaimed().await {
        tracing::warn!(pidfile = %pidfile, pid, "stopped an app process a previous agent left running: its release does not run here any more");
    }
    switch::configure(shared, config).await;
}

/// Run `target` in `env` again: the process a previous agent left running
/// if it is still there (adopted, not restarted), else a new one; behind
/// the traffic layer, on a port of its own, noted as what serves.
async fn start(
    shared: &Arc<Shared>,
    app: &str,
    env: &EnvConfig,
    run: &RunConfig,
    target: &ReleaseRef,
    spec: RunSpec,
) -> Result<(), String> {
    let supervisor = &shared.supervisor;
    let adopted = supervisor
        .claim(app, &env.name, &target.id, spec.clone())
        .await;
    match &env.traffic {
        Some(traffic) => {
            let port = match switch::port_of(shared, app, &env.name, &target.id) {
                Some(port) if adopted => port,
                _ => switch::start_beside(shared, app, env, run, traffic, target).await?,
            };
            switch::remember(shared, app, &env.name, traffic, &target.id, port).await;
        }
        None if adopted => {}
        None => {
            // Another release left running holds the port this one needs.
            supervisor.stop_adopted(app, &env.name).await;
            supervisor
                .start(app, &env.name, &target.id, spec)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if adopted {
        tracing::info!(app = %app, env = %env.name, release = %target.id, "still running: adopted, not restarted");
    } else {
        tracing::info!(app = %app, env = %env.name, release = %target.id, "started");
    }
    Ok(())
}

/// Whether `env` runs `current` because a deployment that failed its gate
/// left it there on purpose (`on_failure = "stop"`, still so in the
/// config): the app's latest deployment ended `failed` with that release.
/// A deployment the agent was cut short in is `interrupted` by now, so a
/// release caught mid-gate is never mistaken for one left for a person.
fn left_for_a_person(
    journal: &Journal,
    config: &Config,
    app: &str,
    env: &str,
    current: &str,
) -> bool {
    let stop = config
        .apps
        .get(app)
        .and_then(|a| a.environment(env))
        .is_some_and(|e| e.on_failure == OnFailure::Stop);
    stop && journal
        .deployments(Some(app), 1)
        .ok()
        .and_then(|list| list.into_iter().next())
        .is_some_and(|d| {
            d.state == DeploymentState::Failed && d.release_id.as_deref() == Some(current)
        })
}

/// Record an unfinished deployment as interrupted: first each step still
/// open (so no step of an ended deployment stays open, which the crash
/// matrix found after a crash: only a clean stop closed them), then the
/// deployment, with the step it was in. Returns the reason recorded.
pub(super) fn close_interrupted(
    journal: &Journal,
    d: &Deployment,
    stopped: &str,
    redone: &str,
) -> String {
    let mut during = String::new();
    for step in journal.steps(d.id).unwrap_or_default() {
        if step.ended_at.is_none() {
            during = match &step.environment {
                Some(env) => format!(" during its {} step in {env}", step.kind),
                None => format!(" during its {} step", step.kind),
            };
            let _ = journal.finish_step(
                step.id,
                Verdict::Interrupted,
                &format!("the agent was {stopped} during this step"),
                &[],
            );
        }
    }
    let reason = format!("interrupted: the agent was {stopped}{during}; {redone}");
    let _ = journal.finish_deployment(d.id, DeploymentState::Interrupted, Some(&reason));
    reason
}

/// Mark the releases whose directory is gone as removed (no rollback or
/// `--to` offers them), and point the environments that ran them, or would
/// roll back to them, at nothing.
fn forget_missing_releases(shared: &Shared) {
    let journal = &shared.journal;
    match journal.live_releases() {
        Ok(list) => {
            for r in list.iter().filter(|r| !Path::new(&r.dir).is_dir()) {
                tracing::warn!(app = %r.app, release = %r.id, dir = %r.dir,
                    "release directory is missing (restored journal?): marked removed");
                if let Err(e) = journal.mark_release_removed(&r.id) {
                    tracing::error!(release = %r.id, error = %e, "cannot mark the release removed");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the releases"),
    }
    let on_disk = |id: &str| release_ref(shared, id).is_some_and(|r| r.dir.is_dir());
    for state in journal.env_states().unwrap_or_default() {
        let (app, env) = (&state.app, &state.environment);
        if let Some(current) = &state.current_release
            && !on_disk(current)
        {
            tracing::warn!(app = %app, env = %env, release = %current,
                "the release this environment ran is not on disk: stopped; the config's version is deployed again");
            let _ =
                journal.set_current_release(app, env, None, None, EnvChange::StoppedReleaseMissing);
        }
        if let Some(good) = &state.last_good_release
            && !on_disk(good)
        {
            let _ = journal.clear_last_good_release(app, env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::StepRole;

    #[test]
    fn an_interrupted_deployment_leaves_no_step_open() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("journal.db")).unwrap();
        let id = journal.start_deployment("web", "2", "h", "{}").unwrap();
        let build = journal
            .start_step(id, None, StepRole::Build, "command", 1)
            .unwrap();
        journal.finish_step(build, Verdict::Ok, "", &[]).unwrap();
        let smoke = journal
            .start_step(id, Some("staging"), StepRole::SmokeTest, "http-check", 1)
            .unwrap();
        let d = journal.deployment(id).unwrap().unwrap();
        let reason = close_interrupted(&journal, &d, "stopped abruptly", "redone now");
        assert_eq!(
            reason,
            "interrupted: the agent was stopped abruptly during its smoke-test step in staging; redone now"
        );
        let steps = journal.steps(id).unwrap();
        assert!(steps.iter().all(|s| s.ended_at.is_some()), "{steps:?}");
        let cut = steps.iter().find(|s| s.id == smoke).unwrap();
        assert_eq!(cut.outcome.as_deref(), Some("interrupted"));
        let d = journal.deployment(id).unwrap().unwrap();
        assert_eq!(d.state, DeploymentState::Interrupted);
        assert_eq!(d.reason.as_deref(), Some(reason.as_str()));
        assert!(journal.unfinished_deployments().unwrap().is_empty());
    }
}
