//! The `slipway proxy` process: one listener per route, the control socket,
//! the routes file, and the handover to a successor.
//!
//! Start-up: if a proxy already answers on the control socket, this one
//! takes over from it (its listening sockets arrive over SCM_RIGHTS; the
//! old one stops accepting, finishes its connections and exits). Otherwise
//! it binds the routes the routes file lists, so a proxy started again
//! after a crash or a reboot serves before any agent speaks to it.
//!
//! Shutdown (SIGTERM, SIGINT): stop accepting, let the connections it has
//! finish for up to `drain`, exit.

use super::control::{self, Answer, Request};
use super::http::{self, Upstream};
use super::stats::BackendStats;
use super::{Backend, Mode, ProxyStatus, Route, RouteStatus};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// `slipway proxy`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyOptions {
    /// The agent's state dir (its control socket is `run/proxy.sock` in it).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// How long connections may take to finish when this proxy stops or
    /// hands over to a newer one.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Threads serving connections (1: one core, the lightest; more for a
    /// busy public port on a machine with cores to spare).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}

/// Backends with their weights.
type Weighted = Vec<(u32, Arc<BackendStats>)>;

/// A route as served: who to send to, and what is still pinned to a release
/// switched away from.
pub(super) struct RouteState {
    pub name: String,
    backends: RwLock<Arc<Weighted>>,
    /// Every backend with figures to report: the current ones and those
    /// switched away from that still have requests or connections.
    known: Mutex<Vec<Arc<BackendStats>>>,
    next: AtomicU64,
    pub tunnels: Arc<Tunnels>,
}

impl RouteState {
    fn new(name: &str, tunnels: Arc<Tunnels>) -> Self {
        Self {
            name: name.to_string(),
            backends: RwLock::new(Arc::new(Vec::new())),
            known: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            tunnels,
        }
    }

    /// A backend by weight, spread evenly (a multiplicative hash of a
    /// counter, so 90/10 is not ninety in a row then ten).
    pub fn pick(&self) -> Option<Arc<BackendStats>> {
        let backends = self
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let total: u64 = backends.iter().map(|(w, _)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut at = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % total;
        for (weight, stats) in backends.iter() {
            let weight = u64::from(*weight);
            if at < weight {
                return Some(stats.clone());
            }
            at -= weight;
        }
        None
    }

    /// Point the route at `backends`, keeping the figures of a release it
    /// already knew.
    fn set(&self, backends: &[Backend]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let next: Vec<(u32, Arc<BackendStats>)> = backends
            .iter()
            .map(|b| {
                let stats = match known
                    .iter()
                    .find(|s| s.release == b.release && s.addr == b.addr)
                {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(BackendStats::new(&b.release, b.addr));
                        known.push(s.clone());
                        s
                    }
                };
                (b.weight, stats)
            })
            .collect();
        *self.backends.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    fn status(&self, listen: SocketAddr, mode: Mode) -> RouteStatus {
        let current = self
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let weight_of = |s: &Arc<BackendStats>| {
            current
                .iter()
                .find(|(_, c)| Arc::ptr_eq(c, s))
                .map(|(w, _)| *w)
        };
        // A release switched away from is forgotten once nothing uses it.
        known.retain(|s| weight_of(s).is_some() || !s.idle());
        RouteStatus {
            name: self.name.clone(),
            listen,
            mode,
            backends: known
                .iter()
                .map(|s| s.figures(weight_of(s).unwrap_or(0)))
                .collect(),
        }
    }
}

/// Connections carried as bytes (upgraded HTTP, TCP mode), counted so a
/// stopping proxy can wait for them.
#[derive(Default)]
pub(super) struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

impl Tunnels {
    pub fn open(self: &Arc<Self>) -> TunnelGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        TunnelGuard(self.clone())
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(super) struct TunnelGuard(Arc<Tunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// A route's listener and the task accepting on it.
struct Listening {
    route: Route,
    state: Arc<RouteState>,
    /// Its own descriptor of the listening socket, for a handover.
    fd: Option<OwnedFd>,
    stop: watch::Sender<bool>,
    /// Why it has no listener, if it could not bind.
    error: Option<String>,
}

impl Listening {
    fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

struct Proxy {
    state_dir: PathBuf,
    routes: Mutex<BTreeMap<String, Listening>>,
    client: Upstream,
    /// Turns true when the proxy stops: HTTP connections finish the
    /// request in progress and close.
    draining: watch::Sender<bool>,
    /// Every client connection (HTTP, upgraded, TCP), to wait for them.
    tunnels: Arc<Tunnels>,
    /// Set when a successor has taken the listeners over: this one ends.
    handed_over: Notify,
    /// Set when the agent asks this proxy to stop.
    stopping: Notify,
}

/// Run the proxy until `shutdown` resolves (or a successor takes over).
pub async fn run(
    options: ProxyOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let state_dir = options.state_dir.clone();
    let run_dir = state_dir.join("run");
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    let socket = super::socket_path(&state_dir);
    let proxy = Arc::new(Proxy {
        state_dir: state_dir.clone(),
        routes: Mutex::new(BTreeMap::new()),
        client: http::upstream(),
        draining: watch::channel(false).0,
        tunnels: Arc::default(),
        handed_over: Notify::new(),
        stopping: Notify::new(),
    });
    let control = match take_over(&socket).await? {
        Some((routes, fds, predecessor)) => {
            let count = routes.len();
            let mut fds: BTreeMap<String, OwnedFd> = fds.into_iter().collect();
            for route in routes {
                let fd = fds.remove(&route.name);
                proxy.listen(route, fd);
            }
            let control = control::bind(&socket, predecessor).await?;
            tracing::info!(
                routes = count,
                "took the listening sockets over from the running proxy"
            );
            control
        }
        None => {
            let routes = load_routes(&state_dir);
            let count = routes.len();
            for route in routes {
                proxy.listen(route, None);
            }
            let control = control::bind(&socket, None).await?;
            if count > 0 {
                tracing::info!(routes = count, "serving the routes of the last run");
            }
            control
        }
    };
    // For operators and scripts (`kill $(cat run/proxy-pid)`); the control
    // socket, not this file, is how the agent finds the proxy.
    let pid_file = run_dir.join("proxy-pid");
    let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "proxy ready");
    let serving = proxy.clone().serve_control(control);
    tokio::select! {
        () = shutdown => {
            tracing::info!("proxy stopping: no new connections; draining");
            let _ = std::fs::remove_file(&socket);
        }
        () = proxy.stopping.notified() => {
            let _ = std::fs::remove_file(&socket);
            tracing::info!("proxy stopping as the agent asked; draining");
        }
        () = proxy.handed_over.notified() => {
            tracing::info!("a newer proxy took over; draining");
        }
        () = serving => {}
    }
    proxy.stop_listening();
    if std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(&pid_file);
    }
    proxy.drain(options.drain).await;
    tracing::info!("proxy stopped");
    Ok(())
}

/// If a proxy answers on `socket`, take its listeners: the routes, each
/// route's socket, and the successor's end of the handover connection
/// (the old one waits on it to release the control socket).
async fn take_over(socket: &Path) -> Result<Option<control::TakenOver>, String> {
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            // Nothing answers: a socket file left by a proxy that died.
            let _ = std::fs::remove_file(socket);
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot reach {}: {e}", socket.display())),
    };
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || control::receive_handover(stream, &socket))
        .await
        .map_err(|e| e.to_string())?
        .map(Some)
}

impl Proxy {
    /// Start serving `route`: on `fd` if handed over, else bind its address.
    fn listen(self: &Arc<Self>, route: Route, fd: Option<OwnedFd>) {
        let tunnels = self.tunnels.clone();
        let state = Arc::new(RouteState::new(&route.name, tunnels));
        state.set(&route.backends);
        let (stop, stopped) = watch::channel(false);
        let mut listening = Listening {
            route: route.clone(),
            state: state.clone(),
            fd: None,
            stop,
            error: None,
        };
        // A route keeping its address (its mode changed, say) keeps its socket.
        let same_address = || {
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes
                .values()
                .filter(|l| l.route.listen == route.listen)
                .find_map(|l| l.fd.as_ref().and_then(|fd| fd.try_clone().ok()))
        };
        let listener = match fd.or_else(same_address) {
            Some(fd) => Ok(std::net::TcpListener::from(fd)),
            None => bind(route.listen),
        };
        match listener.and_then(|l| {
            let own = l.try_clone()?;
            l.set_nonblocking(true)?;
            Ok((tokio::net::TcpListener::from_std(l)?, OwnedFd::from(own)))
        }) {
            Ok((listener, fd)) => {
                listening.fd = Some(fd);
                let proxy = self.clone();
                tokio::spawn(proxy.accept(listener, route.mode, state, stopped));
                tracing::info!(route = %route.name, listen = %route.listen, "listening");
            }
            Err(e) => {
                let error = format!("{}: cannot listen on {}: {e}", route.name, route.listen);
                tracing::error!("{error}");
                listening.error = Some(error);
            }
        }
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = routes.insert(route.name.clone(), listening) {
            old.stop();
        }
    }

    async fn accept(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mode: Mode,
        state: Arc<RouteState>,
        mut stopped: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => return,
            };
            match accepted {
                Ok((stream, peer)) => match mode {
                    Mode::Http => {
                        let (state, client) = (state.clone(), self.client.clone());
                        let draining = self.draining.subscribe();
                        tokio::spawn(http::serve(stream, peer, state, client, draining));
                    }
                    Mode::Tcp => {
                        tokio::spawn(super::tcp::serve(stream, peer, state.clone()));
                    }
                },
                Err(e) => {
                    // Out of descriptors, mostly: wait instead of spinning.
                    tracing::warn!(route = %state.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Answer control requests until the listener fails.
    async fn serve_control(self: Arc<Self>, control: tokio::net::UnixListener) {
        loop {
            let stream = match control.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let answer = match control::read_request(&mut stream).await {
                    Ok(Request::Apply { routes }) => proxy.apply(routes),
                    Ok(Request::Status) => Answer::status(proxy.status()),
                    Ok(Request::Stop) => {
                        proxy.stopping.notify_one();
                        Answer::ok()
                    }
                    Ok(Request::Handover) => {
                        proxy.hand_over(stream.into_inner()).await;
                        return;
                    }
                    Err(why) => Answer::error(why),
                };
                control::write_answer(&mut stream, &answer).await;
            });
        }
    }

    /// Make the routes exactly `wanted`: same address, new backends; a new
    /// or moved address is bound; a route not named stops listening.
    fn apply(self: &Arc<Self>, wanted: Vec<Route>) -> Answer {
        let mut problems = Vec::new();
        let names: Vec<String> = wanted.iter().map(|r| r.name.clone()).collect();
        for route in wanted {
            let same_listener = {
                let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
                match routes.get_mut(&route.name) {
                    Some(l)
                        if l.route.listen == route.listen
                            && l.route.mode == route.mode
                            && l.error.is_none() =>
                    {
                        l.state.set(&route.backends);
                        l.route = route.clone();
                        true
                    }
                    _ => false,
                }
            };
            if !same_listener {
                self.listen(route.clone(), None);
            }
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(error) = routes.get(&route.name).and_then(|l| l.error.clone()) {
                problems.push(error);
            }
        }
        {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            routes.retain(|name, l| {
                let keep = names.contains(name);
                if !keep {
                    tracing::info!(route = %name, "route removed: no longer listening");
                    l.stop();
                }
                keep
            });
        }
        self.save();
        if problems.is_empty() {
            Answer::ok()
        } else {
            Answer::error(problems.join("; "))
        }
    }

    fn status(&self) -> ProxyStatus {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        ProxyStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            routes: routes
                .values()
                .map(|l| l.state.status(l.route.listen, l.route.mode))
                .collect(),
        }
    }

    /// Send the listeners to a successor; once it has them, stop accepting,
    /// give up the control socket and end.
    async fn hand_over(self: &Arc<Self>, stream: tokio::net::UnixStream) {
        let (routes, fds): (Vec<Route>, Vec<(String, i32)>) = {
            let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let list = routes.values().map(|l| l.route.clone()).collect();
            let fds = routes
                .values()
                .filter_map(|l| {
                    l.fd.as_ref()
                        .map(|fd| (l.route.name.clone(), fd.as_raw_fd()))
                })
                .collect();
            (list, fds)
        };
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let socket = super::socket_path(&self.state_dir);
        let sent = tokio::task::spawn_blocking(move || {
            control::send_handover(stream, &routes, &fds, &socket)
        })
        .await;
        match sent {
            Ok(Ok(())) => self.handed_over.notify_one(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "handover to a newer proxy failed; still serving")
            }
            Err(e) => tracing::warn!(error = %e, "handover to a newer proxy failed; still serving"),
        }
    }

    /// Stop accepting and close this process's descriptors of the
    /// listening sockets (a successor holds its own), so a stopping proxy
    /// leaves no connection waiting in a queue nobody reads.
    fn stop_listening(&self) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for l in routes.values_mut() {
            l.stop();
            l.fd = None;
        }
    }

    /// Let open connections finish, for up to `limit`.
    async fn drain(&self, limit: Duration) {
        let _ = self.draining.send(true);
        if tokio::time::timeout(limit, self.tunnels.all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = limit.as_millis() as u64,
                "connections still open after the drain time; closing them"
            );
        }
    }

    /// Write the routes file (temp file, then rename).
    fn save(&self) {
        let routes: Vec<Route> = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.route.clone())
            .collect();
        let path = super::routes_path(&self.state_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&routes).expect("routes serialize");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the routes");
        }
    }
}

/// A listening socket for a public address: SO_REUSEADDR (a restarted
/// proxy binds while old connections are in TIME_WAIT), a deep backlog.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let (storage, len) = sockaddr(addr);
        if libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::listen(fd, 1024) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::from(owned))
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The routes the last proxy served, if its file is readable.
fn load_routes(state_dir: &Path) -> Vec<Route> {
    let path = super::routes_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "the routes file does not parse; starting with no routes");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(release: &str, weight: u32) -> Backend {
        Backend {
            release: release.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            weight,
        }
    }

    #[test]
    fn weights_share_requests_evenly() {
        let state = RouteState::new("web/prod", Arc::default());
        state.set(&[backend("stable", 9), backend("canary", 1)]);
        let mut canary = 0;
        let mut longest_run = 0;
        let mut run = 0;
        for _ in 0..10_000 {
            if state.pick().unwrap().release == "canary" {
                canary += 1;
                run = 0;
            } else {
                run += 1;
                longest_run = longest_run.max(run);
            }
        }
        assert!((900..=1100).contains(&canary), "{canary} of 10000");
        assert!(longest_run < 60, "{longest_run} stable requests in a row");
        state.set(&[backend("stable", 0)]);
        assert!(state.pick().is_none());
    }

    #[test]
    fn a_release_switched_away_from_is_reported_until_idle() {
        let state = RouteState::new("web/prod", Arc::default());
        state.set(&[backend("old", 1)]);
        let old = state.pick().unwrap();
        let request = old.begin();
        state.set(&[backend("new", 1)]);
        let listen = "127.0.0.1:80".parse().unwrap();
        let names = |s: &RouteState| {
            s.status(listen, Mode::Http)
                .backends
                .into_iter()
                .map(|b| (b.release, b.weight, b.in_flight))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&state), [("old".into(), 0, 1), ("new".into(), 1, 0)]);
        drop(request);
        assert_eq!(names(&state), [("new".to_string(), 1, 0)]);
    }
}
