//! The traffic layer: `slipway proxy`, a process of its own that owns the
//! public ports and sends each request to the release the agent names.
//!
//! Why a process of its own (docs/traffic.md says the same for users): the
//! public port must outlive the agent. An agent that restarts, upgrades or
//! is killed leaves the proxy serving; the next agent tells it the same
//! routes again. The proxy itself upgrades by handing its listening sockets
//! to its successor over the control socket (SCM_RIGHTS, `fds.rs`), so the
//! kernel's accept queue, and every connection waiting in it, is never
//! closed.
//!
//! - `control.rs`: the control socket (`state_dir/run/proxy.sock`), one JSON
//!   request and one JSON answer per connection; [`Control`] is the agent's
//!   side of it and starts a proxy when none answers.
//! - `proxy.rs`: the process: listeners, routes, persistence, handover.
//! - `http.rs`: the HTTP/1.1 reverse proxy (hyper), `tcp.rs` the plain TCP mode.
//! - `stats.rs`: RED figures per route and release.
//!
//! Routing is per request: after a switch the next request on a client's
//! keep-alive connection already goes to the new release, so a switch
//! closes no client connection. What is pinned to a release (an upgraded
//! connection, a TCP-mode connection) is counted as open, and the agent
//! waits for those to end, bounded by the environment's `drain`, before it
//! stops the old release.

mod control;
mod fds;
mod http;
mod metrics;
mod proxy;
mod stats;
mod tcp;

pub use control::{Control, ControlError};
pub use metrics::encode as encode_metrics;
pub use proxy::{ProxyOptions, run as run_proxy};
pub use stats::{BackendFigures, Window};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How a route carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 reverse proxy: per-request routing, RED figures.
    #[default]
    Http,
    /// Bytes both ways; a connection stays on the release it reached.
    Tcp,
}

/// One public address and where its requests go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `APP/ENV`.
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub mode: Mode,
    /// Releases taking traffic, with their shares. Empty: 503 (HTTP) or
    /// a closed connection (TCP).
    pub backends: Vec<Backend>,
}

/// A release taking a share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub release: String,
    pub addr: SocketAddr,
    /// Relative share (weights 90 and 10 send one request in ten to the second).
    pub weight: u32,
}

/// A route as the proxy runs it: its backends with their figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteStatus {
    pub name: String,
    pub listen: SocketAddr,
    pub mode: Mode,
    /// Taking traffic now, and releases switched away from whose
    /// connections have not all ended yet.
    pub backends: Vec<BackendFigures>,
}

/// What `status` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub pid: u32,
    /// The proxy binary's version (`slipway --version`).
    pub version: String,
    pub routes: Vec<RouteStatus>,
}

/// The control socket of the proxy serving `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("run").join("proxy.sock")
}

/// Where the proxy keeps its routes, so a proxy started again (after a
/// crash, a reboot) serves what the last one did before any agent speaks.
pub(crate) fn routes_path(state_dir: &Path) -> PathBuf {
    state_dir.join("run").join("proxy-routes.json")
}

/// The proxy's own log file.
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("logs").join("proxy.log")
}
