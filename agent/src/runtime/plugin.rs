//! A loaded plugin and how one step runs in it: a fresh instance in a new
//! sandbox per call, the WIT call for the step's kind, and the result
//! redacted and capped before the caller sees it.

use super::caps::keepalive::ConnectionPool;
use super::sandbox::Sandbox;
use super::state::StepState;
use super::wit::{Described, Exports};
use super::{
    CacheOutcome, Event, Grants, Limits, PluginInfo, PluginSource, Redactor, Slots, StepError,
    StepInput, StepKind, StepLabels, StepOutcome, StepRequest, StepValue, limits,
};
use semver::Version;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::InstancePre;

/// Limits for `describe()` at load time: it must be cheap and pure.
fn describe_limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(5),
        memory_bytes: 256 * 1024 * 1024,
        ..Limits::default()
    }
}

/// A loaded plugin: compiled, checked and described; ready to run steps.
pub struct Plugin {
    pub source: PluginSource,
    pub sha256: String,
    /// API version read from the component's interface names.
    pub api_version: Version,
    /// Whether this load hit the compile cache.
    pub cache: CacheOutcome,
    pub(super) engine: Engine,
    pub(super) pre: InstancePre<StepState>,
    pub(super) exports: Exports,
    pub(super) info: Option<(PluginInfo, Arc<jsonschema::Validator>)>,
    pub(super) slots: Arc<Slots>,
    pub(super) http: Arc<ConnectionPool>,
}

impl Plugin {
    pub fn info(&self) -> &PluginInfo {
        &self.info.as_ref().expect("plugin described at load").0
    }

    /// Check step params against the plugin's schema; one message per
    /// violation, each naming the offending path.
    pub fn validate_params(&self, params: &serde_json::Value) -> Result<(), Vec<String>> {
        let validator = &self.info.as_ref().expect("plugin described at load").1;
        let errors: Vec<String> = validator
            .iter_errors(params)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn implements(&self, kind: StepKind) -> bool {
        self.exports.kinds().contains(&kind)
    }

    pub(super) async fn describe(&self) -> Result<Described, String> {
        let request = StepRequest {
            kind: StepKind::Notify,
            input: StepInput::Notify {
                event: Event {
                    app: String::new(),
                    environment: None,
                    deployment_id: String::new(),
                    version: String::new(),
                    state: String::new(),
                    message: String::new(),
                },
                params: serde_json::Value::Null,
            },
            grants: Grants::default(),
            limits: describe_limits(),
            secrets: BTreeMap::new(),
            redactor: Redactor::default(),
            labels: StepLabels {
                plugin: self.source.to_string(),
                kind: "describe".into(),
                ..Default::default()
            },
        };
        let _slot = self.slots.acquire().await;
        let mut sandbox =
            Sandbox::new(&self.engine, &self.http, &request).map_err(|e| e.to_string())?;
        let exports = self.exports.clone();
        let pre = self.pre.clone();
        let result = sandbox
            .run(&request.limits, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                exports.describe(store, &instance).await
            })
            .await;
        result.map_err(|e| e.to_string())
    }

    /// Run one step in a fresh instance. Never panics and never hangs past
    /// the step's wall time; every failure is a `StepError`.
    pub async fn run(&self, request: &StepRequest) -> StepOutcome {
        let started = Instant::now();
        let _slot = self.slots.acquire().await;
        let mut sandbox = match Sandbox::new(&self.engine, &self.http, request) {
            Ok(s) => s,
            Err(e) => return StepOutcome::not_run(e, started.elapsed()),
        };
        crate::metrics::metrics()
            .plugin_instantiations
            .get_or_create(&crate::metrics::PluginLabels {
                plugin: request.labels.plugin.clone(),
            })
            .inc();
        let result = self.call(&mut sandbox, request, None).await;
        StepOutcome {
            result: finish_result(request, result),
            logs: sandbox.finish(),
            duration: started.elapsed(),
        }
    }
}

/// A step's result as the caller sees it: strings redacted and capped.
pub(super) fn finish_result(
    request: &StepRequest,
    result: Result<StepValue, StepError>,
) -> Result<StepValue, StepError> {
    let max = request.limits.max_output_bytes;
    let redact = |s: String| limits::truncate(request.redactor.redact(&s), max);
    match result {
        Ok(StepValue::Passed { report }) => Ok(StepValue::Passed {
            report: redact(report),
        }),
        Ok(StepValue::Health { status, message }) => Ok(StepValue::Health {
            status,
            message: redact(message),
        }),
        Ok(StepValue::Artifact { dir, metadata }) => Ok(StepValue::Artifact {
            dir: redact(dir),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (redact(k), redact(v)))
                .collect(),
        }),
        Ok(StepValue::Done) => Ok(StepValue::Done),
        Err(StepError::Failed(m)) => Err(StepError::Failed(redact(m))),
        Err(StepError::Trap(m)) => Err(StepError::Trap(redact(m))),
        Err(other) => Err(other),
    }
}

impl Plugin {
    pub(super) async fn call(
        &self,
        sandbox: &mut Sandbox,
        request: &StepRequest,
        warm: Option<wasmtime::component::Instance>,
    ) -> Result<StepValue, StepError> {
        if !self.implements(request.kind) {
            return Err(StepError::NotImplemented(request.kind));
        }
        let kind = request.kind;
        // A notify step takes an event; every other kind a step context.
        let is_event = matches!(request.input, StepInput::Notify { .. });
        if (kind == StepKind::Notify) != is_event {
            return Err(StepError::Setup(if is_event {
                format!("a {kind} step needs a step context, not an event")
            } else {
                format!("a {kind} step needs an event")
            }));
        }
        let pre = self.pre.clone();
        let exports = self.exports.clone();
        let input = &request.input;
        sandbox
            .run(&request.limits, async |store| {
                let instance = match warm {
                    Some(instance) => instance,
                    None => pre.instantiate_async(&mut *store).await?,
                };
                exports.call(store, &instance, kind, input).await
            })
            .await?
            .map_err(StepError::Failed)
    }
}
