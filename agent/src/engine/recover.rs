//! Start-up after a stop or a crash. The journal is the truth: deployments
//! still marked running were interrupted; an environment whose current
//! release never passed its gates goes back to its last good release; then
//! every environment's release is started again. The reconciler then sees
//! the interrupted version as not deployed (it is not pinned) and deploys it
//! afresh: interrupted work is redone, never half-trusted.

use super::Shared;
use super::pipeline::{release_ref, run_spec};
use crate::config::Config;
use crate::store::DeploymentState;
use std::sync::Arc;

pub(super) async fn recover(shared: &Arc<Shared>, config: &Config) {
    let journal = &shared.journal;
    match journal.unfinished_deployments() {
        Ok(list) => {
            for d in list {
                tracing::warn!(app = %d.app, deployment = d.id, version = %d.version,
                    "deployment was interrupted by an agent stop; it will be redone");
                let _ = journal.finish_deployment(
                    d.id,
                    DeploymentState::Interrupted,
                    Some("interrupted: the agent stopped during this deployment"),
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read unfinished deployments"),
    }
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
            (Some(current), Some(good)) if current != good => {
                tracing::warn!(app = %app, env = %env, from = %current, to = %good,
                    "release had not passed its gates when the agent stopped: rolling back");
                if journal
                    .set_current_release(app, env, Some(good), None, "rolled-back (recovery)")
                    .is_err()
                {
                    continue;
                }
                Some(good.clone())
            }
            (Some(current), None) => {
                tracing::warn!(app = %app, env = %env, release = %current,
                    "release had not passed its gates and there is no earlier good one: stopped");
                let _ = journal.set_current_release(app, env, None, None, "stopped (recovery)");
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
            match shared.supervisor.start(app, env, &target.id, spec).await {
                Ok(()) => tracing::info!(app = %app, env = %env, release = %target.id, "started"),
                Err(e) => tracing::error!(app = %app, env = %env, error = %e, "could not start"),
            }
        }
    }
}
