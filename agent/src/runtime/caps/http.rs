//! The `wasi:http` capability: outgoing requests only to granted hosts.
//!
//! The check runs on every request, in the one place every request passes
//! (`WasiHttpHooks::send_request`). A granted *name* must also resolve to
//! public addresses only: a grant for `api.example.com` must not become a
//! path to 127.0.0.1 or the cloud metadata service at 169.254.169.254. To
//! reach loopback or a private address, grant the address itself
//! (`127.0.0.1:*`) or `localhost`. The name is resolved again by the
//! connection itself, so a DNS server that answers differently within
//! milliseconds could still slip past; grant IPs where that matters.

use crate::runtime::caps::keepalive::ConnectionPool;
use crate::runtime::caps::log::{Level, Source, StepLog};
use crate::runtime::state::{Setup, StepState};
use http_body_util::BodyExt;
use slipway_config::grants::{HostPattern, is_internal};
use std::sync::Arc;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::p2::bindings::http::{outgoing_handler, types as http_types};
use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttp, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// Per-step HTTP policy, installed as the store's `WasiHttpHooks`.
pub struct HttpPolicy {
    pub allowed: Arc<Vec<HostPattern>>,
    pub log: StepLog,
    /// Idle connections shared by every step (see `keepalive`).
    pub pool: Arc<ConnectionPool>,
}

impl HttpPolicy {
    /// The step's `http` grants, its log for denials, the shared pool.
    pub(crate) fn for_step(setup: &Setup<'_>) -> Self {
        Self {
            allowed: Arc::new(setup.request.grants.http.clone()),
            log: setup.log.clone(),
            pool: setup.pool.clone(),
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

/// Link `wasi:http/types` and `wasi:http/outgoing-handler`.
pub(crate) fn link(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
    http_types::add_to_linker::<_, WasiHttp>(linker, &Default::default(), StepState::http)?;
    link_outgoing_handler(linker)
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
/// that is one entry per request for the instance's lifetime (the RSS
/// growth it caused: BENCHMARKS.md, "Where the load goes").
fn link_outgoing_handler(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
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

/// Why a destination is refused, or Ok if some grant admits it.
pub async fn authorize(allowed: &[HostPattern], host: &str, port: u16) -> Result<(), String> {
    let Some(grant) = allowed.iter().find(|p| p.matches(host, port)) else {
        return Err(if allowed.is_empty() {
            format!("{host}:{port} denied: this plugin has no http grant")
        } else {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            format!(
                "{host}:{port} denied: not in this plugin's http grant ({})",
                list.join(", ")
            )
        });
    };
    if grant.names_address() {
        return Ok(());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("{host}:{port}: lookup failed: {e}"))?;
    for addr in addrs {
        if is_internal(addr.ip()) {
            return Err(format!(
                "{host}:{port} denied: resolves to internal address {} (grant the address itself to allow it)",
                addr.ip()
            ));
        }
    }
    Ok(())
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let allowed = self.allowed.clone();
        let log = self.log.clone();
        let pool = self.pool.clone();
        Box::new(async move {
            let uri = request.uri();
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let target = format!("{} {uri}", request.method());
            if let Err(reason) = authorize(&allowed, &host, port).await {
                log.push(
                    Level::Warn,
                    Source::Host,
                    &format!("http {target}: {reason}"),
                    Vec::new(),
                );
                return Err(Error::HttpRequestDenied);
            }
            log.push(
                Level::Debug,
                Source::Host,
                &format!("http {target}"),
                Vec::new(),
            );
            if ConnectionPool::handles(&request) {
                return pool.send(request, options).await;
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<HostPattern> {
        list.iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn denies_ungranted_hosts_and_names_resolving_inside() {
        assert!(
            authorize(&[], "127.0.0.1", 80)
                .await
                .unwrap_err()
                .contains("no http grant")
        );
        let granted = patterns(&["127.0.0.1:8080"]);
        assert!(authorize(&granted, "127.0.0.1", 8080).await.is_ok());
        assert!(authorize(&granted, "127.0.0.1", 8081).await.is_err());
        // A wildcard or a name does not grant loopback: only the address does.
        let wild = patterns(&["*:*"]);
        let err = authorize(&wild, "127.0.0.1", 80).await.unwrap_err();
        assert!(err.contains("internal address"), "{err}");
        let err = authorize(&patterns(&["localhost.:80"]), "localhost.", 80).await;
        assert!(err.is_err());
        assert!(
            authorize(&patterns(&["localhost:*"]), "localhost", 80)
                .await
                .is_ok()
        );
    }
}
