//! The rows the journal hands out: a deployment and its state (the word
//! itself is `vocab::DeploymentState`), a release,
//! a step and its logs, an environment and its history, a pin, and the
//! counts of a whole file. Plain data; the queries live with their tables.

use serde::{Deserialize, Serialize};

pub use crate::vocab::DeploymentState;

/// One deployment of one spec of one app (the spec JSON itself is stored
/// but not loaded here: it is for people reading the journal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// Journal id; also the suffix of the release id it builds.
    pub id: i64,
    /// The app deployed.
    pub app: String,
    /// The app version deployed, as configured.
    pub version: String,
    /// Hash of version + source + params: what "the same deployment" means.
    pub spec_hash: String,
    /// The release it built, once the build succeeded.
    pub release_id: Option<String>,
    /// Running, or how it ended.
    pub state: DeploymentState,
    /// Why it failed or was interrupted.
    pub reason: Option<String>,
    /// Start time, ms since the epoch.
    pub started_at: i64,
    /// End time, ms since the epoch; `None` while running.
    pub ended_at: Option<i64>,
}

/// A built release directory on disk, which environments run and roll back to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    /// Unique across apps (the caller builds it from version and deployment id).
    pub id: String,
    /// The app it belongs to.
    pub app: String,
    /// The app version it was built from.
    pub version: String,
    /// The release directory (a copy of the source).
    pub dir: String,
    /// What the build produced; `dir` if there is no build step.
    pub artifact_dir: String,
    /// Creation time, ms since the epoch; orders `releases()`.
    pub created_at: i64,
}

/// One run of one plugin step within a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// Journal id, from `start_step`.
    pub id: i64,
    /// The deployment it ran for.
    pub deployment_id: i64,
    /// The environment; `None` for the build.
    pub environment: Option<String>,
    /// Step kind (build, deploy, smoke, health, rollback...).
    pub kind: String,
    /// The plugin that ran it.
    pub plugin: String,
    /// 1 for the first try, counting up on retries.
    pub attempt: u32,
    /// Start time, ms since the epoch.
    pub started_at: i64,
    /// End time, ms since the epoch; `None` while running or if cut off.
    pub ended_at: Option<i64>,
    /// The caller's result word ("ok", "failed", "timeout", "trap"...).
    pub outcome: Option<String>,
    /// The caller's message for the result.
    pub message: Option<String>,
}

/// One log line a step's plugin emitted, kept with the step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the plugin logged it, ms since the epoch.
    pub at: i64,
    /// Log level, lower case.
    pub level: String,
    /// Where the line came from (plugin log, stdout, stderr...).
    pub source: String,
    /// The log line.
    pub message: String,
    /// Structured fields, in the order given (keys may repeat).
    pub fields: Vec<(String, String)>,
}

/// What one environment of one app runs now, and what it would roll back to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvState {
    /// The app.
    pub app: String,
    /// The environment of the app.
    pub environment: String,
    /// The release it runs or is being moved to; `None`: stopped.
    pub current_release: Option<String>,
    /// The newest release that passed its gates here.
    pub last_good_release: Option<String>,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// One change of an environment's current release (activation, rollback,
/// stop), for the history people read after the fact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvEvent {
    /// Journal id; orders the history.
    pub id: i64,
    /// The app.
    pub app: String,
    /// The environment of the app.
    pub environment: String,
    /// The release it was pointed at; `None`: stopped.
    pub release_id: Option<String>,
    /// The deployment that did it; `None` for recovery at start-up.
    pub deployment_id: Option<i64>,
    /// The caller's word for it ("activated", "rolled-back", "stopped"...).
    pub event: String,
    /// When, ms since the epoch.
    pub at: i64,
}

/// A spec that failed and must not be deployed again on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    /// The app.
    pub app: String,
    /// The pinned spec (see `Deployment::spec_hash`).
    pub spec_hash: String,
    /// Why its deployment failed.
    pub reason: String,
    /// The deployment that failed (the latest one if pinned twice).
    pub deployment_id: i64,
    /// When it was pinned, ms since the epoch.
    pub at: i64,
}

/// What a journal file holds, in numbers: what `slipway backup` and
/// `slipway restore` tell the operator they copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JournalSummary {
    /// `PRAGMA user_version`: the schema the file is at.
    pub schema_version: i64,
    /// Deployments recorded, however they ended.
    pub deployments: i64,
    /// Releases recorded, also those whose directory was removed.
    pub releases: i64,
}
