//! `slipway:plugin@0.1`: the bindings of `wit/` (world `all-kinds`), the
//! conversions between its records and the host's, the export indices of
//! the step kinds a component implements, and the `host` interface served
//! from the capabilities (`caps/`).

use super::Described;
use crate::runtime::caps::exec::ExecRequest;
use crate::runtime::caps::log::Level;
use crate::runtime::state::StepState;
use crate::runtime::{Event, Health, ReleaseRef, StepContext, StepInput, StepKind, StepValue};
use wasmtime::component::{HasData, Instance, InstancePre, Linker};
use wasmtime::{Result, Store};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "all-kinds",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

use bindings::exports::slipway::plugin as exports;
use bindings::slipway::plugin::host;
use bindings::slipway::plugin::types as wit;

/// `HasData` projection: the host functions see the step's whole state and
/// hand each call to its capability.
struct HostImports;

impl HasData for HostImports {
    type Data<'a> = &'a mut StepState;
}

/// Link the `slipway:plugin/host` imports.
pub(crate) fn link(linker: &mut Linker<StepState>) -> Result<()> {
    host::add_to_linker::<_, HostImports>(linker, |s| s)
}

impl host::Host for StepState {
    async fn log(
        &mut self,
        level: host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> Result<()> {
        let level = match level {
            host::Level::Trace => Level::Trace,
            host::Level::Debug => Level::Debug,
            host::Level::Info => Level::Info,
            host::Level::Warn => Level::Warn,
            host::Level::Error => Level::Error,
        };
        self.log.serve(level, &message, fields);
        Ok(())
    }

    async fn exec(
        &mut self,
        request: host::ExecRequest,
    ) -> Result<std::result::Result<host::ExecOutput, String>> {
        let request = ExecRequest {
            program: request.program,
            args: request.args,
            cwd: request.cwd,
            env: request.env,
            timeout_ms: request.timeout_ms,
        };
        Ok(self.exec.serve(request).await.map(|out| host::ExecOutput {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            timed_out: out.timed_out,
            truncated: out.truncated,
        }))
    }

    async fn secret(&mut self, name: String) -> Result<std::result::Result<String, String>> {
        Ok(self.secrets.serve(&name, &self.log))
    }
}

impl bindings::slipway::plugin::types::Host for StepState {}

/// The export indices of the step kinds a component implements.
#[derive(Clone)]
pub(crate) struct Exports {
    plugin: exports::plugin::GuestIndices,
    build: Option<exports::build_step::GuestIndices>,
    deploy: Option<exports::deploy_step::GuestIndices>,
    smoke_test: Option<exports::smoke_test_step::GuestIndices>,
    health_check: Option<exports::health_check_step::GuestIndices>,
    rollback: Option<exports::rollback_step::GuestIndices>,
    notify: Option<exports::notify_step::GuestIndices>,
}

impl Exports {
    /// The indices of what `pre`'s component exports; it must at least
    /// export `describe`.
    pub(crate) fn find(pre: &InstancePre<StepState>) -> Result<Self, String> {
        let plugin = exports::plugin::GuestIndices::new(pre)
            .map_err(|e| format!("does not export slipway:plugin/plugin (describe): {e:#}"))?;
        Ok(Self {
            plugin,
            build: exports::build_step::GuestIndices::new(pre).ok(),
            deploy: exports::deploy_step::GuestIndices::new(pre).ok(),
            smoke_test: exports::smoke_test_step::GuestIndices::new(pre).ok(),
            health_check: exports::health_check_step::GuestIndices::new(pre).ok(),
            rollback: exports::rollback_step::GuestIndices::new(pre).ok(),
            notify: exports::notify_step::GuestIndices::new(pre).ok(),
        })
    }

    /// The step kinds the component exports, in `StepKind::ALL`'s order.
    pub(crate) fn kinds(&self) -> Vec<StepKind> {
        let present = [
            self.build.is_some(),
            self.deploy.is_some(),
            self.smoke_test.is_some(),
            self.health_check.is_some(),
            self.rollback.is_some(),
            self.notify.is_some(),
        ];
        StepKind::ALL
            .into_iter()
            .zip(present)
            .filter_map(|(k, p)| p.then_some(k))
            .collect()
    }

    /// Call `describe()` on an instance.
    pub(crate) async fn describe(
        &self,
        store: &mut Store<StepState>,
        instance: &Instance,
    ) -> Result<Described> {
        let info = self
            .plugin
            .load(&mut *store, instance)?
            .call_describe(&mut *store)
            .await?;
        Ok(Described {
            name: info.name,
            version: info.version,
            api_version: info.api_version,
            kinds: info.kinds.into_iter().map(kind_from_wit).collect(),
            params_schema: info.params_schema,
            description: info.description,
        })
    }

    /// Call the export of `kind` on an instance with the step's input. The
    /// outer error is a trap; the inner one the plugin's own failure.
    /// `kind` must be exported and `input` fit it (the caller checks both).
    pub(crate) async fn call(
        &self,
        store: &mut Store<StepState>,
        instance: &Instance,
        kind: StepKind,
        input: &StepInput,
    ) -> Result<std::result::Result<StepValue, String>> {
        let s = &mut *store;
        let not_exported = || wasmtime::format_err!("the plugin does not export a {kind} step");
        let ctx = || match input {
            StepInput::Step(ctx) => Ok(to_wit_context(ctx)),
            StepInput::Notify { .. } => {
                Err(wasmtime::format_err!("a {kind} step needs a step context"))
            }
        };
        Ok(match kind {
            StepKind::Build => {
                let g = self.build.as_ref().ok_or_else(not_exported)?;
                let g = g.load(&mut *s, instance)?;
                g.call_build(&mut *s, &ctx()?)
                    .await?
                    .map(|a| StepValue::Artifact {
                        dir: a.dir,
                        metadata: a.metadata,
                    })
            }
            StepKind::Deploy => {
                let g = self.deploy.as_ref().ok_or_else(not_exported)?;
                let g = g.load(&mut *s, instance)?;
                g.call_deploy(&mut *s, &ctx()?)
                    .await?
                    .map(|()| StepValue::Done)
            }
            StepKind::SmokeTest => {
                let g = self.smoke_test.as_ref().ok_or_else(not_exported)?;
                let g = g.load(&mut *s, instance)?;
                g.call_smoke_test(&mut *s, &ctx()?)
                    .await?
                    .map(|report| StepValue::Passed { report })
            }
            StepKind::HealthCheck => {
                let g = self.health_check.as_ref().ok_or_else(not_exported)?;
                let g = g.load(&mut *s, instance)?;
                let r = g.call_check(&mut *s, &ctx()?).await?;
                Ok(StepValue::Health {
                    status: health_from_wit(r.status),
                    message: r.message,
                })
            }
            StepKind::Rollback => {
                let g = self.rollback.as_ref().ok_or_else(not_exported)?;
                let g = g.load(&mut *s, instance)?;
                g.call_rollback(&mut *s, &ctx()?)
                    .await?
                    .map(|()| StepValue::Done)
            }
            StepKind::Notify => {
                let StepInput::Notify { event, params } = input else {
                    wasmtime::bail!("a notify step needs an event");
                };
                let g = self.notify.as_ref().ok_or_else(not_exported)?;
                let g = g.load(&mut *s, instance)?;
                g.call_notify(&mut *s, &to_wit_event(event), &params.to_string())
                    .await?
                    .map(|()| StepValue::Done)
            }
        })
    }
}

/// The WIT `step-kind` as the host's [`StepKind`].
fn kind_from_wit(kind: wit::StepKind) -> StepKind {
    match kind {
        wit::StepKind::Build => StepKind::Build,
        wit::StepKind::Deploy => StepKind::Deploy,
        wit::StepKind::SmokeTest => StepKind::SmokeTest,
        wit::StepKind::HealthCheck => StepKind::HealthCheck,
        wit::StepKind::Rollback => StepKind::Rollback,
        wit::StepKind::Notify => StepKind::Notify,
    }
}

fn health_from_wit(status: wit::HealthStatus) -> Health {
    match status {
        wit::HealthStatus::Healthy => Health::Healthy,
        wit::HealthStatus::Unhealthy => Health::Unhealthy,
        wit::HealthStatus::Unknown => Health::Unknown,
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
