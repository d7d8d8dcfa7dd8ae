//! The quickstart, for real: the `slipway` binary runs the example app
//! through staging to production on loopback ports, while the test edits the
//! config file the way a person would, and kills the agent the way a crash
//! would.

use crate::support;

use serde_json::json;
use slipway::store::DeploymentState;
use std::process::Command;
use std::time::Duration;

use support::quickstart::*;

#[test]
fn quickstart_deploys_promotes_gates_rolls_back_and_survives_a_crash() {
    let q = Quickstart::new();
    let agent = q.start_agent();

    // First deploy: staging, then production, both 1.0.0.
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_succeeded(&first, &agent);
    assert!(serves(q.production, "1.0.0") && serves(q.staging, "1.0.0"));
    let release = first.release_id.clone().unwrap();
    let state = q
        .journal()
        .env_state("hello", "production")
        .unwrap()
        .unwrap();
    assert_eq!(state.current_release.as_deref(), Some(release.as_str()));

    // Editing the version ships it; production gets the artifact staging tested.
    q.write_config("1.1.0");
    let second = wait_deployment_end(&q, &agent, "1.1.0");
    assert_eq!(
        second.state,
        DeploymentState::Succeeded,
        "{:?}",
        second.reason
    );
    assert!(serves(q.production, "1.1.0"));
    let good = second.release_id.clone().unwrap();
    let builds = q
        .journal()
        .steps(second.id)
        .unwrap()
        .into_iter()
        .filter(|s| s.kind == "build")
        .count();
    assert_eq!(builds, 1, "built once, promoted as is");

    // A version that fails its smoke test never reaches production.
    q.write_config("1.2.0-broken");
    let broken = wait_deployment_end(&q, &agent, "1.2.0-broken");
    assert_eq!(broken.state, DeploymentState::RolledBack);
    let reason = broken.reason.clone().unwrap();
    assert!(reason.contains("staging: smoke test failed"), "{reason}");
    assert!(serves(q.production, "1.1.0"), "production untouched");
    wait_for(
        "staging back on 1.1.0",
        &agent,
        Duration::from_secs(20),
        || serves(q.staging, "1.1.0"),
    );
    assert!(
        q.journal()
            .pin_for("hello", &pin_hash(&q))
            .unwrap()
            .is_some(),
        "the failed version is pinned"
    );

    // Invalid edits are refused with their location; nothing changes.
    let before = q.journal().deployments(Some("hello"), 100).unwrap().len();
    let valid = q.config_text("1.3.0");
    let invalid = [
        (
            valid.replace("[apps.hello]", "[apps.hello"),
            "slipway.toml:15:12: invalid TOML",
        ),
        (
            valid.replace("keep_releases = 2", "keep_releases = 2\ncolour = \"blue\""),
            "slipway.toml:19:1: unknown key `colour`",
        ),
        (
            valid.replace("version = \"1.3.0\"", "version = \"one point three\""),
            "slipway.toml:16:11: `version` `one point three` is not semver",
        ),
        (
            valid.replace("plugin = \"http-check\"", "plugin = \"http-chek\""),
            "no plugin `http-chek` in [plugins]",
        ),
    ];
    for (n, (text, expected)) in invalid.iter().enumerate() {
        q.save(text);
        wait_for(expected, &agent, Duration::from_secs(15), || {
            let log = agent.log();
            log.contains(expected) && log.matches("config change rejected").count() > n
        });
    }
    assert!(serves(q.production, "1.1.0"));
    assert_eq!(
        q.journal().deployments(Some("hello"), 100).unwrap().len(),
        before
    );

    // A version that turns unhealthy in production is rolled back on its own.
    q.write_config("1.2.0-sick");
    let sick = wait_deployment_end(&q, &agent, "1.2.0-sick");
    assert_eq!(sick.state, DeploymentState::RolledBack);
    let reason = sick.reason.clone().unwrap();
    assert!(reason.starts_with("production: unhealthy"), "{reason}");
    assert!(
        reason.contains("app log (last lines)"),
        "the app's own log is in the reason: {reason}"
    );
    wait_for(
        "production back on 1.1.0",
        &agent,
        Duration::from_secs(20),
        || serves(q.production, "1.1.0"),
    );
    let state = q
        .journal()
        .env_state("hello", "production")
        .unwrap()
        .unwrap();
    assert_eq!(state.current_release.as_deref(), Some(good.as_str()));

    // kill -9, restart: the journal's releases run again, nothing is lost.
    agent.kill_9();
    let agent = q.start_agent();
    wait_for(
        "the restarted agent to recover",
        &agent,
        Duration::from_secs(30),
        || {
            agent
                .log()
                .contains("adopted, not restarted app=hello env=production")
        },
    );
    wait_for(
        "production serving after restart",
        &agent,
        Duration::from_secs(30),
        || serves(q.production, "1.1.0"),
    );
    // Staging runs what the journal names: the sick version, or 1.1.0 if the
    // health guard had already rolled it back when the agent was killed.
    wait_for(
        "staging consistent with the journal",
        &agent,
        Duration::from_secs(10),
        || consistent(&q, "staging", q.staging),
    );
    // Nothing was redeployed: the only deployments since the invalid edits
    // are the sick one and any rollbacks the health guard made.
    let guard_rollbacks = q
        .journal()
        .deployments(Some("hello"), 100)
        .unwrap()
        .iter()
        .filter(|d| {
            d.reason
                .as_deref()
                .is_some_and(|r| r.contains("turned unhealthy after promotion"))
        })
        .count();
    assert_eq!(
        q.journal().deployments(Some("hello"), 100).unwrap().len(),
        before + 1 + guard_rollbacks
    );

    // Ctrl-C stops the apps too (SIGTERM would leave them serving).
    agent.interrupt();
    assert!(
        get(q.production, "/").is_none(),
        "production stopped with the agent"
    );
    assert!(
        get(q.staging, "/").is_none(),
        "staging stopped with the agent"
    );
}

/// The spec hash of the last deployment (the sick one was the last edit
/// before, so read it from the journal rather than recomputing).
fn pin_hash(q: &Quickstart) -> String {
    latest(q).unwrap().spec_hash
}

#[test]
fn validate_reports_every_error_with_its_location() {
    let q = Quickstart::new();
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["validate", "-c"])
        .arg(q.config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = q
        .config_text("1.0")
        .replace(
            "interval = \"500ms\", healthy_after = 2, bake = \"1s\"",
            "interval = \"soon\"",
        )
        .replace(
            "promote_from = \"staging\"",
            "promote_from = \"qa\"\ncolour = \"blue\"",
        )
        .replace("url = \"http://127.0.0.1", "uri = \"http://127.0.0.1");
    std::fs::write(q.config(), bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["validate", "-c"])
        .arg(q.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let file = q.config().display().to_string();
    for expected in [
        ":16:11: `version` `1.0` is not semver",
        "`interval`: `soon` is not a duration",
        "unknown key `colour`",
        "promote_from `qa`: no such environment",
        "params for `http-check`: \"url\" is a required property",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.starts_with(&format!("{file}:")), "not located: {line}");
    }
}

#[test]
fn apps_deploy_in_parallel_and_quick_edits_deploy_only_the_last() {
    let q = Quickstart::new();
    let world_port = support::app_port();
    let two_apps = |hello: &str, world: &str| {
        let mut config = q.config.clone();
        config.app_mut("hello").version = hello.into();
        let mut production = Env::hello("production", world_port);
        production.health = Some(
            StepConfig::new(
                "http-check",
                json!({ "url": format!("http://127.0.0.1:{world_port}/healthz") }),
            )
            .health("500ms", 2, "3s"),
        );
        config.apps.push(App {
            environments: vec![production],
            ..App::new("world", world, hello_build())
        });
        config.render()
    };
    q.save(&two_apps("1.0.0", "2.0.0"));
    let agent = q.start_agent();
    let hello = wait_deployment_end(&q, &agent, "1.0.0");
    let mut world = None;
    wait_for(
        "world 2.0.0 deployed",
        &agent,
        Duration::from_secs(60),
        || {
            world = q
                .journal()
                .deployments(Some("world"), 1)
                .unwrap()
                .into_iter()
                .find(|d| d.state != DeploymentState::Running);
            world.is_some()
        },
    );
    let world = world.unwrap();
    assert_eq!(
        (hello.state, world.state),
        (DeploymentState::Succeeded, DeploymentState::Succeeded)
    );
    assert!(
        hello.started_at < world.ended_at.unwrap() && world.started_at < hello.ended_at.unwrap(),
        "the two apps deployed at the same time: {hello:?} {world:?}"
    );
    assert!(serves(world_port, "2.0.0"));

    // Three quick edits of one app: only the last is deployed.
    for version in ["1.1.0", "1.2.0", "1.3.0"] {
        q.save(&two_apps(version, "2.0.0"));
        std::thread::sleep(Duration::from_millis(5));
    }
    let last = wait_deployment_end(&q, &agent, "1.3.0");
    assert_eq!(last.state, DeploymentState::Succeeded, "{:?}", last.reason);
    let versions: Vec<String> = q
        .journal()
        .deployments(Some("hello"), 100)
        .unwrap()
        .into_iter()
        .map(|d| d.version)
        .collect();
    assert_eq!(
        versions,
        ["1.3.0", "1.0.0"],
        "only the last edit was deployed"
    );
    assert_eq!(
        q.journal().deployments(Some("world"), 100).unwrap().len(),
        1,
        "world untouched"
    );
    assert!(serves(q.production, "1.3.0") && serves(world_port, "2.0.0"));
    agent.terminate();
}

/// What the journal says an environment runs, as a version.
fn journal_version(q: &Quickstart, env: &str) -> Option<String> {
    let j = q.journal();
    let current = j.env_state("hello", env).ok()??.current_release?;
    Some(j.release(&current).ok()??.version)
}

/// The environment serves exactly what the journal names (or nothing if the
/// journal names nothing).
fn consistent(q: &Quickstart, env: &str, port: u16) -> bool {
    match journal_version(q, env) {
        Some(v) => serves(port, &v),
        None => get(port, "/").is_none(),
    }
}

#[test]
fn kill_9_during_build_staging_and_production_bake_recovers_consistently() {
    let mut q = Quickstart::new();
    // A build that takes a moment, so the test can catch it in the act.
    q.config.plugin_mut("command").grants = json!({ "exec": ["rustc", "sh"] });
    q.hello().build = StepConfig::command(json!([
        "sh -c \"sleep 1\"",
        "rustc --edition 2024 src/main.rs -o hello"
    ]));
    q.write_config("1.0.0");
    let mut agent = q.start_agent();
    assert_eq!(
        wait_deployment_end(&q, &agent, "1.0.0").state,
        DeploymentState::Succeeded
    );

    type Reached = fn(&slipway::store::StepRecord) -> bool;
    let phases: [(&str, Reached); 3] = [
        ("build", |s| s.kind == "build" && s.ended_at.is_none()),
        ("staging", |s| s.environment.as_deref() == Some("staging")),
        ("production bake", |s| {
            s.environment.as_deref() == Some("production") && s.kind == "health-check"
        }),
    ];
    for (n, (phase, reached)) in phases.into_iter().enumerate() {
        let version = format!("1.1.{n}");
        q.write_config(&version);
        wait_for(
            &format!("{version} in {phase}"),
            &agent,
            Duration::from_secs(60),
            || {
                latest(&q).is_some_and(|d| {
                    d.version == version
                        && d.state == DeploymentState::Running
                        && q.journal().steps(d.id).unwrap().iter().any(reached)
                })
            },
        );
        agent.kill_9();
        agent = q.start_agent();
        wait_for("recovery", &agent, Duration::from_secs(30), || {
            agent.log().contains("agent starting")
                && q.journal()
                    .unfinished_deployments()
                    .unwrap()
                    .iter()
                    .all(|d| d.version == version)
        });
        let interrupted = q.journal().deployments(Some("hello"), 100).unwrap();
        assert!(
            interrupted
                .iter()
                .any(|d| d.version == version && d.state == DeploymentState::Interrupted),
            "the cut deployment is recorded as interrupted ({phase})"
        );
        // Redone from the start, and it lands.
        let mut redone = None;
        wait_for(
            &format!("{version} redeployed after a crash in {phase}"),
            &agent,
            Duration::from_secs(90),
            || {
                redone = latest(&q)
                    .filter(|d| d.version == version && d.state == DeploymentState::Succeeded);
                redone.is_some()
            },
        );
        for (env, port) in [("staging", q.staging), ("production", q.production)] {
            assert!(
                consistent(&q, env, port),
                "{env} serves what the journal names after a crash in {phase}"
            );
            assert_eq!(journal_version(&q, env).as_deref(), Some(version.as_str()));
        }
    }
    let releases = q.dir.path().join("state/releases");
    // Ctrl-C: the agent stops its apps (a SIGTERM would leave them serving).
    agent.interrupt();
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let leftovers: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&releases.display().to_string()))
        .map(str::to_string)
        .collect();
    assert!(
        leftovers.is_empty(),
        "no app process outlives the agent: {leftovers:?}"
    );
}

#[test]
fn a_release_that_turns_unhealthy_after_promotion_is_rolled_back() {
    let mut q = Quickstart::new();
    // A production bake shorter than the time the sick version stays well.
    q.production_env().health.as_mut().unwrap().bake = Some("1s".into());
    q.write_config("1.0.0");
    let agent = q.start_agent();
    assert_eq!(
        wait_deployment_end(&q, &agent, "1.0.0").state,
        DeploymentState::Succeeded
    );

    q.write_config("1.2.0-sick");
    let promoted = wait_deployment_end(&q, &agent, "1.2.0-sick");
    assert_eq!(
        promoted.state,
        DeploymentState::Succeeded,
        "it passes its gates: {:?}",
        promoted.reason
    );
    assert!(serves(q.production, "1.2.0-sick"));

    // Three seconds later it turns unhealthy; the guard rolls it back.
    // (Staging, where it runs too, is guarded and rolled back the same way.)
    wait_for(
        "the production rollback in the journal",
        &agent,
        Duration::from_secs(30),
        || {
            q.journal()
                .deployments(Some("hello"), 100)
                .unwrap()
                .iter()
                .any(|d| {
                    d.state == DeploymentState::RolledBack
                        && d.reason.as_deref().is_some_and(|r| {
                            r.starts_with("production: turned unhealthy after promotion")
                        })
                })
        },
    );
    assert!(serves(q.production, "1.0.0"));
    let state = q
        .journal()
        .env_state("hello", "production")
        .unwrap()
        .unwrap();
    assert_eq!(
        state.current_release, state.last_good_release,
        "settled on the rollback target"
    );
    // Pinned: it is not deployed again by itself.
    std::thread::sleep(Duration::from_secs(2));
    assert!(serves(q.production, "1.0.0"));
    assert!(latest(&q).unwrap().state != DeploymentState::Running);
    agent.terminate();
}

#[test]
fn many_apps_deploy_in_turns_and_all_land() {
    // More apps than deployment turns, each with a bake long enough for
    // their deployments to overlap. (A 300 ms bake needing 3 passes 100 ms
    // apart failed once on a loaded machine: two slow checks used it up.)
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    std::fs::write(dir.path().join("app/README"), "source\n").unwrap();
    let turns = slipway::engine::parallel_deployments();
    let apps = turns + 4;
    let pass = StepConfig::new("scripted", json!({ "outcome": "pass" }));
    let mut config = TestConfig::new();
    config.plugins.push(PluginDef::new(
        "scripted",
        support::fixture("scripted").to_str().unwrap(),
        json!({}),
    ));
    for n in 0..apps {
        let mut production = Env::new("production");
        production.deploy = Some(pass.clone());
        production.health = Some(pass.clone().health("100ms", 3, "1s"));
        config.apps.push(App {
            environments: vec![production],
            ..App::new(&format!("app{n}"), "1.0.0", pass.clone())
        });
    }
    let config_file = dir.path().join("slipway.toml");
    std::fs::write(&config_file, config.render()).unwrap();
    let agent = AgentBuilder::new(&config_file).spawn();
    let journal = || slipway::store::Journal::open(&dir.path().join("state/journal.db")).unwrap();
    let mut all = Vec::new();
    wait_for(
        "every app deployed",
        &agent,
        Duration::from_secs(120),
        || {
            if !dir.path().join("state/journal.db").exists() {
                return false;
            }
            all = journal().deployments(None, 1000).unwrap();
            all.len() == apps && all.iter().all(|d| d.state != DeploymentState::Running)
        },
    );
    for d in &all {
        assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    }
    // The most deployments that ran at one moment (at each start).
    let overlap = all
        .iter()
        .map(|d| {
            all.iter()
                .filter(|o| o.started_at <= d.started_at && d.started_at < o.ended_at.unwrap())
                .count()
        })
        .max()
        .unwrap();
    assert!(
        (2..=turns).contains(&overlap),
        "{overlap} deployments ran at once; want 2..={turns}"
    );
    assert!(
        agent.log().contains("waiting for a deployment slot"),
        "{}",
        agent.log()
    );
    agent.terminate();
}
