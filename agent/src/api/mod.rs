//! The agent's HTTP API (axum): what runs, what happened, and the two
//! operator actions (rollback, approve). The CLI's `status`, `history`,
//! `show`, `logs`, `rollback` and `approve` are clients of it.
//!
//! Loopback only unless `[agent] allow_remote_api` says a TLS proxy is in
//! front. Every request but `GET /healthz` needs `Authorization: Bearer
//! TOKEN`, the token being the content of `state_dir/api-token` (created,
//! mode 0600, at the first start). Errors are JSON: `{"error": "..."}`.
//! Every route is documented in `docs/api.md`.

mod routes;
mod token;
pub mod view;

pub use token::{ensure_token, read_token};
pub use view::{ReleaseTraffic, TrafficView};

use crate::engine::Deployer;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// What the handlers share.
pub struct ApiState {
    pub engine: Arc<Deployer>,
    token: String,
}

/// An error answer: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = view::ErrorBody {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(e.to_string())
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        let status = match e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

/// The router, with authentication on every route but `/healthz`.
pub fn router(engine: Arc<Deployer>, token: String) -> Router {
    let state = Arc::new(ApiState { engine, token });
    routes::router(state)
}

/// A bound API server, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

impl Server {
    /// Bind `listen`, and write the address actually bound (port 0 picks
    /// one) to `state_dir/api-address` for the CLI.
    pub async fn bind(listen: &str, state_dir: &Path) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            format!("API: cannot listen on {listen}: {e} (set `listen` in [agent])")
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("API: {listen}: {e}"))?;
        let file = state_dir.join("api-address");
        token::write_atomically(&file, format!("{addr}\n").as_bytes())
            .map_err(|e| format!("API: writing {}: {e}", file.display()))?;
        Ok(Self { listener, addr })
    }

    /// Serve until `shutdown` resolves; requests in flight are finished.
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "API server stopped");
        }
    }
}
