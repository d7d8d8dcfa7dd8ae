//! What a plugin step costs, side by side with the shell hook it replaces.
//!
//! Run: `cargo bench -p slipway --bench steps --profile dev` (the dev profile
//! optimises wasmtime and cranelift; see Cargo.toml). Prints, measured in one
//! run, in alternating rounds so machine noise hits both sides alike:
//! 1. a no-op health-check step (fresh instance from `InstancePre` + call)
//!    vs `sh -c 'exit 0'` spawned with `std::process::Command`;
//! 2. the `http-check` plugin vs `curl -fsS` against the same local server;
//! 3. cold compile vs compile-cache load of the largest first-party plugin.

use serde_json::json;
use slipway::runtime::{
    DirGrant, Grants, HostPattern, Limits, Plugin, PluginSource, Redactor, ReleaseRef, Runtime,
    RuntimeConfig, StepContext, StepInput, StepKind, StepLabels, StepRequest, StepValue, builtin,
    cache::{CacheOutcome, CompileCache},
};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

/// Per-iteration times of one measured thing.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn median(&mut self) -> Duration {
        self.0.sort();
        self.0[self.0.len() / 2]
    }
    fn p99(&mut self) -> Duration {
        self.0.sort();
        self.0[(self.0.len() * 99 / 100).min(self.0.len() - 1)]
    }
}

fn micros(d: Duration) -> String {
    format!("{:>10.1} µs", d.as_secs_f64() * 1e6)
}

fn report(title: &str, a_name: &str, a: &mut Samples, b_name: &str, b: &mut Samples) {
    let (am, bm) = (a.median(), b.median());
    println!("\n{title}");
    println!(
        "  {a_name:<44} median {}  p99 {}  (n={})",
        micros(am),
        micros(a.p99()),
        a.0.len()
    );
    println!(
        "  {b_name:<44} median {}  p99 {}  (n={})",
        micros(bm),
        micros(b.p99()),
        b.0.len()
    );
    println!("  ratio: {:.1}x", bm.as_secs_f64() / am.as_secs_f64());
}

fn step(
    kind: StepKind,
    release_dir: &Path,
    params: serde_json::Value,
    grants: Grants,
) -> StepRequest {
    StepRequest {
        kind,
        input: StepInput::Step(StepContext {
            app: "web".into(),
            environment: Some("production".into()),
            release: ReleaseRef {
                version: "1.0.0".into(),
                id: "1.0.0-bench".into(),
                dir: release_dir.to_path_buf(),
            },
            previous_release: None,
            params,
            attempt: 1,
        }),
        grants,
        limits: Limits::default(),
        secrets: Default::default(),
        redactor: Redactor::default(),
        labels: StepLabels {
            plugin: "bench".into(),
            kind: kind.to_string(),
            app: "web".into(),
            environment: "production".into(),
            deployment: "bench".into(),
        },
    }
}

async fn time_steps(plugin: &Plugin, request: &StepRequest, n: usize, out: &mut Samples) {
    for _ in 0..n {
        let started = Instant::now();
        let outcome = plugin.run(request).await;
        out.0.push(started.elapsed());
        assert!(
            matches!(
                outcome.result,
                Ok(StepValue::Health { .. }) | Ok(StepValue::Passed { .. })
            ),
            "{:?}",
            outcome.result
        );
    }
}

fn time_command(program: &str, args: &[&str], n: usize, out: &mut Samples) {
    for _ in 0..n {
        let started = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("spawn");
        out.0.push(started.elapsed());
        assert!(status.success(), "{program} {args:?} failed");
    }
}

/// A minimal HTTP/1.1 server on loopback answering 200 "ok" to anything.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let state = tempfile::tempdir().unwrap();
    let release = tempfile::tempdir().unwrap();
    let release_dir = release.path().canonicalize().unwrap();
    let profiling = std::env::var("SLIPWAY_BENCH_PROFILE_STEPS").ok();
    let rt = Runtime::new(&RuntimeConfig {
        cache_dir: Some(state.path().join("cache")),
        // valgrind cannot reserve the address space of a full pool.
        max_instances: if profiling.is_some() { 2 } else { 256 },
    })
    .unwrap();
    println!("slipway step benchmark ({} rounds, alternating)", ROUNDS);

    // 1. no-op health check vs sh -c 'exit 0'
    let noop_path = Path::new(builtin::BUILD_DIR).join("slipway_fixture_noop.wasm");
    let noop = rt.load(&PluginSource::File(noop_path), None).await.unwrap();
    let release_grant = Grants {
        dirs: vec![DirGrant {
            path: release_dir.clone(),
            write: false,
        }],
        ..Grants::default()
    };
    let noop_step = step(
        StepKind::HealthCheck,
        &release_dir,
        json!({}),
        release_grant.clone(),
    );
    time_steps(&noop, &noop_step, 200, &mut Samples::default()).await;
    if let Some(n) = profiling {
        // For a profiler (callgrind): only the no-op step, n times.
        time_steps(
            &noop,
            &noop_step,
            n.parse().unwrap(),
            &mut Samples::default(),
        )
        .await;
        return;
    }
    let (mut plugin, mut shell) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        time_steps(&noop, &noop_step, 2000, &mut plugin).await;
        time_command("sh", &["-c", "exit 0"], 300, &mut shell);
    }
    report(
        "1. no-op health check",
        "plugin step (fresh instance + call)",
        &mut plugin,
        "shell hook: sh -c 'exit 0'",
        &mut shell,
    );

    // 2. http-check vs curl against the same local server
    let port = http_server();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let http_check = rt
        .load(&PluginSource::Builtin("http-check".into()), None)
        .await
        .unwrap();
    let mut grants = release_grant.clone();
    grants.http = vec![HostPattern::parse("127.0.0.1:*").unwrap()];
    let http_step = step(
        StepKind::HealthCheck,
        &release_dir,
        json!({ "url": url }),
        grants,
    );
    time_steps(&http_check, &http_step, 50, &mut Samples::default()).await;
    let (mut plugin, mut curl) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        time_steps(&http_check, &http_step, 400, &mut plugin).await;
        time_command("curl", &["-fsS", "-o", "/dev/null", &url], 100, &mut curl);
    }
    report(
        "2. HTTP health check against a local server",
        "http-check plugin step",
        &mut plugin,
        "shell hook: curl -fsS",
        &mut curl,
    );

    // 3. cold compile vs cache load of the largest first-party plugin
    let (name, bytes) = builtin::names()
        .into_iter()
        .map(|n| (n, builtin::get(n).unwrap()))
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let sha = slipway::runtime::cache::sha256_hex(bytes);
    let engine = rt.engine();
    let no_cache = CompileCache::new(engine, None);
    let cache = CompileCache::new(engine, Some(&state.path().join("bench-cache")));
    cache.load(engine, bytes, &sha).unwrap();
    let (mut compile, mut load) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        for _ in 0..4 {
            let started = Instant::now();
            let (_, outcome) = no_cache.load(engine, bytes, &sha).unwrap();
            compile.0.push(started.elapsed());
            assert_eq!(outcome, CacheOutcome::CompiledUncached);
        }
        for _ in 0..50 {
            let started = Instant::now();
            let (_, outcome) = cache.load(engine, bytes, &sha).unwrap();
            load.0.push(started.elapsed());
            assert_eq!(outcome, CacheOutcome::Hit);
        }
    }
    report(
        &format!(
            "3. {name} ({} KB): compile vs compile-cache load",
            bytes.len() / 1024
        ),
        "cache load (mmap)",
        &mut load,
        "cold compile",
        &mut compile,
    );
}
