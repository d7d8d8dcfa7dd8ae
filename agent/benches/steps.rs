//! What a plugin step costs, side by side with the shell hook it replaces.
//!
//! Run: `cargo bench -p slipway --bench steps --profile dev` (the dev profile
//! optimises wasmtime and cranelift; see Cargo.toml). Prints, measured in one
//! run, in alternating rounds so machine noise hits both sides alike:
//! 1. a no-op health-check step (fresh instance from `InstancePre` + call)
//!    vs `sh -c 'exit 0'` spawned with `std::process::Command`;
//! 2. the `http-check` plugin vs `curl -fsS` against the same local server;
//! 3. cold compile vs compile-cache load of the largest first-party plugin;
//! 4. the same HTTP check in Rust, Python and JavaScript (the example
//!    plugins, built by their build scripts): component size, compile time,
//!    cache load time, and per-step time with a fresh and a warm instance,
//!    against `sh -c 'exit 0'` and `curl`.

mod common;
// The tests' support module: the bench uses part of it.
#[allow(dead_code, unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

use serde_json::json;
use slipway::runtime::{
    Plugin, PluginSource, Runtime, RuntimeConfig, StepKind, StepRequest, StepValue, builtin,
    cache::CacheOutcome,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{HttpServer, Step, examples, patterns};

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

/// Print a side-by-side pair and record it (`key_a`, `key_b`, `key_ratio`)
/// for BENCHMARKS.md.
fn report(
    (key, title): (&str, &str),
    a_name: &str,
    a: &mut Samples,
    b_name: &str,
    b: &mut Samples,
) {
    let (am, bm) = (a.median(), b.median());
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let short = title.split_once(' ').map_or(title, |t| t.1);
    common::record(
        "steps",
        &format!("{key}_a"),
        us(am),
        "µs",
        &format!("{short}: {a_name}, median"),
    );
    common::record(
        "steps",
        &format!("{key}_b"),
        us(bm),
        "µs",
        &format!("{short}: {b_name}, median"),
    );
    common::record(
        "steps",
        &format!("{key}_ratio"),
        bm.as_secs_f64() / am.as_secs_f64(),
        "×",
        &format!("{short}: {b_name} / {a_name} (same run, alternating rounds)"),
    );
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

/// Like [`time_steps`], through one warm instance (as the engine runs
/// health checks).
async fn time_warm_steps(plugin: &Plugin, request: &StepRequest, n: usize, out: &mut Samples) {
    let mut slot = None;
    for _ in 0..n {
        let started = Instant::now();
        let outcome = plugin.run_warm(&mut slot, request).await;
        out.0.push(started.elapsed());
        assert!(
            matches!(outcome.result, Ok(StepValue::Health { .. })),
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let state = tempfile::tempdir().unwrap();
    let profiling = std::env::var("SLIPWAY_BENCH_PROFILE_STEPS").ok();
    let rt = Runtime::new(&RuntimeConfig {
        cache_dir: Some(state.path().join("cache")),
        // valgrind cannot reserve the address space of a full pool.
        max_instances: if profiling.is_some() { 2 } else { 256 },
        ..RuntimeConfig::default()
    })
    .unwrap();
    println!("slipway step benchmark ({} rounds, alternating)", ROUNDS);

    // 1. no-op health check vs sh -c 'exit 0'
    let noop = rt
        .load(&PluginSource::File(support::fixture("noop")), None)
        .await
        .unwrap();
    // A step as the engine runs one: the release dir granted read-only.
    let noop_step = Step::new(StepKind::HealthCheck, json!({}));
    let noop_step: &StepRequest = &noop_step.request;
    time_steps(&noop, noop_step, 200, &mut Samples::default()).await;
    if let Some(n) = profiling {
        // For a profiler (callgrind): only the no-op step, n times.
        time_steps(
            &noop,
            noop_step,
            n.parse().unwrap(),
            &mut Samples::default(),
        )
        .await;
        return;
    }
    let (mut plugin, mut shell) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        time_steps(&noop, noop_step, 2000, &mut plugin).await;
        time_command("sh", &["-c", "exit 0"], 300, &mut shell);
    }
    report(
        ("noop_fresh", "1. no-op health check"),
        "plugin step (fresh instance + call)",
        &mut plugin,
        "shell hook: sh -c 'exit 0'",
        &mut shell,
    );
    let mut warm = Samples::default();
    for _ in 0..ROUNDS {
        time_warm_steps(&noop, noop_step, 2000, &mut warm).await;
    }
    report(
        (
            "noop_warm",
            "1b. no-op health check, warm instance (how the engine runs health checks)",
        ),
        "plugin step (warm instance)",
        &mut warm,
        "shell hook: sh -c 'exit 0'",
        &mut shell,
    );

    // 2. http-check vs curl against the same local server
    let server = HttpServer::start();
    let url = server.url("/ok");
    let http_check = rt
        .load(&PluginSource::Builtin("http-check".into()), None)
        .await
        .unwrap();
    let http_step = Step::new(StepKind::HealthCheck, json!({ "url": url }))
        .grants(|g| g.http = patterns(&["127.0.0.1:*"]));
    let http_step = &http_step.request;
    time_steps(&http_check, http_step, 50, &mut Samples::default()).await;
    let (mut plugin, mut curl) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        time_steps(&http_check, http_step, 400, &mut plugin).await;
        time_command("curl", &["-fsS", "-o", "/dev/null", &url], 100, &mut curl);
    }
    report(
        ("http", "2. HTTP health check against a local server"),
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
    let no_cache = rt.cache().rooted(engine, None);
    let cache = rt
        .cache()
        .rooted(engine, Some(&state.path().join("bench-cache")));
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
        (
            "compile",
            &format!(
                "3. {name} ({} KB): compile vs compile-cache load",
                bytes.len() / 1024
            ),
        ),
        "cache load (mmap)",
        &mut load,
        "cold compile",
        &mut compile,
    );

    // 4. the same HTTP check in three languages
    languages(&rt, &server, state.path()).await;
    common::record_machine_load("steps");
}

/// One language's plugin for section 4, and its figures.
struct Lang {
    name: &'static str,
    plugin: Plugin,
    bytes: Vec<u8>,
    step: Step,
    compile: Samples,
    load: Samples,
    fresh: Samples,
    warm: Samples,
}

async fn languages(rt: &Runtime, server: &HttpServer, state: &std::path::Path) {
    let url = server.url("/ok");
    let grant = |g: &mut slipway::runtime::Grants| g.http = patterns(&["127.0.0.1:*"]);
    let mut langs = Vec::new();
    // python-smoke is a smoke-test plugin; the others are health checks.
    // All three send the same GET and check its status.
    for (name, path, kind) in [
        (
            "Rust (rust-health)",
            examples::rust_health(),
            StepKind::HealthCheck,
        ),
        (
            "Python (python-smoke)",
            examples::python_smoke(),
            StepKind::SmokeTest,
        ),
        (
            "JavaScript (js-health)",
            examples::js_health(),
            StepKind::HealthCheck,
        ),
    ] {
        let plugin = rt
            .load(&PluginSource::File(path.clone()), None)
            .await
            .unwrap();
        langs.push(Lang {
            name,
            plugin,
            bytes: std::fs::read(&path).unwrap(),
            step: Step::new(kind, json!({ "url": url })).grants(grant),
            compile: Samples::default(),
            load: Samples::default(),
            fresh: Samples::default(),
            warm: Samples::default(),
        });
    }

    let engine = rt.engine();
    let no_cache = rt.cache().rooted(engine, None);
    let cache = rt.cache().rooted(engine, Some(&state.join("lang-cache")));
    for l in &mut langs {
        let sha = slipway::runtime::cache::sha256_hex(&l.bytes);
        cache.load(engine, &l.bytes, &sha).unwrap();
        // Compiling a Python or JS component takes seconds: two are enough.
        for _ in 0..2 {
            let started = Instant::now();
            no_cache.load(engine, &l.bytes, &sha).unwrap();
            l.compile.0.push(started.elapsed());
        }
        for _ in 0..20 {
            let started = Instant::now();
            let (_, outcome) = cache.load(engine, &l.bytes, &sha).unwrap();
            l.load.0.push(started.elapsed());
            assert_eq!(outcome, CacheOutcome::Hit);
        }
    }

    let (mut shell, mut curl) = (Samples::default(), Samples::default());
    for l in &langs {
        time_steps(&l.plugin, &l.step.request, 20, &mut Samples::default()).await;
    }
    for _ in 0..ROUNDS {
        for l in &mut langs {
            time_steps(&l.plugin, &l.step.request, 60, &mut l.fresh).await;
            let mut slot = None;
            for _ in 0..200 {
                let started = Instant::now();
                let outcome = l.plugin.run_warm(&mut slot, &l.step.request).await;
                l.warm.0.push(started.elapsed());
                assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            }
        }
        time_command("sh", &["-c", "exit 0"], 60, &mut shell);
        time_command("curl", &["-fsS", "-o", "/dev/null", &url], 60, &mut curl);
    }

    let ms = |d: Duration| format!("{:>9.2} ms", d.as_secs_f64() * 1e3);
    println!("\n4. the same HTTP check in Rust, Python and JavaScript (medians)");
    println!(
        "  {:<24} {:>9} {:>12} {:>12} {:>12} {:>12}",
        "plugin", "size", "compile", "cache load", "fresh step", "warm step"
    );
    for l in &mut langs {
        println!(
            "  {:<24} {:>6} KB {} {} {} {}",
            l.name,
            l.bytes.len() / 1024,
            ms(l.compile.median()),
            ms(l.load.median()),
            ms(l.fresh.median()),
            ms(l.warm.median()),
        );
    }
    println!(
        "  {:<24} {:>35} {}",
        "sh -c 'exit 0'",
        "",
        ms(shell.median())
    );
    println!(
        "  {:<24} {:>35} {}",
        "curl -fsS (same GET)",
        "",
        ms(curl.median())
    );
    let shell = shell.median().as_secs_f64();
    for l in &mut langs {
        println!(
            "  {:<24} fresh step = {:.2}x a shell hook, warm step = {:.2}x",
            l.name,
            l.fresh.median().as_secs_f64() / shell,
            l.warm.median().as_secs_f64() / shell,
        );
    }
}
