//! The plugin runtime with real components: first-party plugins against real
//! servers and commands, hostile plugins against the sandbox, API versions,
//! and the compile cache.

use crate::support;

use serde_json::json;
use slipway::runtime::{
    CacheOutcome, Health, LoadError, PluginSource, Runtime, RuntimeConfig, Source, StepError,
    StepInput, StepKind, StepRequest, StepValue, Warm,
};
use std::time::{Duration, Instant};
use support::http::Reply;
use support::*;

fn health(outcome: &slipway::runtime::StepOutcome) -> (Health, String) {
    match &outcome.result {
        Ok(StepValue::Health { status, message }) => (*status, message.clone()),
        other => panic!("expected a health report, got {other:?}"),
    }
}

#[tokio::test]
async fn http_check_against_a_real_server() {
    let server = HttpServer::start();
    let rt = runtime();
    let plugin = load_builtin(&rt, "http-check").await;
    let grant = |g: &mut slipway::runtime::Grants| g.http = patterns(&["127.0.0.1:*"]);

    let ok = Step::new(
        StepKind::HealthCheck,
        json!({ "url": server.url("/ok"), "expect_body": "hello" }),
    )
    .grants(grant)
    .run(&plugin)
    .await;
    let (status, message) = health(&ok);
    assert_eq!(status, Health::Healthy, "{message}");
    assert!(message.contains("200"), "{message}");

    let wrong_status = Step::new(StepKind::HealthCheck, json!({ "url": server.url("/fail") }))
        .grants(grant)
        .run(&plugin)
        .await;
    let (status, message) = health(&wrong_status);
    assert_eq!(status, Health::Unhealthy);
    assert!(message.contains("status 500 (expected 200)"), "{message}");

    let wrong_body = Step::new(
        StepKind::SmokeTest,
        json!({ "url": server.url("/ok"), "expect_body": "goodbye" }),
    )
    .grants(grant)
    .run(&plugin)
    .await;
    match wrong_body.result {
        Err(StepError::Failed(m)) => assert!(m.contains("does not contain \"goodbye\""), "{m}"),
        other => panic!("{other:?}"),
    }

    let flaky = Step::new(
        StepKind::SmokeTest,
        json!({ "url": server.url("/flaky"), "retries": 3, "retry_delay_ms": 10 }),
    )
    .grants(grant)
    .run(&plugin)
    .await;
    assert!(
        matches!(flaky.result, Ok(StepValue::Passed { .. })),
        "{:?}",
        flaky.result
    );

    let refused = Step::new(
        StepKind::HealthCheck,
        json!({ "url": format!("http://127.0.0.1:{}/", closed_port()), "timeout_ms": 500 }),
    )
    .grants(grant)
    .run(&plugin)
    .await;
    let (status, message) = health(&refused);
    assert_eq!(status, Health::Unhealthy);
    assert!(message.contains("connection refused"), "{message}");
}

#[tokio::test]
async fn http_to_an_ungranted_host_is_denied() {
    let server = HttpServer::start();
    let rt = runtime();
    let plugin = load_builtin(&rt, "http-check").await;
    let before = server.hits.load(std::sync::atomic::Ordering::SeqCst);

    // No grant at all, and a grant for another port.
    for grants in [vec![], patterns(&["127.0.0.1:1"])] {
        let out = Step::new(StepKind::HealthCheck, json!({ "url": server.url("/ok") }))
            .grants(|g| g.http = grants)
            .run(&plugin)
            .await;
        let (status, message) = health(&out);
        assert_eq!(status, Health::Unhealthy);
        assert!(message.contains("denied"), "{message}");
        assert!(
            out.logs
                .iter()
                .any(|l| l.source == Source::Host && l.message.contains("denied")),
            "the denial is in the step log: {:?}",
            out.logs
        );
    }
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "no request reached the server"
    );
}

#[tokio::test]
async fn tcp_check_against_a_real_listener() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = runtime();
    let plugin = load_builtin(&rt, "tcp-check").await;
    let grant = |g: &mut slipway::runtime::Grants| g.tcp = patterns(&["127.0.0.1:*"]);

    let up = Step::new(
        StepKind::HealthCheck,
        json!({ "address": format!("127.0.0.1:{port}") }),
    )
    .grants(grant)
    .run(&plugin)
    .await;
    assert_eq!(health(&up).0, Health::Healthy, "{:?}", up.result);

    let down = Step::new(
        StepKind::HealthCheck,
        json!({ "address": format!("127.0.0.1:{}", closed_port()) }),
    )
    .grants(grant)
    .run(&plugin)
    .await;
    assert_eq!(health(&down).0, Health::Unhealthy);

    let ungranted = Step::new(
        StepKind::HealthCheck,
        json!({ "address": format!("127.0.0.1:{port}") }),
    )
    .run(&plugin)
    .await;
    assert_eq!(
        health(&ungranted).0,
        Health::Unhealthy,
        "no tcp grant, no connection"
    );
    drop(listener);
}

#[tokio::test]
async fn command_plugin_runs_allowlisted_commands_in_the_release_dir() {
    let rt = runtime();
    let plugin = load_builtin(&rt, "command").await;

    let step = Step::new(
        StepKind::Build,
        json!({ "run": ["sh -c \"echo built > artifact.txt\"", ["sh", "-c", "test -f artifact.txt"]] }),
    );
    let dir = step.dir();
    let step = step.grants(|g| {
        g.exec = vec!["sh".into()];
        g.dirs[0].write = true;
    });
    let out = step.run(&plugin).await;
    match &out.result {
        Ok(StepValue::Artifact { dir: artifact, .. }) => {
            assert_eq!(artifact, &dir.display().to_string())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("artifact.txt")).unwrap(),
        "built\n"
    );

    let failing = Step::new(
        StepKind::Deploy,
        json!({ "run": ["sh -c \"echo compiling; echo 'error: it broke' >&2; exit 3\""] }),
    )
    .grants(|g| g.exec = vec!["sh".into()])
    .run(&plugin)
    .await;
    match failing.result {
        Err(StepError::Failed(m)) => {
            assert!(m.contains("exit code 3"), "{m}");
            assert!(
                m.contains("error: it broke"),
                "the output's tail is in the error: {m}"
            );
        }
        other => panic!("{other:?}"),
    }

    let denied = Step::new(StepKind::Deploy, json!({ "run": ["rm -rf /"] }))
        .grants(|g| g.exec = vec!["sh".into()])
        .run(&plugin)
        .await;
    match denied.result {
        Err(StepError::Failed(m)) => {
            assert!(m.contains("`rm` is not in this plugin's exec grant"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

/// Run the hostile fixture in one mode as a health check.
async fn hostile(
    plugin: &slipway::runtime::Plugin,
    mode: &str,
    target: &str,
    setup: impl FnOnce(Step) -> Step,
) -> slipway::runtime::StepOutcome {
    setup(Step::new(
        StepKind::HealthCheck,
        json!({ "mode": mode, "target": target }),
    ))
    .run(plugin)
    .await
}

#[tokio::test]
async fn a_looping_plugin_is_stopped_at_its_time_limit() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let started = Instant::now();
    let out = hostile(&plugin, "loop", "", |s| {
        s.limits(|l| l.wall_time = Duration::from_millis(300))
    })
    .await;
    assert_eq!(out.result, Err(StepError::Timeout(300)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped promptly: {:?}",
        started.elapsed()
    );
    // A host call that blocks (a program that sleeps) is stopped too.
    let out = hostile(&plugin, "exec-sleep", "", |s| {
        s.grants(|g| g.exec = vec!["sh".into()])
            .limits(|l| l.wall_time = Duration::from_millis(300))
    })
    .await;
    assert!(
        matches!(
            out.result,
            Err(StepError::Timeout(300))
                | Ok(StepValue::Health {
                    status: Health::Unhealthy,
                    ..
                })
        ),
        "{:?}",
        out.result
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_its_limit() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let out = hostile(&plugin, "memory", "", |s| {
        s.limits(|l| l.memory_bytes = 64 << 20)
    })
    .await;
    match out.result {
        Err(StepError::ResourceLimit(m)) => assert!(m.contains("the limit is 64 MiB"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Host resources (files, streams, requests) live in the agent's memory,
/// not the plugin's: a plugin that hoards them is stopped at a count.
#[tokio::test]
async fn a_plugin_hoarding_host_resources_is_stopped_at_its_limit() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let out = hostile(&plugin, "handles", "", |s| {
        s.limits(|l| l.max_resources = 500)
    })
    .await;
    match out.result {
        Err(StepError::ResourceLimit(m)) => {
            assert!(m.contains("holds 500 host resources"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let out = hostile(&plugin, "ok", "", |s| s).await;
    assert_eq!(health(&out).0, Health::Healthy);
}

#[tokio::test]
async fn a_panicking_plugin_fails_only_its_step() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let out = hostile(&plugin, "panic", "", |s| s).await;
    match out.result {
        Err(StepError::Trap(m)) => {
            assert!(m.contains("boom: the plugin panicked on purpose"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // The same plugin, next step: a fresh instance, unaffected.
    let out = hostile(&plugin, "ok", "", |s| s).await;
    assert_eq!(health(&out).0, Health::Healthy);
}

#[tokio::test]
async fn the_filesystem_holds_only_granted_dirs() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;

    let out = hostile(&plugin, "read", "/etc/passwd", |s| s).await;
    let (status, message) = health(&out);
    assert_eq!(status, Health::Unhealthy, "{message}");
    assert!(!message.contains("root:"), "{message}");

    let outside = std::env::temp_dir().join(format!("slipway-escape-{}", std::process::id()));
    let out = hostile(&plugin, "write", outside.to_str().unwrap(), |s| s).await;
    assert_eq!(health(&out).0, Health::Unhealthy);
    assert!(!outside.exists(), "nothing written outside the grant");

    // The release dir is granted read-only: readable, not writable.
    let step = Step::new(StepKind::HealthCheck, json!({ "mode": "list-release" }));
    assert_eq!(health(&step.run(&plugin).await).0, Health::Healthy);
    let step = Step::new(StepKind::HealthCheck, json!({}));
    let target = step.dir().join("pwned");
    let step = step.params(json!({ "mode": "write", "target": target }));
    let (status, message) = health(&step.run(&plugin).await);
    assert_eq!(status, Health::Unhealthy, "{message}");
    assert!(!target.exists());

    // Nothing of the agent's environment leaks in.
    let (_, message) = health(&hostile(&plugin, "env", "", |s| s).await);
    assert_eq!(message, "HOME=None PATH=None");
}

#[tokio::test]
async fn exec_of_an_unlisted_program_is_denied() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let out = hostile(&plugin, "exec", "bash", |s| {
        s.grants(|g| g.exec = vec!["sh".into()])
    })
    .await;
    let (status, message) = health(&out);
    assert_eq!(status, Health::Unhealthy);
    assert!(
        message.contains("`bash` is not in this plugin's exec grant"),
        "{message}"
    );
    let out = hostile(&plugin, "exec", "sh", |s| {
        s.grants(|g| g.exec = vec!["sh".into()])
    })
    .await;
    assert_eq!(health(&out), (Health::Healthy, "ran: ran".into()));
}

#[tokio::test]
async fn secrets_are_granted_by_name_and_never_logged() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let value = "tok-3f9a7c1e55";
    let out = hostile(&plugin, "log-secret", "deploy_token", |s| {
        s.secret("deploy_token", value)
    })
    .await;
    let (status, message) = health(&out);
    assert_eq!(status, Health::Unhealthy);
    assert!(message.contains("[REDACTED:deploy_token]"), "{message}");
    let everything = format!("{message} {:?}", out.logs);
    assert!(!everything.contains(value), "secret leaked: {everything}");
    assert!(out.logs.iter().any(
        |l| l.source == Source::Plugin && l.message == "the secret is [REDACTED:deploy_token]"
    ));
    assert!(
        out.logs
            .iter()
            .any(|l| l.source == Source::Stderr && l.message.contains("[REDACTED:deploy_token]"))
    );

    // A secret that is not granted is refused.
    let out = hostile(&plugin, "secret", "other", |s| {
        s.secret("deploy_token", value)
    })
    .await;
    let (_, message) = health(&out);
    assert!(
        message.contains("secret `other` is not granted"),
        "{message}"
    );
}

#[tokio::test]
async fn huge_output_and_logs_are_truncated() {
    let rt = runtime();
    let plugin = load_file(&rt, &fixture("hostile")).await;
    let out = hostile(&plugin, "big-output", "", |s| s).await;
    let (_, message) = health(&out);
    assert!(message.len() < 70 * 1024, "{} bytes kept", message.len());
    assert!(
        message.ends_with(&format!("[truncated {} bytes]", (8 << 20) - 64 * 1024)),
        "{}",
        &message[message.len() - 40..]
    );

    let out = hostile(&plugin, "big-log", "", |s| {
        s.limits(|l| l.wall_time = Duration::from_secs(30))
    })
    .await;
    let bytes: usize = out.logs.iter().map(|l| l.message.len()).sum();
    assert!(bytes < 300 * 1024, "{bytes} bytes of log kept");
    assert!(
        out.logs
            .last()
            .unwrap()
            .message
            .contains("more log lines dropped")
    );
}

#[tokio::test]
async fn hostile_steps_do_not_disturb_a_healthy_one_running_beside_them() {
    let server = HttpServer::start();
    let rt = runtime();
    let hostile_plugin = load_file(&rt, &fixture("hostile")).await;
    let check = load_builtin(&rt, "http-check").await;
    let healthy = Step::new(StepKind::HealthCheck, json!({ "url": server.url("/ok") }))
        .grants(|g| g.http = patterns(&["127.0.0.1:*"]));
    let bad = |mode: &str| {
        Step::new(StepKind::HealthCheck, json!({ "mode": mode })).limits(|l| {
            l.wall_time = Duration::from_millis(500);
            l.memory_bytes = 32 << 20;
        })
    };
    let (looping, bomb, panic, good) = (bad("loop"), bad("memory"), bad("panic"), healthy);
    let (a, b, c, d) = tokio::join!(
        looping.run(&hostile_plugin),
        bomb.run(&hostile_plugin),
        panic.run(&hostile_plugin),
        good.run(&check)
    );
    assert!(matches!(a.result, Err(StepError::Timeout(_))));
    assert!(matches!(b.result, Err(StepError::ResourceLimit(_))));
    assert!(matches!(c.result, Err(StepError::Trap(_))));
    assert_eq!(health(&d).0, Health::Healthy);
}

#[tokio::test]
async fn api_versions_are_checked_at_load() {
    let rt = runtime();
    match rt
        .load(&PluginSource::File(fixture("api-next")), None)
        .await
    {
        Err(e @ LoadError::IncompatibleApi { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("built for plugin API 0.2.0") && m.contains("supports 0.1.0"),
                "{m}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a 0.2.0 plugin was accepted"),
    }
    let patch = load_file(&rt, &fixture("api-patch")).await;
    assert_eq!(patch.api_version.to_string(), "0.1.9");
    let out = Step::new(StepKind::HealthCheck, json!({}))
        .run(&patch)
        .await;
    assert_eq!(health(&out), (Health::Healthy, "api 0.1.9".into()));
}

#[tokio::test]
async fn the_compile_cache_serves_the_second_load() {
    let state = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(state.path().join("cache")),
        ..RuntimeConfig::default()
    };
    let source = PluginSource::File(fixture("noop"));
    let first = Runtime::new(&config)
        .unwrap()
        .load(&source, None)
        .await
        .unwrap();
    assert_eq!(first.cache, CacheOutcome::Compiled);
    // A new runtime, as after an agent restart.
    let rt = Runtime::new(&config).unwrap();
    let entry = rt.cache().path_for(&first.sha256).unwrap();
    let written = std::fs::metadata(&entry).unwrap().modified().unwrap();
    let second = rt.load(&source, None).await.unwrap();
    assert_eq!(second.cache, CacheOutcome::Hit);
    assert_eq!(
        std::fs::metadata(&entry).unwrap().modified().unwrap(),
        written,
        "entry not rewritten"
    );
    let out = Step::new(StepKind::HealthCheck, json!({}))
        .run(&second)
        .await;
    assert_eq!(health(&out).0, Health::Healthy);

    // A corrupt entry is discarded and recompiled, not trusted. (Entries are
    // mmapped while loaded, the first load's too: it maps the entry it just
    // wrote. The agent only ever replaces them by rename.)
    drop((first, second));
    std::fs::write(&entry, b"garbage").unwrap();
    let third = Runtime::new(&config)
        .unwrap()
        .load(&source, None)
        .await
        .unwrap();
    assert_eq!(third.cache, CacheOutcome::Compiled);
}

#[tokio::test]
async fn plugins_compile_in_the_child_process_the_runtime_names() {
    let state = tempfile::tempdir().unwrap();
    let with = |compiler: &str, cache: bool| {
        Runtime::new(&RuntimeConfig {
            cache_dir: cache.then(|| state.path().join(compiler.replace('/', "_"))),
            compiler: Some(compiler.into()),
            ..RuntimeConfig::default()
        })
        .unwrap()
    };
    let slipway = env!("CARGO_BIN_EXE_slipway");
    let source = PluginSource::File(fixture("noop"));
    for cache in [true, false] {
        let plugin = with(slipway, cache).load(&source, None).await.unwrap();
        let expected = if cache {
            CacheOutcome::Compiled
        } else {
            CacheOutcome::CompiledUncached
        };
        assert_eq!(plugin.cache, expected);
        let out = Step::new(StepKind::HealthCheck, json!({}))
            .run(&plugin)
            .await;
        assert_eq!(health(&out).0, Health::Healthy);
    }

    // What the compiler says about a file that is no component is the
    // load error, with the plugin named.
    let bad = state.path().join("bad.wasm");
    std::fs::write(&bad, b"not wasm at all").unwrap();
    let bad = PluginSource::File(bad);
    let err = with(slipway, true).load(&bad, None).await.err().unwrap();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("bad.wasm") && text.contains("magic header"),
        "{text}"
    );

    // A compiler that fails without a word is named with how it ended.
    let err = with("/bin/false", true)
        .load(&source, None)
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("/bin/false compile-component") && text.contains("exit status: 1"),
        "{text}"
    );

    // Output this engine cannot load (a replaced binary), or a compiler
    // that cannot be started (the binary moved by an upgrade): compiled
    // in-process rather than failing the plugin.
    for compiler in ["/bin/echo", "/nonexistent/slipway"] {
        let plugin = with(compiler, true).load(&source, None).await.unwrap();
        assert_eq!(plugin.cache, CacheOutcome::Compiled, "{compiler}");
        let out = Step::new(StepKind::HealthCheck, json!({}))
            .run(&plugin)
            .await;
        assert_eq!(health(&out).0, Health::Healthy, "{compiler}");
    }
}

#[tokio::test]
async fn a_pinned_sha256_must_match() {
    let rt = runtime();
    let source = PluginSource::File(fixture("noop"));
    let err = rt
        .load(&source, Some(&"0".repeat(64)))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    let sha = rt.load(&source, None).await.unwrap().sha256;
    rt.load(&source, Some(&sha))
        .await
        .expect("the right pin loads");
}

#[tokio::test]
async fn params_are_checked_against_the_plugins_schema() {
    let rt = runtime();
    let plugin = load_builtin(&rt, "http-check").await;
    assert!(
        plugin
            .validate_params(&json!({ "url": "http://127.0.0.1:1/" }))
            .is_ok()
    );
    let errors = plugin
        .validate_params(&json!({ "expect_status": "200", "urll": "x" }))
        .unwrap_err();
    let all = errors.join("\n");
    assert!(all.contains("\"url\" is a required property"), "{all}");
    assert!(all.contains("/expect_status"), "{all}");
    assert!(all.contains("urll"), "{all}");
}

#[tokio::test]
async fn non_plugins_are_refused_with_a_reason() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let err = rt
        .load(&PluginSource::File(junk), None)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("not a valid WebAssembly component"),
        "{err}"
    );
    let err = rt
        .load(&PluginSource::File(dir.path().join("missing.wasm")), None)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot read plugin file"), "{err}");
    let err = rt
        .load(&PluginSource::Builtin("nope".into()), None)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("builtins: command, http-check, tcp-check"),
        "{err}"
    );
}

#[tokio::test]
async fn a_warm_instance_is_reused_while_its_sandbox_is_the_same_and_dropped_after_an_error() {
    let plugin = support::runtime()
        .load(&PluginSource::File(fixture("noop")), None)
        .await
        .unwrap();
    let mut step = Step::new(StepKind::HealthCheck, json!({}));
    step.request.limits.wall_time = Duration::from_millis(300);
    let mut slot = None;
    let warm = async |slot: &mut Option<Warm>, request: &StepRequest| {
        health(&plugin.run_warm(slot, request).await)
    };
    assert_eq!(warm(&mut slot, &step.request).await.1, "call 1");
    assert_eq!(warm(&mut slot, &step.request).await.1, "call 2");
    // Each call gets the whole wall time again, however long the instance lives.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(warm(&mut slot, &step.request).await.1, "call 3");
    // A fresh run never sees the warm one's state.
    assert_eq!(health(&step.run(&plugin).await).1, "call 1");

    // Another environment (or release, grants, secrets...) gets its own.
    let mut other = step.request.clone();
    other.labels.environment = "production".into();
    assert_eq!(warm(&mut slot, &other).await.1, "call 1");
    assert_eq!(warm(&mut slot, &other).await.1, "call 2");

    // Any error drops the instance: the next call starts fresh.
    let mut panics = other.clone();
    if let StepInput::Step(ctx) = &mut panics.input {
        ctx.params = json!({ "panic": true });
    }
    let out = plugin.run_warm(&mut slot, &panics).await;
    assert!(
        matches!(out.result, Err(StepError::Trap(_))),
        "{:?}",
        out.result
    );
    assert!(slot.is_none());
    assert_eq!(warm(&mut slot, &other).await.1, "call 1");
}

/// A warm http-check gives back every host resource each request used:
/// wasmtime-wasi-http kept each request's options for the instance's life
/// (one table entry a check, for up to WARM_MAX_CALLS checks).
#[tokio::test]
async fn a_warm_http_check_holds_no_more_resources_after_many_checks() {
    let server = HttpServer::scripted().fixed("/health", 200, "ok").start();
    let url = server.url("/health");
    let rt = runtime();
    let plugin = load_builtin(&rt, "http-check").await;
    // Fewer resources than checks: one kept per check would hit it.
    let step = Step::new(StepKind::HealthCheck, json!({ "url": url }))
        .grants(|g| g.http = patterns(&["127.0.0.1:*"]))
        .limits(|l| l.max_resources = 64);
    let mut slot = None;
    for check in 0..300 {
        let outcome = plugin.run_warm(&mut slot, &step.request).await;
        assert_eq!(
            health(&outcome).0,
            Health::Healthy,
            "check {check}: {:?}",
            outcome.result
        );
        assert!(slot.is_some(), "check {check} dropped the warm instance");
    }
}

/// More steps at once than the instance pool has slots (200 apps deploying
/// at once did this) wait for a free slot instead of failing with "maximum
/// concurrent limit reached", and warm instances never hold more than half
/// of the slots: the other environments' checks run fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_beyond_the_instance_pool_wait_for_a_slot() {
    // A server that answers after 200 ms, so every step holds its instance
    // while the others start.
    let server = HttpServer::scripted()
        .route("/slow", |_, _| {
            Reply::new(200, "ok").after(Duration::from_millis(200))
        })
        .start();
    let url = server.url("/slow");
    let rt = Runtime::new(&RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = std::sync::Arc::new(load_builtin(&rt, "http-check").await);
    let step = Step::new(StepKind::HealthCheck, json!({ "url": url }))
        .grants(|g| g.http = patterns(&["127.0.0.1:*"]));

    let mut warm: Vec<Option<Warm>> = (0..4).map(|_| None).collect();
    for slot in &mut warm {
        let outcome = plugin.run_warm(slot, &step.request).await;
        assert_eq!(health(&outcome).0, Health::Healthy, "{:?}", outcome.result);
    }
    assert_eq!(
        warm.iter().filter(|w| w.is_some()).count(),
        2,
        "half the pool may be warm"
    );

    // 2 slots are held warm; 12 steps at once share the 2 others.
    let mut steps = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (plugin, request) = (plugin.clone(), step.request.clone());
        steps.spawn(async move { plugin.run(&request).await });
    }
    while let Some(outcome) = steps.join_next().await {
        let outcome = outcome.unwrap();
        assert_eq!(health(&outcome).0, Health::Healthy, "{:?}", outcome.result);
    }
    // And the warm ones still serve.
    let outcome = plugin.run_warm(&mut warm[0], &step.request).await;
    assert_eq!(health(&outcome).0, Health::Healthy, "{:?}", outcome.result);
}
