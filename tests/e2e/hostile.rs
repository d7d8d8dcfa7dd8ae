//! The agent in a hostile environment, for real: a state dir it cannot
//! write, a journal that hits a file size limit, a damaged journal file, a
//! release directory or app binary deleted under it, a port someone else
//! holds, a plugin file swapped on disk. Each test sets the condition up with
//! the real binary, the quickstart app and real files, then checks that the
//! error names what and where, that nothing panicked, that nothing the
//! journal already held was lost, and that the agent recovers once the
//! condition is gone.

use crate::support;

use sha2::{Digest, Sha256};
use slipway::store::DeploymentState;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::http::{HttpServer, Reply};
use support::quickstart::*;

/// The quickstart with a one-second production bake (the default five
/// seconds only make these tests slower).
fn quick() -> Quickstart {
    let mut q = Quickstart::new();
    let health = q.production_env().health.as_mut().unwrap();
    *health = health.clone().health("300ms", 2, "1s");
    q.write_config("1.0.0");
    q
}

/// What the journal holds about the app, one line per record, to compare
/// before and after: deployments (with their steps) and live releases.
fn recorded(q: &Quickstart) -> Vec<String> {
    let journal = q.journal();
    let mut lines = Vec::new();
    for d in journal.deployments(Some("hello"), 1000).unwrap() {
        let steps = journal.steps(d.id).unwrap().len();
        lines.push(format!(
            "deployment {} {} {} release={:?} reason={:?} steps={steps}",
            d.id, d.version, d.state, d.release_id, d.reason
        ));
    }
    for r in journal.releases("hello").unwrap() {
        lines.push(format!("release {} {}", r.id, r.dir));
    }
    lines
}

/// Every record in `before` is still in the journal, unchanged.
fn assert_kept(q: &Quickstart, before: &[String]) {
    let now = recorded(q);
    for line in before {
        assert!(
            now.contains(line),
            "lost from the journal: {line}\nit now holds:\n{}",
            now.join("\n")
        );
    }
}

/// How long an agent that should refuse to start may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(60);

fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked at"), "the agent panicked:\n{log}");
}

/// Start the agent normally (nothing hostile left) and wait until
/// production serves 1.0.0 again, with every record kept and no panic.
fn comes_back(q: &Quickstart, before: &[String]) -> Agent {
    let agent = q.start_agent();
    wait_for(
        "production back on 1.0.0",
        &agent,
        Duration::from_secs(30),
        || serves(q.production, "1.0.0"),
    );
    assert_kept(q, before);
    assert_no_panic(&agent.log());
    agent
}

fn first_deploy(q: &Quickstart, agent: &Agent) -> slipway::store::Deployment {
    let d = wait_deployment_end(q, agent, "1.0.0");
    assert_succeeded(&d, agent);
    d
}

fn release_dir(q: &Quickstart, d: &slipway::store::Deployment) -> PathBuf {
    let id = d.release_id.clone().unwrap();
    let r = q.journal().release(&id).unwrap().unwrap();
    PathBuf::from(r.dir)
}

/// `slipway_health_checks_skipped_total` for the app's `env` and `reason`,
/// from the agent's /metrics.
fn skipped_checks(q: &Quickstart, env: &str, reason: &str) -> u64 {
    use std::io::{Read, Write};
    let state = q.dir.path().join("state");
    let (Ok(addr), Ok(token)) = (
        std::fs::read_to_string(state.join("api-address")),
        std::fs::read_to_string(state.join("api-token")),
    ) else {
        return 0;
    };
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let labels = format!(r#"env="{env}",reason="{reason}""#);
    text.lines()
        .filter(|l| l.starts_with("slipway_health_checks_skipped_total{") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The pid of the app process the agent runs in `env`.
fn app_pid(q: &Quickstart, env: &str) -> i32 {
    let run = q.dir.path().join("state/run");
    let prefix = format!("hello.{env}.");
    let pidfile = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".pid")
        })
        .unwrap_or_else(|| panic!("no pidfile of {env} in {}", run.display()));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pidfile).unwrap()).unwrap();
    record["pid"].as_i64().unwrap() as i32
}

fn run_cli(q: &Quickstart, args: &[&str]) -> (i32, String, String) {
    let config = q.config();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", config.to_str().unwrap()]);
    support::slipway(&all)
}

#[test]
fn state_dir_not_writable_at_start_is_refused_with_the_dir_and_user() {
    let mut q = quick();
    let agent = q.start_agent();
    first_deploy(&q, &agent);
    agent.terminate();
    let before = recorded(&q);
    let state = q.dir.path().join("state").canonicalize().unwrap();

    let (code, log, expected) = if unsafe { libc::geteuid() } == 0 {
        // Root ignores permission bits: run the agent as `nobody`, who can
        // read the config but not write (or own) the state dir. The binary
        // is copied beside the config: the checkout it was built in may lie
        // where `nobody` cannot go (root's home, a 0700 temp dir).
        std::fs::set_permissions(q.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = q.dir.path().join("slipway");
        std::fs::copy(env!("CARGO_BIN_EXE_slipway"), &program).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let agent = q
            .agent()
            .program(&program)
            .log_name("as-nobody")
            .with(|c| {
                c.uid(65534).gid(65534);
            })
            .spawn();
        let (code, log) = agent.wait_exit(EXIT_WAIT);
        (
            code,
            log,
            format!(
                "the state dir {} is not usable by the agent's user (uid 65534; the dir is owned by uid 0)",
                state.display()
            ),
        )
    } else {
        // Not root: a new state dir under a read-only parent.
        let parent = q.dir.path().join("read-only");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o500)).unwrap();
        q.config.state_dir = "read-only/state".into();
        q.write_config("1.0.0");
        q.config.state_dir = "state".into();
        let (code, log) = q.start_agent().wait_exit(EXIT_WAIT);
        q.write_config("1.0.0");
        assert!(log.contains("read-only/state"), "{log}");
        (code, log, "cannot create the state dir".to_string())
    };
    assert_eq!(code, 1, "a runtime error, not a config error:\n{log}");
    assert!(log.contains(&expected), "{expected}\n--- log ---\n{log}");
    assert!(
        log.contains("chown") || log.contains("set `state_dir`"),
        "{log}"
    );
    assert_no_panic(&log);
    assert_kept(&q, &before);

    // Run as the dir's owner, the agent comes back with all its history.
    comes_back(&q, &before).terminate();
}

/// Set the soft RLIMIT_FSIZE of a running process (the hard limit stays).
fn set_file_size_limit(pid: u32, soft: libc::rlim_t) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = pid as libc::pid_t;
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) },
        0
    );
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn journal_writes_failing_on_a_full_disk_start_nothing_and_lose_nothing() {
    let mut q = quick();
    // The agent's log goes through a pipe, which no file size limit stops.
    let log = q.dir.path().join("disk-full.log");
    let mut agent = q
        .agent()
        .with(|c| {
            c.stderr(Stdio::piped());
        })
        .spawn();
    agent.log = log.clone();
    let mut stderr = agent.child.stderr.take().unwrap();
    let mut file = std::fs::File::create(&log).unwrap();
    let copier = std::thread::spawn(move || std::io::copy(&mut stderr, &mut file));
    first_deploy(&q, &agent);
    let before = recorded(&q);
    let pid = agent.child.id();

    // The disk is "full" for the agent: every write past the first byte of
    // a file fails (EFBIG), the journal's WAL included. No SIGXFSZ handler
    // is set up here: the agent must not die of it.
    set_file_size_limit(pid, 1);
    q.write_config("1.1.0");
    let journal = q
        .dir
        .path()
        .join("state/journal.db")
        .canonicalize()
        .unwrap();
    let expected = format!("journal {}: start_deployment", journal.display());
    wait_for(
        "the journal write to fail",
        &agent,
        Duration::from_secs(30),
        || agent.log().contains(&expected),
    );
    let text = agent.log();
    let line = text.lines().find(|l| l.contains(&expected)).unwrap();
    assert!(line.contains("could not start a deployment"), "{line}");
    assert!(
        line.contains("File too large (os error 27)"),
        "the OS's reason, not only SQLite's \"disk I/O error\": {line}"
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent keeps running:\n{text}"
    );
    assert_no_panic(&text);
    // Nothing acted on a transition it could not record: no 1.1.0 anywhere.
    assert!(
        q.journal()
            .deployments(Some("hello"), 100)
            .unwrap()
            .iter()
            .all(|d| d.version == "1.0.0"),
        "{:?}",
        recorded(&q)
    );
    assert!(
        !q.dir
            .path()
            .join("state/releases/hello")
            .read_dir()
            .unwrap()
            .any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("1.1.0")
            })
    );
    assert!(serves(q.production, "1.0.0") && serves(q.staging, "1.0.0"));
    assert_kept(&q, &before);

    // Space comes back; the next save of the config deploys, in the same
    // agent, on the same journal connection.
    set_file_size_limit(pid, libc::RLIM_INFINITY);
    q.save(&format!(
        "{}\n# disk space is back\n",
        q.config_text("1.1.0")
    ));
    let d = wait_deployment_end(&q, &agent, "1.1.0");
    assert_succeeded(&d, &agent);
    assert!(serves(q.production, "1.1.0"));
    assert_kept(&q, &before);
    let good = d.release_id.clone().unwrap();

    // The disk fills in the middle of a deployment: 1.2.0 has passed
    // staging and waits at production's manual gate; approving it needs a
    // journal write first, which fails, so production is never touched.
    q.production_env().promote = Some("manual".into());
    q.write_config("1.2.0");
    wait_for("the manual gate", &agent, Duration::from_secs(60), || {
        agent.log().contains("waiting for approval")
    });
    let before = recorded(&q);
    let running = latest(&q).unwrap();
    assert_eq!(
        (running.version.as_str(), running.state),
        ("1.2.0", DeploymentState::Running)
    );
    set_file_size_limit(pid, 1);
    let (code, out, err) = run_cli(&q, &["approve", "hello", "--env", "production"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for(
        "the deployment to give up",
        &agent,
        Duration::from_secs(30),
        || {
            agent
                .log()
                .contains("could not record the end of the deployment")
        },
    );
    let text = agent.log();
    let refused = format!(
        "journal {}: set_current_release: disk I/O error: File too large (os error 27)",
        journal.display()
    );
    assert!(text.contains(&refused), "{refused}\n{text}");
    assert!(agent.child.try_wait().unwrap().is_none(), "{text}");
    assert!(serves(q.production, "1.1.0"), "production untouched");
    let production = q
        .journal()
        .env_state("hello", "production")
        .unwrap()
        .unwrap();
    assert_eq!(production.current_release.as_deref(), Some(good.as_str()));
    assert_kept(&q, &before);

    // Space back, agent restarted: the deployment the journal still shows
    // running is marked interrupted, as after a crash, and redone.
    set_file_size_limit(pid, libc::RLIM_INFINITY);
    agent.terminate();
    copier.join().unwrap().unwrap();
    assert_no_panic(&std::fs::read_to_string(&log).unwrap());
    let agent = q.start_agent();
    wait_for(
        "the interrupted record",
        &agent,
        Duration::from_secs(30),
        || {
            q.journal()
                .deployment(running.id)
                .unwrap()
                .is_some_and(|d| d.state == DeploymentState::Interrupted)
        },
    );
    wait_for(
        "1.2.0 at the manual gate again",
        &agent,
        Duration::from_secs(60),
        || agent.log().contains("waiting for approval"),
    );
    assert!(serves(q.production, "1.1.0"));
    let kept: Vec<String> = before
        .into_iter()
        .filter(|l| l.starts_with("deployment") && !l.contains(" running "))
        .collect();
    assert_kept(&q, &kept);
    assert_no_panic(&agent.log());
    agent.terminate();
}

#[test]
fn a_damaged_journal_stops_the_agent_and_a_backup_restores_it() {
    let q = quick();
    let agent = q.start_agent();
    first_deploy(&q, &agent);
    let backup = q.dir.path().join("journal-backup.db");
    let (code, _, err) = run_cli(&q, &["backup", "--to", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    agent.terminate();
    let before = recorded(&q);
    let db = q
        .dir
        .path()
        .join("state/journal.db")
        .canonicalize()
        .unwrap();
    let pristine = std::fs::read(&db).unwrap();
    assert!(
        !q.dir.path().join("state/journal.db-wal").exists(),
        "the journal is checkpointed after a clean stop"
    );

    // (a) Its header overwritten; (b) pages in the middle overwritten.
    let mut header = pristine.clone();
    header[..100].fill(0x5a);
    let mut middle = pristine.clone();
    let page = 4096;
    assert!(middle.len() > 6 * page, "a journal with history");
    middle[2 * page..4 * page].fill(0xa5);
    for (damage, bytes, expected) in [
        ("header", &header, "is not a SQLite database or is corrupt"),
        ("pages", &middle, "is not a usable Slipway journal"),
    ] {
        std::fs::write(&db, bytes).unwrap();
        let (code, log) = q.start_agent().wait_exit(EXIT_WAIT);
        assert_eq!(code, 1, "damaged {damage}:\n{log}");
        assert!(log.contains(&db.display().to_string()), "{log}");
        assert!(
            log.contains(expected),
            "damaged {damage}: {expected}\n{log}"
        );
        assert!(
            log.contains("slipway restore --from BACKUP --force"),
            "damaged {damage}: points to the restore\n{log}"
        );
        assert_no_panic(&log);
        assert_eq!(
            &std::fs::read(&db).unwrap(),
            bytes,
            "damaged {damage}: the agent left the file as it found it"
        );
    }

    let (code, out, err) = run_cli(
        &q,
        &["restore", "--from", backup.to_str().unwrap(), "--force"],
    );
    assert_eq!(code, 0, "{out}{err}");
    comes_back(&q, &before).terminate();
}

#[test]
fn a_release_dir_deleted_under_the_agent_is_never_rolled_back_to() {
    let q = quick();
    let agent = q.start_agent();
    let first = first_deploy(&q, &agent);
    let before = recorded(&q);
    let dir = release_dir(&q, &first);

    // Deleted by hand; then production's process dies: the restarts say
    // which directory is missing.
    std::fs::remove_dir_all(&dir).unwrap();
    unsafe { libc_kill(app_pid(&q, "production"), 9) };
    let expected = format!(
        "hello/production: working directory {} is unusable",
        dir.display()
    );
    wait_for(
        "the restart to name the missing dir",
        &agent,
        Duration::from_secs(30),
        || agent.log().contains(&expected),
    );
    // Staging still serves from the deleted directory. The health guard
    // cannot run its checks there (their dir grant is gone) and says so;
    // it does not take that for the app being unhealthy and stop it.
    wait_for(
        "four skipped staging checks",
        &agent,
        Duration::from_secs(30),
        || skipped_checks(&q, "staging", "release_dir_missing") >= 4,
    );
    assert!(serves(q.staging, "1.0.0"), "{}", agent.log());
    assert!(agent.log().contains("the release directory is gone"));
    assert_eq!(
        q.journal().deployments(Some("hello"), 100).unwrap().len(),
        1,
        "no rollback recorded: {:?}",
        recorded(&q)
    );

    // A version that fails staging's smoke test cannot go back to 1.0.0:
    // staging is stopped and the record says why, not "rolled back".
    q.write_config("1.1.0-broken");
    let broken = wait_deployment_end(&q, &agent, "1.1.0-broken");
    let reason = broken.reason.clone().unwrap();
    assert_eq!(broken.state, DeploymentState::Failed, "{reason}");
    assert!(reason.starts_with("staging: smoke test failed"), "{reason}");
    let why = format!(
        "not rolled back: the last good release {} cannot start: its directory {} is gone; staging was stopped",
        first.release_id.as_deref().unwrap(),
        dir.display()
    );
    assert!(reason.contains(&why), "{why}\n--- reason ---\n{reason}");
    let staging = q.journal().env_state("hello", "staging").unwrap().unwrap();
    assert_eq!(staging.current_release, None, "{staging:?}");
    assert_eq!(get(q.staging, "/"), None, "staging stopped");

    // The next good version deploys everywhere.
    q.write_config("1.2.0");
    let good = wait_deployment_end(&q, &agent, "1.2.0");
    assert_succeeded(&good, &agent);
    assert!(serves(q.production, "1.2.0") && serves(q.staging, "1.2.0"));
    let kept: Vec<String> = before
        .into_iter()
        .filter(|l| l.starts_with("deployment"))
        .collect();
    assert_kept(&q, &kept);
    assert_no_panic(&agent.log());
    agent.terminate();
}

#[test]
fn a_missing_app_binary_is_named_and_never_trusted_for_a_rollback() {
    let mut q = quick();
    // The health guard waits 8 failed checks (2.4 s), so the supervisor's
    // first restart (after 0.5 s) is logged before it acts.
    q.production_env().health.as_mut().unwrap().unhealthy_after = Some(8);
    q.write_config("1.0.0");
    let agent = q.start_agent();
    let first = first_deploy(&q, &agent);
    q.write_config("1.1.0");
    let second = wait_deployment_end(&q, &agent, "1.1.0");
    assert_succeeded(&second, &agent);
    let before = recorded(&q);

    // The old release's binary is gone: an operator's rollback to it is
    // refused up front, and production keeps serving what it serves.
    let old = release_dir(&q, &first).join("hello");
    std::fs::remove_file(&old).unwrap();
    let (code, out, err) = run_cli(&q, &["rollback", "hello", "--env", "production"]);
    assert_eq!(code, 1, "{out}{err}");
    let expected = format!(
        "release {} cannot start: hello/production: cannot start {}: the file is missing",
        first.release_id.as_deref().unwrap(),
        old.display()
    );
    assert!(err.contains(&expected), "{expected}\n--- stderr ---\n{err}");
    assert!(serves(q.production, "1.1.0"));
    assert_eq!(recorded(&q), before, "nothing was recorded or changed");

    // The running release's binary is gone and its production process
    // dies: the restarts name the file; the health guard then finds
    // production down and, its last good release missing its binary too,
    // stops it and says so, instead of recording a rollback that did not
    // happen.
    let new = release_dir(&q, &second).join("hello");
    std::fs::remove_file(&new).unwrap();
    unsafe { libc_kill(app_pid(&q, "production"), 9) };
    let expected = format!("cannot start {}: the file is missing", new.display());
    wait_for(
        "the restart to name the missing binary",
        &agent,
        Duration::from_secs(30),
        || agent.log().contains(&expected),
    );
    let mut guarded = None;
    wait_for(
        "the health guard's record",
        &agent,
        Duration::from_secs(30),
        || {
            guarded =
                latest(&q).filter(|d| d.id > second.id && d.state != DeploymentState::Running);
            guarded.is_some()
        },
    );
    let guarded = guarded.unwrap();
    let reason = guarded.reason.clone().unwrap();
    assert_eq!(guarded.state, DeploymentState::Failed, "{reason}");
    let why = format!(
        "not rolled back: the last good release {} cannot start: hello/production: cannot start {}: the file is missing; production was stopped",
        first.release_id.as_deref().unwrap(),
        old.display()
    );
    assert!(
        reason.starts_with("production: turned unhealthy"),
        "{reason}"
    );
    assert!(reason.contains(&why), "{why}\n--- reason ---\n{reason}");
    let production = q
        .journal()
        .env_state("hello", "production")
        .unwrap()
        .unwrap();
    assert_eq!(production.current_release, None, "{production:?}");
    assert!(serves(q.staging, "1.1.0"), "staging untouched");

    // The next version deploys everywhere.
    q.write_config("1.2.0");
    let good = wait_deployment_end(&q, &agent, "1.2.0");
    assert_succeeded(&good, &agent);
    assert!(serves(q.production, "1.2.0") && serves(q.staging, "1.2.0"));
    assert_no_panic(&agent.log());
    agent.terminate();

    // The binary disappears while the agent is stopped: at its start it
    // says so, records both environments as stopped instead of running a
    // release that cannot run, and deploys 1.2.0 afresh.
    let broken = release_dir(&q, &good).join("hello");
    std::fs::remove_file(&broken).unwrap();
    let agent = q.start_agent();
    let redo = {
        let mut found = None;
        wait_for(
            "1.2.0 deployed afresh",
            &agent,
            Duration::from_secs(60),
            || {
                found =
                    latest(&q).filter(|d| d.id > good.id && d.state != DeploymentState::Running);
                found.is_some()
            },
        );
        found.unwrap()
    };
    assert_succeeded(&redo, &agent);
    assert_ne!(redo.release_id, good.release_id, "a new release");
    let log = agent.log();
    let expected = format!("cannot start {}: the file is missing", broken.display());
    assert!(log.contains(&expected), "{expected}\n{log}");
    assert!(log.contains("recorded as stopped"), "{log}");
    assert!(serves(q.production, "1.2.0") && serves(q.staging, "1.2.0"));
    let kept: Vec<String> = before
        .into_iter()
        .filter(|l| l.starts_with("deployment"))
        .collect();
    assert_kept(&q, &kept);
    assert_no_panic(&agent.log());
    agent.terminate();
}

/// Someone else's server on a port: answers every request with 503.
fn squatter(port: u16) -> HttpServer {
    HttpServer::scripted()
        .otherwise(|_, _| Reply::new(503, "squatter"))
        .start_on(port)
}

#[test]
fn a_port_already_in_use_fails_the_gate_with_the_apps_own_words() {
    let q = quick();
    let squatter = squatter(q.staging);
    let agent = q.start_agent();
    let d = wait_deployment_end(&q, &agent, "1.0.0");
    let reason = d.reason.clone().unwrap_or_default();
    assert_eq!(d.state, DeploymentState::Failed, "{reason}");
    assert!(reason.starts_with("staging: smoke test failed"), "{reason}");
    let bind = format!(
        "cannot listen on 127.0.0.1:{}: Address already in use",
        q.staging
    );
    assert!(
        reason.contains("app log (last lines)") && reason.contains(&bind),
        "the app's own log names the port: {bind}\n--- reason ---\n{reason}"
    );
    // Nothing else was touched: production never started.
    assert_eq!(get(q.production, "/"), None);
    let production = q.journal().env_state("hello", "production").unwrap();
    assert!(production.is_none(), "production untouched: {production:?}");
    let before = recorded(&q);

    // The port is freed; the next version deploys.
    drop(squatter);
    q.write_config("1.0.1");
    let next = wait_deployment_end(&q, &agent, "1.0.1");
    assert_succeeded(&next, &agent);
    assert!(serves(q.staging, "1.0.1") && serves(q.production, "1.0.1"));
    assert_kept(&q, &before);
    assert_no_panic(&agent.log());
    agent.terminate();
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Copy over `to` the way a deploy script does: a new file renamed in place.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn a_plugin_file_replaced_on_disk_is_refused_and_never_swapped_mid_deployment() {
    let mut q = quick();
    let plugins = q.dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let probe = plugins.join("probe.wasm");
    let good = support::wasm("slipway_plugin_http_check");
    let other = support::wasm("slipway_plugin_tcp_check");
    std::fs::copy(&good, &probe).unwrap();
    let (good_sha, other_sha) = (sha256_hex(&good), sha256_hex(&other));
    let mut pinned = PluginDef::new(
        "probe",
        "plugins/probe.wasm",
        serde_json::json!({ "http": ["127.0.0.1:*"] }),
    );
    pinned.sha256 = Some(good_sha.clone());
    q.config.plugins.push(pinned);
    q.staging_env().smoke.as_mut().unwrap().plugin = "probe".into();
    q.write_config("1.0.0");
    let agent = q.start_agent();
    first_deploy(&q, &agent);
    let before = recorded(&q);

    // Pinned: the swapped file is refused at the next reload (the running
    // agent keeps its last good config) and at the next start (exit 2).
    replace_file(&other, &probe);
    q.save(&format!("{}\n# touched\n", q.config_text("1.0.0")));
    let mismatch = format!(
        "[plugins.probe]: {}: sha256 mismatch: the file is {other_sha}, the config pins {good_sha}",
        probe.display()
    );
    wait_for(
        "the reload to refuse the plugin",
        &agent,
        Duration::from_secs(30),
        || {
            let log = agent.log();
            log.contains(&mismatch) && log.contains("config change rejected")
        },
    );
    assert!(serves(q.production, "1.0.0") && serves(q.staging, "1.0.0"));
    agent.terminate();
    let (code, log) = q.start_agent().wait_exit(EXIT_WAIT);
    assert_eq!(code, 2, "a config error:\n{log}");
    assert!(log.contains(&mismatch), "{mismatch}\n{log}");
    assert!(log.contains("slipway.toml"), "names the config file: {log}");
    assert_no_panic(&log);
    assert_kept(&q, &before);

    // The right file back: the agent starts. Unpinned, a file swapped while
    // a deployment runs does not change the plugin that deployment uses.
    replace_file(&good, &probe);
    q.config.plugin_mut("probe").sha256 = None;
    q.write_config("1.0.0");
    let agent = q.start_agent();
    wait_for(
        "production back on 1.0.0",
        &agent,
        Duration::from_secs(30),
        || serves(q.production, "1.0.0"),
    );
    // 1.1.0 passes staging and waits at production's gate; production's
    // health bake uses the probe too. The file is swapped while it waits.
    let production = q.production_env();
    production.promote = Some("manual".into());
    let health = production.health.as_mut().unwrap();
    health.plugin = "probe".into();
    health.unhealthy_after = None;
    q.write_config("1.1.0");
    wait_for("the manual gate", &agent, Duration::from_secs(60), || {
        agent.log().contains("waiting for approval")
    });
    replace_file(&other, &probe);
    let (code, out, err) = run_cli(&q, &["approve", "hello", "--env", "production"]);
    assert_eq!(code, 0, "{out}{err}");
    let d = wait_deployment_end(&q, &agent, "1.1.0");
    assert_succeeded(&d, &agent);
    let probed: Vec<_> = q
        .journal()
        .steps(d.id)
        .unwrap()
        .into_iter()
        .filter(|s| s.plugin == "probe" && s.environment.as_deref() == Some("production"))
        .collect();
    assert!(!probed.is_empty(), "production's bake used the probe");
    for step in &probed {
        assert_eq!(step.outcome.as_deref(), Some("healthy"), "{step:?}");
    }

    // Only the next reload sees the new file, and checks it like any edit.
    q.save(&format!("{}\n# touched\n", q.config_text("1.1.0")));
    wait_for(
        "the reload to check the new file",
        &agent,
        Duration::from_secs(30),
        || agent.log().contains("config change rejected"),
    );
    // The new file is another plugin: the config's params do not fit its
    // schema, and the error says where.
    let misfit = "[apps.hello.environments.staging] smoke: params for `probe`: Additional properties are not allowed";
    let log = agent.log();
    assert!(log.contains(misfit), "{misfit}\n{log}");
    assert!(serves(q.production, "1.1.0"));
    assert_no_panic(&log);
    agent.terminate();
    let (code, log) = q.start_agent().wait_exit(EXIT_WAIT);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains(misfit), "{misfit}\n{log}");
    assert!(log.contains("slipway.toml:"), "{log}");
    assert_no_panic(&log);
    assert_kept(&q, &before);
}

/// A journal that names a directory outside the app's release dirs (one
/// restored from another server, or edited) never makes pruning delete it:
/// the journal forgets the release, the files stay (audit finding).
#[test]
fn pruning_never_removes_a_directory_the_journal_names_outside_the_releases() {
    let mut q = quick();
    q.hello().keep_releases = Some(1);
    q.write_config("1.0.0");
    let agent = q.start_agent();
    let first = first_deploy(&q, &agent);
    q.write_config("1.1.0");
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.1.0"), &agent);
    agent.terminate();

    let victim = q.dir.path().join("precious");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("data"), "keep me\n").unwrap();
    let id = first.release_id.clone().unwrap();
    let db = rusqlite::Connection::open(q.dir.path().join("state/journal.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE releases SET dir = ?1 WHERE id = ?2",
            rusqlite::params![victim.to_str().unwrap(), id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);

    // 1.2.0 makes 1.0.0 the release to prune.
    let agent = q.start_agent();
    q.write_config("1.2.0");
    assert_succeeded(&wait_deployment_end(&q, &agent, "1.2.0"), &agent);
    wait_for(
        "the journal to forget 1.0.0",
        &agent,
        Duration::from_secs(20),
        || {
            q.journal()
                .releases("hello")
                .unwrap()
                .iter()
                .all(|r| r.id != id)
        },
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("data")).unwrap(),
        "keep me\n"
    );
    assert!(
        agent
            .log()
            .contains("only this agent's release dir is removed"),
        "{}",
        agent.log()
    );
    agent.terminate();
}
