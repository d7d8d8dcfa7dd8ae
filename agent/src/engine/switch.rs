//! Environments behind the traffic layer (`traffic`): a release starts
//! beside the one serving, on a port of its own, and takes the traffic only
//! once it passed its gates; the release switched away from drains, waits
//! out `keep_previous` (a rollback in that window switches straight back)
//! and is stopped.
//!
//! The route table (`Shared::routes`) is the agent's word on what serves
//! each environment; every change sends the whole table to the proxy, so a
//! proxy that restarted, or one that missed an update, is set right by the
//! next one.

use super::releases::run_spec;
use super::shared::Shared;
use crate::config::{CanaryConfig, Config, EnvConfig, RunConfig, TrafficConfig, TrafficMode};
use crate::runtime::ReleaseRef;
use crate::traffic::{Backend, Mode, Route};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Where a release with its own port listens.
pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The port the release runs on in (app, env), if it has one and runs.
pub(super) fn port_of(shared: &Shared, app: &str, env: &str, release: &str) -> Option<u16> {
    shared
        .supervisor
        .status_of(app, env, release)
        .and_then(|s| s.port)
}

/// A free loopback port no supervised release was given.
fn free_port(shared: &Shared) -> Result<u16, String> {
    let taken = shared.supervisor.ports();
    for _ in 0..50 {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err("cannot find a free port on 127.0.0.1 that no release uses".into())
}

/// Start `release` beside what serves (app, env), on a port of its own,
/// and wait until it accepts connections there (within `start_timeout`).
/// Errs with why (the process exited, it did not listen in time).
pub(super) async fn start_beside(
    shared: &Shared,
    app: &str,
    env: &EnvConfig,
    run: &RunConfig,
    traffic: &TrafficConfig,
    release: &ReleaseRef,
) -> Result<u16, String> {
    let port = free_port(shared)?;
    let mut spec = run_spec(&shared.state_dir, app, env, run, release);
    spec.env.insert("PORT".into(), port.to_string());
    spec.port = Some(port);
    shared
        .supervisor
        .start_beside(app, &env.name, &release.id, spec)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + traffic.start_timeout;
    loop {
        let connect = tokio::net::TcpStream::connect(addr(port));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
            tracing::info!(app, env = %env.name, release = %release.id, port, "release listening on its own port");
            return Ok(port);
        }
        let status = shared.supervisor.status_of(app, &env.name, &release.id);
        if let Some(status) = status
            && status.pid.is_none()
            && let Some(exit) = status.last_exit
        {
            let _ = shared
                .supervisor
                .stop_release(app, &env.name, &release.id)
                .await;
            return Err(format!(
                "the process exited before it listened on 127.0.0.1:{port} (PORT): {exit}"
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = shared
                .supervisor
                .stop_release(app, &env.name, &release.id)
                .await;
            return Err(format!(
                "it did not listen on 127.0.0.1:{port} (its PORT) within {:?} (traffic.start_timeout)",
                traffic.start_timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send all of (app, env)'s traffic to `release` (on `port`).
pub(super) async fn switch(
    shared: &Shared,
    app: &str,
    env: &EnvConfig,
    release: &str,
    port: u16,
) -> Result<(), String> {
    let Some(traffic) = &env.traffic else {
        return Ok(());
    };
    // Held until the proxy has the table, so two changes reach it in order.
    let mut routes = shared.routes.lock().await;
    routes.insert(
        (app.to_string(), env.name.clone()),
        route(app, &env.name, traffic, Some((release, port))),
    );
    let started = std::time::Instant::now();
    shared
        .traffic
        .apply(routes.values().cloned().collect())
        .await
        .map_err(|e| format!("switching traffic to {release}: {e}"))?;
    drop(routes);
    tracing::info!(app, env = %env.name, release, port, switch_us = started.elapsed().as_micros() as u64,
        "traffic switched");
    Ok(())
}

/// Note that `release` (on `port`) serves (app, env), without telling the
/// proxy yet (recovery does this for each environment, then `configure`).
pub(super) async fn remember(
    shared: &Shared,
    app: &str,
    env: &str,
    traffic: &TrafficConfig,
    release: &str,
    port: u16,
) {
    let mut routes = shared.routes.lock().await;
    routes.insert(
        (app.to_string(), env.to_string()),
        route(app, env, traffic, Some((release, port))),
    );
}

/// No release serves (app, env) any more: its route answers 503.
pub(super) async fn clear(shared: &Shared, app: &str, env: &EnvConfig) {
    let Some(traffic) = &env.traffic else {
        return;
    };
    let mut routes = shared.routes.lock().await;
    routes.insert(
        (app.to_string(), env.name.clone()),
        route(app, &env.name, traffic, None),
    );
    if let Err(e) = shared
        .traffic
        .apply(routes.values().cloned().collect())
        .await
    {
        tracing::error!(app, env = %env.name, error = %e, "cannot tell the traffic layer that nothing serves");
    }
}

/// The release (app, env)'s traffic goes to, if any.
pub(super) async fn serving(shared: &Shared, app: &str, env: &str) -> Option<String> {
    serving_backend(shared, app, env)
        .await
        .map(|(release, _)| release)
}

/// Stop every release of (app, env) but `keep`, once each has drained
/// (its requests and pinned connections done, at most `drain`), and, if
/// `after` is set, once that window has passed and it does not serve again.
pub(super) fn retire_others(
    shared: &Arc<Shared>,
    app: &str,
    env: &EnvConfig,
    keep: &str,
    after: Duration,
) {
    let Some(traffic) = env.traffic.clone() else {
        return;
    };
    for old in shared.supervisor.releases(app, &env.name) {
        if old.release_id == keep {
            continue;
        }
        let (shared, app, env_name) = (shared.clone(), app.to_string(), env.name.clone());
        tokio::spawn(async move {
            drained(&shared, &app, &env_name, &old.release_id, traffic.drain).await;
            if !after.is_zero() {
                tracing::info!(app = %app, env = %env_name, release = %old.release_id,
                    keep_ms = after.as_millis() as u64, "previous release kept running for a quick rollback");
                tokio::time::sleep(after).await;
            }
            if serving(&shared, &app, &env_name).await.as_deref() == Some(old.release_id.as_str()) {
                return;
            }
            tracing::info!(app = %app, env = %env_name, release = %old.release_id, "stopping the release switched away from");
            let _ = shared
                .supervisor
                .stop_release(&app, &env_name, &old.release_id)
                .await;
        });
    }
}

/// Wait until the proxy reports nothing in flight and nothing pinned to
/// `release` on (app, env)'s route, or `limit` has passed.
async fn drained(shared: &Shared, app: &str, env: &str, release: &str, limit: Duration) {
    let name = format!("{app}/{env}");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let busy = match shared.traffic.status().await {
            Ok(status) => status
                .routes
                .iter()
                .filter(|r| r.name == name)
                .flat_map(|r| &r.backends)
                .any(|b| b.release == release && b.weight == 0 && (b.in_flight > 0 || b.open > 0)),
            Err(_) => false,
        };
        if !busy {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                app,
                env,
                release,
                drain_ms = limit.as_millis() as u64,
                "connections still open after the drain time: stopping the release anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn route(app: &str, env: &str, traffic: &TrafficConfig, to: Option<(&str, u16)>) -> Route {
    Route {
        name: format!("{app}/{env}"),
        listen: traffic.listen,
        mode: match traffic.mode {
            TrafficMode::Http => Mode::Http,
            TrafficMode::Tcp => Mode::Tcp,
        },
        backends: to
            .map(|(release, port)| Backend {
                release: release.to_string(),
                addr: addr(port),
                weight: 1,
            })
            .into_iter()
            .collect(),
    }
}

/// Make the route table match `config`: every environment with `traffic`
/// has a route (its address and mode from the config, what serves kept),
/// the others none. Then start the proxy if none runs and send it the
/// table. Called at start (after recovery) and on each config change.
pub(super) async fn configure(shared: &Shared, config: &Config) {
    let wanted: Vec<(String, String, TrafficConfig)> = config
        .apps
        .values()
        .flat_map(|a| {
            a.environments
                .iter()
                .filter_map(|e| Some((a.name.clone(), e.name.clone(), e.traffic.clone()?)))
        })
        .collect();
    let mut routes = shared.routes.lock().await;
    let before = std::mem::take(&mut *routes);
    for (app, env, traffic) in &wanted {
        let key = (app.clone(), env.clone());
        let serving = before.get(&key).and_then(|r| r.backends.first().cloned());
        let mut next = route(app, env, traffic, None);
        next.backends = serving.into_iter().collect();
        routes.insert(key, next);
    }
    if routes.is_empty() && !had_routes(shared) {
        return;
    }
    if let Err(e) = shared.traffic.ensure().await {
        tracing::error!(error = %e, "the traffic layer is not running: the environments with `traffic` get no requests");
        return;
    }
    if let Err(e) = shared
        .traffic
        .apply(routes.values().cloned().collect())
        .await
    {
        tracing::error!(error = %e, "the traffic layer refused the routes");
    }
}

/// Whether a proxy may still serve routes of this state dir (a config
/// that dropped its last `traffic` must still clear them).
fn had_routes(shared: &Shared) -> bool {
    crate::traffic::socket_path(&shared.state_dir).exists()
}

/// How often the traffic layer's counters are sampled, and how many
/// samples are kept (a minute's worth) for `slipway status`.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES: usize = 13;

/// Sample the traffic layer's figures every `SAMPLE_EVERY` while any route
/// exists (for `slipway status`'s rate, errors and p99).
pub(super) fn sample(shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if shared.routes.lock().await.is_empty() {
                continue;
            }
            if let Ok(status) = shared.traffic.status().await {
                let mut samples = shared.samples.lock().expect("samples poisoned");
                samples.push_back((tokio::time::Instant::now(), status));
                while samples.len() > SAMPLES {
                    samples.pop_front();
                }
            }
        }
    });
}

/// An environment's traffic now: its route's releases (latest sample) and
/// the figures between the oldest and the latest sample.
pub(super) struct Figures {
    pub listen: SocketAddr,
    pub releases: Vec<crate::traffic::BackendFigures>,
    pub window: crate::traffic::Window,
    pub seconds: f64,
}

pub(super) fn figures(shared: &Shared, app: &str, env: &str) -> Option<Figures> {
    let name = format!("{app}/{env}");
    let samples = shared.samples.lock().expect("samples poisoned");
    let route = |s: &crate::traffic::ProxyStatus| s.routes.iter().find(|r| r.name == name).cloned();
    let (at, latest) = samples.back().and_then(|(at, s)| Some((*at, route(s)?)))?;
    let (from, earliest) = samples
        .iter()
        .find_map(|(t, s)| Some((*t, route(s)?)))
        .unwrap_or((at, latest.clone()));
    let mut window = crate::traffic::Window::default();
    for b in &latest.backends {
        let before = earliest
            .backends
            .iter()
            .find(|e| e.release == b.release && e.addr == b.addr);
        window.add(&crate::traffic::Window::between(before, b));
    }
    Some(Figures {
        listen: latest.listen,
        releases: latest.backends,
        window,
        seconds: (at - from).as_secs_f64(),
    })
}

/// The release that takes most of (app, env)'s traffic, and its port.
pub(super) async fn serving_backend(
    shared: &Shared,
    app: &str,
    env: &str,
) -> Option<(String, u16)> {
    let routes = shared.routes.lock().await;
    routes
        .get(&(app.to_string(), env.to_string()))
        .and_then(|r| r.backends.iter().max_by_key(|b| b.weight))
        .map(|b| (b.release.clone(), b.addr.port()))
}

/// One release's counters on (app, env)'s route now.
async fn counters(
    shared: &Shared,
    route: &str,
    release: &str,
) -> Option<crate::traffic::BackendFigures> {
    let status = shared.traffic.status().await.ok()?;
    status
        .routes
        .into_iter()
        .find(|r| r.name == route)?
        .backends
        .into_iter()
        .find(|b| b.release == release)
}

/// Send `canary`'s share of (app, env)'s requests to `candidate`, the rest
/// to `stable`, for `canary.duration`; then judge the candidate on its own
/// figures over that window against the stable release's over the same
/// window. `Ok(summary)`: it passed (or had too few requests to judge);
/// `Err(summary)`: it failed, with the figures. The route is left split:
/// the caller switches all traffic one way or the other.
pub(super) async fn canary(
    shared: &Shared,
    app: &str,
    env: &EnvConfig,
    canary: &CanaryConfig,
    stable: (&str, u16),
    candidate: (&str, u16),
) -> Result<String, String> {
    let Some(traffic) = &env.traffic else {
        return Ok(String::new());
    };
    let name = format!("{app}/{}", env.name);
    let stable_before = counters(shared, &name, stable.0).await;
    let candidate_before = counters(shared, &name, candidate.0).await;
    {
        let mut routes = shared.routes.lock().await;
        let mut split = route(app, &env.name, traffic, None);
        split.backends = vec![
            Backend {
                release: stable.0.to_string(),
                addr: addr(stable.1),
                weight: 1000 - canary.share_permille,
            },
            Backend {
                release: candidate.0.to_string(),
                addr: addr(candidate.1),
                weight: canary.share_permille,
            },
        ];
        routes.insert((app.to_string(), env.name.clone()), split);
        shared
            .traffic
            .apply(routes.values().cloned().collect())
            .await
            .map_err(|e| format!("could not send the canary its share: {e}"))?;
    }
    let share = f64::from(canary.share_permille) / 10.0;
    tracing::info!(app, env = %env.name, release = candidate.0, share_percent = share,
        for_ms = canary.duration.as_millis() as u64, "canary taking its share of the traffic");
    let started = tokio::time::Instant::now();
    let deadline = started + canary.duration;
    let check_every =
        (canary.duration / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        let now = tokio::time::Instant::now();
        let ended = now >= deadline;
        let stable_now = counters(shared, &name, stable.0).await;
        let candidate_now = counters(shared, &name, candidate.0).await;
        let window = |before: &Option<crate::traffic::BackendFigures>,
                      now: &Option<crate::traffic::BackendFigures>| {
            now.as_ref()
                .map(|n| crate::traffic::Window::between(before.as_ref(), n))
                .unwrap_or_default()
        };
        let c = window(&candidate_before, &candidate_now);
        let s = window(&stable_before, &stable_now);
        let judged = Judged::of(canary, &c, &s);
        // Errors already past the limit with enough requests: no need to
        // wait for the rest of the window.
        if ended || (judged.enough && judged.too_many_errors) {
            let summary = judged.summary(
                candidate.0,
                stable.0,
                share,
                now.duration_since(started),
                canary,
                &c,
                &s,
            );
            return if judged.failed() {
                Err(summary)
            } else {
                Ok(summary)
            };
        }
        tokio::time::sleep(check_every.min(deadline - now)).await;
    }
}

/// What the figures say of a canary.
struct Judged {
    /// At least `min_requests` reached the canary.
    enough: bool,
    too_many_errors: bool,
    too_slow: bool,
}

impl Judged {
    fn of(cfg: &CanaryConfig, c: &crate::traffic::Window, s: &crate::traffic::Window) -> Self {
        let enough = c.requests >= cfg.min_requests;
        // Worse than its limit and than the stable release at the same
        // time: a bad day for both is not the canary's fault.
        let too_many_errors =
            c.error_ratio() > cfg.max_error_ratio && c.error_ratio() > s.error_ratio();
        let too_slow = match (cfg.max_p99, c.quantile(0.99)) {
            (Some(max), Some(p99)) => p99 > max && s.quantile(0.99).is_none_or(|sp| p99 > sp),
            _ => false,
        };
        Self {
            enough,
            too_many_errors,
            too_slow,
        }
    }

    fn failed(&self) -> bool {
        self.enough && (self.too_many_errors || self.too_slow)
    }

    #[allow(clippy::too_many_arguments)]
    fn summary(
        &self,
        candidate: &str,
        stable: &str,
        share: f64,
        took: Duration,
        cfg: &CanaryConfig,
        c: &crate::traffic::Window,
        s: &crate::traffic::Window,
    ) -> String {
        let p99 = |w: &crate::traffic::Window| match w.quantile(0.99) {
            Some(d) if d == Duration::MAX => "over 30 s".to_string(),
            Some(d) => format!("≤ {d:?}"),
            None => "-".to_string(),
        };
        let figures = |w: &crate::traffic::Window| {
            format!(
                "{} requests, {:.2}% errors ({}), p99 {}",
                w.requests,
                100.0 * w.error_ratio(),
                w.errors,
                p99(w)
            )
        };
        let limits = format!(
            "limits: errors ≤ {:.2}%{}",
            100.0 * cfg.max_error_ratio,
            cfg.max_p99
                .map(|m| format!(", p99 ≤ {m:?}"))
                .unwrap_or_default()
        );
        let verdict = if !self.enough {
            format!(
                "not judged: {} requests, {} needed (min_requests)",
                c.requests, cfg.min_requests
            )
        } else if self.failed() {
            let mut why = Vec::new();
            if self.too_many_errors {
                why.push("its error ratio is over the limit and the stable release's");
            }
            if self.too_slow {
                why.push("its p99 is over the limit and the stable release's");
            }
            why.join("; ")
        } else {
            "passed".to_string()
        };
        format!(
            "canary {candidate} ({share}% for {took:.1?}): {}; stable {stable}: {}; {limits}: {verdict}",
            figures(c),
            figures(s)
        )
    }
}
