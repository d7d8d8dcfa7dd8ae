//! A loaded plugin and how one step runs in it: a fresh instance in a new
//! sandbox per call, the WIT call for the step's kind, and the result
//! redacted and capped before the caller sees it.

use super::caps::keepalive::ConnectionPool;
use super::load::Exports;
use super::sandbox::Sandbox;
use super::state::StepState;
use super::state::bindings::slipway::plugin::types as wit;
use super::{
    CacheOutcome, Event, Grants, Health, Limits, PluginInfo, PluginSource, Redactor, ReleaseRef,
    Slots, StepContext, StepError, StepInput, StepKind, StepLabels, StepOutcome, StepRequest,
    StepValue, limits,
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

    pub(super) async fn describe(&self) -> Result<wit::PluginInfo, String> {
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
        let indices = self.exports.plugin.clone();
        let pre = self.pre.clone();
        let result = sandbox
            .run(&request.limits, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                indices
                    .load(&mut *store, &instance)?
                    .call_describe(&mut *store)
                    .await
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
        let pre = self.pre.clone();
        let ex = self.exports.clone();
        let kind = request.kind;
        let (ctx, notify) = match &request.input {
            StepInput::Step(ctx) => (Some(to_wit_context(ctx)), None),
            StepInput::Notify { event, params } => {
                (None, Some((to_wit_event(event), params.to_string())))
            }
        };
        let missing = || StepError::Setup(format!("a {kind} step needs a step context"));
        if kind == StepKind::Notify && notify.is_none() || kind != StepKind::Notify && ctx.is_none()
        {
            return Err(missing());
        }
        sandbox
            .run(&request.limits, async |store| {
                let instance = match warm {
                    Some(instance) => instance,
                    None => pre.instantiate_async(&mut *store).await?,
                };
                let s = &mut *store;
                let value = match kind {
                    StepKind::Build => {
                        let g = ex
                            .build
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_build(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|a| StepValue::Artifact {
                                dir: a.dir,
                                metadata: a.metadata,
                            })
                    }
                    StepKind::Deploy => {
                        let g = ex
                            .deploy
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_deploy(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|()| StepValue::Done)
                    }
                    StepKind::SmokeTest => {
                        let g = ex
                            .smoke_test
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_smoke_test(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|report| StepValue::Passed { report })
                    }
                    StepKind::HealthCheck => {
                        let g = ex
                            .health_check
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        let r = g
                            .call_check(&mut *s, ctx.as_ref().expect("checked"))
                            .await?;
                        let status = match r.status {
                            wit::HealthStatus::Healthy => Health::Healthy,
                            wit::HealthStatus::Unhealthy => Health::Unhealthy,
                            wit::HealthStatus::Unknown => Health::Unknown,
                        };
                        Ok(StepValue::Health {
                            status,
                            message: r.message,
                        })
                    }
                    StepKind::Rollback => {
                        let g = ex
                            .rollback
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_rollback(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|()| StepValue::Done)
                    }
                    StepKind::Notify => {
                        let g = ex
                            .notify
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        let (event, params) = notify.as_ref().expect("checked");
                        g.call_notify(&mut *s, event, params)
                            .await?
                            .map(|()| StepValue::Done)
                    }
                };
                Ok(value)
            })
            .await?
            .map_err(StepError::Failed)
    }
}

fn to_wit_release(r: &ReleaseRef) -> wit::Release {
    wit::Release {
        version: r.version.clone(),
        id: r.id.clone(),
        dir: r.dir.to_string_lossy().into_owned(),
    }
}

fn to_wit_context(ctx: &StepContext) -> wit::StepContext {
    wit::StepContext {
        app: ctx.app.clone(),
        environment: ctx.environment.clone(),
        release: to_wit_release(&ctx.release),
        previous_release: ctx.previous_release.as_ref().map(to_wit_release),
        params: ctx.params.to_string(),
        attempt: ctx.attempt,
    }
}

fn to_wit_event(e: &Event) -> wit::Event {
    wit::Event {
        app: e.app.clone(),
        environment: e.environment.clone(),
        deployment_id: e.deployment_id.clone(),
        version: e.version.clone(),
        state: e.state.clone(),
        message: e.message.clone(),
    }
}
