//! Plugins in Python and JavaScript, for real: the two example plugins are
//! built with their pinned toolchains (`examples/plugins/*/build.sh`), gate a
//! real deployment of the quickstart app under the real agent, are held to
//! the same http grants as Rust plugins, show their schemas in `slipway
//! plugins inspect`, and load from the compile cache when the agent restarts.

use crate::support;

use serde_json::json;
use slipway::runtime::{Health, LogLine, Plugin, Source, StepError, StepKind, StepValue};
use slipway::store::DeploymentState;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::examples::{js_health, python_smoke};
use support::quickstart::*;
use support::{HttpServer, Step, closed_port, load_file, patterns, runtime, slipway};

/// The quickstart with python-smoke as staging's smoke test and js-health as
/// production's health check, each plugin built from `examples/plugins/` by
/// its own build script and granted only its own environment's port.
fn quickstart_in_python_and_js() -> Quickstart {
    let mut q = Quickstart::new();
    let (s, p) = (q.staging, q.production);
    q.config.plugins.push(PluginDef::new(
        "py-smoke",
        python_smoke().to_str().unwrap(),
        json!({ "http": [format!("127.0.0.1:{s}")] }),
    ));
    q.config.plugins.push(PluginDef::new(
        "js-health",
        js_health().to_str().unwrap(),
        json!({ "http": [format!("127.0.0.1:{p}")] }),
    ));
    q.staging_env().smoke = Some(StepConfig::new(
        "py-smoke",
        json!({ "url": format!("http://127.0.0.1:{s}/"), "expect_body": "hello from", "retries": 40, "retry_delay_ms": 100 }),
    ));
    q.production_env().health = Some(
        StepConfig::new(
            "js-health",
            json!({ "url": format!("http://127.0.0.1:{p}/healthz"), "expect_body": "ok" }),
        )
        .health("500ms", 2, "6s")
        .unhealthy_after(2),
    );
    q.write_config("1.0.0");
    q
}

/// A step a plugin ran, as journaled: outcome, message, and the lines the
/// plugin logged through the host `log` import.
#[derive(Debug)]
struct Journaled {
    outcome: String,
    message: String,
    plugin_logs: Vec<String>,
}

/// The steps a plugin ran in one deployment.
fn steps_of(q: &Quickstart, deployment: i64, plugin: &str) -> Vec<Journaled> {
    let journal = q.journal();
    journal
        .steps(deployment)
        .unwrap()
        .into_iter()
        .filter(|s| s.plugin == plugin)
        .map(|s| Journaled {
            plugin_logs: journal
                .step_logs(s.id)
                .unwrap()
                .into_iter()
                .filter(|l| l.source == "plugin")
                .map(|l| l.message)
                .collect(),
            outcome: s.outcome.unwrap_or_default(),
            message: s.message.unwrap_or_default(),
        })
        .collect()
}

/// The value of one Prometheus sample, e.g. `slipway_plugin_loads_total{outcome="hit"}`.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// GET /metrics from the agent's API (address and token in its state dir).
fn scrape_metrics(q: &Quickstart, agent: &Agent) -> String {
    let state = q.dir.path().join("state");
    wait_for("the API to listen", agent, Duration::from_secs(60), || {
        state.join("api-address").exists()
    });
    let addr = std::fs::read_to_string(state.join("api-address")).unwrap();
    let token = std::fs::read_to_string(state.join("api-token")).unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

#[test]
fn python_smoke_and_js_health_gate_a_real_deployment_and_restart_from_cache() {
    let q = quickstart_in_python_and_js();
    let started = Instant::now();
    let agent = q.start_agent();

    // Passing: python-smoke passes staging, js-health bakes production.
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_succeeded(&first, &agent);
    let first_start = started.elapsed();
    assert!(serves(q.production, "1.0.0"));
    let smoke = steps_of(&q, first.id, "py-smoke");
    assert_eq!(smoke.len(), 1, "{smoke:?}");
    let smoke = &smoke[0];
    assert_eq!(smoke.outcome, "ok", "{smoke:?}");
    assert!(smoke.message.contains("200 in") && smoke.message.contains("(python)"));
    assert!(
        smoke.plugin_logs[0].starts_with("smoke test GET http://127.0.0.1:"),
        "python-smoke logs through the host: {smoke:?}"
    );
    let checks = steps_of(&q, first.id, "js-health");
    assert!(checks.len() >= 2, "{checks:?}");
    assert!(
        checks
            .iter()
            .all(|c| c.message.contains("/healthz: 200 in") && c.message.contains("(js)")),
        "{checks:?}"
    );
    let metrics = scrape_metrics(&q, &agent);
    let compiled = metric(
        &metrics,
        r#"slipway_plugin_loads_total{outcome="compiled"}"#,
    );
    assert!(compiled >= 2.0, "the first start compiles:\n{metrics}");
    agent.terminate();

    // A restart loads every plugin from the compile cache: nothing compiled,
    // so the 19 MB Python component costs milliseconds, not seconds.
    let restarted = Instant::now();
    let agent = q.start_agent();
    let metrics = scrape_metrics(&q, &agent);
    let ready = restarted.elapsed();
    assert_eq!(
        metric(
            &metrics,
            r#"slipway_plugin_loads_total{outcome="compiled"}"#
        ),
        0.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, r#"slipway_plugin_loads_total{outcome="hit"}"#) >= 4.0,
        "command, http-check, py-smoke and js-health are cache hits:\n{metrics}"
    );
    eprintln!(
        "first start to a finished deployment: {first_start:?}; restart to API up: {ready:?}"
    );
    assert!(
        ready < Duration::from_secs(5),
        "a restart from the cache took {ready:?}"
    );

    // Failing smoke: 1.2.0-broken answers 500 on `/`; python-smoke stops it
    // in staging with its own message, and production is untouched.
    q.write_config("1.2.0-broken");
    let broken = wait_deployment_end(&q, &agent, "1.2.0-broken");
    assert_eq!(broken.state, DeploymentState::RolledBack);
    let reason = broken.reason.clone().unwrap();
    assert!(reason.contains("staging: smoke test failed"), "{reason}");
    assert!(
        reason.contains("status 500 (expected 200)") && reason.contains("(after 41 attempts)"),
        "python-smoke's message is the reason: {reason}"
    );
    assert!(serves(q.production, "1.0.0"), "production untouched");

    // Failing health: 1.2.0-sick passes the smoke test, then its /healthz
    // turns 503; js-health fails production's bake and it is rolled back.
    q.write_config("1.2.0-sick");
    let sick = wait_deployment_end(&q, &agent, "1.2.0-sick");
    assert_eq!(sick.state, DeploymentState::RolledBack, "{:?}", sick.reason);
    let reason = sick.reason.clone().unwrap();
    assert!(reason.starts_with("production: unhealthy"), "{reason}");
    assert!(
        reason.contains("/healthz: status 503 (expected 2xx)"),
        "js-health's message is the reason: {reason}"
    );
    assert_eq!(steps_of(&q, sick.id, "py-smoke")[0].outcome, "ok");
    let checks = steps_of(&q, sick.id, "js-health");
    assert!(
        checks
            .iter()
            .any(|c| c.outcome == "unhealthy"
                && c.plugin_logs.iter().any(|l| l.contains("status 503"))),
        "js-health logs its failures through the host: {checks:?}"
    );
    wait_for(
        "production back on 1.0.0",
        &agent,
        Duration::from_secs(30),
        || serves(q.production, "1.0.0"),
    );
    agent.terminate();
}

/// One step of `plugin` (python-smoke: smoke-test, js-health: health
/// check): Ok(report) when it passed, Err(message) when it failed.
async fn check(
    plugin: &Plugin,
    params: serde_json::Value,
    http: &[&str],
) -> (Result<String, String>, Vec<LogLine>) {
    let kind = if plugin.implements(StepKind::SmokeTest) {
        StepKind::SmokeTest
    } else {
        StepKind::HealthCheck
    };
    let out = Step::new(kind, params)
        .grants(|g| g.http = patterns(http))
        .run(plugin)
        .await;
    let verdict = match out.result {
        Ok(StepValue::Passed { report }) => Ok(report),
        Ok(StepValue::Health {
            status: Health::Healthy,
            message,
        }) => Ok(message),
        Ok(StepValue::Health {
            status: Health::Unhealthy,
            message,
        }) => Err(message),
        Err(StepError::Failed(message)) => Err(message),
        other => panic!(
            "{}: unexpected {other:?}\n{:?}",
            plugin.info().name,
            out.logs
        ),
    };
    (verdict, out.logs)
}

#[tokio::test]
async fn python_and_js_plugins_say_why_a_check_failed_and_get_only_their_http_grant() {
    let server = HttpServer::start();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://127.0.0.1:{}/", silent.local_addr().unwrap().port());
    let refused = format!("http://127.0.0.1:{}/", closed_port());
    let rt = runtime();
    let plugins = [
        load_file(&rt, &python_smoke()).await,
        load_file(&rt, &js_health()).await,
    ];
    let all = ["127.0.0.1:*"];
    for plugin in &plugins {
        let name = &plugin.info().name;
        let ok = json!({ "url": server.url("/ok"), "expect_status": 200, "expect_body": "world" });
        let (verdict, logs) = check(plugin, ok, &all).await;
        let report = verdict.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.contains("/ok: 200 in"), "{name}: {report}");
        assert!(
            logs.iter().any(|l| l.source == Source::Plugin),
            "{name} logs through the host: {logs:?}"
        );
        // A 2 MB body is read only up to the plugin's cap, and still passes.
        assert!(
            check(plugin, json!({ "url": server.url("/big") }), &all)
                .await
                .0
                .is_ok()
        );

        for (params, expected) in [
            (
                json!({ "url": server.url("/fail") }),
                "status 500 (expected",
            ),
            (
                json!({ "url": server.url("/ok"), "expect_body": "nope" }),
                r#"body does not contain "nope" (status 200"#,
            ),
            (json!({ "url": refused }), "connection refused"),
            (
                json!({ "url": silent, "timeout_ms": 300 }),
                "no response in 300 ms",
            ),
        ] {
            let (verdict, _) = check(plugin, params, &all).await;
            let message = verdict.expect_err(expected);
            assert!(message.contains(expected), "{name}: {message}");
        }
    }
    let hits = || server.hits.load(Ordering::SeqCst);
    let before = hits();

    // Not granted: no grant at all, or a grant for another port. The step
    // fails with the denial, the host logs it, nothing reaches the server.
    for plugin in &plugins {
        for grant in [&[][..], &["127.0.0.1:1"][..]] {
            let (verdict, logs) = check(plugin, json!({ "url": server.url("/ok") }), grant).await;
            let message = verdict.expect_err("denied");
            assert!(message.contains("request denied by the agent"), "{message}");
            assert!(
                logs.iter()
                    .any(|l| l.source == Source::Host && l.message.contains("denied")),
                "{logs:?}"
            );
        }
    }
    assert_eq!(hits(), before, "no denied request reached the server");
}

#[test]
fn plugins_inspect_shows_the_python_and_js_schemas() {
    for (path, name, kind, params) in [
        (
            python_smoke(),
            "python-smoke",
            "smoke-test",
            &["url", "expect_status", "expect_body", "timeout_ms"][..],
        ),
        (
            js_health(),
            "js-health",
            "health-check",
            &["url", "expect_status", "expect_body", "timeout_ms"][..],
        ),
    ] {
        let path = path.to_str().unwrap();
        let (code, out, err) = slipway(&["plugins", "inspect", path]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("{name} 0.1.0\n")), "{out}");
        assert!(out.contains(&format!("kinds:   {kind}\n")), "{out}");

        let (code, out, err) = slipway(&["plugins", "inspect", path, "--json"]);
        assert_eq!(code, 0, "{err}");
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(info["name"], name);
        assert_eq!(info["api_version"], "0.1.0");
        assert_eq!(info["api_compatible"], true);
        assert_eq!(info["kinds"], json!([kind]));
        let schema = &info["params_schema"];
        assert_eq!(schema["required"], json!(["url"]), "{schema}");
        for p in params {
            assert!(
                schema["properties"][p].is_object(),
                "{name}: {p} in {schema}"
            );
        }
    }
}

#[test]
fn a_config_with_bad_params_for_a_python_plugin_is_rejected_with_its_place() {
    let mut q = quickstart_in_python_and_js();
    q.staging_env().smoke = Some(StepConfig::new(
        "py-smoke",
        json!({ "url": "http://127.0.0.1:1/", "expect_status": "200" }),
    ));
    q.write_config("1.0.0");
    let config = q.config();
    let (code, _, err) = slipway(&["validate", "-c", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("slipway.toml:")
            && err.contains(
                r#"params for `py-smoke`: /expect_status: "200" is not of type "integer""#
            ),
        "{err}"
    );
}
