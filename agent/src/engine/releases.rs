//! Release plumbing: the release records a step sees, where a release's
//! source comes from, how the supervisor runs one, which release a
//! rollback goes back to, and which old ones are pruned.
//!
//! Nothing here decides when to deploy or roll back; it answers questions
//! about releases for the modules that do.

use super::error::{AppLog, BuildError};
use super::shared::Shared;
use crate::config::{AppSource, EnvConfig, RunConfig};
use crate::runtime::ReleaseRef;
use crate::store::{DeploymentState, EnvState};
use crate::supervisor::{RunSpec, SupervisorError, log_tail};
use std::path::{Path, PathBuf};

/// The journal's record of a release, as a step sees it.
pub(super) fn release_ref(shared: &Shared, id: &str) -> Option<ReleaseRef> {
    let r = shared.journal.release(id).ok().flatten()?;
    Some(ReleaseRef {
        version: r.version,
        id: r.id,
        dir: PathBuf::from(r.dir),
    })
}

/// The release `pick` names in the journal state of (app, env).
pub(super) fn env_release(
    shared: &Shared,
    app: &str,
    env: &str,
    pick: impl Fn(&EnvState) -> Option<String>,
) -> Option<ReleaseRef> {
    let state = shared.journal.env_state(app, env).ok().flatten()?;
    release_ref(shared, &pick(&state)?)
}

/// Why a release cannot run now.
#[derive(Debug, thiserror::Error)]
pub enum NotStartable {
    #[error("its directory {} is gone", .0.display())]
    DirGone(PathBuf),
    #[error("{0}")]
    Command(#[from] SupervisorError),
}

/// Whether `release` could run in `env` now: its directory is there and,
/// for a supervised app, its command is an executable file in it.
pub(super) fn startable(
    shared: &Shared,
    app: &str,
    env: &EnvConfig,
    release: &ReleaseRef,
) -> Result<(), NotStartable> {
    if !release.dir.is_dir() {
        return Err(NotStartable::DirGone(release.dir.clone()));
    }
    if let Some(run) = &env.run {
        let spec = run_spec(&shared.state_dir, app, env, run, release);
        shared.supervisor.check(app, &env.name, &spec)?;
    }
    Ok(())
}

/// The app's own log file in `env`.
pub(super) fn log_file(state_dir: &Path, app: &str, env: &str) -> PathBuf {
    state_dir.join("logs").join(app).join(format!("{env}.log"))
}

/// The tail of the app's own log, for a failed gate's reason.
pub(super) fn app_log(shared: &Shared, app: &str, env: &EnvConfig) -> AppLog {
    if env.run.is_none() {
        return AppLog::default();
    }
    AppLog(log_tail(&log_file(&shared.state_dir, app, &env.name), 10))
}

/// How the supervisor runs `release` in `env`.
pub(super) fn run_spec(
    state_dir: &Path,
    app: &str,
    env: &EnvConfig,
    run: &RunConfig,
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
        port: None,
    }
}

/// The app's source into the new release directory `dir`: a `path` is
/// copied; a `url` is downloaded (or found in `state_dir/downloads`),
/// verified and unpacked. Nothing is activated yet, so a failure here only
/// fails the deployment.
pub(super) async fn place_source(
    state_dir: &Path,
    source: &AppSource,
    dir: &Path,
    limits: crate::artifact::UnpackLimits,
) -> Result<(), BuildError> {
    let joined = |e: tokio::task::JoinError| BuildError::Source(e.to_string());
    match source {
        AppSource::Path(source) => {
            let (src, dst) = (source.clone(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || copy_dir(&src, &dst))
                .await
                .map_err(joined)?
                .map_err(|e| {
                    BuildError::Source(format!(
                        "copying the source {} to {}: {e}",
                        source.display(),
                        dir.display()
                    ))
                })
        }
        AppSource::Url { url, sha256 } => {
            let options = crate::artifact::FetchOptions::default();
            let downloads = state_dir.join("downloads");
            let fetched = crate::artifact::fetch(&downloads, url, sha256, &options)
                .await
                .map_err(|e| BuildError::Source(e.to_string()))?;
            let (url, dst) = (url.clone(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || {
                crate::artifact::unpack(&fetched.path, &url, &dst, &limits)
            })
            .await
            .map_err(joined)?
            .map_err(|e| BuildError::Source(e.to_string()))
        }
    }
}

/// Copy an app's source tree, leaving out build output and VCS data.
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

/// Keep the newest `keep` releases of `app`; never remove one an
/// environment runs or would roll back to.
pub(super) fn prune(shared: &Shared, app: &str, keep: usize) {
    let journal = &shared.journal;
    let Ok(releases) = journal.releases(app) else {
        return;
    };
    let states: Vec<_> = journal
        .env_states()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.app == app)
        .collect();
    // What runs, what a failed gate goes back to, and what the health
    // guard would roll what runs back to.
    let guard_targets: Vec<String> = states
        .iter()
        .filter_map(|s| s.current_release.as_deref())
        .filter_map(|c| guard_target(shared, app, c))
        .map(|r| r.id)
        .collect();
    let in_use: Vec<String> = states
        .into_iter()
        .flat_map(|s| [s.current_release, s.last_good_release])
        .flatten()
        .chain(guard_targets)
        .collect();
    let own_dir = shared.state_dir.join("releases").join(app);
    for old in releases.iter().skip(keep) {
        if in_use.contains(&old.id) {
            continue;
        }
        // Only this app's own release dir of that id is removed, whatever
        // directory the journal names (a journal restored from another
        // server, or edited, may name anything), and never through a
        // symlink.
        let plain_id = matches!(
            Path::new(&old.id).components().collect::<Vec<_>>()[..],
            [std::path::Component::Normal(_)]
        );
        if !plain_id {
            tracing::warn!(release = %old.id, "not removing an old release whose id is not a plain name; the journal forgets it");
            let _ = journal.mark_release_removed(&old.id);
            continue;
        }
        let dir = own_dir.join(&old.id);
        if Path::new(&old.dir) != dir {
            tracing::warn!(release = %old.id, journaled = %old.dir, removed = %dir.display(),
                "an old release's journaled directory is not where this agent keeps it: only this agent's release dir is removed");
        }
        if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            tracing::warn!(release = %old.id, dir = %dir.display(), "not removing an old release dir that is not a directory");
            let _ = journal.mark_release_removed(&old.id);
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(release = %old.id, error = %e, "could not remove an old release");
            continue;
        }
        let _ = journal.mark_release_removed(&old.id);
        tracing::info!(app = %app, release = %old.id, "removed old release");
    }
}
