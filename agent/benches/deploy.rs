//! How quickly an edit becomes a deployment, and what the agent itself adds
//! to one.
//!
//! Run: `cargo bench -p slipway --bench deploy --profile dev`. It runs the
//! real `slipway` binary on a copy of the quickstart (loopback ports, short
//! health waits), edits the version repeatedly the way an editor saves, and
//! reads the journal to print:
//! 1. config write → first step started (the build), median of the edits;
//! 2. agent overhead of a whole deployment: its duration minus the time
//!    inside the build step and the configured health-check intervals.

mod common;

use slipway::store::{DeploymentState, Journal};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const EDITS: usize = 10;
const INTERVAL_MS: i64 = 100;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(version: &str, staging: u16, production: u16) -> String {
    format!(
        r#"[agent]
state_dir = "state"
stop_grace = "2s"
listen = "127.0.0.1:0"

[plugins.command]
source = "builtin:command"
grants = {{ exec = ["rustc"] }}

[plugins.http-check]
source = "builtin:http-check"
grants = {{ http = ["127.0.0.1:*"] }}

[apps.hello]
version = "{version}"
source = {{ path = "app" }}
build = {{ plugin = "command", params = {{ run = ["rustc --edition 2024 src/main.rs -o hello"] }} }}

[apps.hello.environments.staging]
run = {{ command = "./hello", env = {{ PORT = "{staging}" }} }}
smoke = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{staging}/", retries = 50, retry_delay_ms = 10 }} }}
health = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{staging}/healthz" }}, interval = "{INTERVAL_MS}ms", healthy_after = 2 }}

[apps.hello.environments.production]
promote_from = "staging"
run = {{ command = "./hello", env = {{ PORT = "{production}" }} }}
smoke = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{production}/", retries = 50, retry_delay_ms = 10 }} }}
health = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{production}/healthz" }}, interval = "{INTERVAL_MS}ms", healthy_after = 2 }}
"#
    )
}

fn save(dir: &Path, text: &str) {
    let tmp = dir.join(".slipway.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("slipway.toml")).unwrap();
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::create_dir_all(dir.path().join("app/src")).unwrap();
    std::fs::copy(
        repo.join("examples/quickstart/app/src/main.rs"),
        dir.path().join("app/src/main.rs"),
    )
    .unwrap();
    let (staging, production) = (free_port(), free_port());
    save(dir.path(), &config("1.0.0", staging, production));
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["agent", "-c"])
        .arg(dir.path().join("slipway.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let db = dir.path().join("state/journal.db");
    let wait_done = |version: &str| -> slipway::store::Deployment {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "deployment of {version} did not end"
            );
            if let Ok(j) = Journal::open(&db)
                && let Some(d) = j.deployments(Some("hello"), 1).unwrap().into_iter().next()
                && d.version == version
                && d.state != DeploymentState::Running
            {
                assert_eq!(d.state, DeploymentState::Succeeded, "{:?}", d.reason);
                return d;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_done("1.0.0");

    let (mut latency, mut overhead, mut total, mut build) = (vec![], vec![], vec![], vec![]);
    for n in 1..=EDITS {
        let version = format!("1.0.{n}");
        let written = now_ms();
        save(dir.path(), &config(&version, staging, production));
        let d = wait_done(&version);
        let steps = Journal::open(&db).unwrap().steps(d.id).unwrap();
        let first = steps.iter().map(|s| s.started_at).min().unwrap();
        latency.push(first - written);
        let in_build: i64 = steps
            .iter()
            .filter(|s| s.kind == "build")
            .map(|s| s.ended_at.unwrap() - s.started_at)
            .sum();
        let health_checks = steps.iter().filter(|s| s.kind == "health-check").count() as i64;
        let waits = (health_checks - 2).max(0) * INTERVAL_MS; // one interval between checks, per env
        let whole = d.ended_at.unwrap() - d.started_at;
        total.push(whole);
        build.push(in_build);
        overhead.push(whole - in_build - waits);
    }
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
    let ms = |key: &str, v: &[i64], what: &str| {
        common::record("deploy", key, median(v.to_vec()) as f64, "ms", what);
    };
    ms(
        "write_to_first_step_ms",
        &latency,
        "config write → first step (the build) started, median of the edits",
    );
    ms(
        "deployment_ms",
        &total,
        "whole deployment (build, 2 envs with smoke and bake), median",
    );
    ms(
        "build_ms",
        &build,
        "of which inside the build step (rustc of the app), median",
    );
    ms(
        "agent_overhead_ms",
        &overhead,
        "agent overhead of a deployment: whole minus build step minus health intervals, median",
    );
    common::record_machine_load("deploy");
    println!("slipway deploy benchmark ({EDITS} edits of the quickstart, real binary)");
    println!(
        "  config write -> first step started   median {:>5} ms   (all: {latency:?})",
        median(latency.clone())
    );
    println!(
        "  whole deployment                      median {:>5} ms",
        median(total)
    );
    println!(
        "  of which inside the build step        median {:>5} ms",
        median(build)
    );
    println!(
        "  agent overhead (minus build, waits)   median {:>5} ms   (all: {overhead:?})",
        median(overhead.clone())
    );
}
