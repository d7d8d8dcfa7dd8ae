//! The step runner: the one place a plugin step's request is built, run
//! (fresh or on a warm instance), journaled, measured and logged.
//!
//! Deployments, rollbacks, the health guard and notifications all describe
//! the step they want as a [`StepCall`] and hand it here; none of them
//! builds a `StepRequest` or touches `/metrics` for a step. That keeps the
//! rules in one place: a step gets exactly its plugin's grants and secrets
//! plus the release directory (writable only for a build), its limits, and
//! the labels its logs and metrics carry.
//!
//! It decides nothing about what a result means: that is the caller's
//! (a gate, the bake's tally, the guard).

use super::desired::Desired;
use crate::config::StepConfig;
use crate::runtime::{
    DirGrant, Event, Health, Limits, Plugin, ReleaseRef, StepContext, StepError, StepInput,
    StepKind, StepLabels, StepOutcome, StepRequest, StepValue, Warm,
};
use crate::store::{Journal, LogRecord};
use crate::vocab::{StepRole, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Default wall time of a build step.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Default wall time of a notify step: room for the webhook plugin's
/// default three attempts of 5 s each, with their delays.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default wall time of every other step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The plugin world a step of this role calls.
pub(super) fn kind_of(role: StepRole) -> StepKind {
    match role {
        StepRole::Build => StepKind::Build,
        StepRole::PreDeploy | StepRole::Deploy => StepKind::Deploy,
        StepRole::SmokeTest => StepKind::SmokeTest,
        StepRole::HealthCheck | StepRole::RollbackCheck => StepKind::HealthCheck,
        StepRole::Rollback | StepRole::OnRollback => StepKind::Rollback,
        StepRole::Notify => StepKind::Notify,
    }
}

/// The latest health check of an environment (during a bake or after).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    /// healthy, unhealthy, unknown, or how the step failed (timeout, trap...).
    pub result: Verdict,
    pub message: String,
    /// When, ms since the epoch.
    pub at: i64,
}

/// The warm health-check instance of one (app, environment).
pub(crate) type WarmSlot = Arc<tokio::sync::Mutex<Option<Warm>>>;

/// One step a caller wants run.
pub(super) struct StepCall<'a> {
    pub desired: &'a Desired,
    /// The deployment it belongs to; `None` for the health guard's checks,
    /// which are counted and logged but not journaled one by one.
    pub deployment: Option<i64>,
    pub env: Option<&'a str>,
    pub role: StepRole,
    pub step: &'a StepConfig,
    pub on: Subject<'a>,
}

/// What a step works on.
pub(super) enum Subject<'a> {
    /// A release (and the one it replaces), for every step but notify.
    Release {
        release: &'a ReleaseRef,
        previous: Option<&'a ReleaseRef>,
        attempt: u32,
        /// The release's own port (`traffic`): `${release.port}` and
        /// `${release.addr}` in the step's params become it.
        port: Option<u16>,
    },
    /// A deployment's state change, for a notify step: no release
    /// directory, since a notification has nothing to read on disk.
    Event(&'a Event),
}

/// A step ready to run: its plugin and its request. The health guard keeps
/// one per environment and release, so a check every second does not
/// rebuild it.
pub(super) struct PreparedStep {
    plugin: Arc<Plugin>,
    /// Health checks of a `warm` plugin reuse an instance.
    warm: bool,
    request: StepRequest,
    /// Looked up at the first run instead of at every one: the warm slot,
    /// and the metrics a passing health check counts in.
    slot: OnceLock<WarmSlot>,
    passed: OnceLock<(
        prometheus_client::metrics::histogram::Histogram,
        prometheus_client::metrics::counter::Counter,
    )>,
}

/// Runs steps; owns the latest health report and the warm instance of each
/// (app, environment).
pub(crate) struct Runner {
    journal: Arc<Journal>,
    /// Latest check by app, then environment (looked up by `&str`: written
    /// 400 times a second under the load bench).
    health: Mutex<HashMap<String, HashMap<String, HealthReport>>>,
    warm: Mutex<HashMap<(String, String), WarmSlot>>,
}

impl Runner {
    pub(crate) fn new(journal: Arc<Journal>) -> Self {
        Self {
            journal,
            health: Mutex::new(HashMap::new()),
            warm: Mutex::new(HashMap::new()),
        }
    }

    /// The latest health check of an environment, if one ran since start.
    pub(crate) fn health(&self, app: &str, env: &str) -> Option<HealthReport> {
        let health = self.health.lock().expect("health map poisoned");
        health.get(app)?.get(env).cloned()
    }

    /// Run a step and journal it (start, end, outcome, logs) when it
    /// belongs to a deployment.
    pub(super) async fn run(&self, call: &StepCall<'_>) -> StepOutcome {
        let open = self.open(call);
        let outcome = match prepare(call) {
            Ok(prepared) => self.run_prepared(&prepared).await,
            Err(outcome) => outcome,
        };
        if let Some(open) = open {
            open.finish(&outcome);
        }
        outcome
    }

    /// Journal the start of `call`'s step, if it belongs to a deployment.
    /// Only a notify step is closed as `interrupted` if its future is
    /// dropped (the agent stops while a receiver hangs); a deployment's
    /// open step is left for recovery to name in the deployment's reason.
    fn open(&self, call: &StepCall<'_>) -> Option<OpenStep<'_>> {
        let deployment = call.deployment?;
        let attempt = match call.on {
            Subject::Release { attempt, .. } => attempt,
            Subject::Event(_) => 1,
        };
        let id = self
            .journal
            .start_step(deployment, call.env, call.role, &call.step.plugin, attempt)
            .map_err(|e| tracing::error!(error = %e, "could not journal a step"))
            .ok()?;
        let on_drop = matches!(call.on, Subject::Event(_))
            .then_some("the agent stopped before this notification was delivered");
        Some(OpenStep {
            journal: &self.journal,
            id,
            on_drop,
        })
    }

    /// Run a prepared step: log it, count it in /metrics and, for a health
    /// check, keep it as the environment's latest.
    pub(super) async fn run_prepared(&self, prepared: &PreparedStep) -> StepOutcome {
        let PreparedStep {
            plugin,
            warm,
            request,
            slot,
            passed,
        } = prepared;
        let labels = &request.labels;
        let outcome = if *warm {
            // One warm instance per (app, environment): checks every
            // `interval` do not pay instantiation (see `Plugin::run_warm`).
            let slot = slot.get_or_init(|| self.warm_slot(&labels.app, &labels.environment));
            let mut slot = slot.lock().await;
            plugin.run_warm(&mut slot, request).await
        } else {
            plugin.run(request).await
        };
        let (verdict, message) = describe(&outcome);
        log_outcome(plugin, request, verdict, &message, &outcome);
        let metrics = crate::metrics::metrics();
        let health = request.kind == StepKind::HealthCheck;
        if health && verdict == Verdict::Healthy {
            let (took, checks) = passed.get_or_init(|| {
                (
                    metrics.step_metric(&labels.kind, &labels.plugin, verdict),
                    metrics.health_metric(&labels.app, &labels.environment, verdict),
                )
            });
            took.observe(outcome.duration.as_secs_f64());
            checks.inc();
        } else {
            metrics.step(&labels.kind, &labels.plugin, verdict, outcome.duration);
            if health {
                metrics.health(&labels.app, &labels.environment, verdict);
            }
        }
        if health {
            self.record_health(&labels.app, &labels.environment, verdict, &message);
        }
        outcome
    }

    /// The warm-instance slot of (app, env): never shared between apps.
    fn warm_slot(&self, app: &str, env: &str) -> WarmSlot {
        let mut warm = self.warm.lock().expect("warm slots poisoned");
        warm.entry((app.to_string(), env.to_string()))
            .or_default()
            .clone()
    }

    fn record_health(&self, app: &str, env: &str, result: Verdict, message: &str) {
        let at = crate::store::now_ms();
        let mut health = self.health.lock().expect("health map poisoned");
        let envs = match health.get_mut(app) {
            Some(envs) => envs,
            None => health.entry(app.to_string()).or_default(),
        };
        match envs.get_mut(env) {
            // Written in place: a passing check's message is the same
            // length second after second.
            Some(report) => {
                report.result = result;
                report.message.clear();
                report.message.push_str(message);
                report.at = at;
            }
            None => {
                let report = HealthReport {
                    result,
                    message: message.to_string(),
                    at,
                };
                envs.insert(env.to_string(), report);
            }
        }
    }
}

/// The request of a step, or the outcome of a step that cannot run (its
/// plugin is not loaded).
pub(super) fn prepare(call: &StepCall<'_>) -> Result<PreparedStep, StepOutcome> {
    let desired = call.desired;
    let app = &desired.app.name;
    let step = call.step;
    let kind = kind_of(call.role);
    let (Some(plugin), Some(plugin_cfg)) = (
        desired.plugins.get(&step.plugin),
        desired.config.plugins.get(&step.plugin),
    ) else {
        let error = StepError::Setup(format!("plugin `{}` is not loaded", step.plugin));
        return Err(StepOutcome::not_run(error, Duration::ZERO));
    };
    let mut grants = plugin_cfg.grants.clone();
    let (input, default_timeout) = match call.on {
        Subject::Release {
            release,
            previous,
            attempt,
            port,
        } => {
            grants.dirs.push(DirGrant {
                path: release.dir.clone(),
                write: kind == StepKind::Build,
            });
            let input = StepInput::Step(StepContext {
                app: app.clone(),
                environment: call.env.map(str::to_string),
                release: release.clone(),
                previous_release: previous.cloned(),
                params: with_port(&step.params, port),
                attempt,
            });
            let timeout = if kind == StepKind::Build {
                BUILD_TIMEOUT
            } else {
                STEP_TIMEOUT
            };
            (input, timeout)
        }
        Subject::Event(event) => {
            let input = StepInput::Notify {
                event: event.clone(),
                params: step.params.clone(),
            };
            (input, NOTIFY_TIMEOUT)
        }
    };
    let limits = Limits {
        wall_time: step
            .timeout
            .or(plugin_cfg.timeout)
            .unwrap_or(default_timeout),
        memory_bytes: plugin_cfg.memory.unwrap_or(Limits::default().memory_bytes),
        ..Limits::default()
    };
    let request = StepRequest {
        kind,
        input,
        grants,
        limits,
        // Exactly the plugin's granted secrets; redaction of all of them.
        secrets: desired.config.step_secrets(&plugin_cfg.grants.secrets),
        redactor: desired.config.redactor(),
        labels: StepLabels {
            plugin: step.plugin.clone(),
            kind: call.role.as_str().to_string(),
            app: app.clone(),
            environment: call.env.unwrap_or_default().to_string(),
            deployment: call.deployment.map(|d| d.to_string()).unwrap_or_default(),
        },
    };
    Ok(PreparedStep {
        plugin: plugin.clone(),
        warm: kind == StepKind::HealthCheck && plugin_cfg.warm,
        request,
        slot: OnceLock::new(),
        passed: OnceLock::new(),
    })
}

/// `params` with `${release.port}` and `${release.addr}` in every string
/// replaced by the release's own port and `127.0.0.1:PORT` (left as they
/// are without one: `slipway validate` refuses them outside `traffic`).
pub(super) fn with_port(params: &serde_json::Value, port: Option<u16>) -> serde_json::Value {
    use serde_json::Value;
    let Some(port) = port else {
        return params.clone();
    };
    match params {
        Value::String(s) if s.contains("${release.") => Value::String(
            s.replace("${release.port}", &port.to_string())
                .replace("${release.addr}", &format!("127.0.0.1:{port}")),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| with_port(v, Some(port))).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), with_port(v, Some(port))))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A journaled step not finished yet.
struct OpenStep<'a> {
    journal: &'a Journal,
    id: i64,
    /// Recorded as the `interrupted` step's message if it is dropped
    /// unfinished; `None` leaves it open.
    on_drop: Option<&'static str>,
}

impl OpenStep<'_> {
    fn finish(mut self, outcome: &StepOutcome) {
        self.on_drop = None;
        let (verdict, message) = describe(outcome);
        let logs: Vec<LogRecord> = outcome
            .logs
            .iter()
            .map(|l| LogRecord {
                at: l
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                level: format!("{:?}", l.level).to_lowercase(),
                source: format!("{:?}", l.source).to_lowercase(),
                message: l.message.clone(),
                fields: l.fields.clone(),
            })
            .collect();
        if let Err(e) = self.journal.finish_step(self.id, verdict, &message, &logs) {
            tracing::error!(error = %e, "could not journal a step result");
        }
    }
}

impl Drop for OpenStep<'_> {
    fn drop(&mut self) {
        if let Some(message) = self.on_drop {
            let _ = self
                .journal
                .finish_step(self.id, Verdict::Interrupted, message, &[]);
        }
    }
}

/// (verdict, message) of an outcome, for the journal, logs and metrics.
pub(super) fn describe(outcome: &StepOutcome) -> (Verdict, String) {
    match &outcome.result {
        Ok(StepValue::Health { status, message }) => {
            let verdict = match status {
                Health::Healthy => Verdict::Healthy,
                Health::Unhealthy => Verdict::Unhealthy,
                Health::Unknown => Verdict::Unknown,
            };
            (verdict, message.clone())
        }
        Ok(StepValue::Passed { report }) => (Verdict::Ok, report.clone()),
        Ok(StepValue::Artifact { dir, .. }) => (Verdict::Ok, format!("artifact {dir}")),
        Ok(StepValue::Done) => (Verdict::Ok, String::new()),
        Err(StepError::Failed(m)) => (Verdict::Failed, m.clone()),
        Err(e @ StepError::Timeout(_)) => (Verdict::Timeout, e.to_string()),
        Err(e @ StepError::ResourceLimit(_)) => (Verdict::Limit, e.to_string()),
        Err(e @ StepError::Trap(_)) => (Verdict::Trap, e.to_string()),
        Err(e) => (Verdict::Error, e.to_string()),
    }
}

fn log_outcome(
    plugin: &Plugin,
    request: &StepRequest,
    result: Verdict,
    message: &str,
    outcome: &StepOutcome,
) {
    let l = &request.labels;
    let first_line = message.lines().next().unwrap_or("");
    let took_ms = outcome.duration.as_millis() as u64;
    // The health guard's routine passes (no deployment; every `interval`
    // for every environment: 400 lines a second for 200 apps) are debug;
    // they are counted in /metrics and the latest shows in `slipway status`.
    if l.deployment.is_empty() && result == Verdict::Healthy {
        tracing::debug!(
            app = %l.app, env = %l.environment, step = %l.kind, plugin = %plugin.info().name,
            result = result.as_str(), took_ms, "{first_line}"
        );
        return;
    }
    tracing::info!(
        app = %l.app, env = %l.environment, deployment = %l.deployment, step = %l.kind,
        plugin = %plugin.info().name, result = result.as_str(), took_ms, "{first_line}"
    );
}
