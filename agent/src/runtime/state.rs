//! The data a step's `Store` holds, and the `slipway:plugin/host` imports
//! served from it.

use crate::runtime::caps::exec::{Exec, ExecRequest};
use crate::runtime::caps::http::HttpPolicy;
use crate::runtime::caps::log::{Level, Source, StepLog};
use crate::runtime::caps::secret::Secrets;
use wasmtime::StoreContextMut;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::{outgoing_handler, types as http_types};
use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub(crate) mod bindings {
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

use bindings::slipway::plugin::host;

/// Everything one step's sandbox owns.
pub(crate) struct StepState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub http_policy: HttpPolicy,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub host: HostCtx,
}

/// State behind the `slipway:plugin/host` imports.
pub(crate) struct HostCtx {
    pub log: StepLog,
    pub exec: Exec,
    pub secrets: Secrets,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

/// The interface [`link_outgoing_handler`] serves: wasmtime-wasi-http's
/// version of it (guests importing any 0.2.x get it by semver).
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// Link `wasi:http/outgoing-handler` as wasmtime-wasi-http serves it, except
/// that the `request-options` a guest hands over are dropped after use.
///
/// `handle` takes the options by ownership (the guest's handle is gone
/// after the call), but wasmtime-wasi-http 48 only reads them and leaves
/// the entry in the store's resource table for good. In a warm instance
/// that is one entry per request for the instance's lifetime: about 110
/// bytes per health check, 13 MB over five minutes of the load bench.
pub(crate) fn link_outgoing_handler(linker: &mut Linker<StepState>) -> Result<()> {
    type Args = (
        Resource<HostOutgoingRequest>,
        Option<Resource<http_types::RequestOptions>>,
    );
    linker.instance(OUTGOING_HANDLER)?.func_wrap(
        "handle",
        |mut store: StoreContextMut<'_, StepState>, (request, options): Args| {
            let owned = options
                .as_ref()
                .map(|o| Resource::<http_types::RequestOptions>::new_own(o.rep()));
            let mut http = store.data_mut().http();
            let response = match outgoing_handler::Host::handle(&mut http, request, options) {
                Ok(response) => Ok(response),
                Err(e) => Err(http_types::Host::convert_error_code(&mut http, e)?),
            };
            if let Some(options) = owned {
                // Gone already only if the guest's handle was never valid,
                // which `handle` has reported.
                let _ = http.table.delete(options);
            }
            Ok((response,))
        },
    )
}

/// Memory and table limits of one step. Records which limit was hit, so the
/// step error can say "memory limit" rather than a bare trap.
pub(crate) struct Limiter {
    pub memory_bytes: usize,
    pub table_elements: usize,
    pub hit: Option<String>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        if desired > self.memory_bytes {
            let msg = format!(
                "memory limit exceeded: the plugin tried to grow its memory from {} to {} MiB; the limit is {} MiB",
                current >> 20,
                desired >> 20,
                self.memory_bytes >> 20
            );
            self.hit = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        if desired > self.table_elements {
            let msg = format!(
                "table limit exceeded: {desired} elements (limit {})",
                self.table_elements
            );
            self.hit = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        Ok(true)
    }
}

/// `HasData` projection so the host imports see only `HostCtx`.
pub(crate) struct HostImports;

impl HasData for HostImports {
    type Data<'a> = &'a mut HostCtx;
}

impl host::Host for HostCtx {
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
        self.log.push(level, Source::Plugin, &message, fields);
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
        let redactor = self.log.redactor().clone();
        Ok(match self.exec.run(request).await {
            Ok(out) => Ok(host::ExecOutput {
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
                timed_out: out.timed_out,
                truncated: out.truncated,
            }),
            Err(e) => Err(redactor.redact(&e)),
        })
    }

    async fn secret(&mut self, name: String) -> Result<std::result::Result<String, String>> {
        let value = self.secrets.get(&name);
        if let Err(e) = &value {
            self.log.push(Level::Warn, Source::Host, e, Vec::new());
        }
        Ok(value)
    }
}

impl bindings::slipway::plugin::types::Host for HostCtx {}
