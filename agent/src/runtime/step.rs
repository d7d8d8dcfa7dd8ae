//! The types of one step call, host side: what the caller asks for (the
//! kind, its input, the grants, limits and secrets of its sandbox) and
//! what comes back (a value or a `StepError`, with logs and duration).

use super::{Grants, Limits, LogLine, Redactor, StepKind, StepLabels};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A release as a step sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRef {
    pub version: String,
    pub id: String,
    pub dir: PathBuf,
}

/// What a step is about (the WIT `step-context`, host side).
#[derive(Debug, Clone)]
pub struct StepContext {
    pub app: String,
    pub environment: Option<String>,
    pub release: ReleaseRef,
    pub previous_release: Option<ReleaseRef>,
    pub params: serde_json::Value,
    pub attempt: u32,
}

/// A deployment state change (the WIT `event`), for `notify` steps.
#[derive(Debug, Clone)]
pub struct Event {
    pub app: String,
    pub environment: Option<String>,
    pub deployment_id: String,
    pub version: String,
    pub state: String,
    pub message: String,
}

/// The input of one step call.
#[derive(Debug, Clone)]
pub enum StepInput {
    Step(StepContext),
    Notify {
        event: Event,
        params: serde_json::Value,
    },
}

/// One step to run: the call, and the sandbox it runs in. Its `Debug`
/// names the secrets but never shows their values.
#[derive(Clone)]
pub struct StepRequest {
    pub kind: StepKind,
    pub input: StepInput,
    /// Effective grants (the plugin's, plus what the engine adds, such as
    /// the release directory).
    pub grants: Grants,
    pub limits: Limits,
    /// Values of the secrets this plugin is granted.
    pub secrets: BTreeMap<String, String>,
    /// Redacts every known secret, granted or not.
    pub redactor: Redactor,
    pub labels: StepLabels,
}

impl std::fmt::Debug for StepRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRequest")
            .field("kind", &self.kind)
            .field("input", &self.input)
            .field("grants", &self.grants)
            .field("limits", &self.limits)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Health as a check reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

/// What a step returned when it completed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StepValue {
    Artifact {
        dir: String,
        metadata: Vec<(String, String)>,
    },
    Done,
    Passed {
        report: String,
    },
    Health {
        status: Health,
        message: String,
    },
}

/// Why a step failed. The plugin's own verdict (`Failed`) is distinct from
/// the sandbox stopping it.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "type", content = "message", rename_all = "kebab-case")]
pub enum StepError {
    #[error("{0}")]
    Failed(String),
    #[error("stopped: wall-time limit of {0} ms exceeded")]
    Timeout(u64),
    #[error("stopped: {0}")]
    ResourceLimit(String),
    #[error("plugin crashed: {0}")]
    Trap(String),
    #[error("plugin does not implement `{0}`")]
    NotImplemented(StepKind),
    #[error("could not start the step: {0}")]
    Setup(String),
}

/// The result of one step, with its logs.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub result: Result<StepValue, StepError>,
    pub logs: Vec<LogLine>,
    pub duration: Duration,
}

impl StepOutcome {
    /// A step that failed before the plugin ran: no logs.
    pub fn not_run(error: StepError, duration: Duration) -> Self {
        Self {
            result: Err(error),
            logs: Vec::new(),
            duration,
        }
    }
}
