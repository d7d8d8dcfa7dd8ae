//! The backup-and-restore drill of docs/install.md, for real: the `slipway`
//! binary deploys the quickstart twice, a journal backup is taken while it
//! runs, the whole state dir is lost, the backup is restored, and the agent
//! started on it knows the whole history and serves the config's version
//! again, rebuilt because the release directories were not in the backup.

use crate::support;

use slipway::store::{DeploymentState, Journal};
use std::time::Duration;

use support::quickstart::*;
use support::slipway;

#[test]
fn backup_while_running_then_restore_onto_an_empty_state_dir_redeploys_with_history() {
    let q = Quickstart::new();
    let config = q.config();
    let c = config.to_str().unwrap();
    let state_dir = q.dir.path().join("state");
    let backup = q.dir.path().join("backups/slipway-journal.db");
    let b = backup.to_str().unwrap();

    // Two versions deployed through staging to production.
    let agent = q.start_agent();
    let first = wait_deployment_end(&q, &agent, "1.0.0");
    assert_eq!(
        first.state,
        DeploymentState::Succeeded,
        "{:?}",
        first.reason
    );
    q.write_config("1.1.0");
    let second = wait_deployment_end(&q, &agent, "1.1.0");
    assert_eq!(
        second.state,
        DeploymentState::Succeeded,
        "{:?}",
        second.reason
    );
    assert!(serves(q.production, "1.1.0") && serves(q.staging, "1.1.0"));

    // The backup is taken while the agent runs and serves.
    let (code, out, err) = slipway(&["backup", "-c", c, "--to", b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 deployments, 2 releases"),
        "it says what it wrote: {out}"
    );
    let (code, _, err) = slipway(&["backup", "-c", c, "--to", b]);
    assert_eq!(code, 2, "an existing backup is not replaced: {err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    let (code, _, err) = slipway(&["backup", "-c", c, "--to", b, "--force"]);
    assert_eq!(code, 0, "{err}");
    // A restore under a running agent is refused, and changes nothing.
    let (code, _, err) = slipway(&["restore", "-c", c, "--from", b, "--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use by a running slipway"), "{err}");
    assert!(serves(q.production, "1.1.0"));
    // So is a second agent on the same state dir (it would kill the
    // first one's apps as orphans).
    let (code, err) = q.agent().spawn().wait_exit(Duration::from_secs(20));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("in use by a running slipway (agent pid"),
        "{err}"
    );
    assert!(serves(q.production, "1.1.0") && serves(q.staging, "1.1.0"));
    agent.terminate();

    // The server loses its state dir: journal, releases, everything.
    std::fs::remove_dir_all(&state_dir).unwrap();

    // Not a journal: refused before anything is created.
    let junk = q.dir.path().join("junk.db");
    std::fs::write(&junk, "not a journal at all, just text\n".repeat(200)).unwrap();
    let (code, _, err) = slipway(&["restore", "-c", c, "--from", junk.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a SQLite database"), "{err}");
    assert!(!state_dir.exists(), "a refused restore creates nothing");

    let (code, out, err) = slipway(&["restore", "-c", c, "--from", b]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 deployments, 2 releases"), "{out}");
    // Twice: the journal is now there; replacing it needs --force.
    let (code, _, err) = slipway(&["restore", "-c", c, "--from", b]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );

    // The agent on the restored journal: the releases it names are gone
    // from disk, so it rebuilds the config's version and serves it.
    let agent = q.start_agent();
    let mut redeployed = None;
    wait_for(
        "the config's version deployed again",
        &agent,
        Duration::from_secs(120),
        || {
            redeployed =
                latest(&q).filter(|d| d.id > second.id && d.state != DeploymentState::Running);
            redeployed.is_some()
        },
    );
    let redeployed = redeployed.unwrap();
    assert_eq!(redeployed.version, "1.1.0");
    assert_succeeded(&redeployed, &agent);
    assert!(serves(q.production, "1.1.0") && serves(q.staging, "1.1.0"));
    assert!(
        agent.log().contains("release directory is missing"),
        "{}",
        agent.log()
    );

    // History (through the agent's API) still lists both earlier deployments.
    let (code, out, err) = slipway(&["history", "hello", "-c", c, "--json"]);
    assert_eq!(code, 0, "{err}");
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed: Vec<(i64, String, String)> = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().unwrap(),
                d["version"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for d in [&first, &second] {
        assert!(
            listed.contains(&(d.id, d.version.clone(), "succeeded".into())),
            "deployment {} of {} is in the history: {listed:?}",
            d.id,
            d.version
        );
    }

    // Every release is still recorded; the lost ones are marked removed
    // (not offered for rollback), the rebuilt one is live and running.
    let journal = Journal::open(&state_dir.join("journal.db")).unwrap();
    let live: Vec<String> = journal
        .releases("hello")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let rebuilt = redeployed.release_id.clone().unwrap();
    for d in [&first, &second] {
        let id = d.release_id.clone().unwrap();
        assert!(
            journal.release(&id).unwrap().is_some(),
            "release {id} recorded"
        );
        assert!(
            !live.contains(&id),
            "release {id} is gone from disk: {live:?}"
        );
    }
    assert_eq!(live, std::slice::from_ref(&rebuilt));
    for env in ["staging", "production"] {
        let state = journal.env_state("hello", env).unwrap().unwrap();
        assert_eq!(state.current_release.as_deref(), Some(rebuilt.as_str()));
        let events: Vec<String> = journal
            .history("hello", env, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e == "stopped (release directory missing)"),
            "{env}: {events:?}"
        );
    }
    agent.terminate();
}

/// `slipway restore` runs as root (docs/install.md says so); whoever can
/// write the state dir must not be able to point its lock at another file
/// and have root overwrite it, or hand it to them (audit finding).
#[test]
fn restore_refuses_a_lock_that_is_a_symlink_and_leaves_its_target_alone() {
    let q = Quickstart::new();
    let state = q.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let backup = q.dir.path().join("backup.db");
    drop(Journal::open(&backup).unwrap());
    let victim = q.dir.path().join("precious");
    std::fs::write(&victim, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("agent.lock")).unwrap();

    let c = q.config();
    let (code, _, err) = slipway(&[
        "restore",
        "-c",
        c.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("agent.lock is a symlink: refusing to use it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert!(!state.join("journal.db").exists(), "nothing restored");
    // The agent refuses it the same way.
    let (code, log) = q.start_agent().wait_exit(Duration::from_secs(30));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("agent.lock is a symlink"), "{log}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
}
