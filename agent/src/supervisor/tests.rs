//! Tests with real processes (`sh`), each in its own temporary directory.

use super::*;
use std::time::Duration;
use tokio::time::Instant;

/// The pid a test script wrote to a file.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn spec(dir: &Path, script: &str) -> RunSpec {
    RunSpec {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        cwd: dir.to_path_buf(),
        log_file: dir.join("logs").join("app").join("prod.log"),
        port: None,
    }
}

fn supervisor(dir: &Path, grace: Duration) -> Supervisor {
    Supervisor::new(dir.join("run"), grace)
}

/// Poll `cond` every 20 ms for up to `limit`.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: u32) -> bool {
    let Ok(id) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(id, 0) } != 0 {
        return false;
    }
    // A zombie (not yet reaped by its new parent) is as good as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn headers(log: &str) -> usize {
    log.lines()
        .filter(|l| l.starts_with("--- started "))
        .count()
}

#[tokio::test]
async fn output_lands_in_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(2));
    let spec = spec(
        dir.path(),
        "echo out $GREETING $HOME; echo err >&2; exec sleep 100",
    );
    let log = spec.log_file.clone();
    sup.start("app", "prod", "r1", spec).await.unwrap();

    let status = sup.status("app", "prod").unwrap();
    let pid = status.pid.unwrap();
    assert_eq!(status.release_id, "r1");
    assert_eq!(status.restarts, 0);
    let pidfile = dir.path().join("run").join("app.prod.r1.pid");
    assert_eq!(Pidfile::read(&pidfile).unwrap().pid, pid);

    assert!(
        wait_for(Duration::from_secs(2), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("err"))
        .await
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("--- started /") && first.contains(&format!(" pid {pid} at ")),
        "{text}"
    );
    assert!(text.contains("out hello"), "{text}");

    sup.stop("app", "prod").await.unwrap();
    assert!(sup.status("app", "prod").is_none());
    assert!(!pidfile.exists());
    assert!(!alive(pid));
    // Stopping again is a no-op.
    sup.stop("app", "prod").await.unwrap();
}

#[tokio::test]
async fn a_crashing_process_is_restarted_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(1));
    let spec = spec(dir.path(), "echo x; exit 1");
    let log = spec.log_file.clone();
    let begun = Instant::now();
    sup.start("app", "prod", "r1", spec).await.unwrap();

    // Restarts at ~0.5 s and ~1.5 s (500 ms, then 1 s of backoff).
    assert!(
        wait_for(Duration::from_secs(3), || sup
            .status("app", "prod")
            .is_some_and(|s| s.restarts >= 2))
        .await
    );
    assert!(
        begun.elapsed() >= Duration::from_millis(1400),
        "backoff too short: {:?}",
        begun.elapsed()
    );
    let status = sup.status("app", "prod").unwrap();
    assert_eq!(status.last_exit.as_deref(), Some("exit status: 1"));

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(headers(&text) >= 3, "{text}");
    // The header precedes each run's output; the latest run may not have printed yet.
    assert!(text.lines().filter(|l| *l == "x").count() >= 2, "{text}");
    assert!(text.starts_with("--- started "), "{text}");

    sup.stop("app", "prod").await.unwrap();
    assert!(sup.status("app", "prod").is_none());
    assert!(!dir.path().join("run").join("app.prod.r1.pid").exists());
}

#[tokio::test]
async fn stop_sends_sigterm_first() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(5));
    let spec = spec(
        dir.path(),
        "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let log = spec.log_file.clone();
    sup.start("app", "prod", "r1", spec).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready"))
        .await
    );

    let begun = Instant::now();
    sup.stop("app", "prod").await.unwrap();
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "took {:?}",
        begun.elapsed()
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("got-term"));
}

#[tokio::test]
async fn stop_kills_a_group_that_ignores_sigterm_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(300);
    let sup = supervisor(dir.path(), grace);
    let gc_file = dir.path().join("grandchild.pid");
    let script = format!(
        "trap '' TERM; sleep 100 & echo $! > '{}'; wait",
        gc_file.display()
    );
    sup.start("app", "prod", "r1", spec(dir.path(), &script))
        .await
        .unwrap();
    let pid = sup.status("app", "prod").unwrap().pid.unwrap();

    assert!(wait_for(Duration::from_secs(2), || read_pid(&gc_file).is_some()).await);
    let grandchild = read_pid(&gc_file).unwrap();
    assert!(alive(grandchild));

    let begun = Instant::now();
    sup.stop("app", "prod").await.unwrap();
    let took = begun.elapsed();
    assert!(took >= grace, "SIGKILL came before the grace: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!alive(pid));
    assert!(
        wait_for(Duration::from_secs(1), || !alive(grandchild)).await,
        "grandchild {grandchild} survived"
    );
    assert!(!dir.path().join("run").join("app.prod.r1.pid").exists());
}

#[tokio::test]
async fn starting_again_replaces_the_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(2));
    sup.start("app", "prod", "r1", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let first = sup.status("app", "prod").unwrap().pid.unwrap();
    sup.start("app", "prod", "r2", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let status = sup.status("app", "prod").unwrap();
    assert_eq!(status.release_id, "r2");
    let second = status.pid.unwrap();
    assert_ne!(first, second);
    assert!(!alive(first));
    assert!(alive(second));
    let pidfile = dir.path().join("run").join("app.prod.r2.pid");
    assert_eq!(Pidfile::read(&pidfile).unwrap().pid, second);
    assert!(!dir.path().join("run").join("app.prod.r1.pid").exists());

    sup.start("app", "staging", "r2", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let third = sup.status("app", "staging").unwrap().pid.unwrap();
    sup.stop_all().await;
    assert!(!alive(second) && !alive(third));
    assert!(sup.status("app", "prod").is_none() && sup.status("app", "staging").is_none());
}

#[tokio::test]
async fn a_missing_binary_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(1));
    let mut missing = spec(dir.path(), "");
    missing.command = "slipway-no-such-binary".into();
    missing.args.clear();
    let err = sup
        .start("web", "prod", "r1", missing)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("web/prod") && err.contains("slipway-no-such-binary"),
        "{err}"
    );
    assert!(sup.status("web", "prod").is_none());

    // A relative path is resolved against cwd, and the error names the result.
    let mut relative = spec(dir.path(), "");
    relative.command = "bin/server".into();
    let err = sup
        .start("web", "prod", "r1", relative)
        .await
        .unwrap_err()
        .to_string();
    let resolved = dir.path().join("bin/server");
    assert!(err.contains(&resolved.display().to_string()), "{err}");

    // Present but not executable.
    std::fs::write(dir.path().join("script"), "#!/bin/sh\n").unwrap();
    let mut not_exec = spec(dir.path(), "");
    not_exec.command = "./script".into();
    let err = sup.start("web", "prod", "r1", not_exec).await.unwrap_err();
    assert!(matches!(err, SupervisorError::Spawn { .. }), "{err}");

    // A failed start also stops what ran before.
    sup.start("web", "prod", "r1", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let pid = sup.status("web", "prod").unwrap().pid.unwrap();
    let mut missing = spec(dir.path(), "");
    missing.command = "/nonexistent/slipway".into();
    assert!(sup.start("web", "prod", "r2", missing).await.is_err());
    assert!(sup.status("web", "prod").is_none());
    assert!(!alive(pid));
    assert!(!dir.path().join("run").join("web.prod.r1.pid").exists());

    let bad_name = sup
        .start("../x", "prod", "r1", spec(dir.path(), "true"))
        .await
        .unwrap_err();
    assert!(matches!(bad_name, SupervisorError::InvalidName { .. }));
}

#[tokio::test]
async fn a_new_supervisor_adopts_what_the_last_one_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let first = supervisor(dir.path(), Duration::from_secs(1));
    first
        .start("web", "prod", "r1", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    first
        .start("web", "staging", "r1", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let prod = first.status("web", "prod").unwrap().pid.unwrap();
    let staging = first.status("web", "staging").unwrap().pid.unwrap();
    first.leave_all().await;
    assert!(alive(prod) && alive(staging), "left running");

    let second = supervisor(dir.path(), Duration::from_secs(1));
    let found = second.adopt();
    let names: Vec<_> = found.iter().map(|p| (p.env.as_str(), p.pid)).collect();
    assert_eq!(names, [("prod", prod), ("staging", staging)]);
    // prod is claimed and supervised: the same process, not a restart.
    assert!(
        second
            .claim("web", "prod", "r1", spec(dir.path(), "exec sleep 100"))
            .await
    );
    assert_eq!(second.status("web", "prod").unwrap().pid, Some(prod));
    // staging is not wanted any more: stopped.
    let stopped = second.stop_unclaimed().await;
    assert_eq!(stopped, [("web.staging.r1.pid".to_string(), staging)]);
    assert!(wait_for(Duration::from_secs(5), || !alive(staging)).await);

    // An adopted process that dies is restarted like a child.
    // SAFETY: signalling a process of ours.
    unsafe { libc::kill(prod as i32, libc::SIGKILL) };
    assert!(
        wait_for(Duration::from_secs(5), || {
            second
                .status("web", "prod")
                .is_some_and(|s| s.restarts == 1 && s.pid.is_some_and(|p| p != prod))
        })
        .await,
        "{:?}",
        second.status("web", "prod")
    );
    second.stop_all().await;
    assert!(second.status("web", "prod").is_none());
}

#[tokio::test]
async fn pidfiles_that_name_nobody_are_removed_and_nobody_is_signalled() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    // An unrelated process whose bare pid an older agent left behind.
    let mut unrelated = std::process::Command::new("sleep")
        .arg("100")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = unrelated.id();
    std::fs::write(run.join("app.prod.pid"), format!("{pid}\n")).unwrap();
    // The same pid recorded with another start time: a reused pid.
    let mut reused = Pidfile::of(pid, "app", "staging", "r1", None).unwrap();
    reused.start_time += 1;
    reused.write(&run, &run.join("app.staging.r1.pid")).unwrap();
    std::fs::write(run.join("junk.prod.pid"), "not a pid").unwrap();
    std::fs::write(run.join("notes.txt"), "kept").unwrap();

    let sup = supervisor(dir.path(), Duration::from_secs(1));
    assert!(sup.adopt().is_empty());
    assert!(sup.stop_unclaimed().await.is_empty());
    assert!(alive(pid), "an unrelated process was signalled");
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("notes.txt")]);
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();

    // No run directory at all: nothing to do.
    assert!(
        supervisor(&dir.path().join("nope"), Duration::from_secs(1))
            .adopt()
            .is_empty()
    );
}

#[tokio::test]
async fn two_releases_run_side_by_side_and_stop_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(1));
    sup.start("web", "prod", "r1", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    sup.start_beside("web", "prod", "r2", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let r1 = sup.status_of("web", "prod", "r1").unwrap().pid.unwrap();
    let r2 = sup.status_of("web", "prod", "r2").unwrap().pid.unwrap();
    assert!(alive(r1) && alive(r2));
    let releases: Vec<_> = sup
        .releases("web", "prod")
        .into_iter()
        .map(|s| s.release_id)
        .collect();
    assert_eq!(releases, ["r1", "r2"]);
    assert_eq!(sup.status("web", "prod").unwrap().release_id, "r2");
    sup.stop_release("web", "prod", "r1").await.unwrap();
    assert!(!alive(r1) && alive(r2));
    sup.stop("web", "prod").await.unwrap();
    assert!(!alive(r2));
}

#[test]
fn log_tail_returns_the_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    assert_eq!(log_tail(&path, 5), "");
    let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    assert_eq!(log_tail(&path, 3), "line 98\nline 99\nline 100");
    assert_eq!(log_tail(&path, 0), "");
    assert_eq!(log_tail(&path, 1000).lines().count(), 100);

    // Larger than the window: only whole lines come back.
    let long: String = (0..20_000).map(|i| format!("entry {i}\n")).collect();
    std::fs::write(&path, long).unwrap();
    let tail = log_tail(&path, 100_000);
    assert!(tail.lines().next().unwrap().starts_with("entry "));
    assert!(tail.ends_with("entry 19999"));
}

#[tokio::test]
async fn check_names_what_is_missing_and_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sup = supervisor(dir.path(), Duration::from_secs(1));
    sup.start("web", "prod", "r1", spec(dir.path(), "exec sleep 100"))
        .await
        .unwrap();
    let pid = sup.status("web", "prod").unwrap().pid.unwrap();

    // A release whose binary was deleted: named by its resolved path.
    let mut no_binary = spec(dir.path(), "");
    no_binary.command = "./server".into();
    let err = sup
        .check("web", "prod", &no_binary)
        .unwrap_err()
        .to_string();
    let expected = format!(
        "web/prod: cannot start {}: the file is missing",
        dir.path().join("server").display()
    );
    assert_eq!(err, expected);

    // A release whose directory was deleted.
    let mut no_dir = spec(dir.path(), "true");
    no_dir.cwd = dir.path().join("releases/r0");
    let err = sup.check("web", "prod", &no_dir).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "web/prod: working directory {} is unusable",
            no_dir.cwd.display()
        )),
        "{err}"
    );

    // Asking stopped nothing.
    assert!(alive(pid));
    assert_eq!(sup.status("web", "prod").unwrap().pid, Some(pid));
    sup.stop_all().await;
}
