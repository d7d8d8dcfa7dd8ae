//! Unit tests of the journal over a real SQLite file: migrations, each
//! table's round trip, reopening after a "crash", backups and refusals.

use super::migrate::{MIGRATIONS, user_version};
use super::*;
use crate::vocab::{EnvChange, StepRole, Verdict};
use rusqlite::Connection;
use std::time::Duration;

fn open(dir: &tempfile::TempDir) -> Journal {
    Journal::open(&dir.path().join("state/journal.db")).expect("open journal")
}

fn release(id: &str, app: &str, created_at: i64) -> Release {
    Release {
        id: id.into(),
        app: app.into(),
        version: "1.0.0".into(),
        dir: format!("/srv/{id}"),
        artifact_dir: format!("/srv/{id}/out"),
        created_at,
    }
}

#[test]
fn migrations_apply_and_reopen_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/journal.db");
    let j = Journal::open(&path).unwrap();
    let conn = j.conn();
    assert_eq!(user_version(&conn).unwrap(), MIGRATIONS.len() as i64);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    drop(conn);
    let id = j.start_deployment("a", "1", "h", "{}").unwrap();
    drop(j);

    // Re-running 0001 would fail on CREATE TABLE; re-opening must not.
    let j = Journal::open(&path).unwrap();
    assert_eq!(user_version(&j.conn()).unwrap(), MIGRATIONS.len() as i64);
    assert!(j.deployment(id).unwrap().is_some());
}

#[test]
fn schema_1_journal_migrates_keeping_every_row_and_reference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    {
        // A journal as the first release wrote it.
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO deployments (app, version, spec_hash, spec_json, state, started_at)
             VALUES ('web', '1.0.0', 'h', '{}', 'running', 1)",
            [],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO steps (deployment_id, kind, plugin, attempt, started_at)
             VALUES (1, 'build', 'command', 1, 2)",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let j = Journal::open(&path).unwrap();
    assert_eq!(user_version(&j.conn()).unwrap(), MIGRATIONS.len() as i64);
    let steps = j.steps(1).unwrap();
    assert_eq!((steps.len(), steps[0].deployment_id), (1, 1));
    j.finish_deployment(1, DeploymentState::Cancelled, Some("not approved"))
        .unwrap();
    assert_eq!(
        j.deployment(1).unwrap().unwrap().state,
        DeploymentState::Cancelled
    );
    // Foreign keys are enforced again after the rebuild.
    assert!(
        j.start_step(99, None, StepRole::Build, "command", 1)
            .is_err()
    );
}

#[test]
fn deployment_step_and_log_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    let id = j
        .start_deployment("web", "1.2.0", "hash1", r#"{"version":"1.2.0"}"#)
        .unwrap();
    let d = j.deployment(id).unwrap().unwrap();
    assert_eq!(d.state, DeploymentState::Running);
    assert!(d.ended_at.is_none() && d.release_id.is_none());
    assert_eq!(j.unfinished_deployments().unwrap().len(), 1);

    j.record_release(&release("1.2.0-1", "web", 10)).unwrap();
    j.set_deployment_release(id, "1.2.0-1").unwrap();

    let build = j
        .start_step(id, None, StepRole::Build, "command", 1)
        .unwrap();
    let smoke = j
        .start_step(id, Some("staging"), StepRole::SmokeTest, "http-check", 2)
        .unwrap();
    let logs = vec![
        LogRecord {
            at: 5,
            level: "info".into(),
            source: "plugin".into(),
            message: "compiling".into(),
            fields: vec![("file".into(), "main.rs".into()), ("n".into(), "1".into())],
        },
        LogRecord {
            at: 6,
            level: "warn".into(),
            source: "stderr".into(),
            message: "slow".into(),
            fields: vec![],
        },
    ];
    j.finish_step(build, Verdict::Ok, "artifact out", &logs)
        .unwrap();
    j.finish_step(smoke, Verdict::Timeout, "no answer in 5s", &[])
        .unwrap();
    assert!(matches!(
        j.finish_step(build, Verdict::Ok, "", &[]),
        Err(StoreError::AlreadyFinished { .. })
    ));
    j.finish_deployment(id, DeploymentState::Failed, Some("staging: timeout"))
        .unwrap();
    assert!(matches!(
        j.finish_deployment(id, DeploymentState::Succeeded, None),
        Err(StoreError::AlreadyFinished { .. })
    ));
    assert!(matches!(
        j.finish_deployment(999, DeploymentState::Failed, None),
        Err(StoreError::NotFound { .. })
    ));

    let d = j.deployment(id).unwrap().unwrap();
    assert_eq!(d.state, DeploymentState::Failed);
    assert_eq!(d.reason.as_deref(), Some("staging: timeout"));
    assert_eq!(d.release_id.as_deref(), Some("1.2.0-1"));
    assert!(d.ended_at.is_some());
    assert!(j.unfinished_deployments().unwrap().is_empty());

    let steps = j.steps(id).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].kind.as_str(), steps[0].attempt), ("build", 1));
    assert_eq!(steps[0].environment, None);
    assert_eq!(steps[1].environment.as_deref(), Some("staging"));
    assert_eq!(steps[1].outcome.as_deref(), Some("timeout"));
    assert_eq!(steps[1].attempt, 2);
    let got = j.step_logs(build).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].message, "compiling");
    assert_eq!(got[0].fields, logs[0].fields);
    assert_eq!(got[1].level, "warn");
    assert!(j.step_logs(smoke).unwrap().is_empty());

    // Foreign keys are enforced: no step for a deployment that isn't.
    assert!(j.start_step(424242, None, StepRole::Build, "x", 1).is_err());
}

#[test]
fn deployment_queries_are_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    let a1 = j.start_deployment("a", "1", "h1", "{}").unwrap();
    let b1 = j.start_deployment("b", "1", "h1", "{}").unwrap();
    let a2 = j.start_deployment("a", "2", "h2", "{}").unwrap();
    let a3 = j.start_deployment("a", "1", "h1", "{}").unwrap();
    let ids = |v: Vec<Deployment>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(j.deployments(Some("a"), 10).unwrap()), [a3, a2, a1]);
    assert_eq!(ids(j.deployments(None, 2).unwrap()), [a3, a2]);
    assert_eq!(ids(j.deployments(Some("b"), usize::MAX).unwrap()), [b1]);
    let latest = j.latest_deployment_for_spec("a", "h1").unwrap().unwrap();
    assert_eq!(latest.id, a3);
    assert!(j.latest_deployment_for_spec("a", "nope").unwrap().is_none());
    assert!(matches!(
        j.finish_deployment(a1, DeploymentState::Running, None),
        Err(StoreError::NotAnEndState { .. })
    ));
}

#[test]
fn releases_newest_first_without_removed() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    j.record_release(&release("r1", "web", 100)).unwrap();
    j.record_release(&release("r2", "web", 200)).unwrap();
    j.record_release(&release("r3", "web", 200)).unwrap();
    j.record_release(&release("o1", "other", 300)).unwrap();
    assert!(
        j.record_release(&release("r1", "web", 400)).is_err(),
        "ids are unique"
    );
    let ids = |v: Vec<Release>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(j.releases("web").unwrap()), ["r3", "r2", "r1"]);
    j.mark_release_removed("r2").unwrap();
    j.mark_release_removed("r2").unwrap();
    assert_eq!(ids(j.releases("web").unwrap()), ["r3", "r1"]);
    assert_eq!(j.release("r2").unwrap().unwrap().dir, "/srv/r2");
    assert!(matches!(
        j.mark_release_removed("nope"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn env_state_upsert_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    j.record_release(&release("r1", "web", 1)).unwrap();
    j.record_release(&release("r2", "web", 2)).unwrap();
    let d = j.start_deployment("web", "2", "h", "{}").unwrap();
    assert!(j.env_state("web", "prod").unwrap().is_none());

    j.set_current_release("web", "prod", Some("r1"), None, EnvChange::Activating)
        .unwrap();
    j.set_last_good_release("web", "prod", "r1").unwrap();
    j.set_current_release("web", "prod", Some("r2"), Some(d), EnvChange::Activating)
        .unwrap();
    let s = j.env_state("web", "prod").unwrap().unwrap();
    assert_eq!(s.current_release.as_deref(), Some("r2"));
    assert_eq!(s.last_good_release.as_deref(), Some("r1"));
    j.set_current_release("web", "prod", Some("r1"), Some(d), EnvChange::RolledBack)
        .unwrap();
    j.set_current_release("web", "staging", None, Some(d), EnvChange::Stopped)
        .unwrap();
    // last_good alone creates the row too, with no current release.
    j.set_last_good_release("web", "dev", "r2").unwrap();

    let all = j.env_states().unwrap();
    let names: Vec<_> = all.iter().map(|s| s.environment.as_str()).collect();
    assert_eq!(names, ["dev", "prod", "staging"]);
    assert_eq!(all[0].current_release, None);
    assert_eq!(all[1].current_release.as_deref(), Some("r1"));
    assert_eq!(all[1].last_good_release.as_deref(), Some("r1"));

    let h = j.history("web", "prod", 10).unwrap();
    let events: Vec<_> = h
        .iter()
        .map(|e| (e.event.as_str(), e.release_id.as_deref(), e.deployment_id))
        .collect();
    assert_eq!(
        events,
        [
            ("rolled-back", Some("r1"), Some(d)),
            ("activating", Some("r2"), Some(d)),
            ("activating", Some("r1"), None),
        ]
    );
    assert_eq!(j.history("web", "prod", 1).unwrap().len(), 1);
    assert_eq!(j.history("web", "staging", 10).unwrap()[0].release_id, None);

    // An environment can only point at a release the journal knows.
    assert!(
        j.set_current_release("web", "prod", Some("ghost"), None, EnvChange::Activating)
            .is_err()
    );
    // ... and the failed call changed nothing, history included.
    assert_eq!(j.history("web", "prod", 10).unwrap().len(), 3);
}

#[test]
fn pins() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    let d1 = j.start_deployment("web", "1", "h1", "{}").unwrap();
    let d2 = j.start_deployment("web", "2", "h2", "{}").unwrap();
    assert!(j.pin_for("web", "h1").unwrap().is_none());
    j.pin("web", "h1", "smoke failed", d1).unwrap();
    j.pin("web", "h2", "unhealthy", d2).unwrap();
    j.pin("web", "h1", "smoke failed again", d2).unwrap();
    let p = j.pin_for("web", "h1").unwrap().unwrap();
    assert_eq!(
        (p.reason.as_str(), p.deployment_id),
        ("smoke failed again", d2)
    );
    assert_eq!(j.pins("web").unwrap().len(), 2);
    assert!(j.pins("other").unwrap().is_empty());
    assert!(j.unpin("web", "h1").unwrap());
    assert!(!j.unpin("web", "h1").unwrap());
    assert!(j.pin_for("web", "h1").unwrap().is_none());
    assert_eq!(j.pins("web").unwrap()[0].spec_hash, "h2");
}

#[test]
fn a_failed_deployment_ends_and_pins_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    let d = j.start_deployment("web", "2", "h2", "{}").unwrap();
    j.finish_deployment_pinned(d, DeploymentState::RolledBack, "unhealthy", "h2")
        .unwrap();
    let ended = j.deployment(d).unwrap().unwrap();
    assert_eq!(ended.state, DeploymentState::RolledBack);
    assert_eq!(ended.reason.as_deref(), Some("unhealthy"));
    let pin = j.pin_for("web", "h2").unwrap().unwrap();
    assert_eq!((pin.reason.as_str(), pin.deployment_id), ("unhealthy", d));
    // Both or neither: an ended deployment is refused, and pins nothing.
    let err = j
        .finish_deployment_pinned(d, DeploymentState::Failed, "again", "h3")
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyFinished { .. }), "{err}");
    assert!(j.pin_for("web", "h3").unwrap().is_none());
    assert!(
        j.finish_deployment_pinned(99, DeploymentState::Failed, "x", "h4")
            .is_err()
    );
    assert!(j.pins("web").unwrap().len() == 1);
}

#[test]
fn reopening_after_writes_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (id, step) = {
        let j = open(&dir);
        let id = j.start_deployment("web", "1", "h", "{}").unwrap();
        j.record_release(&release("r1", "web", 1)).unwrap();
        j.set_deployment_release(id, "r1").unwrap();
        let step = j
            .start_step(id, Some("prod"), StepRole::Deploy, "command", 1)
            .unwrap();
        j.set_current_release("web", "prod", Some("r1"), Some(id), EnvChange::Activating)
            .unwrap();
        j.pin("web", "h", "bad", id).unwrap();
        // Dropped without finishing: the agent "crashed" mid-deployment.
        (id, step)
    };
    let j = open(&dir);
    let running = j.unfinished_deployments().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, id);
    assert_eq!(running[0].release_id.as_deref(), Some("r1"));
    let steps = j.steps(id).unwrap();
    assert_eq!((steps[0].id, steps[0].ended_at), (step, None));
    let s = j.env_state("web", "prod").unwrap().unwrap();
    assert_eq!(s.current_release.as_deref(), Some("r1"));
    assert_eq!(j.history("web", "prod", 10).unwrap().len(), 1);
    assert!(j.pin_for("web", "h").unwrap().is_some());
    assert_eq!(
        j.release("r1").unwrap().unwrap().artifact_dir,
        "/srv/r1/out"
    );
    j.finish_deployment(id, DeploymentState::Interrupted, Some("agent stopped"))
        .unwrap();
    assert!(j.unfinished_deployments().unwrap().is_empty());
}

#[test]
fn backup_is_a_usable_journal() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    let id = j.start_deployment("web", "1", "h", "{}").unwrap();
    let dest = dir.path().join("backups/journal-copy.db");
    j.backup_to(&dest).unwrap();
    assert!(
        j.backup_to(&dest).is_err(),
        "an existing file is not overwritten"
    );
    let copy = Journal::open(&dest).unwrap();
    assert_eq!(copy.deployment(id).unwrap().unwrap().app, "web");
}

/// A backup taken from a second, read-only connection while the agent's
/// connection keeps committing (WAL mode) is one consistent snapshot:
/// `set_current_release` writes the environment row and its history
/// event in one transaction, and every copy agrees with itself.
#[test]
fn backup_from_a_reader_while_another_connection_writes_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/journal.db");
    let writer = Journal::open(&path).unwrap();
    for id in ["r1", "r2"] {
        writer.record_release(&release(id, "web", 1)).unwrap();
    }
    writer
        .set_current_release("web", "prod", Some("r1"), None, EnvChange::Activating)
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let r = if n % 2 == 0 { "r2" } else { "r1" };
                writer
                    .set_current_release("web", "prod", Some(r), None, EnvChange::Activating)
                    .unwrap();
                let d = writer.start_deployment("web", "1", "h", "{}").unwrap();
                writer
                    .finish_deployment(d, DeploymentState::Succeeded, None)
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let reader = Journal::open_read_only(&path).unwrap();
    let mut counts = Vec::new();
    for i in 0..15 {
        let dest = dir.path().join(format!("backup-{i}.db"));
        reader.backup_to(&dest).unwrap();
        let copy = Journal::open_read_only(&dest).unwrap();
        copy.check_integrity().unwrap();
        let env = copy.env_state("web", "prod").unwrap().unwrap();
        let last = copy.history("web", "prod", 1).unwrap().remove(0);
        assert_eq!(
            env.current_release, last.release_id,
            "backup {i}: the environment row and its newest event disagree"
        );
        assert!(copy.unfinished_deployments().unwrap().len() <= 1);
        counts.push(copy.summary().unwrap().deployments);
        std::thread::sleep(Duration::from_millis(5));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writing.join().unwrap();
    assert!(
        written > 0 && counts[0] < counts[counts.len() - 1],
        "the writer committed while the backups ran: {counts:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "each backup is at least as new as the one before: {counts:?}"
    );
}

#[test]
fn read_only_open_refuses_what_is_not_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let err = Journal::open_read_only(&missing).err().unwrap();
    assert!(err.to_string().contains("no such file"), "{err}");
    assert!(!missing.exists(), "nothing is created");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let err = Journal::open_read_only(&garbage).err().unwrap();
    assert!(err.to_string().contains("not a SQLite database"), "{err}");

    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = Journal::open_read_only(&other).err().unwrap();
    assert!(
        err.to_string().contains("without a Slipway schema"),
        "{err}"
    );

    let partial = dir.path().join("partial.db");
    Connection::open(&partial)
        .unwrap()
        .execute_batch("CREATE TABLE releases (id); PRAGMA user_version = 1;")
        .unwrap();
    let err = Journal::open_read_only(&partial).err().unwrap();
    assert!(
        err.to_string().contains("table `deployments` is missing"),
        "{err}"
    );

    let future = dir.path().join("future.db");
    Connection::open(&future)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
        .unwrap();
    let err = Journal::open_read_only(&future).err().unwrap();
    assert!(
        matches!(err, StoreError::TooNew { found: 99, .. }),
        "{err:?}"
    );

    let j = open(&dir);
    j.record_release(&release("r1", "web", 1)).unwrap();
    j.start_deployment("web", "1", "h", "{}").unwrap();
    let ro = Journal::open_read_only(j.path()).unwrap();
    ro.check_integrity().unwrap();
    assert_eq!(
        ro.summary().unwrap(),
        JournalSummary {
            schema_version: MIGRATIONS.len() as i64,
            deployments: 1,
            releases: 1,
        }
    );
    assert!(
        ro.start_deployment("web", "2", "h", "{}").is_err(),
        "a read-only journal refuses writes"
    );
}

#[test]
fn live_releases_and_clearing_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir);
    for (id, app, at) in [("a1", "a", 1), ("b1", "b", 2), ("a2", "a", 3)] {
        j.record_release(&release(id, app, at)).unwrap();
    }
    j.mark_release_removed("b1").unwrap();
    let live: Vec<String> = j
        .live_releases()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live, ["a1", "a2"]);
    j.set_last_good_release("a", "prod", "a1").unwrap();
    j.clear_last_good_release("a", "prod").unwrap();
    j.clear_last_good_release("a", "nowhere").unwrap();
    let s = j.env_state("a", "prod").unwrap().unwrap();
    assert_eq!(s.last_good_release, None);
    assert!(j.env_state("a", "nowhere").unwrap().is_none());
}

#[test]
fn garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let long: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    // Shorter than SQLite's 100-byte header, and longer than a page.
    for garbage in [b"not a database\n".to_vec(), long] {
        std::fs::write(&path, &garbage).unwrap();
        let err = Journal::open(&path).err().expect("garbage must not open");
        assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a SQLite database"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage, "left untouched");
    }
}

#[test]
fn too_new_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let err = Journal::open(&path)
        .err()
        .expect("a newer schema must be refused");
    assert!(
        matches!(err, StoreError::TooNew { found: 99, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer than this slipway"), "{err}");
    let conn = Connection::open(&path).unwrap();
    assert_eq!(user_version(&conn).unwrap(), 99);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "not switched to WAL");
}

#[test]
fn state_words_round_trip() {
    for s in [
        DeploymentState::Running,
        DeploymentState::Succeeded,
        DeploymentState::Failed,
        DeploymentState::Interrupted,
    ] {
        assert_eq!(DeploymentState::parse(s.as_str()), Some(s));
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::Value::from(s.as_str())
        );
    }
    assert_eq!(DeploymentState::parse("done"), None);
}
