//! Operating a real agent: its HTTP API (token, every endpoint's happy and
//! bad-input paths, metrics), the CLI against it (tables, `--json`, rollback,
//! approve, exit codes), manual gates, pre-deploy and on-rollback steps, and
//! a SIGTERM that records the work in progress and exits 0.

use crate::support;

use serde_json::{Value, json};
use slipway::store::DeploymentState;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::quickstart::*;

/// The agent's API address and token, from its state dir.
struct Api {
    addr: String,
    token: String,
}

impl Api {
    fn of(q: &Quickstart, agent: &Agent) -> Self {
        let state = q.dir.path().join("state");
        wait_for(
            "the API address file",
            agent,
            Duration::from_secs(30),
            || state.join("api-address").exists(),
        );
        Self {
            addr: std::fs::read_to_string(state.join("api-address"))
                .unwrap()
                .trim()
                .to_string(),
            token: std::fs::read_to_string(state.join("api-token"))
                .unwrap()
                .trim()
                .to_string(),
        }
    }

    /// (status, body) of one request; `token` None sends no Authorization.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.call("GET", path, Some(&self.token), "");
        (status, json(&body))
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = self.call("POST", path, Some(&self.token), body);
        (status, json(&body))
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Run the CLI against the quickstart's config: (exit code, stdout, stderr).
fn cli(q: &Quickstart, args: &[&str]) -> (i32, String, String) {
    let config = q.config().display().to_string();
    let args: Vec<&str> = args.iter().copied().chain(["-c", &config]).collect();
    support::slipway(&args)
}

/// An error answer: the status, and a JSON body with a non-empty `error`.
fn assert_error(answer: (u16, Value), status: u16, contains: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = answer.1["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(contains),
        "error {message:?} should mention {contains:?}"
    );
}

/// Prometheus text: every sample line is `name{labels} value`, the
/// exposition ends with `# EOF`; returns the value of `sample` if present.
fn metric(text: &str, sample: &str) -> Option<f64> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && bare.starts_with("slipway_"),
            "bad metric name: {line}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        if name == sample {
            found = Some(value);
        }
    }
    found
}

/// The newest deployment of `version` once it has ended, even if newer
/// deployments started after it.
fn wait_version_end(q: &Quickstart, agent: &Agent, version: &str) -> slipway::store::Deployment {
    let mut found = None;
    wait_for(
        &format!("the {version} deployment to end"),
        agent,
        Duration::from_secs(90),
        || {
            found = q
                .journal()
                .deployments(Some("hello"), 50)
                .unwrap()
                .into_iter()
                .find(|d| d.version == version)
                .filter(|d| d.state != DeploymentState::Running);
            found.is_some()
        },
    );
    found.unwrap()
}

fn deployments_count(q: &Quickstart) -> usize {
    q.journal().deployments(Some("hello"), 1000).unwrap().len()
}

#[test]
fn api_and_cli_show_what_runs_and_roll_back_with_a_token() {
    let q = Quickstart::new();
    let agent = q.start_agent();
    let api = Api::of(&q, &agent);
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_eq!(
        first.state,
        DeploymentState::Succeeded,
        "{:?}",
        first.reason
    );

    // Token: required everywhere but /healthz; a wrong one changes nothing.
    assert_eq!(api.call("GET", "/healthz", None, "").0, 200);
    assert_eq!(api.call("GET", "/v1/apps", None, "").0, 401);
    assert_eq!(api.call("GET", "/metrics", None, "").0, 401);
    assert_eq!(api.call("GET", "/v1/apps", Some("wrong"), "").0, 401);
    let before = deployments_count(&q);
    let (status, body) = api.call(
        "POST",
        "/v1/apps/hello/environments/production/rollback",
        Some(&"0".repeat(64)),
        "{}",
    );
    assert_eq!(status, 401, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("token"));
    assert_eq!(
        deployments_count(&q),
        before,
        "a refused request changed nothing"
    );

    // Reads.
    let (status, ready) = api.get("/readyz");
    assert_eq!(
        (status, &ready["ready"]),
        (200, &Value::Bool(true)),
        "{ready}"
    );
    let (status, apps) = api.get("/v1/apps");
    assert_eq!(status, 200);
    let envs = &apps["apps"][0]["environments"];
    assert_eq!(apps["apps"][0]["name"], "hello");
    assert_eq!(envs[0]["name"], "staging");
    assert_eq!(envs[1]["current_version"], "1.0.0", "{apps}");
    assert!(envs[1]["process"]["pid"].as_u64().is_some(), "{apps}");
    assert!(envs[1]["health"]["result"].is_string(), "{apps}");
    let (status, app) = api.get("/v1/apps/hello");
    assert_eq!(status, 200);
    assert_eq!(app["recent_deployments"][0]["id"], first.id);
    assert_error(api.get("/v1/apps/nope"), 404, "nope");

    let (status, list) = api.get("/v1/deployments?app=hello&limit=5");
    assert_eq!(status, 200);
    assert_eq!(list["deployments"][0]["state"], "succeeded");
    assert_error(api.get("/v1/deployments?limit=0"), 400, "limit");
    assert_error(api.get("/v1/deployments?limit=ten"), 400, "limit");
    assert_error(api.get("/v1/deployments?colour=blue"), 400, "colour");
    assert_error(api.get("/v1/deployments?app=nope"), 404, "nope");

    let (status, shown) = api.get(&format!("/v1/deployments/{}", first.id));
    assert_eq!(status, 200);
    let steps = shown["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["kind"] == "build" && s["outcome"] == "ok"),
        "{shown}"
    );
    assert!(
        steps.iter().all(|s| s["duration_ms"].as_i64().is_some()),
        "{shown}"
    );
    assert_error(api.get("/v1/deployments/999999"), 404, "999999");
    assert_error(api.get("/v1/deployments/abc"), 400, "abc");
    let (status, logs) = api.get(&format!("/v1/deployments/{}/logs", first.id));
    assert_eq!(status, 200);
    assert!(!logs["steps"].as_array().unwrap().is_empty(), "{logs}");
    assert_error(api.get("/v1/deployments/999999/logs"), 404, "999999");
    assert_error(api.get("/v1/nothing-here"), 404, "no route");

    // Actions: bad input is refused before anything happens.
    let rollback = "/v1/apps/hello/environments/production/rollback";
    assert_error(api.post(rollback, "{not json"), 400, "body");
    assert_error(api.post(rollback, r#"{"to": 5}"#), 400, "body");
    assert_error(api.post(rollback, r#"{"too": "1.0.0"}"#), 400, "too");
    assert_error(api.post(rollback, r#"{"to": "one"}"#), 400, "version");
    assert_error(
        api.post("/v1/apps/nope/environments/production/rollback", "{}"),
        404,
        "nope",
    );
    assert_error(
        api.post("/v1/apps/hello/environments/qa/rollback", "{}"),
        404,
        "qa",
    );
    assert_error(api.post(rollback, "{}"), 409, "no earlier good release");
    assert_error(api.post(rollback, r#"{"to": "7.7.7"}"#), 404, "7.7.7");
    assert_error(
        api.post("/v1/apps/hello/environments/production/approve", ""),
        409,
        "waiting for approval",
    );
    assert_eq!(deployments_count(&q), before);

    // Metrics move with a deployment.
    let production_ok =
        r#"slipway_deployments_total{app="hello",env="production",state="succeeded"}"#;
    let (status, text) = api.call("GET", "/metrics", Some(&api.token), "");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, production_ok), Some(1.0), "{text}");
    let loads = metric(
        &text,
        r#"slipway_plugin_instantiations_total{plugin="http-check"}"#,
    )
    .unwrap();
    q.write_config("1.1.0");
    let second = wait_deployment_end(&q, &agent, "1.1.0");
    assert_eq!(
        second.state,
        DeploymentState::Succeeded,
        "{:?}",
        second.reason
    );
    let text = api.call("GET", "/metrics", Some(&api.token), "").1;
    assert_eq!(metric(&text, production_ok), Some(2.0), "{text}");
    assert!(
        metric(
            &text,
            r#"slipway_plugin_instantiations_total{plugin="http-check"}"#
        )
        .unwrap()
            > loads
    );
    assert_eq!(
        metric(&text, r#"slipway_config_reloads_total{result="accepted"}"#),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            r#"slipway_step_duration_seconds_count{kind="build",plugin="command",result="ok"}"#
        ) == Some(2.0),
        "{text}"
    );

    // The CLI: tables, and --json that parses.
    let (code, out, err) = cli(&q, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("production") && out.contains("1.1.0"), "{out}");
    for args in [
        vec!["status", "--json"],
        vec!["status", "hello", "--json"],
        vec!["history", "hello", "--json"],
        vec!["show", &second.id.to_string(), "--json"],
        vec!["logs", &second.id.to_string(), "--json"],
    ] {
        let (code, out, err) = cli(&q, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        json(&out);
    }
    let (code, out, _) = cli(&q, &["history", "hello"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().count() >= 3 && out.contains("succeeded"),
        "{out}"
    );
    let (code, out, _) = cli(&q, &["show", &second.id.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("health-check") && out.contains("http-check"),
        "{out}"
    );
    let (code, _, err) = cli(&q, &["show", "abc"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&q, &["rollback", "hello", "--env", "qa"]);
    assert_eq!(code, 2, "unknown env is a usage error: {err}");

    // Rollback through the CLI: followed to the end, production on 1.0.0,
    // and 1.1.0 pinned so the reconciler does not put it back.
    let (code, out, err) = cli(&q, &["rollback", "hello", "--env", "production"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rolled-back"), "{out}");
    assert!(serves(q.production, "1.0.0"));
    assert!(serves(q.staging, "1.1.0"));
    let (_, status) = api.get("/v1/apps/hello");
    assert!(
        status["pinned"]["reason"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        serves(q.production, "1.0.0"),
        "the pinned version stays out"
    );
    let (code, out, err) = cli(
        &q,
        &[
            "rollback",
            "hello",
            "--env",
            "production",
            "--to",
            "1.1.0",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json(&out)["deployment"]["state"], "rolled-back");
    assert!(serves(q.production, "1.1.0"));

    // The environment's own history: each switch, newest first.
    let (status, history) = api.get("/v1/apps/hello/environments/production/history");
    assert_eq!(status, 200, "{history}");
    let changes: Vec<(&str, &str)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("rolled-back", "1.1.0"),
            ("rolled-back", "1.0.0"),
            ("activating", "1.1.0"),
            ("activating", "1.0.0"),
        ],
        "{history}"
    );
    let (status, one) = api.get("/v1/apps/hello/environments/production/history?limit=1");
    assert_eq!(status, 200);
    assert_eq!(one["events"].as_array().unwrap().len(), 1, "{one}");
    assert_error(api.get("/v1/apps/hello/environments/qa/history"), 404, "qa");
    assert_error(
        api.get("/v1/apps/hello/environments/production/history?limit=0"),
        400,
        "limit",
    );
    let (code, out, err) = cli(&q, &["history", "hello", "--env", "production"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("AT (UTC)"), "{out}");
    assert!(
        rows[1].contains("rolled-back") && rows[1].contains("1.1.0"),
        "{out}"
    );
    assert_eq!(rows.len(), 5, "{out}");
    let (code, _, err) = cli(&q, &["history", "hello", "--env", "qa"]);
    assert_eq!(code, 2, "an unknown environment is a usage error: {err}");

    // SIGTERM: exit 0, apps keep serving; the CLI says the agent is down.
    let mut agent = agent;
    unsafe { libc_kill(agent.child.id() as i32, 15) };
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(
        serves(q.production, "1.1.0"),
        "apps keep serving after the agent's SIGTERM"
    );
    let (code, _, err) = cli(&q, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the agent"), "{err}");
}

#[test]
fn a_manual_gate_waits_for_approve_and_is_cancelled_by_timeout_or_a_new_config() {
    let mut q = Quickstart::new();
    q.production_env().promote = Some("manual".into());
    q.production_env().approval_timeout = Some("4s".into());
    q.write_config("1.0.0");
    let agent = q.start_agent();
    let api = Api::of(&q, &agent);
    let waiting = |q: &Quickstart| {
        let (code, out, _) = cli(q, &["status", "--json"]);
        code == 0 && json(&out)["apps"][0]["environments"][1]["waiting_approval"].is_object()
    };
    wait_for(
        "the production gate",
        &agent,
        Duration::from_secs(60),
        || waiting(&q),
    );
    assert!(serves(q.staging, "1.0.0"));
    assert!(get(q.production, "/").is_none(), "production waits");
    // `status --watch` follows it live (piped: one line per step change).
    let watch = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["status", "--watch", "hello", "-c"])
        .arg(q.config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err) = cli(&q, &["approve", "hello", "--env", "production"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved"), "{out}");
    let watched = watch.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&watched.stdout),
        String::from_utf8_lossy(&watched.stderr),
    );
    assert_eq!(watched.status.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("production health-check (http-check) healthy"),
        "{err}"
    );
    assert!(out.contains("succeeded"), "{out}");
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_eq!(
        first.state,
        DeploymentState::Succeeded,
        "{:?}",
        first.reason
    );
    assert!(serves(q.production, "1.0.0"));

    // Not approved: a newer config supersedes the wait...
    q.write_config("1.1.0");
    wait_for("1.1.0 at the gate", &agent, Duration::from_secs(60), || {
        serves(q.staging, "1.1.0") && waiting(&q)
    });
    q.write_config("1.2.0");
    let superseded = wait_version_end(&q, &agent, "1.1.0");
    assert_eq!(superseded.state, DeploymentState::Cancelled);
    assert!(
        superseded.reason.as_deref().unwrap().contains("superseded"),
        "{superseded:?}"
    );
    // ...and the timeout cancels the next one; production is never touched.
    let timed_out = wait_version_end(&q, &agent, "1.2.0");
    assert_eq!(timed_out.state, DeploymentState::Cancelled);
    assert!(
        timed_out
            .reason
            .as_deref()
            .unwrap()
            .contains("not approved within 4 s"),
        "{timed_out:?}"
    );
    assert!(serves(q.staging, "1.2.0"));
    assert!(serves(q.production, "1.0.0"));
    assert_error(
        api.post("/v1/apps/hello/environments/production/approve", "{}"),
        409,
        "waiting",
    );
    let text = api.call("GET", "/metrics", Some(&api.token), "").1;
    assert_eq!(
        metric(
            &text,
            r#"slipway_deployments_total{app="hello",env="production",state="cancelled"}"#
        ),
        Some(2.0)
    );
}

#[test]
fn pre_deploy_failure_stops_before_activation_and_on_rollback_runs() {
    let mut q = Quickstart::new();
    let marks = q.dir.path().join("steps.log");
    let fail = q.dir.path().join("fail-pre-deploy");
    q.config.plugin_mut("command").grants = json!({ "exec": ["rustc", "sh"] });
    let (f, m) = (fail.display().to_string(), marks.display().to_string());
    let production = q.production_env();
    production.pre_deploy = vec![StepConfig::command(json!([[
        "sh",
        "-c",
        format!("test ! -e {f} && echo pre-deploy >> {m}")
    ]]))];
    production.on_rollback = vec![StepConfig::command(json!([[
        "sh",
        "-c",
        format!("echo on-rollback >> {m}")
    ]]))];
    q.write_config("1.0.0");
    let agent = q.agent().global_args(&["--log-format", "json"]).spawn();
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_eq!(
        first.state,
        DeploymentState::Succeeded,
        "{:?}",
        first.reason
    );
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "pre-deploy\n");
    // JSON logs: one object per line; step lines carry app, env,
    // deployment and step as fields.
    let log = agent.log();
    let lines: Vec<Value> = log.lines().map(json).collect();
    assert!(
        lines.iter().any(|l| l["app"] == "hello"
            && l["env"] == "production"
            && l["step"] == "pre-deploy"
            && l["deployment"].as_str() == Some(first.id.to_string().as_str())),
        "{log}"
    );

    // A failing pre_deploy: production is not touched.
    std::fs::write(&fail, "").unwrap();
    q.write_config("1.1.0");
    let stopped = wait_deployment_end(&q, &agent, "1.1.0");
    assert_eq!(stopped.state, DeploymentState::Failed);
    assert!(
        stopped.reason.as_deref().unwrap().contains("pre_deploy[0]"),
        "{stopped:?}"
    );
    assert!(serves(q.staging, "1.1.0"));
    assert!(serves(q.production, "1.0.0"));
    let journal = q.journal();
    let production = journal.env_state("hello", "production").unwrap().unwrap();
    assert_eq!(production.current_release, first.release_id);
    let steps = journal.steps(stopped.id).unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s.kind == "pre-deploy" && s.outcome.as_deref() == Some("failed"))
    );
    assert!(
        !steps
            .iter()
            .any(|s| s.environment.as_deref() == Some("production") && s.kind == "smoke-test")
    );

    // A release that turns sick in production: rolled back, on_rollback ran.
    std::fs::remove_file(&fail).unwrap();
    q.write_config("1.2.0-sick");
    let sick = wait_deployment_end(&q, &agent, "1.2.0-sick");
    assert_eq!(sick.state, DeploymentState::RolledBack, "{:?}", sick.reason);
    assert!(serves(q.production, "1.0.0"));
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "pre-deploy\npre-deploy\non-rollback\n"
    );
    let steps = q.journal().steps(sick.id).unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s.kind == "on-rollback" && s.outcome.as_deref() == Some("ok"))
    );
}

#[test]
fn sigterm_during_a_step_records_it_as_interrupted_and_exits_0() {
    let mut q = Quickstart::new();
    // A bake long enough to be caught in.
    q.production_env().pre_deploy = vec![StepConfig::command(json!(["sleep 30"]))];
    q.config.plugin_mut("command").grants = json!({ "exec": ["rustc", "sleep"] });
    q.write_config("1.0.0");
    let mut agent = q.start_agent();
    wait_for(
        "the pre-deploy step",
        &agent,
        Duration::from_secs(60),
        || {
            q.journal()
                .deployments(Some("hello"), 1)
                .ok()
                .and_then(|d| d.into_iter().next())
                .and_then(|d| q.journal().steps(d.id).ok())
                .is_some_and(|steps| steps.iter().any(|s| s.kind == "pre-deploy"))
        },
    );
    unsafe { libc_kill(agent.child.id() as i32, 15) };
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    let d = latest(&q).unwrap();
    assert_eq!(d.state, DeploymentState::Interrupted);
    assert!(
        d.reason
            .as_deref()
            .unwrap()
            .contains("pre-deploy step in production"),
        "{d:?}"
    );
    let steps = q.journal().steps(d.id).unwrap();
    let step = steps.iter().find(|s| s.kind == "pre-deploy").unwrap();
    assert_eq!(step.outcome.as_deref(), Some("interrupted"));
    assert!(
        get(q.staging, "/").is_some(),
        "apps keep serving after the agent's SIGTERM"
    );
}
