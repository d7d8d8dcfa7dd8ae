//! One agent guarding many apps: what it costs in CPU and memory, how long
//! a health check takes, and whether every check is made (or said not to
//! be).
//!
//! Run: `cargo bench -p slipway --bench load --profile dev`. Two phases,
//! each a real `slipway agent` on its own state dir:
//! - idle: a few apps deployed and guarded at the default health interval
//!   (2 s), nothing else happening, for `SLIPWAY_IDLE_SECS` (default 30);
//! - load: `SLIPWAY_LOAD_APPS` apps (default 200) × 2 environments
//!   (staging → production), each health-checked every second by the builtin
//!   `http-check` plugin, for `SLIPWAY_LOAD_SECS` (default 300).
//!
//! What is real and what is cut down: the agent, its plugins, the HTTP
//! checks and the servers they reach are real. The apps are not processes:
//! each environment is activated by a `deploy` step (`command` running
//! `true`) and the bench serves every app itself, one loopback port per app
//! and one path per environment (`/APP/ENV`), so 400 app processes do not
//! measure the machine instead of the agent. They keep connections open
//! between requests (HTTP/1.1 keep-alive) as app servers do; the agent
//! reuses them. The build is `true` too.
//!
//! Measured once every environment is deployed and under the health guard:
//! agent CPU (utime + stime from `/proc/PID/stat`, as % of one core), RSS
//! (`VmRSS` sampled every second: mean and max), check latency p50/p99 (the
//! agent's `slipway_step_duration_seconds` histogram for health checks,
//! interpolated within buckets as Prometheus' `histogram_quantile` does),
//! the gaps between two checks of one environment as the servers see them,
//! and the count of checks: expected (environments × seconds) against made
//! (requests the servers got, and `slipway_health_checks_total`) and said
//! skipped (`slipway_health_checks_skipped_total`).
//!
//! `SLIPWAY_LOAD_COMPARE=path/to/other/slipway` runs instead a side-by-side
//! comparison of this build's agent and that binary on one deployment (see
//! `compare`), `SLIPWAY_LOAD_ROUNDS` rounds (default 3) of
//! `SLIPWAY_LOAD_SECS` each; `SLIPWAY_LOAD_BASE` replaces this build's agent
//! as A (keep both binaries on one filesystem: file-backed pages count
//! differently on tmpfs); `SLIPWAY_LOAD_COMPARE_COLD=1` starts B with an
//! empty compile cache each time.

mod common;

use slipway::store::{DeploymentState, Journal};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENVS: [&str; 2] = ["staging", "production"];

/// Apps added to the config at a time (each batch deployed before the next).
const BATCH: usize = 25;

/// The goal of issue 6, for 200 apps × 2 environments checked every second.
const GOAL_CPU_PERCENT: f64 = 10.0;
const GOAL_RSS_MB: f64 = 100.0;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: expected a whole number")),
        Err(_) => default,
    }
}

/// What the servers saw of one environment's checks.
#[derive(Default, Clone)]
struct EnvSeen {
    requests: u64,
    last: Option<Instant>,
    /// Time between two consecutive checks, ms, while measuring.
    gaps_ms: Vec<f64>,
}

/// The apps' HTTP servers: one loopback listener per app, 200 "ok" on
/// `/APP/ENV` for each of its environments, every request counted.
struct AppServers {
    ports: Vec<u16>,
    seen: Arc<Mutex<Vec<EnvSeen>>>,
    measuring: Arc<AtomicBool>,
}

impl AppServers {
    async fn start(apps: usize) -> Self {
        let seen = Arc::new(Mutex::new(vec![EnvSeen::default(); apps * ENVS.len()]));
        let measuring = Arc::new(AtomicBool::new(false));
        let mut paths = HashMap::new();
        for app in 0..apps {
            for (e, env) in ENVS.iter().enumerate() {
                paths.insert(format!("/{}/{env}", app_name(app)), app * ENVS.len() + e);
            }
        }
        let paths = Arc::new(paths);
        let mut ports = Vec::new();
        for _ in 0..apps {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let (seen, measuring, paths) = (seen.clone(), measuring.clone(), paths.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, measuring, paths) = (seen.clone(), measuring.clone(), paths.clone());
                    tokio::spawn(serve(stream, seen, measuring, paths));
                }
            });
        }
        Self {
            ports,
            seen,
            measuring,
        }
    }

    fn snapshot(&self) -> Vec<EnvSeen> {
        self.seen.lock().unwrap().clone()
    }
}

/// One connection: requests answered in turn while the agent keeps it
/// open (HTTP/1.1 keep-alive, as a real app server does).
async fn serve(
    mut stream: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<EnvSeen>>>,
    measuring: Arc<AtomicBool>,
    paths: Arc<HashMap<String, usize>>,
) {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let end = loop {
            if let Some(at) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if len == buf.len() {
                return;
            }
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => len += n,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let reply: &[u8] = match paths.get(path) {
            Some(&i) => {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                let s = &mut seen[i];
                s.requests += 1;
                if measuring.load(Ordering::Relaxed)
                    && let Some(last) = s.last
                {
                    s.gaps_ms.push((now - last).as_secs_f64() * 1e3);
                }
                s.last = Some(now);
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            }
            None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        };
        if stream.write_all(reply).await.is_err() {
            return;
        }
        // The checks' GETs have no body: the next request starts here.
        buf.copy_within(end..len, 0);
        len -= end;
    }
}

fn app_name(i: usize) -> String {
    format!("app{i:03}")
}

/// The config of the first `apps` apps.
fn config(servers: &AppServers, interval: &str, apps: usize) -> String {
    // `warm = false` to compare with a fresh instance per check.
    let warm = std::env::var("SLIPWAY_LOAD_WARM").unwrap_or_else(|_| "true".into());
    let mut c = String::from(
        r#"[agent]
state_dir = "state"
listen = "127.0.0.1:0"

[plugins.command]
source = "builtin:command"
grants = { exec = ["true"] }

[plugins.http-check]
source = "builtin:http-check"
grants = { http = ["127.0.0.1:*"] }
"#,
    );
    c.push_str(&format!("warm = {warm}\n"));
    for (i, port) in servers.ports.iter().enumerate().take(apps) {
        let app = app_name(i);
        c.push_str(&format!(
            r#"
[apps.{app}]
version = "1.0.0"
source = {{ path = "app" }}
build = {{ plugin = "command", params = {{ run = ["true"] }} }}
"#
        ));
        for (e, env) in ENVS.iter().enumerate() {
            let promote = if e == 0 {
                String::new()
            } else {
                format!("promote_from = \"{}\"\n", ENVS[e - 1])
            };
            c.push_str(&format!(
                r#"
[apps.{app}.environments.{env}]
{promote}deploy = {{ plugin = "command", params = {{ run = ["true"] }} }}
health = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{port}/{app}/{env}" }}, interval = "{interval}", healthy_after = 2, unhealthy_after = 3, bake = "5s" }}
"#
            ));
        }
    }
    c
}

/// CPU time of a process so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent /proc stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// The agent's metrics, as the API serves them.
struct Scrape {
    /// Checks made, per (app, env), all results.
    checks: HashMap<(String, String), f64>,
    /// Checks made, per result.
    results: HashMap<String, f64>,
    /// Checks said skipped, per (app, env).
    skipped: HashMap<(String, String), f64>,
    /// Health-check step durations: (upper bound s, cumulative count).
    buckets: Vec<(f64, f64)>,
}

fn labels(line: &str) -> HashMap<&str, &str> {
    let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    inner
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k, v.trim_end_matches('"')))
        })
        .collect()
}

async fn scrape(client: &reqwest::Client, state: &Path) -> Scrape {
    let addr = std::fs::read_to_string(state.join("api-address")).unwrap();
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    let text = client
        .get(format!("http://{}/metrics", addr.trim()))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    let mut s = Scrape {
        checks: HashMap::new(),
        results: HashMap::new(),
        skipped: HashMap::new(),
        buckets: Vec::new(),
    };
    let mut buckets: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = |l: &HashMap<&str, &str>| (l["app"].to_string(), l["env"].to_string());
        if name.starts_with("slipway_health_checks_total{") {
            let l = labels(name);
            *s.checks.entry(key(&l)).or_default() += value;
            *s.results.entry(l["result"].to_string()).or_default() += value;
        } else if name.starts_with("slipway_health_checks_skipped_total{") {
            *s.skipped.entry(key(&labels(name))).or_default() += value;
        } else if name.starts_with("slipway_step_duration_seconds_bucket{") {
            let l = labels(name);
            if l["kind"] == "health-check" {
                *buckets.entry(l["le"].to_string()).or_default() += value;
            }
        }
    }
    s.buckets = buckets
        .into_iter()
        .map(|(le, n)| (le.parse::<f64>().unwrap_or(f64::INFINITY), n))
        .collect();
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// The `q` quantile of the checks between two scrapes, in ms, linear within
/// a bucket (Prometheus' `histogram_quantile`).
fn quantile_ms(before: &Scrape, after: &Scrape, q: f64) -> f64 {
    let old: HashMap<u64, f64> = before
        .buckets
        .iter()
        .map(|(le, n)| (le.to_bits(), *n))
        .collect();
    let delta: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, n)| (*le, n - old.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, n) in delta {
        if n >= rank {
            if le.is_infinite() {
                return lower * 1e3;
            }
            return (lower + (le - lower) * (rank - below) / (n - below).max(1e-9)) * 1e3;
        }
        (lower, below) = (le, n);
    }
    f64::NAN
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Kills the agent if the bench panics.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Figures of one phase.
struct Figures {
    envs: usize,
    deployed_in: Duration,
    seconds: f64,
    cpu_percent: f64,
    rss_mean: f64,
    rss_max: f64,
    p50_ms: f64,
    p99_ms: f64,
    gap_p50_ms: f64,
    gap_p99_ms: f64,
    gap_max_ms: f64,
    expected: f64,
    served: f64,
    counted: f64,
    skipped: f64,
    not_healthy: f64,
    /// Environments whose checks made + said skipped differ from the
    /// seconds measured by more than the phase allows.
    unexplained_envs: Vec<String>,
}

/// A load agent with every app deployed and under its health guard.
struct Deployed {
    top: tempfile::TempDir,
    dir: std::path::PathBuf,
    servers: AppServers,
    agent: Agent,
    apps: usize,
    interval: Duration,
    deployed_in: Duration,
}

impl Deployed {
    fn state(&self) -> std::path::PathBuf {
        self.dir.join("state")
    }

    /// Stop the agent and start `binary` on the same config and state: it
    /// recovers the deployed environments and guards them again.
    async fn restart_with(&mut self, binary: &Path) {
        let old = std::fs::read_to_string(self.state().join("api-address")).unwrap_or_default();
        let _ = std::fs::remove_file(self.state().join("api-address"));
        self.agent = Agent(start_agent(binary, &self.dir, self.top.path()));
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = std::fs::read_to_string(self.state().join("api-address")).unwrap_or_default();
            if !now.is_empty() && now != old {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not start its API within 60 s",
                binary.display()
            );
        }
        // Every environment checked a few times (warm instances made).
        tokio::time::sleep(self.interval * 3 + Duration::from_secs(5)).await;
    }
}

fn start_agent(binary: &Path, dir: &Path, top: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(top.join("agent.log"))
        .unwrap();
    Command::new(binary)
        .args(["agent", "-c"])
        .arg(dir.join("slipway.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn phase(apps: usize, interval: Duration, seconds: u64) -> Figures {
    let deployed = deploy(apps, interval).await;
    measure(&deployed, seconds).await
}

async fn deploy(apps: usize, interval: Duration) -> Deployed {
    let top = tempfile::tempdir().unwrap();
    // The agent watches its config's directory: its log goes elsewhere.
    let dir = top.path().join("conf");
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/README"), "a placeholder app\n").unwrap();
    let servers = AppServers::start(apps).await;
    let interval_text = format!("{}ms", interval.as_millis());
    // Apps arrive in batches, by config edits, as a team adds them: 200
    // first deployments at once starve their own bake checks on a small
    // machine (see BENCHMARKS.md), and this bench is about the guard.
    let save = |n: usize| {
        let tmp = dir.join(".slipway.toml.tmp");
        std::fs::write(&tmp, config(&servers, &interval_text, n)).unwrap();
        std::fs::rename(&tmp, dir.join("slipway.toml")).unwrap();
    };
    let mut batch = BATCH.min(apps);
    save(batch);
    let started = Instant::now();
    let agent = Agent(start_agent(
        Path::new(env!("CARGO_BIN_EXE_slipway")),
        &dir,
        top.path(),
    ));
    let state = dir.join("state");
    let keep_log = || {
        let kept = std::env::temp_dir().join("slipway-load-agent.log");
        let _ = std::fs::copy(top.path().join("agent.log"), &kept);
        kept
    };

    // Every app deployed (its environments then go under the guard).
    let db = state.join("journal.db");
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{apps} apps not deployed after 15 min; agent log: {}",
            keep_log().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Off the runtime that serves the apps: a read may wait on the
        // agent's writes, and the servers must not.
        let read = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || {
                Journal::open_read_only(&db)?.deployments(None, apps * 4)
            })
        };
        let Ok(Ok(deployments)) = read.await else {
            continue;
        };
        let mut latest: HashMap<&str, &slipway::store::Deployment> = HashMap::new();
        for d in &deployments {
            latest.entry(&d.app).or_insert(d);
        }
        if let Some(bad) = latest.values().find(|d| {
            !matches!(
                d.state,
                DeploymentState::Running | DeploymentState::Succeeded
            )
        }) {
            panic!(
                "deployment of {} ended {:?}: {:?}; agent log: {}",
                bad.app,
                bad.state,
                bad.reason,
                keep_log().display()
            );
        }
        let done = latest
            .values()
            .filter(|d| d.state == DeploymentState::Succeeded)
            .count();
        if done == apps {
            break;
        }
        if done == batch {
            batch = (batch + BATCH).min(apps);
            save(batch);
        }
    }
    let deployed_in = started.elapsed();
    // The guard's first checks come one interval after each deployment.
    tokio::time::sleep(interval * 3).await;
    Deployed {
        top,
        dir,
        servers,
        agent,
        apps,
        interval,
        deployed_in,
    }
}

/// The agent's figures over the next `seconds`.
async fn measure(deployed: &Deployed, seconds: u64) -> Figures {
    let Deployed {
        servers,
        apps,
        interval,
        ..
    } = deployed;
    let (apps, interval, state) = (*apps, *interval, deployed.state());
    let pid = deployed.agent.0.id();
    let client = reqwest::Client::new();
    let before = scrape(&client, &state).await;
    let seen_before = servers.snapshot();
    servers.measuring.store(true, Ordering::Relaxed);
    let (t0, cpu0) = (Instant::now(), cpu_time(pid));
    let mut rss = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for _ in 0..seconds {
        tick.tick().await;
        rss.push(common::rss_mb(pid));
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time(pid) - cpu0);
    servers.measuring.store(false, Ordering::Relaxed);
    let seen_after = servers.snapshot();
    let after = scrape(&client, &state).await;
    let measured = wall.as_secs_f64();

    let envs = apps * ENVS.len();
    let per_env = measured / interval.as_secs_f64();
    let mut gaps = Vec::new();
    let mut unexplained_envs = Vec::new();
    let (mut served, mut counted, mut skipped) = (0.0, 0.0, 0.0);
    for app in 0..apps {
        for (e, env) in ENVS.iter().enumerate() {
            let i = app * ENVS.len() + e;
            let key = (app_name(app), env.to_string());
            let delta = |m: &HashMap<(String, String), f64>, b: &HashMap<(String, String), f64>| {
                m.get(&key).copied().unwrap_or(0.0) - b.get(&key).copied().unwrap_or(0.0)
            };
            let got = (seen_after[i].requests - seen_before[i].requests) as f64;
            let said_skipped = delta(&after.skipped, &before.skipped);
            served += got;
            counted += delta(&after.checks, &before.checks);
            skipped += said_skipped;
            gaps.extend_from_slice(&seen_after[i].gaps_ms);
            // A check in flight at either end, and the phase of the
            // environment's timer against the window: one either way.
            if (got + said_skipped - per_env).abs() > 1.5 {
                unexplained_envs.push(format!(
                    "{}/{env}: {got} checks + {said_skipped} skipped in {measured:.1}s",
                    key.0
                ));
            }
        }
    }
    gaps.sort_by(f64::total_cmp);
    let healthy = |s: &Scrape| s.results.get("healthy").copied().unwrap_or(0.0);
    let all = |s: &Scrape| s.results.values().sum::<f64>();
    let not_healthy = (all(&after) - all(&before)) - (healthy(&after) - healthy(&before));
    Figures {
        envs,
        deployed_in: deployed.deployed_in,
        seconds: measured,
        cpu_percent: cpu.as_secs_f64() / measured * 100.0,
        rss_mean: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        rss_max: rss.iter().copied().fold(0.0, f64::max),
        p50_ms: quantile_ms(&before, &after, 0.5),
        p99_ms: quantile_ms(&before, &after, 0.99),
        gap_p50_ms: percentile(&gaps, 0.5),
        gap_p99_ms: percentile(&gaps, 0.99),
        gap_max_ms: gaps.last().copied().unwrap_or(f64::NAN),
        expected: envs as f64 * per_env,
        served,
        counted,
        skipped,
        not_healthy,
        unexplained_envs,
    }
}

/// This build's agent (A) against another `slipway` binary (B) on one
/// deployment: the agent is restarted on the same state with A and B in
/// turn (A B, B A, ...), `seconds` measured each time, so that a change of
/// a point or two is not lost in the machine's drift between two runs.
/// For development only (`SLIPWAY_LOAD_COMPARE=path/to/slipway`); nothing
/// is recorded for BENCHMARKS.md. RSS here is after a restart, which skips
/// the deployments' own allocations: compare it, do not quote it.
async fn compare(apps: usize, other: &Path, rounds: usize, seconds: u64) {
    let base = std::env::var("SLIPWAY_LOAD_BASE").ok();
    let this = Path::new(base.as_deref().unwrap_or(env!("CARGO_BIN_EXE_slipway")));
    assert!(
        other.is_file(),
        "SLIPWAY_LOAD_COMPARE={}: no such file",
        other.display()
    );
    println!(
        "\ncompare: A = {} against B = {}, {apps} apps × 2 environments, {rounds} rounds of {seconds} s each",
        this.display(),
        other.display()
    );
    let mut deployed = deploy(apps, Duration::from_secs(1)).await;
    println!("  deployed in {:.1} s", deployed.deployed_in.as_secs_f64());
    let mut cpu: [Vec<f64>; 2] = Default::default();
    let mut rss: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            // B with an empty compile cache: what compiling costs later.
            if side == 1 && std::env::var("SLIPWAY_LOAD_COMPARE_COLD").is_ok() {
                let _ = std::fs::remove_dir_all(deployed.state().join("cache"));
            }
            deployed
                .restart_with(if side == 0 { this } else { other })
                .await;
            let f = measure(&deployed, seconds).await;
            println!(
                "  round {} {}: CPU {:>6.2} %  RSS {:>6.1} MB  p50 {:.2} ms  p99 {:.2} ms  checks {:.0}/{:.0}",
                round + 1,
                ["A", "B"][side],
                f.cpu_percent,
                f.rss_mean,
                f.p50_ms,
                f.p99_ms,
                f.served,
                f.expected
            );
            cpu[side].push(f.cpu_percent);
            rss[side].push(f.rss_mean);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (side, name) in ["A", "B"].iter().enumerate() {
        println!(
            "  {name}: CPU mean {:.2} % (min {:.2}, max {:.2}), RSS mean {:.1} MB",
            mean(&cpu[side]),
            cpu[side].iter().copied().fold(f64::INFINITY, f64::min),
            cpu[side].iter().copied().fold(0.0, f64::max),
            mean(&rss[side])
        );
    }
    println!(
        "  B / A: CPU {:.3}, RSS {:.3}",
        mean(&cpu[1]) / mean(&cpu[0]),
        mean(&rss[1]) / mean(&rss[0])
    );
}

fn print_and_record(name: &str, f: &Figures) {
    let r = |key: &str, value: f64, unit: &str, what: &str| {
        common::record("load", &format!("{name}_{key}"), value, unit, what)
    };
    println!(
        "  {} environments deployed and guarded {:.1} s after the agent started",
        f.envs,
        f.deployed_in.as_secs_f64()
    );
    r(
        "environments",
        f.envs as f64,
        "",
        &format!("{name}: environments guarded"),
    );
    r(
        "deployed_s",
        f.deployed_in.as_secs_f64(),
        "s",
        &format!("{name}: agent start → every app deployed (builds, deploys, bakes)"),
    );
    println!("  measured for {:.1} s:", f.seconds);
    r("seconds", f.seconds, "s", &format!("{name}: measured for"));
    println!("  agent CPU           {:>8.2} % of one core", f.cpu_percent);
    r(
        "cpu_percent",
        f.cpu_percent,
        "% of one core",
        &format!("{name}: agent CPU (utime + stime)"),
    );
    println!(
        "  agent RSS           {:>8.1} MB mean, {:.1} MB max",
        f.rss_mean, f.rss_max
    );
    r(
        "rss_mean_mb",
        f.rss_mean,
        "MB",
        &format!("{name}: agent RSS, mean of 1 s samples"),
    );
    r(
        "rss_max_mb",
        f.rss_max,
        "MB",
        &format!("{name}: agent RSS, max of 1 s samples"),
    );
    println!(
        "  check latency       {:>8.2} ms p50, {:.2} ms p99 (step duration histogram)",
        f.p50_ms, f.p99_ms
    );
    r(
        "check_p50_ms",
        f.p50_ms,
        "ms",
        &format!("{name}: health check step duration p50 (from the agent's histogram)"),
    );
    r(
        "check_p99_ms",
        f.p99_ms,
        "ms",
        &format!("{name}: health check step duration p99 (from the agent's histogram)"),
    );
    println!(
        "  gap between checks  {:>8.1} ms p50, {:.1} ms p99, {:.1} ms max (seen by the servers)",
        f.gap_p50_ms, f.gap_p99_ms, f.gap_max_ms
    );
    r(
        "gap_p50_ms",
        f.gap_p50_ms,
        "ms",
        &format!("{name}: time between two checks of one environment, p50 (servers)"),
    );
    r(
        "gap_p99_ms",
        f.gap_p99_ms,
        "ms",
        &format!("{name}: time between two checks of one environment, p99 (servers)"),
    );
    r(
        "gap_max_ms",
        f.gap_max_ms,
        "ms",
        &format!("{name}: time between two checks of one environment, max (servers)"),
    );
    println!(
        "  checks              {:>8.0} expected, {:.0} received by the servers, {:.0} counted by the agent, {:.0} said skipped, {:.0} not healthy",
        f.expected, f.served, f.counted, f.skipped, f.not_healthy
    );
    r(
        "checks_expected",
        f.expected,
        "",
        &format!("{name}: checks expected (environments × seconds / interval)"),
    );
    r(
        "checks_served",
        f.served,
        "",
        &format!("{name}: checks received by the app servers"),
    );
    r(
        "checks_counted",
        f.counted,
        "",
        &format!("{name}: checks counted by the agent (slipway_health_checks_total)"),
    );
    r(
        "checks_skipped",
        f.skipped,
        "",
        &format!("{name}: checks the agent said it skipped (slipway_health_checks_skipped_total)"),
    );
    r(
        "checks_not_healthy",
        f.not_healthy,
        "",
        &format!("{name}: checks not healthy (servers always answer 200)"),
    );
    r(
        "unexplained_envs",
        f.unexplained_envs.len() as f64,
        "",
        &format!("{name}: environments with checks neither made nor said skipped"),
    );
    if f.unexplained_envs.is_empty() {
        println!(
            "  every environment: checks made + said skipped = seconds measured (± the phase)"
        );
    } else {
        println!(
            "  CHECKS MISSING WITHOUT A WORD in {} environments, e.g.:",
            f.unexplained_envs.len()
        );
        for e in f.unexplained_envs.iter().take(10) {
            println!("    {e}");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let idle_secs = env_number("SLIPWAY_IDLE_SECS", 30);
    let apps = env_number("SLIPWAY_LOAD_APPS", 200) as usize;
    let load_secs = env_number("SLIPWAY_LOAD_SECS", 300);

    println!("slipway load benchmark (real agent, builtin http-check, loopback servers)");
    if let Ok(other) = std::env::var("SLIPWAY_LOAD_COMPARE") {
        let rounds = env_number("SLIPWAY_LOAD_ROUNDS", 3) as usize;
        compare(apps, Path::new(&other), rounds, load_secs.max(10)).await;
        return;
    }
    if idle_secs > 0 {
        println!("\nidle: 3 apps × 2 environments, health every 2 s, {idle_secs} s");
        let idle = phase(3, Duration::from_secs(2), idle_secs).await;
        print_and_record("idle", &idle);
    }
    if load_secs > 0 {
        println!("\nload: {apps} apps × 2 environments, health every 1 s, {load_secs} s");
        let load = phase(apps, Duration::from_secs(1), load_secs).await;
        print_and_record("load", &load);
        let cpu_ok = load.cpu_percent < GOAL_CPU_PERCENT;
        let rss_ok = load.rss_max < GOAL_RSS_MB;
        let checks_ok = load.unexplained_envs.is_empty() && load.not_healthy == 0.0;
        let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
        println!(
            "  goal: CPU < {GOAL_CPU_PERCENT}% of one core: {}; RSS < {GOAL_RSS_MB} MB: {}; no check skipped silently: {}",
            verdict(cpu_ok),
            verdict(rss_ok),
            verdict(checks_ok)
        );
        let flag = |ok: bool| if ok { 1.0 } else { 0.0 };
        common::record(
            "load",
            "goal_cpu",
            flag(cpu_ok),
            "met",
            &format!("goal: agent CPU under {GOAL_CPU_PERCENT}% of one core"),
        );
        common::record(
            "load",
            "goal_rss",
            flag(rss_ok),
            "met",
            &format!("goal: agent RSS under {GOAL_RSS_MB} MB"),
        );
        common::record(
            "load",
            "goal_checks",
            flag(checks_ok),
            "met",
            "goal: every check made or said skipped, all healthy",
        );
    }
    common::record_machine_load("load");
}
