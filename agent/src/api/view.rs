//! What the API sends, as types: the server serializes these and the CLI
//! (`ops`) deserializes the same ones, so a field renamed on one side is a
//! compile error on the other, not a `-` in a table. `docs/api.md` shows
//! each as JSON.
//!
//! The rows themselves are the journal's records (`store`), the engine's
//! live state (`HealthReport`, `PendingApproval`) and the supervisor's
//! (`ProcessStatus`); this module only arranges them per route.

use crate::engine::{HealthReport, PendingApproval};
use crate::store::{Deployment, EnvEvent, LogRecord, Pin, StepRecord};
use crate::supervisor::ProcessStatus;
use serde::{Deserialize, Serialize};

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok` whenever the agent answers.
    pub status: String,
}

/// `GET /readyz`: a config is loaded and the journal answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// A config is loaded and the journal answers.
    pub ready: bool,
    /// The config file loaded, if one is.
    pub config: Option<String>,
    /// `ok`, or why the journal did not answer.
    pub journal: String,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppList {
    /// Apps in the config, then apps only the journal still knows.
    pub apps: Vec<AppView>,
}

/// One app as `status` shows it (`GET /v1/apps/APP` adds its recent
/// deployments).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    /// `[apps.NAME]`.
    pub name: String,
    /// The version the config asks for (`None` once the app left it).
    pub version: Option<String>,
    /// Whether the config still has it (else only the journal does).
    pub in_config: bool,
    /// The deployment running now, if one is.
    pub running_deployment: Option<Deployment>,
    /// The configured version's pin, if it is pinned as bad.
    pub pinned: Option<Pin>,
    /// In promotion order, then environments only the journal knows.
    pub environments: Vec<EnvView>,
    /// Newest first; only in `GET /v1/apps/APP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_deployments: Option<Vec<Deployment>>,
}

/// One environment of an app: what runs and how it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvView {
    /// `[apps.APP.environments.NAME]`.
    pub name: String,
    /// The release it runs, and that release's version.
    pub current_release: Option<String>,
    pub current_version: Option<String>,
    /// The release a failed gate goes back to, and its version.
    pub last_good_release: Option<String>,
    pub last_good_version: Option<String>,
    /// When the journal last changed what it runs, ms since the epoch.
    pub updated_at: Option<i64>,
    /// The latest health check (a bake's or the guard's).
    pub health: Option<HealthReport>,
    /// The supervised process, if one runs or waits to restart.
    pub process: Option<ProcessStatus>,
    /// A deployment waiting at this environment's manual gate.
    pub waiting_approval: Option<PendingApproval>,
    /// Whether the config still has it.
    pub in_config: bool,
    /// Behind the traffic layer: who takes the traffic, and its RED figures.
    #[serde(default)]
    pub traffic: Option<TrafficView>,
}

/// An environment's traffic: its public address, the releases on its
/// route, and rate, errors and p99 over the last minute (from the traffic
/// layer's counters, sampled every 5 s).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficView {
    pub listen: String,
    /// Taking traffic (weight > 0) or draining (weight 0).
    pub releases: Vec<ReleaseTraffic>,
    /// The window the figures cover, in seconds (0: no sample yet).
    pub window_s: f64,
    /// Requests per second.
    pub rate: f64,
    /// 5xx responses over all responses.
    pub error_ratio: f64,
    /// 99th percentile duration (upper bound of its histogram bucket), ms.
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseTraffic {
    pub release: String,
    pub weight: u32,
    pub in_flight: u64,
    pub open: u64,
}

/// `GET /v1/apps/APP/environments/ENV/history`: what the environment ran,
/// and why each change happened, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvHistory {
    pub app: String,
    pub environment: String,
    /// Newest first.
    pub events: Vec<EnvEventView>,
}

/// One change of an environment, with the version its release holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvEventView {
    /// The journal's record, its fields at the top level.
    #[serde(flatten)]
    pub event: EnvEvent,
    /// The version of `event.release_id`, if the journal still has it.
    pub version: Option<String>,
}

/// `GET /v1/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentList {
    /// Newest first.
    pub deployments: Vec<Deployment>,
}

/// `GET /v1/deployments/ID`: the deployment, its steps, and the manual gate
/// it waits at, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub deployment: Deployment,
    /// In the order they started.
    pub steps: Vec<StepView>,
    /// The manual gate it waits at, if it does.
    pub waiting_approval: Option<WaitingApproval>,
}

/// A step and how long it took (`None` while it runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepView {
    /// The journal's record, its fields at the top level.
    #[serde(flatten)]
    pub step: StepRecord,
    /// `ended_at - started_at`; `None` while it runs.
    pub duration_ms: Option<i64>,
}

impl From<StepRecord> for StepView {
    fn from(step: StepRecord) -> Self {
        let duration_ms = step.ended_at.map(|end| end - step.started_at);
        Self { step, duration_ms }
    }
}

/// The environment a deployment waits to enter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitingApproval {
    /// The environment it waits to enter.
    pub environment: String,
    pub approval: PendingApproval,
}

/// `GET /v1/deployments/ID/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentLogs {
    /// The deployment's id.
    pub deployment: i64,
    /// Each step, in order, with its lines.
    pub steps: Vec<StepLogs>,
}

/// One step and its plugin's log lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLogs {
    pub step: StepRecord,
    /// Redacted, in the order they were written.
    pub logs: Vec<LogRecord>,
}

/// `POST .../rollback` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to go back to; default: the environment's last good one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `POST .../rollback` answer (202): the deployment that does it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackStarted {
    /// The id of the rollback's own deployment (follow it with `show`).
    pub deployment: i64,
    pub app: String,
    pub environment: String,
}

/// `POST .../approve` body: nothing yet, but a typo'd field is refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {}

/// `POST .../approve` answer: the deployment let in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approved {
    /// The deployment let in, and its version.
    pub deployment: i64,
    pub app: String,
    pub environment: String,
    pub version: String,
}

/// Every error: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, and what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::DeploymentState;

    /// The CLI reads what the server writes: a view survives the trip
    /// through JSON, flattened fields included.
    #[test]
    fn views_read_back_what_they_write() {
        let step = StepRecord {
            id: 3,
            deployment_id: 1,
            environment: Some("staging".into()),
            kind: "smoke-test".into(),
            plugin: "http-check".into(),
            attempt: 1,
            started_at: 1_000,
            ended_at: Some(1_250),
            outcome: Some("ok".into()),
            message: None,
        };
        let view = DeploymentView {
            deployment: Deployment {
                id: 1,
                app: "web".into(),
                version: "1.0.0".into(),
                spec_hash: "abc".into(),
                release_id: Some("web-1.0.0-1".into()),
                state: DeploymentState::Succeeded,
                reason: None,
                started_at: 900,
                ended_at: Some(2_000),
            },
            steps: vec![step.into()],
            waiting_approval: None,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["steps"][0]["duration_ms"], 250);
        assert_eq!(json["steps"][0]["kind"], "smoke-test");
        assert_eq!(json["deployment"]["state"], "succeeded");
        let back: DeploymentView = serde_json::from_value(json).unwrap();
        assert_eq!(back.steps[0].step.plugin, "http-check");
        assert_eq!(back.steps[0].duration_ms, Some(250));
        assert_eq!(back.deployment.state, DeploymentState::Succeeded);
    }

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        let e = serde_json::from_str::<RollbackRequest>(r#"{"version": "1.0.0"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `version`"), "{e}");
        assert!(serde_json::from_str::<ApproveRequest>(r#"{"x": 1}"#).is_err());
    }
}
