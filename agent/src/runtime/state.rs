//! The data one step's `Store` holds: each capability's per-step state,
//! side by side, and the resource table and limiter they share. Which
//! capability builds, links and serves each part is in `caps/` (one module
//! each) and, for the `slipway:plugin/host` functions, in the WIT glue of
//! the plugin API version (`wit/`).

use super::caps::{self, exec::Exec, http::HttpPolicy, log::StepLog, secret::Secrets};
use super::limits::Limiter;
use super::{StepInput, StepRequest};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;

/// Everything one step's sandbox owns.
pub(crate) struct StepState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub http_policy: HttpPolicy,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub log: StepLog,
    pub exec: Exec,
    pub secrets: Secrets,
}

/// What a capability needs to build its part of one step's state.
pub(crate) struct Setup<'a> {
    pub request: &'a StepRequest,
    /// The step's log, shared by every capability that writes to it.
    pub log: &'a StepLog,
    /// When the step's wall time ends (the guest's and its host calls').
    pub deadline: Instant,
    /// Idle HTTP connections shared by every step.
    pub pool: &'a Arc<caps::keepalive::ConnectionPool>,
}

impl Setup<'_> {
    /// The release directory, where programs run unless told otherwise
    /// (`None` for a notify step, which has no release).
    pub fn release_dir(&self) -> Option<std::path::PathBuf> {
        match &self.request.input {
            StepInput::Step(ctx) => Some(ctx.release.dir.clone()),
            StepInput::Notify { .. } => None,
        }
    }
}

impl StepState {
    /// One step's state: each capability builds its own part.
    pub fn new(setup: &Setup<'_>, wasi: WasiCtx) -> Self {
        let limits = &setup.request.limits;
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            http_policy: HttpPolicy::for_step(setup),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(limits.max_resources);
                table
            },
            limiter: Limiter::new(limits),
            log: setup.log.clone(),
            exec: Exec::for_step(setup),
            secrets: Secrets::for_step(setup),
        }
    }
}

/// Link every capability's imports, once per runtime: WASI, `wasi:http`,
/// then the `slipway:plugin/host` functions of the plugin API.
pub(crate) fn link(linker: &mut Linker<StepState>) -> Result<(), String> {
    let named =
        |r: wasmtime::Result<()>, what: &str| r.map_err(|e| format!("linking {what}: {e:#}"));
    named(caps::wasi::link(linker), "wasi")?;
    named(caps::http::link(linker), "wasi:http")?;
    named(super::wit::link(linker), "slipway:plugin/host")
}
