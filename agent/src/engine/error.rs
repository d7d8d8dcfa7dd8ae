//! Why a deployment, a gate or a rollback failed, as values.
//!
//! The engine decides on these (a failed gate rolls back, a failed
//! `pre_deploy` does not) and tests match their variants; people read their
//! `Display`, which is the reason the journal, the API, `slipway show` and
//! notifications carry. Each message names the environment, the step and
//! what the app said last, so a failed gate is never opaque.

use crate::runtime::StepError;
use crate::store::StoreError;
use std::fmt;

/// Why the engine refused an operator's request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

/// Why a deployment ended before every environment passed its gates.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The source could not be placed, or the build step failed. Nothing
    /// was activated.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// A `pre_deploy` step failed: the environment was not touched.
    #[error("{env}: pre_deploy[{index}] ({plugin}) failed, release not activated: {error}")]
    PreDeploy {
        env: String,
        index: usize,
        plugin: String,
        error: StepError,
    },
    /// A gate failed and the environment is back on its last good release.
    #[error("{env}: {gate}")]
    Gate { env: String, gate: GateFailure },
    /// A gate failed and the environment could not be (or was not to be)
    /// put back on its last good release.
    #[error("{env}: {gate}\nnot rolled back: {why}")]
    NotRolledBack {
        env: String,
        gate: GateFailure,
        why: RollbackError,
    },
    /// An event arrived that the deployment's phase cannot take (a bug;
    /// the deployment ends rather than guess).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DeploymentError {
    /// The environment the failure happened in, if past the build.
    pub fn env(&self) -> Option<&str> {
        match self {
            Self::PreDeploy { env, .. } | Self::Gate { env, .. } => Some(env),
            Self::NotRolledBack { env, .. } => Some(env),
            Self::Build(_) | Self::Internal(_) => None,
        }
    }
}

/// Why a deployment stopped at a manual gate; nothing past it was touched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Cancelled {
    #[error("{env}: not approved within {} s; {env} was not touched", within.as_secs())]
    NotApproved {
        env: String,
        within: std::time::Duration,
    },
    #[error(
        "{env}: superseded by a newer config while waiting for approval; {env} was not touched"
    )]
    Superseded { env: String },
}

/// Why a release could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The source could not be copied, downloaded or unpacked.
    #[error("{0}")]
    Source(String),
    /// The build step failed.
    #[error("build failed: {0}")]
    Step(StepError),
    /// The build step returned something other than an artifact.
    #[error("build returned {0}, not an artifact")]
    NotAnArtifact(String),
    /// The release could not be recorded.
    #[error("{0}")]
    Journal(#[from] StoreError),
}

/// The gate an environment failed, with the evidence.
#[derive(Debug, thiserror::Error)]
pub enum GateFailure {
    /// The deploy step failed.
    #[error("deploy failed: {0}")]
    Deploy(StepError),
    /// The supervised process did not start.
    #[error("could not start the app: {0}")]
    Start(String),
    /// The canary's own figures were worse than its limits and than the
    /// stable release's over the same window.
    #[error("canary failed: {0}")]
    Canary(String),
    /// Traffic could not be switched to the release (the traffic layer
    /// did not answer or refused); the previous release still serves.
    #[error("could not switch traffic to the release: {0}")]
    Switch(String),
    /// The smoke test failed.
    #[error("smoke test failed: {error}{app_log}")]
    Smoke { error: StepError, app_log: AppLog },
    /// The bake saw `failures` consecutive failed checks.
    #[error("unhealthy: {failures} consecutive failed health checks; last: {last}{app_log}")]
    Unhealthy {
        failures: u32,
        last: CheckResult,
        app_log: AppLog,
    },
    /// The bake ended without `needed` consecutive passes.
    #[error(
        "not healthy within {bake_ms} ms ({passes} of {needed} consecutive passes); last: {last}{app_log}"
    )]
    NotHealthy {
        bake_ms: u128,
        passes: u32,
        needed: u32,
        last: CheckResult,
        app_log: AppLog,
    },
    /// A transition of the gate could not be journaled.
    #[error("{0}")]
    Journal(#[from] StoreError),
}

/// What one health check said.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckResult {
    /// The plugin answered healthy; its message.
    Healthy(String),
    /// The plugin answered unhealthy; its message.
    Unhealthy(String),
    /// The plugin could not tell; its message.
    Unknown(String),
    /// The step did not complete.
    Step(StepError),
    /// The plugin returned something other than a health result.
    Unexpected(String),
}

impl CheckResult {
    /// Whether the check passed.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy(_))
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The plugin's message says what it saw ("GET http://… returned
            // 503"); the reason around it already says "unhealthy".
            Self::Healthy(message) | Self::Unhealthy(message) => f.write_str(message),
            Self::Unknown(message) => write!(f, "health unknown: {message}"),
            Self::Step(e) => write!(f, "{e}"),
            Self::Unexpected(v) => write!(f, "unexpected result {v}"),
        }
    }
}

/// The last lines of the app's own log, shown under a failed gate's reason
/// (empty for an app the agent does not run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppLog(pub String);

impl fmt::Display for AppLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.trim().is_empty() {
            Ok(())
        } else {
            write!(f, "\napp log (last lines):\n{}", self.0)
        }
    }
}

/// Why an environment was not put back on a good release.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// `on_failure = "stop"`: left for a person.
    #[error("on_failure = stop: the release was left in place")]
    LeftInPlace,
    /// There was nothing good to run, so the environment was stopped.
    #[error("{why}; {env} was stopped")]
    Stopped { env: String, why: StopCause },
    /// The rollback could not be journaled, so it was not done.
    #[error("could not record the rollback, so it was not done: {0}")]
    NotRecorded(StoreError),
}

/// Why a rollback stopped an environment instead.
#[derive(Debug, thiserror::Error)]
pub enum StopCause {
    #[error("no earlier good release")]
    NoGoodRelease,
    #[error("the last good release {release} cannot start: {why}")]
    CannotStart { release: String, why: String },
    #[error("could not restart the last good release {release}: {why}")]
    RestartFailed { release: String, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_gate_reads_as_before_with_the_word_unhealthy_once() {
        let gate = GateFailure::Unhealthy {
            failures: 2,
            last: CheckResult::Unhealthy("GET http://127.0.0.1:8081/ returned 503".into()),
            app_log: AppLog("panic: no database\n".into()),
        };
        let e = DeploymentError::NotRolledBack {
            env: "production".into(),
            gate,
            why: RollbackError::Stopped {
                env: "production".into(),
                why: StopCause::NoGoodRelease,
            },
        };
        assert_eq!(
            e.to_string(),
            "production: unhealthy: 2 consecutive failed health checks; last: GET http://127.0.0.1:8081/ returned 503\n\
             app log (last lines):\npanic: no database\n\n\
             not rolled back: no earlier good release; production was stopped"
        );
        assert_eq!(e.env(), Some("production"));
    }

    #[test]
    fn an_empty_app_log_adds_nothing() {
        let gate = GateFailure::Smoke {
            error: StepError::Failed("expected 200, got 500".into()),
            app_log: AppLog("  \n".into()),
        };
        assert_eq!(gate.to_string(), "smoke test failed: expected 200, got 500");
    }
}
