//! Deployment notifications, for real: the builtin `webhook` plugin posting
//! to a loopback HTTP server that records what it receives, first as a
//! single step through the runtime, then from the `slipway` agent deploying
//! the quickstart, where a receiver that is down must not fail anything.

use crate::support;

use serde_json::{Value, json};
use slipway::runtime::{
    Event, Grants, Limits, Redactor, StepError, StepInput, StepKind, StepLabels, StepRequest,
};
use slipway::store::DeploymentState;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use support::http::{HttpServer, Reply};
use support::quickstart::*;
use support::{closed_port, load_builtin, patterns, runtime};

/// A webhook receiver on 127.0.0.1 that records every request. Routes:
/// `/hook` 204; `/fail` 500; `/flaky` 503 twice, then 204; `/denied` 401
/// with the `authorization` header it got echoed in the body; `/hang`
/// answers after two minutes.
fn receiver() -> HttpServer {
    HttpServer::scripted()
        .fixed("/hook", 204, "")
        .fixed("/fail", 500, "receiver down")
        .flaky("/flaky", 204, "")
        .route("/denied", |r, _| {
            Reply::new(401, format!("bad token: {}", r.header("authorization")))
        })
        .route("/hang", |_, _| {
            Reply::new(204, "").after(Duration::from_secs(120))
        })
        .otherwise(|_, _| Reply::new(404, "no such hook"))
        .start()
}

fn event(environment: Option<&str>) -> Event {
    Event {
        app: "web".into(),
        environment: environment.map(str::to_string),
        deployment_id: "42".into(),
        version: "1.4.2".into(),
        state: "promoted".into(),
        message: "1.4.2-42 passed its gates in production".into(),
    }
}

/// A notify step of the webhook plugin, allowed to reach loopback only.
fn notify(event: Event, params: Value) -> StepRequest {
    StepRequest {
        kind: StepKind::Notify,
        input: StepInput::Notify { event, params },
        grants: Grants {
            http: patterns(&["127.0.0.1:*"]),
            ..Default::default()
        },
        limits: Limits {
            wall_time: Duration::from_secs(20),
            ..Limits::default()
        },
        secrets: BTreeMap::new(),
        redactor: Redactor::default(),
        labels: StepLabels {
            plugin: "webhook".into(),
            kind: "notify".into(),
            app: "web".into(),
            ..Default::default()
        },
    }
}

fn with_secret(mut request: StepRequest, name: &str, value: &str) -> StepRequest {
    request.secrets.insert(name.into(), value.into());
    request.redactor = Redactor::new([(name.to_string(), value.to_string())]);
    request
}

fn failure(result: Result<slipway::runtime::StepValue, StepError>) -> String {
    match result {
        Err(StepError::Failed(message)) => message,
        other => panic!("expected the plugin to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn webhook_posts_the_event_as_json_with_its_headers() {
    let rt = runtime();
    let plugin = load_builtin(&rt, "webhook").await;
    assert!(plugin.implements(StepKind::Notify));
    let receiver = receiver();
    let request = with_secret(
        notify(
            event(Some("production")),
            json!({
                "url": receiver.url("/hook"),
                "headers": { "X-Team": "payments" },
                "secret_header": { "name": "Authorization", "secret": "hook-token", "prefix": "Bearer " }
            }),
        ),
        "hook-token",
        "s3cr3t-t0ken",
    );
    let outcome = plugin.run(&request).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);

    let got = receiver.received("/hook");
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["content-length"], r.body.len().to_string());
    assert_eq!(r.headers["x-team"], "payments");
    assert_eq!(r.headers["authorization"], "Bearer s3cr3t-t0ken");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    let at = body["at"].as_str().expect("`at` is sent").to_string();
    assert!(
        at.len() == 20 && at.starts_with("20") && at.ends_with('Z'),
        "{at}"
    );
    assert_eq!(
        body,
        json!({
            "app": "web",
            "environment": "production",
            "deployment_id": "42",
            "version": "1.4.2",
            "state": "promoted",
            "message": "1.4.2-42 passed its gates in production",
            "at": at,
        })
    );

    // An event without an environment (a build) has no `environment` key.
    let request = notify(event(None), json!({ "url": receiver.url("/hook") }));
    assert!(plugin.run(&request).await.result.is_ok());
    let body: Value = serde_json::from_str(&receiver.received("/hook")[1].body).unwrap();
    assert!(body.get("environment").is_none(), "{body}");
    assert!(
        !receiver.received("/hook")[1]
            .headers
            .contains_key("authorization")
    );
}

#[tokio::test]
async fn webhook_retries_server_errors_but_not_a_refusal() {
    let rt = runtime();
    let plugin = load_builtin(&rt, "webhook").await;
    let receiver = receiver();
    let quick = |path: &str, retries: u32| json!({ "url": receiver.url(path), "retries": retries, "retry_delay_ms": 10 });

    // 503, 503, then 204: two retries are enough.
    let outcome = plugin.run(&notify(event(None), quick("/flaky", 2))).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(receiver.received("/flaky").len(), 3);

    // A 500 every time: the error names the status and the attempts.
    let message = failure(
        plugin
            .run(&notify(event(None), quick("/fail", 2)))
            .await
            .result,
    );
    assert!(
        message.contains("/fail: status 500 (expected 2xx): receiver down (after 3 attempts)"),
        "{message}"
    );
    assert_eq!(receiver.received("/fail").len(), 3);

    // A 401 is the receiver saying no: not retried. The secret it echoes is
    // redacted from the error the agent records.
    let request = with_secret(
        notify(
            event(None),
            json!({
                "url": receiver.url("/denied"),
                "retries": 2,
                "secret_header": { "name": "Authorization", "secret": "hook-token" }
            }),
        ),
        "hook-token",
        "s3cr3t-t0ken",
    );
    let message = failure(plugin.run(&request).await.result);
    assert!(message.contains("status 401"), "{message}");
    assert!(message.contains("[REDACTED:hook-token]"), "{message}");
    assert!(!message.contains("s3cr3t-t0ken"), "{message}");
    assert_eq!(receiver.received("/denied").len(), 1);
}

#[tokio::test]
async fn webhook_failures_say_what_went_wrong() {
    let rt = runtime();
    let plugin = load_builtin(&rt, "webhook").await;
    let receiver = receiver();

    let closed = format!("http://127.0.0.1:{}/hook", closed_port());
    let params = json!({ "url": closed, "retries": 1, "retry_delay_ms": 10 });
    let message = failure(plugin.run(&notify(event(None), params)).await.result);
    assert!(
        message.contains("connection refused (after 2 attempts)"),
        "{message}"
    );

    // Without the http grant nothing leaves the sandbox.
    let mut request = notify(
        event(None),
        json!({ "url": receiver.url("/hook"), "retries": 0 }),
    );
    request.grants.http.clear();
    let message = failure(plugin.run(&request).await.result);
    assert!(
        message.contains("not in this plugin's http grant"),
        "{message}"
    );

    // A secret the plugin is not granted.
    let request = notify(
        event(None),
        json!({ "url": receiver.url("/hook"), "secret_header": { "name": "Authorization", "secret": "nope" } }),
    );
    let message = failure(plugin.run(&request).await.result);
    assert!(
        message.contains("secret_header: denied: secret `nope` is not granted"),
        "{message}"
    );
    assert!(receiver.received("/hook").is_empty());

    // Params are checked against the schema when the config is loaded.
    let problems = plugin
        .validate_params(&json!({ "url": "ftp://example.com/", "retries": -1, "colour": 1 }))
        .unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        plugin
            .validate_params(
                &json!({ "url": "https://hooks.example.com/x", "headers": { "bad name": "v" } })
            )
            .is_err()
    );
}

/// The quickstart with notify steps: one receiver that answers (and wants
/// a bearer token from a secret file), one that is down, one that answers
/// 500.
/// The quickstart at `version`, posting its events to three receivers:
/// one that answers (with a token from a secret file), one that is down,
/// and one that fails.
fn config_with_hooks(q: &Quickstart, version: &str, receiver: &HttpServer) -> String {
    use std::os::unix::fs::PermissionsExt;
    let token = q.dir.path().join("hook-token");
    std::fs::write(&token, "t0ken-from-a-file\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let down = format!("http://127.0.0.1:{}/hook", closed_port());
    let mut config = q.config.clone();
    config
        .secrets
        .push(("hook-token".into(), json!({ "file": "hook-token" })));
    config.plugins.push(PluginDef::new(
        "webhook",
        "builtin:webhook",
        json!({ "http": ["127.0.0.1:*"], "secrets": ["hook-token"] }),
    ));
    let app = config.app_mut("hello");
    app.version = version.into();
    app.notify = vec![
        StepConfig::new(
            "webhook",
            json!({ "url": receiver.url("/hook"), "secret_header": { "name": "Authorization", "secret": "hook-token", "prefix": "Bearer " } }),
        ),
        StepConfig::new("webhook", json!({ "url": down, "retries": 0 })),
        StepConfig::new(
            "webhook",
            json!({ "url": receiver.url("/fail"), "retries": 1, "retry_delay_ms": 50 }),
        ),
    ];
    config.render()
}

fn states(events: &[Value]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e["state"].as_str().unwrap().to_string(),
                e["environment"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn an_agent_tells_webhooks_of_each_deployment_and_a_receiver_down_fails_nothing() {
    let q = Quickstart::new();
    let receiver = receiver();
    q.save(&config_with_hooks(&q, "1.0.0", &receiver));
    let agent = q.start_agent();

    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_succeeded(&first, &agent);
    wait_for(
        "4 events at the receiver",
        &agent,
        Duration::from_secs(30),
        || receiver.json_bodies("/hook").len() >= 4,
    );
    let events = receiver.json_bodies("/hook");
    let s = |state: &str, env: Option<&str>| (state.to_string(), env.map(str::to_string));
    assert_eq!(
        states(&events),
        [
            s("started", None),
            s("promoted", Some("staging")),
            s("promoted", Some("production")),
            s("succeeded", None),
        ],
        "{events:#?}"
    );
    for r in receiver.received("/hook") {
        assert_eq!(r.headers["authorization"], "Bearer t0ken-from-a-file");
    }
    for e in &events {
        assert_eq!(e["app"], "hello", "{e}");
        assert_eq!(e["version"], "1.0.0", "{e}");
        assert_eq!(e["deployment_id"], first.id.to_string(), "{e}");
        assert!(e["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{e}");
    }
    let release = first.release_id.clone().unwrap();
    assert_eq!(
        events[1]["message"],
        format!("{release} passed its gates in staging")
    );

    // Every delivery is a `notify` step of the deployment: 4 events × 3
    // receivers, the ones that are down recorded as failed.
    let mut notify_steps = Vec::new();
    wait_for(
        "12 finished notify steps",
        &agent,
        Duration::from_secs(30),
        || {
            notify_steps = q
                .journal()
                .steps(first.id)
                .unwrap()
                .into_iter()
                .filter(|s| s.kind == "notify")
                .collect();
            notify_steps.len() == 12 && notify_steps.iter().all(|s| s.ended_at.is_some())
        },
    );
    for (i, step) in notify_steps.iter().enumerate() {
        assert_eq!(step.plugin, "webhook");
        let (outcome, message) = (step.outcome.as_deref(), step.message.as_deref().unwrap());
        match i % 3 {
            0 => assert_eq!(outcome, Some("ok"), "{step:?}"),
            1 => {
                assert_eq!(outcome, Some("failed"), "{step:?}");
                assert!(message.contains("connection refused"), "{message}");
            }
            _ => {
                assert_eq!(outcome, Some("failed"), "{step:?}");
                assert!(message.contains("status 500"), "{message}");
            }
        }
    }
    assert_eq!(receiver.received("/fail").len(), 8, "2 attempts × 4 events");
    let log = agent.log();
    assert!(
        log.contains("notification failed") && log.contains("connection refused"),
        "{log}"
    );
    assert!(serves(q.production, "1.0.0"));

    // A version that fails its smoke test: rolled back, with the reason.
    q.save(&config_with_hooks(&q, "1.2.0-broken", &receiver));
    let broken = wait_deployment_end(&q, &agent, "1.2.0-broken");
    assert_eq!(broken.state, DeploymentState::RolledBack);
    wait_for(
        "the rollback event",
        &agent,
        Duration::from_secs(30),
        || receiver.json_bodies("/hook").len() >= 6,
    );
    let events = &receiver.json_bodies("/hook")[4..];
    assert_eq!(
        states(events),
        [s("started", None), s("rolled-back", Some("staging"))],
        "{events:#?}"
    );
    assert_eq!(events[1]["deployment_id"], broken.id.to_string());
    assert_eq!(events[1]["version"], "1.2.0-broken");
    let message = events[1]["message"].as_str().unwrap();
    assert!(
        message.starts_with("staging: smoke test failed"),
        "{message}"
    );
    agent.terminate();
}

#[test]
fn a_notify_step_must_use_a_plugin_that_implements_notify() {
    let q = Quickstart::new();
    let receiver = receiver();
    let validate = || {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["validate", "-c"])
            .arg(q.config())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    // As written, valid, and the secret header is not taken for a literal
    // secret.
    let good = config_with_hooks(&q, "1.0.0", &receiver);
    std::fs::write(q.config(), &good).unwrap();
    let (code, err) = validate();
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");

    // The first receiver is posted to by a plugin that cannot notify.
    let text = good.replacen("plugin = \"webhook\"", "plugin = \"http-check\"", 1);
    // The second receiver's params break the webhook schema.
    let text = text.replace("retries = 0,", "retries = 0, method = \"GET\",");
    std::fs::write(q.config(), &text).unwrap();
    let (code, err) = validate();
    assert_eq!(code, Some(2), "{err}");
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let file = q.config().display().to_string();
    let first = format!(
        "{file}:{}:3: [apps.hello] notify[0]: plugin `http-check` does not implement notify (it implements: health-check, smoke-test)",
        line("{ plugin = \"http-check\", params = { secret_header")
    );
    assert!(err.contains(&first), "missing {first:?} in:\n{err}");
    let second = format!("{file}:{}:", line("method = \"GET\""));
    assert!(
        err.lines().any(|l| l.starts_with(&second)
            && l.contains("[apps.hello] notify[1]: params for `webhook`")
            && l.contains("method")),
        "missing {second:?} … notify[1] in:\n{err}"
    );
}

#[test]
fn a_hanging_receiver_neither_holds_up_a_deployment_nor_the_agent_stop() {
    let mut q = Quickstart::new();
    let receiver = receiver();
    q.config.plugins.push(PluginDef::new(
        "webhook",
        "builtin:webhook",
        json!({ "http": ["127.0.0.1:*"] }),
    ));
    q.hello().notify = vec![StepConfig::new(
        "webhook",
        json!({ "url": receiver.url("/hang"), "timeout_ms": 100000, "retries": 0 }),
    )];
    q.write_config("1.0.0");
    let agent = q.start_agent();
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_succeeded(&first, &agent);
    // The `started` event is still stuck at the receiver; the rest wait.
    assert_eq!(receiver.received("/hang").len(), 1);

    let stopping = std::time::Instant::now();
    agent.terminate();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    let steps: Vec<_> = q
        .journal()
        .steps(first.id)
        .unwrap()
        .into_iter()
        .filter(|s| s.kind == "notify")
        .collect();
    assert_eq!(steps.len(), 1, "{steps:#?}");
    assert_eq!(
        steps[0].outcome.as_deref(),
        Some("interrupted"),
        "{steps:#?}"
    );
    assert!(steps[0].ended_at.is_some());
}

#[test]
fn the_health_guards_rollback_after_promotion_is_told_too() {
    let mut q = Quickstart::new();
    let receiver = receiver();
    // A production bake shorter than the time the sick version stays well.
    q.production_env().health.as_mut().unwrap().bake = Some("1s".into());
    let text = |version: &str| config_with_hooks(&q, version, &receiver);
    q.save(&text("1.0.0"));
    let agent = q.start_agent();
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_eq!(
        first.state,
        DeploymentState::Succeeded,
        "{:?}",
        first.reason
    );
    q.save(&text("1.2.0-sick"));
    let sick = wait_deployment_end(&q, &agent, "1.2.0-sick");
    assert_eq!(sick.state, DeploymentState::Succeeded, "{:?}", sick.reason);

    let mut rollback = None;
    wait_for(
        "a rolled-back event for production",
        &agent,
        Duration::from_secs(40),
        || {
            rollback = receiver
                .json_bodies("/hook")
                .into_iter()
                .find(|e| e["state"] == "rolled-back" && e["environment"] == "production");
            rollback.is_some()
        },
    );
    let event = rollback.unwrap();
    let message = event["message"].as_str().unwrap();
    assert!(
        message.starts_with("production: turned unhealthy after promotion"),
        "{event}"
    );
    assert_eq!(event["version"], "1.2.0-sick", "{event}");
    let id: i64 = event["deployment_id"].as_str().unwrap().parse().unwrap();
    assert!(
        id > sick.id,
        "the rollback is a deployment of its own: {event}"
    );
    let record = q.journal().deployment(id).unwrap().unwrap();
    assert_eq!(record.state, DeploymentState::RolledBack);
    assert_eq!(record.reason.as_deref(), Some(message));
    agent.terminate();
}
