//! Production traffic through the traffic layer (`slipway proxy`) while
//! releases change and the agent restarts: a client load runs through each
//! scenario, every request must succeed, and no request may be answered by
//! a release that failed its gate (the quickstart app names its version in
//! each answer).

use crate::support::quickstart::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Clients sending `GET /` in a loop, a new connection each time.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Tally>>,
    started: Instant,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    /// Answers per version ("hello from VERSION (env)").
    versions: BTreeMap<String, u64>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed) {
                        match request(port) {
                            Ok(version) => {
                                tally.ok += 1;
                                *tally.versions.entry(version).or_default() += 1;
                            }
                            Err(why) => tally.failed.push(why),
                        }
                    }
                    tally
                })
            })
            .collect();
        Self {
            stop,
            clients,
            started: Instant::now(),
        }
    }

    /// Stop the clients; their tallies summed, and the requests per second.
    fn stop(self) -> (Tally, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let mut all = Tally::default();
        for client in self.clients {
            let t = client.join().unwrap();
            all.ok += t.ok;
            all.failed.extend(t.failed);
            for (v, n) in t.versions {
                *all.versions.entry(v).or_default() += n;
            }
        }
        let rate = (all.ok + all.failed.len() as u64) as f64 / seconds;
        (all, rate)
    }
}

/// One `GET /`: the version that answered, or why it failed.
fn request(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    let status = text.split_whitespace().nth(1).unwrap_or("none");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    match (status, body.strip_prefix("hello from ")) {
        ("200", Some(rest)) => Ok(rest.split_whitespace().next().unwrap_or("").to_string()),
        _ => Err(format!("status {status}: {}", body.trim())),
    }
}

/// No request failed, the load was at least 200 requests a second, and
/// only `allowed` versions answered.
fn assert_clean(what: &str, tally: &Tally, rate: f64, allowed: &[&str], agent_log: &str) {
    let first: Vec<_> = tally.failed.iter().take(5).collect();
    assert!(
        tally.failed.is_empty(),
        "{what}: {} of {} requests failed, first: {first:?}\n{agent_log}",
        tally.failed.len(),
        tally.ok + tally.failed.len() as u64
    );
    assert!(rate >= 200.0, "{what}: only {rate:.0} requests a second");
    for version in tally.versions.keys() {
        assert!(
            allowed.contains(&version.as_str()),
            "{what}: {version} answered ({:?})",
            tally.versions
        );
    }
    eprintln!(
        "{what}: {} requests, {rate:.0}/s, none failed; versions {:?}",
        tally.ok, tally.versions
    );
}

fn deploy(q: &Quickstart, agent: &Agent, version: &str) -> slipway::store::Deployment {
    q.write_config(version);
    wait_deployment_end(q, agent, version)
}

#[test]
fn deploys_and_gate_rollbacks_drop_no_request_and_a_failed_release_never_serves() {
    let q = Quickstart::behind_traffic();
    let agent = q.start_agent();
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_succeeded(&first, &agent);
    assert!(serves(q.production, "1.0.0"));

    let load = Load::start(q.production, 4);
    assert_succeeded(&deploy(&q, &agent, "1.1.0"), &agent);
    // Sick after promotion to staging's bake: fails production's gate on
    // its own port, before any request reaches it.
    let sick = deploy(&q, &agent, "1.2.0-sick");
    assert_eq!(
        sick.state,
        slipway::store::DeploymentState::RolledBack,
        "{:?}",
        sick.reason
    );
    let (tally, rate) = load.stop();
    assert_clean(
        "deploy 1.1.0, then 1.2.0-sick rolled back by its gate",
        &tally,
        rate,
        &["1.0.0", "1.1.0"],
        &agent.log(),
    );
    assert!(tally.versions.contains_key("1.1.0"));
    assert!(serves(q.production, "1.1.0"));
    // The release switched away from was stopped after its drain.
    let status = q
        .journal()
        .env_state("hello", "production")
        .unwrap()
        .unwrap();
    assert!(status.current_release.unwrap().starts_with("1.1.0-"));
}

#[test]
fn the_public_port_and_the_apps_outlive_agent_restarts_kills_and_upgrades() {
    let q = Quickstart::behind_traffic();
    // The agent runs from a copy, which an upgrade replaces.
    let bin = q.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let program = bin.join("slipway");
    std::fs::copy(env!("CARGO_BIN_EXE_slipway"), &program).unwrap();
    let agent = q.agent().program(&program).spawn();
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);
    let pid = |env: &str| {
        let run = q.state_dir().join("run");
        std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("hello.{env}."))
            })
            .map(|e| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
                v["pid"].as_u64().unwrap()
            })
            .collect::<Vec<_>>()
    };
    let before = pid("production");
    assert_eq!(before.len(), 1, "one production process");

    // Start the agent again; it must take production over as it runs.
    let adopt = || {
        let agent = q.agent().program(&program).spawn();
        wait_for(
            "the agent to adopt production",
            &agent,
            Duration::from_secs(30),
            || agent.log().contains("adopted, not restarted"),
        );
        agent
    };
    let load = Load::start(q.production, 4);
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM, as a unit stop or restart sends: apps keep serving.
    agent.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let agent = adopt();
    std::thread::sleep(Duration::from_millis(500));
    // kill -9.
    agent.kill_9();
    std::thread::sleep(Duration::from_millis(500));
    let agent = adopt();
    // An upgrade: the binary replaced (a new file at the same path), then
    // SIGTERM and a new start, as a unit restart does.
    let next = bin.join("slipway.new");
    std::fs::copy(env!("CARGO_BIN_EXE_slipway"), &next).unwrap();
    std::fs::rename(&next, &program).unwrap();
    agent.terminate();
    let agent = adopt();
    std::thread::sleep(Duration::from_millis(500));
    let (tally, rate) = load.stop();
    assert_clean(
        "agent SIGTERM + start, kill -9 + start, binary replaced + restart",
        &tally,
        rate,
        &["1.0.0"],
        &agent.log(),
    );
    assert_eq!(
        pid("production"),
        before,
        "production was adopted, never restarted"
    );

    // Ctrl-C stops everything: the apps and the traffic layer.
    agent.interrupt();
    assert!(
        get(q.production, "/").is_none(),
        "the public port still answers"
    );
    assert!(pid("production").is_empty());
}

#[test]
fn the_traffic_layer_upgrades_itself_without_dropping_a_request() {
    let q = Quickstart::behind_traffic();
    let agent = q.start_agent();
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);
    let proxy_pid = || {
        std::fs::read_to_string(q.state_dir().join("run/proxy-pid"))
            .unwrap()
            .trim()
            .to_string()
    };
    let old = proxy_pid();
    let load = Load::start(q.production, 4);
    std::thread::sleep(Duration::from_millis(500));
    // A second proxy on the same state dir takes the sockets over.
    let log = std::fs::File::create(q.dir.path().join("proxy-2.log")).unwrap();
    let mut successor = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["proxy", "--state-dir"])
        .arg(q.state_dir())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy_pid() == old && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        proxy_pid(),
        successor.id().to_string(),
        "the new proxy took over"
    );
    // The agent talks to the new one: a deploy goes through it.
    assert_succeeded(&deploy(&q, &agent, "1.1.0"), &agent);
    let (tally, rate) = load.stop();
    assert_clean(
        "the traffic layer replaced by a new process, then a deploy",
        &tally,
        rate,
        &["1.0.0", "1.1.0"],
        &agent.log(),
    );
    let old_pid: i32 = old.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while unsafe { libc_kill(old_pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old proxy was the agent's child: reaped by it, or gone.
    drop(agent);
    let _ = successor.kill();
    let _ = successor.wait();
}

#[test]
fn a_release_that_takes_seconds_to_listen_is_waited_for_and_drops_nothing() {
    let mut q = Quickstart::behind_traffic();
    let agent = q.start_agent();
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);
    for env in ["staging", "production"] {
        q.hello().env_mut(env).run =
            Some(json!({ "command": "./hello", "env": { "HELLO_START_AFTER_MS": "3000" } }));
    }
    let load = Load::start(q.production, 4);
    let slow = deploy(&q, &agent, "1.1.0");
    let (tally, rate) = load.stop();
    assert_succeeded(&slow, &agent);
    assert_clean(
        "a release that listens after 3 s",
        &tally,
        rate,
        &["1.0.0", "1.1.0"],
        &agent.log(),
    );
    assert!(serves(q.production, "1.1.0"));

    // One that never listens within start_timeout fails its start gate,
    // named, and production keeps its release.
    q.traffic("staging", "start_timeout", json!("1s"));
    let never = deploy(&q, &agent, "1.2.0");
    assert_ne!(never.state, slipway::store::DeploymentState::Succeeded);
    let reason = never.reason.unwrap_or_default();
    assert!(
        reason.contains("did not listen on 127.0.0.1:") && reason.contains("traffic.start_timeout"),
        "{reason}"
    );
    assert!(serves(q.staging, "1.1.0") && serves(q.production, "1.1.0"));
}

#[test]
fn health_guard_and_operator_rollbacks_switch_without_a_gap() {
    let mut q = Quickstart::behind_traffic();
    q.traffic("production", "keep_previous", json!("1m"));
    let agent = q.start_agent();
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);
    assert_succeeded(&deploy(&q, &agent, "1.1.0"), &agent);
    let load = Load::start(q.production, 4);
    // An operator rollback within keep_previous: a switch back to 1.0.0.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["rollback", "hello", "--env", "production", "-c"])
        .arg(q.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "production to serve 1.0.0",
        &agent,
        Duration::from_secs(30),
        || serves(q.production, "1.0.0"),
    );
    let (tally, rate) = load.stop();
    assert_clean(
        "an operator rollback within keep_previous",
        &tally,
        rate,
        &["1.0.0", "1.1.0"],
        &agent.log(),
    );

    // A release that turns unhealthy after its bake: the guard rolls it
    // back; traffic moves without a failed request.
    q.production_env().run =
        Some(json!({ "command": "./hello", "env": { "HELLO_SICK_AFTER_MS": "7000" } }));
    q.staging_env().run =
        Some(json!({ "command": "./hello", "env": { "HELLO_SICK_AFTER_MS": "7000" } }));
    let load = Load::start(q.production, 4);
    let sick = deploy(&q, &agent, "1.3.0-sick");
    assert_succeeded(&sick, &agent);
    wait_for(
        "the guard's rollback",
        &agent,
        Duration::from_secs(60),
        || {
            latest(&q).is_some_and(|d| {
                d.state == slipway::store::DeploymentState::RolledBack
                    && d.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("production: turned unhealthy"))
            }) && matches!(get(q.production, "/"), Some((200, body)) if !body.contains("1.3.0-sick"))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let (tally, rate) = load.stop();
    assert_clean(
        "a health-guard rollback",
        &tally,
        rate,
        &["1.0.0", "1.1.0", "1.3.0-sick"],
        &agent.log(),
    );
}

#[test]
fn tcp_mode_carries_bytes_to_the_release_and_switches_on_deploy() {
    let mut q = Quickstart::behind_traffic();
    q.traffic("production", "mode", json!("tcp"));
    let agent = q.start_agent();
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);
    let load = Load::start(q.production, 4);
    assert_succeeded(&deploy(&q, &agent, "1.1.0"), &agent);
    std::thread::sleep(Duration::from_millis(300));
    let (tally, rate) = load.stop();
    assert_clean(
        "a deploy behind a TCP-mode route",
        &tally,
        rate,
        &["1.0.0", "1.1.0"],
        &agent.log(),
    );
    assert!(tally.versions.contains_key("1.1.0"));
}

#[test]
fn a_canary_is_judged_on_its_own_figures_passes_or_is_rolled_back_with_them() {
    let mut q = Quickstart::behind_traffic();
    q.traffic(
        "production",
        "canary",
        json!({ "share": "20%", "for": "3s", "max_error_ratio": "1%", "min_requests": 20 }),
    );
    let agent = q.start_agent();
    // The first release has nothing to be compared with: no canary.
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);

    let load = Load::start(q.production, 4);
    assert_succeeded(&deploy(&q, &agent, "1.1.0"), &agent);
    let (tally, rate) = load.stop();
    assert_clean(
        "a canary that passes",
        &tally,
        rate,
        &["1.0.0", "1.1.0"],
        &agent.log(),
    );
    let log = agent.log();
    let judged = log
        .lines()
        .find(|l| l.contains("canary 1.1.0-"))
        .unwrap_or_else(|| panic!("no canary verdict in the log\n{log}"));
    assert!(
        judged.contains("(20% for") && judged.contains(": passed"),
        "{judged}"
    );
    assert!(serves(q.production, "1.1.0"));

    // One request in three fails on 1.2.0-flaky: its smoke test (with
    // retries) and health checks pass; its share of live traffic does not.
    let load = Load::start(q.production, 4);
    let flaky = deploy(&q, &agent, "1.2.0-flaky");
    let (tally, rate) = load.stop();
    assert_eq!(
        flaky.state,
        slipway::store::DeploymentState::RolledBack,
        "{:?}",
        flaky.reason
    );
    let reason = flaky.reason.unwrap_or_default();
    assert!(
        reason.contains("canary failed: canary 1.2.0-flaky-")
            && reason.contains("stable 1.1.0-")
            && reason.contains("limits: errors ≤ 1.00%")
            && reason.contains("its error ratio is over the limit and the stable release's"),
        "{reason}"
    );
    // The only failed requests are the canary's own 500s, within its share.
    assert!(!tally.failed.is_empty(), "the canary got no traffic");
    assert!(
        tally
            .failed
            .iter()
            .all(|f| f.contains("hello 1.2.0-flaky: flaky on purpose")),
        "{:?}",
        &tally.failed[..tally.failed.len().min(5)]
    );
    let total = tally.ok + tally.failed.len() as u64;
    assert!(
        (tally.failed.len() as u64) * 100 < total * 20,
        "{} of {total} failed",
        tally.failed.len()
    );
    assert!(rate >= 200.0, "{rate:.0} requests a second");
    eprintln!(
        "a canary that fails: {total} requests, {rate:.0}/s, {} failed (all the canary's own 500s); versions {:?}",
        tally.failed.len(),
        tally.versions
    );
    assert!(serves(q.production, "1.1.0"));
    wait_for(
        "the canary to stop",
        &agent,
        Duration::from_secs(20),
        || {
            agent
            .log()
            .contains("stopping the release switched away from app=hello env=production release=1.2.0-flaky")
        },
    );
}

#[test]
fn a_websocket_open_across_a_deploy_drains_and_is_not_cut_before_drain() {
    let mut q = Quickstart::behind_traffic();
    q.traffic("production", "drain", json!("4s"));
    let agent = q.start_agent();
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.0.0"), &agent);
    let mut ws = TcpStream::connect(("127.0.0.1", q.production)).unwrap();
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(ws.try_clone().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let mut echo = |text: &str| -> Option<String> {
        ws.write_all(format!("{text}\n").as_bytes()).ok()?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim().to_string()),
            _ => None,
        }
    };
    assert_eq!(echo("a").as_deref(), Some("1.0.0: a"));

    q.write_config("1.1.0");
    wait_for(
        "production to serve 1.1.0",
        &agent,
        Duration::from_secs(60),
        || serves(q.production, "1.1.0"),
    );
    let switched = Instant::now();
    // New requests go to 1.1.0; the open connection stays on 1.0.0.
    assert_eq!(echo("b").as_deref(), Some("1.0.0: b"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        echo("c").as_deref(),
        Some("1.0.0: c"),
        "the connection was cut before its drain"
    );
    // After the drain (4 s) the old release is stopped, and the connection with it.
    let mut closed = None;
    while switched.elapsed() < Duration::from_secs(15) {
        if echo("d").is_none() {
            closed = Some(switched.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed = closed.expect("the drained connection was never closed");
    assert!(
        closed >= Duration::from_millis(3500),
        "closed {closed:?} after the switch, before the 4 s drain"
    );
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.1.0"), &agent);
}
