//! The crash matrix: the quickstart deployed by the real `slipway` binary,
//! which exits hard (fault injection, `agent/src/fault.rs`) right after its
//! Nth journal transition, for every N a deployment has. After each crash
//! the agent is started again normally and, once the app has settled, the
//! journal and the server must agree: nothing left open in the journal,
//! production on a release that passed staging (by the journal's own
//! staging steps), each environment served by exactly one process running
//! the release the journal names, nothing left running once the agent
//! stops, and the same outcome as without a crash.
//!
//! Two walks, run in parallel: a deployment that ships (build, staging
//! smoke and bake, production smoke and bake), and one that passes staging
//! and fails production's health gate, so production is rolled back to its
//! last good release and the version is pinned. Each walk first deploys
//! once with injection on but no crash, to count its transitions T and
//! learn their order; then, for each N in 1..=T, it deploys the next
//! version with a crash after transition N. Bakes are one check long and
//! one release is kept, so every deployment has the same transitions.

use crate::support;

use serde_json::json;
use slipway::store::{Deployment, DeploymentState, Journal};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::quickstart::*;

/// The exit status of an injected crash (`slipway::fault::CRASH_EXIT_CODE`).
const CRASH_EXIT: i32 = slipway::fault::CRASH_EXIT_CODE;

/// The quickstart with one-check bakes, one kept release, and `-sick`
/// versions that stay well in staging but are unhealthy in production after
/// `production_sick_after_ms` (`HELLO_SICK_AFTER_MS`, see the example app):
/// "0" fails its gate at once; a delay longer than the bake lets it pass,
/// and the guard catches it.
struct Walk {
    q: Quickstart,
    name: &'static str,
}

impl Walk {
    fn new(name: &'static str) -> Self {
        Self::with_sick_after(name, "0")
    }

    fn with_sick_after(name: &'static str, production_sick_after_ms: &'static str) -> Self {
        let mut q = Quickstart::new();
        q.hello().keep_releases = Some(1);
        for (env, sick_after) in [
            ("staging", "3600000"),
            ("production", production_sick_after_ms),
        ] {
            let env = q.hello().env_mut(env);
            env.run.as_mut().unwrap()["env"]["HELLO_SICK_AFTER_MS"] = json!(sick_after);
            let health = env.health.as_mut().unwrap();
            *health = health
                .clone()
                .health("100ms", 1, "100ms")
                .unhealthy_after(1);
        }
        Self { q, name }
    }

    fn set_version(&self, version: &str) {
        self.q.write_config(version);
    }

    fn journal(&self) -> Journal {
        self.q.journal()
    }

    fn releases(&self) -> PathBuf {
        self.q.dir.path().join("state/releases")
    }

    /// The agent; `fault`: `None` for a normal one, `Fault::Count` to
    /// count transitions, `Fault::CrashAfter(n)` to crash after transition n.
    fn start(&self, fault: Option<Fault>) -> Agent {
        let agent = self.q.agent().log_name(&format!("agent-{}", self.name));
        match fault {
            Some(fault) => agent.fault(fault).spawn(),
            None => agent.spawn(),
        }
    }

    /// Deploy `version` without a crash; return the deployment.
    fn deploy(&self, version: &str) -> Deployment {
        self.set_version(version);
        let agent = self.start(None);
        let d = wait_deployment_end(&self.q, &agent, version);
        agent.terminate();
        d
    }

    /// Deploy `version` counting transitions, check it ends as `outcome`;
    /// the ops in commit order.
    fn count(&self, version: &str, outcome: &Outcome) -> Vec<String> {
        self.set_version(version);
        let agent = self.start(Some(Fault::Count));
        settle(self, &agent, version, outcome, "without a crash");
        // Stopped before reading: what follows the end (pruning) is in.
        let log = agent.log.clone();
        agent.terminate();
        let log = std::fs::read_to_string(log).unwrap();
        assert!(
            log.contains("FAULT INJECTION IS ON"),
            "the agent warns that fault injection is on:\n{log}"
        );
        log.lines()
            .filter_map(|l| l.strip_prefix("fault injection: journal transition "))
            .enumerate()
            .map(|(i, rest)| {
                let (n, op) = rest.split_once(' ').expect("N (op)");
                assert_eq!(n.parse::<usize>().unwrap(), i + 1, "numbered in order");
                op.trim_matches(['(', ')']).to_string()
            })
            .collect()
    }
}

/// Wait until `check` holds (the redone deployment ends, the processes
/// listen); fail with what does not hold, `at` and the agent's log.
fn settle(w: &Walk, agent: &Agent, version: &str, outcome: &Outcome, at: &str) {
    let start = Instant::now();
    let mut why = String::new();
    while start.elapsed() < Duration::from_secs(90) {
        match check(w, version, outcome) {
            Ok(()) => return,
            Err(e) => why = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{at}: not consistent: {why}\n--- agent log ---\n{}",
        agent.log()
    );
}

/// How a walk's deployment must end, as it did without a crash.
#[derive(Clone)]
struct Outcome {
    state: DeploymentState,
    /// Production's release: `None` for the deployment's own release, or
    /// the last good one it is rolled back to.
    production: Option<String>,
    pinned: bool,
    /// The deployment succeeds and the health guard then rolls production
    /// back in a deployment of its own, which is the one that must end as
    /// `state` (an interrupted guard rollback may redo the whole version).
    guard: bool,
}

/// Walk N over every transition of deploying the versions `version(N)`,
/// from transition `from` on.
fn walk(
    w: &Walk,
    ops: &[String],
    from: usize,
    version: impl Fn(usize) -> String,
    outcome: &Outcome,
) {
    for (i, op) in ops.iter().enumerate().skip(from - 1) {
        let n = i + 1;
        let at = format!("{}: crash after transition {n} ({op})", w.name);
        let version = version(n);
        let started = Instant::now();
        w.set_version(&version);
        let log = crash_after(w, n, op, &at);
        restart_and_settle(w, &version, outcome, &at, &log);
        eprintln!("{at}: recovered ({} ms)", started.elapsed().as_millis());
    }
}

/// Start the agent set to crash after its transition `n`, which must be
/// `op`; wait for the crash. Returns its log.
fn crash_after(w: &Walk, n: usize, op: &str, at: &str) -> String {
    let mut agent = w.start(Some(Fault::CrashAfter(n as u64)));
    let status = wait_exit(&mut agent, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{at}: the agent did not exit\n{}", agent.log()));
    let log = agent.log();
    assert_eq!(status.code(), Some(CRASH_EXIT), "{at}: exit status\n{log}");
    assert!(
        log.contains(&format!(
            "fault injection: exiting after journal transition {n} ({op})"
        )),
        "{at}: the agent crashed elsewhere (the transitions differ from the counting run)\n{log}"
    );
    log
}

/// Start the agent normally after a crash (whose log is `crashed`): it
/// must settle as `outcome` says for `version`, and leave no app process
/// behind when stopped.
fn restart_and_settle(w: &Walk, version: &str, outcome: &Outcome, at: &str, crashed: &str) {
    let agent = w.start(None);
    // Up first: a crash after the last transition leaves a consistent
    // journal and the crashed agent's processes serving, so `settle`
    // could pass before this agent has killed them and started its own
    // (and a SIGTERM before its handlers exist would leave them behind).
    wait_for(
        &format!("{at}: agent up"),
        &agent,
        Duration::from_secs(60),
        || agent.log().contains("agent starting"),
    );
    settle(w, &agent, version, outcome, at);
    let recovered_log = agent.log.clone();
    // Ctrl-C: the agent stops its apps (a SIGTERM would leave them serving).
    agent.interrupt();
    let left = app_processes(&w.releases());
    assert!(
        left.is_empty(),
        "{at}: app processes outlive the agent: {left:?}\n--- crashed agent ---\n{crashed}\n--- recovered agent ---\n{}",
        std::fs::read_to_string(&recovered_log).unwrap_or_default()
    );
}

/// Deploy 1.0.0, then `sick`, which production's gate rolls back: every
/// later sick version starts from that state (a sick release in staging,
/// replaced and pruned) and ends as the returned outcome.
fn rolled_back_once(w: &Walk, sick: &str) -> Outcome {
    let good = w.deploy("1.0.0");
    assert_eq!(good.state, DeploymentState::Succeeded, "{:?}", good.reason);
    let first = w.deploy(sick);
    assert_eq!(
        first.state,
        DeploymentState::RolledBack,
        "{:?}",
        first.reason
    );
    let reason = first.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("production: unhealthy"), "{reason}");
    Outcome {
        state: DeploymentState::RolledBack,
        production: good.release_id,
        pinned: true,
        guard: false,
    }
}

/// The journal and the server agree, and the deployment of `version` ended
/// as `outcome` says; otherwise what does not hold.
fn check(w: &Walk, version: &str, outcome: &Outcome) -> Result<(), String> {
    let j = w.journal();
    let err = |e: slipway::store::StoreError| e.to_string();
    let unfinished = j.unfinished_deployments().map_err(err)?;
    if !unfinished.is_empty() {
        return Err(format!("deployments still running: {unfinished:?}"));
    }
    let all = j.deployments(Some("hello"), 1000).map_err(err)?;
    for d in &all {
        let open: Vec<_> = j
            .steps(d.id)
            .map_err(err)?
            .into_iter()
            .filter(|s| s.ended_at.is_none() || s.outcome.is_none())
            .collect();
        if !open.is_empty() {
            return Err(format!(
                "deployment {} ({}) has steps left open: {open:?}",
                d.id, d.state
            ));
        }
    }
    // The crashed deployment is interrupted and redone once: exactly one
    // deployment of this version ended otherwise, as without a crash.
    let ended: Vec<&Deployment> = all
        .iter()
        .filter(|d| d.version == version && d.state != DeploymentState::Interrupted)
        .collect();
    let last = match ended[..] {
        [last] => last,
        // Newest first: the guard's rollback, after the deployment(s) it
        // rolled back, each of which succeeded.
        [last, ref before @ ..]
            if outcome.guard && before.iter().all(|d| d.state == DeploymentState::Succeeded) =>
        {
            last
        }
        _ => {
            return Err(format!(
                "{} deployments of {version} did not end interrupted (want exactly 1): {ended:?}",
                ended.len()
            ));
        }
    };
    // A guard rollback cut after it had put production back stays
    // `interrupted` (the restart finds production on its last good release
    // and nothing left to do); production and the pin are checked below.
    let cut_after_acting = outcome.guard
        && last.state == DeploymentState::Succeeded
        && all.iter().any(|d| {
            d.version == version && d.state == DeploymentState::Interrupted && d.id > last.id
        });
    if outcome.guard
        && !cut_after_acting
        && !last
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("production: turned unhealthy after promotion"))
    {
        return Err(format!(
            "the last deployment of {version} is not the guard's rollback: {last:?}"
        ));
    }
    if last.state != outcome.state && !cut_after_acting {
        return Err(format!(
            "deployment {} of {version} ended {} ({:?}), want {}",
            last.id, last.state, last.reason, outcome.state
        ));
    }
    let pinned = j.pin_for("hello", &last.spec_hash).map_err(err)?.is_some();
    if pinned != outcome.pinned {
        return Err(format!(
            "{version} pinned: {pinned}, want {}",
            outcome.pinned
        ));
    }
    let new = last
        .release_id
        .clone()
        .ok_or_else(|| format!("deployment {} has no release", last.id))?;
    let want = [
        ("staging", new.clone()),
        (
            "production",
            outcome.production.clone().unwrap_or(new.clone()),
        ),
    ];
    let procs = app_processes(&w.releases());
    for ((env, want), port) in want.into_iter().zip([w.q.staging, w.q.production]) {
        let state = j
            .env_state("hello", env)
            .map_err(err)?
            .ok_or_else(|| format!("{env}: not in the journal"))?;
        let current = state.current_release.clone();
        if current.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "{env} runs {current:?} in the journal, want {want}"
            ));
        }
        if state.last_good_release != current {
            return Err(format!(
                "{env}: current {current:?} is not its last good {:?}",
                state.last_good_release
            ));
        }
        let release = j
            .release(&want)
            .map_err(err)?
            .ok_or_else(|| format!("{env}: release {want} not recorded"))?;
        // What the journal names is what runs: one process of that release.
        let mine: Vec<_> = procs.iter().filter(|p| p.env == env).collect();
        let exe = Path::new(&release.dir).join("hello");
        if mine.len() != 1 || mine[0].release != want || mine[0].exe != exe {
            return Err(format!(
                "{env}: want one process of {want} ({}), found {mine:?}",
                exe.display()
            ));
        }
        if !serves(port, &release.version) {
            return Err(format!(
                "{env}: port {port} does not serve {} ({want}): {:?}",
                release.version,
                get(port, "/")
            ));
        }
    }
    let production = outcome.production.clone().unwrap_or(new);
    passed_staging(&j, &all, &production)
}

/// `release` passed staging's gates, by the journal's staging steps: a
/// deployment of it has a passed smoke test and a healthy last bake check
/// in staging, with no failed step there.
fn passed_staging(j: &Journal, all: &[Deployment], release: &str) -> Result<(), String> {
    for d in all
        .iter()
        .filter(|d| d.release_id.as_deref() == Some(release))
    {
        let steps = j.steps(d.id).map_err(|e| e.to_string())?;
        let staging: Vec<_> = steps
            .iter()
            .filter(|s| s.environment.as_deref() == Some("staging"))
            .collect();
        let outcome = |kind: &str| -> Vec<&str> {
            staging
                .iter()
                .filter(|s| s.kind == kind)
                .filter_map(|s| s.outcome.as_deref())
                .collect()
        };
        let smoke = outcome("smoke-test");
        let health = outcome("health-check");
        if smoke == ["ok"] && health.last() == Some(&"healthy") {
            return Ok(());
        }
    }
    Err(format!(
        "production runs {release}, which no deployment shows passing staging's gates"
    ))
}

/// An app process of this test: its environment, release, and program.
#[derive(Debug)]
struct AppProcess {
    #[allow(dead_code)] // shown (Debug) in failure messages
    pid: u32,
    env: String,
    release: String,
    exe: PathBuf,
}

/// The live processes whose program is under `releases` (zombies have no
/// command line and are not counted).
fn app_processes(releases: &Path) -> Vec<AppProcess> {
    let releases = releases.canonicalize().unwrap_or(releases.to_path_buf());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let exe = PathBuf::from(
            String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default())
                .to_string(),
        );
        if !exe.starts_with(&releases) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let vars: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        let var = |k: &str| vars.get(k).cloned().unwrap_or_default();
        found.push(AppProcess {
            pid,
            env: var("SLIPWAY_ENVIRONMENT"),
            release: var("SLIPWAY_RELEASE_ID"),
            exe,
        });
    }
    found
}

fn wait_exit(agent: &mut Agent, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = agent.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_crash_after_any_transition_of_a_deployment_that_ships_recovers() {
    let w = Walk::new("ships");
    let first = w.deploy("1.0.0");
    assert_eq!(
        first.state,
        DeploymentState::Succeeded,
        "{:?}",
        first.reason
    );
    let outcome = Outcome {
        state: DeploymentState::Succeeded,
        production: None,
        pinned: false,
        guard: false,
    };
    let ops = w.count("1.1.0", &outcome);
    eprintln!("ships: {} transitions: {ops:?}", ops.len());
    walk(&w, &ops, 1, |n| format!("1.1.{n}"), &outcome);
}

#[test]
fn a_crash_after_any_transition_of_a_production_rollback_recovers() {
    let w = Walk::new("rollback");
    // One rollback first, so every counted or crashed one starts from the
    // same state.
    let outcome = rolled_back_once(&w, "1.2.0-sick");
    let ops = w.count("1.2.1-sick", &outcome);
    eprintln!("rollback: {} transitions: {ops:?}", ops.len());
    walk(&w, &ops, 1, |n| format!("1.2.{}-sick", n + 1), &outcome);
}

/// A crash while recovering from a crash. The agent is cut right after it
/// activated a sick release in production (its gate not yet passed, a step
/// open), so its recovery has the most to do: close the step and the
/// deployment, put production back on its last good release. Then it is
/// cut again after each transition that recovery makes, and a third start
/// must still end consistent, with the version redone once.
#[test]
fn a_crash_during_recovery_recovers() {
    let w = Walk::new("recovery");
    let outcome = rolled_back_once(&w, "1.5.0-sick");
    let ops = w.count("1.5.1-sick", &outcome);
    // Production's activation: the last release change before the rollback.
    let rollback = ops
        .iter()
        .position(|op| op == "roll_back_to")
        .unwrap_or_else(|| panic!("no rollback among the transitions: {ops:?}"));
    let activation = ops[..rollback]
        .iter()
        .rposition(|op| op == "set_current_release")
        .unwrap_or_else(|| panic!("no activation before the rollback: {ops:?}"));
    // 1-based, and one more: the first step of production's gate opened.
    let cut = activation + 2;
    assert_eq!(ops[cut - 1], "start_step", "{ops:?}");

    // What recovery does from that cut: the transitions before the redone
    // deployment starts.
    w.set_version("1.5.2-sick");
    crash_after(&w, cut, &ops[cut - 1], "the first cut");
    let recovery: Vec<String> = w
        .count("1.5.2-sick", &outcome)
        .into_iter()
        .take_while(|op| op != "start_deployment")
        .collect();
    assert!(
        recovery.len() >= 3,
        "recovery closes the step and the deployment and rolls production back: {recovery:?}"
    );
    eprintln!("recovery: {} transitions: {recovery:?}", recovery.len());

    for (i, op) in recovery.iter().enumerate() {
        let n = i + 1;
        let version = format!("1.5.{}-sick", n + 2);
        let at = format!("recovery: crash after its transition {n} ({op})");
        w.set_version(&version);
        crash_after(&w, cut, &ops[cut - 1], &at);
        let log = crash_after(&w, n, op, &at);
        restart_and_settle(&w, &version, &outcome, &at, &log);
    }
}

/// The health guard's rollback: a version passes every gate, turns
/// unhealthy in production a moment later, and the guard puts production
/// back on the last good release as a deployment of its own. Only the
/// guard's transitions are walked (the deployment before it is the
/// "ships" walk's).
#[test]
fn a_crash_after_any_transition_of_a_health_guard_rollback_recovers() {
    let w = Walk::with_sick_after("guard", "1500");
    let good = w.deploy("1.0.0");
    assert_eq!(good.state, DeploymentState::Succeeded, "{:?}", good.reason);
    let outcome = Outcome {
        state: DeploymentState::RolledBack,
        production: good.release_id.clone(),
        pinned: true,
        guard: true,
    };
    // Twice, so the counted and crashed runs start from the same state.
    w.count("1.3.0-sick", &outcome);
    let ops = w.count("1.3.1-sick", &outcome);
    let guard_start = ops
        .iter()
        .position(|op| op == "start_rollback")
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no guard deployment among the transitions: {ops:?}"));
    eprintln!(
        "guard: {} transitions, the guard's from {guard_start}: {ops:?}",
        ops.len()
    );
    walk(
        &w,
        &ops,
        guard_start,
        |n| format!("1.3.{}-sick", n + 1),
        &outcome,
    );
}

/// `on_failure = "stop"` leaves a release that failed its gate in place for
/// a person. Restarting the agent (an upgrade, a reboot) must not undo that
/// by rolling it back, nor deploy anything: the version stays pinned.
#[test]
fn a_release_left_for_a_person_stays_in_place_across_a_restart() {
    let mut w = Walk::new("stop");
    w.q.production_env().on_failure = Some("stop".into());
    let good = w.deploy("1.0.0");
    assert_eq!(good.state, DeploymentState::Succeeded, "{:?}", good.reason);
    let failed = w.deploy("1.4.0-sick");
    let reason = failed.reason.clone().unwrap_or_default();
    assert_eq!(failed.state, DeploymentState::Failed, "{reason}");
    assert!(reason.contains("on_failure = stop"), "{reason}");
    let production = |w: &Walk| {
        w.journal()
            .env_state("hello", "production")
            .unwrap()
            .unwrap()
            .current_release
    };
    assert_eq!(production(&w), failed.release_id);

    let agent = w.start(None);
    wait_for(
        "production to serve the release left in place again",
        &agent,
        Duration::from_secs(30),
        || serves(w.q.production, "1.4.0-sick"),
    );
    // Recovery is over once the app runs; give the reconciler a moment.
    std::thread::sleep(Duration::from_secs(1));
    let log = agent.log();
    assert_eq!(production(&w), failed.release_id, "{log}");
    assert_eq!(
        latest(&w.q).map(|d| d.id),
        Some(failed.id),
        "a restart started a deployment:\n{log}"
    );
    assert!(
        log.contains("for a person (on_failure = \"stop\"), as before the restart"),
        "{log}"
    );
    agent.terminate();
}
