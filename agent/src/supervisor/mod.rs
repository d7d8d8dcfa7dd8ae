//! The process supervisor: runs each (app, environment)'s current release as
//! a child process of the agent and keeps it running.
//!
//! One tokio task per (app, env) owns the `Child`. If the process exits on
//! its own, the task restarts it with exponential backoff (500 ms doubling to
//! 30 s, reset once a run lasted 10 s), so a crash-looping app neither spins
//! the CPU nor stays down for long after a transient failure. `stop` asks the
//! task to end over a oneshot channel; the task sends SIGTERM to the process
//! group, gives it `grace`, then SIGKILLs the group. Signals go to the group,
//! not the pid, because apps started through a shell or a launcher leave
//! grandchildren that would otherwise keep running and hold the app's ports.
//!
//! Each child writes its pid (= its pgid) to `<run_dir>/<app>.<env>.pid`.
//! If the agent is killed with SIGKILL its children survive it; on the next
//! start `kill_orphans` uses those files to kill them before anything binds
//! the same ports.
//!
//! It is not a deployment engine: it does not decide what runs, check health
//! or roll back; it runs what it is told until told otherwise. Output goes
//! straight from the child to its log file (not through the agent), so logs
//! keep flowing even while the agent is down. The library never prints; it
//! reports through `tracing`.

mod process;
#[cfg(test)]
mod tests;

use process::{group_exists, read_pidfile, signal_group, write_pidfile};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// First delay before restarting a process that exited on its own.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest delay between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff to `BACKOFF_START`.
const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How much of a log file `log_tail` reads at most.
const TAIL_WINDOW: u64 = 64 * 1024;

/// How to run one release: what to execute, where, and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// Program: absolute, relative to `cwd` if it contains a `/`, else looked up in PATH.
    pub command: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment on top of PATH and HOME (the only variables inherited).
    pub env: BTreeMap<String, String>,
    /// Working directory (must exist).
    pub cwd: PathBuf,
    /// File that stdout and stderr are appended to (parents are created).
    pub log_file: PathBuf,
}

/// What `status` reports about one supervised (app, env).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessStatus {
    /// The release being run.
    pub release_id: String,
    /// The running process (its pgid too); `None` while waiting to restart.
    pub pid: Option<u32>,
    /// How many times the process was restarted after exiting on its own.
    pub restarts: u32,
    /// How the last run ended (e.g. `exit status: 1`), if one has.
    pub last_exit: Option<String>,
}

/// Why the supervisor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The app or environment name cannot be used in a pidfile name.
    #[error("{app}/{env}: invalid app or environment name for a pidfile")]
    InvalidName { app: String, env: String },
    /// A command without `/` was not found in PATH.
    #[error("{app}/{env}: command `{command}` not found in PATH")]
    NotFound {
        app: String,
        env: String,
        command: String,
    },
    /// The working directory is missing or not a directory.
    #[error("{app}/{env}: working directory {} is unusable: {source}", cwd.display())]
    Cwd {
        app: String,
        env: String,
        cwd: PathBuf,
        source: std::io::Error,
    },
    /// The log file (or its directory) could not be created or opened.
    #[error("{app}/{env}: cannot open log file {}: {source}", path.display())]
    Log {
        app: String,
        env: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process could not be spawned (missing, not executable, ...).
    #[error("{app}/{env}: cannot start {}: {source}", command.display())]
    Spawn {
        app: String,
        env: String,
        command: PathBuf,
        source: std::io::Error,
    },
    /// The pidfile could not be written, so the process was killed again.
    #[error("{app}/{env}: cannot write pidfile {} for {}: {source}", path.display(), command.display())]
    Pidfile {
        app: String,
        env: String,
        command: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The supervising task failed while stopping the process.
    #[error("{app}/{env}: stopping the process failed: {reason}")]
    Stop {
        app: String,
        env: String,
        reason: String,
    },
}

/// Supervises one child process per (app, env).
pub struct Supervisor {
    run_dir: PathBuf,
    grace: Duration,
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
    next_gen: AtomicU64,
}

/// (app, env).
type Key = (String, String);

/// One supervised (app, env): its status and the handle on its task.
struct Slot {
    /// Which start this slot belongs to; a task only updates its own slot.
    generation: u64,
    status: ProcessStatus,
    control: Control,
}

/// How to stop a supervising task and wait for it.
struct Control {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// A supervisor keeping pidfiles in `run_dir`, giving processes `grace` between SIGTERM and SIGKILL.
    pub fn new(run_dir: PathBuf, grace: Duration) -> Self {
        Self {
            run_dir,
            grace,
            slots: Arc::new(Mutex::new(HashMap::new())),
            next_gen: AtomicU64::new(1),
        }
    }

    /// Whether `spec` could be started now: its working directory exists and
    /// its command is an executable file. Checked before anything running
    /// is stopped (a rollback asks before acting), so a release whose
    /// directory or binary is gone (deleted by hand, a cleanup) is refused
    /// with what is missing, and whatever runs in the environment keeps
    /// running.
    pub fn check(&self, app: &str, env: &str, spec: &RunSpec) -> Result<PathBuf, SupervisorError> {
        check_names(app, env)?;
        process::check_cwd(app, env, spec)?;
        let program = process::resolve(app, env, spec)?;
        process::check_program(app, env, &program)?;
        Ok(program)
    }

    /// Run `spec` for (app, env) as `release_id`, replacing whatever ran there; errs if it cannot be spawned.
    pub async fn start(
        &self,
        app: &str,
        env: &str,
        release_id: &str,
        spec: RunSpec,
    ) -> Result<(), SupervisorError> {
        check_names(app, env)?;
        // Replacing means the old process stops even if the new one cannot
        // start (the journal already names the new release); callers that
        // must not lose what runs ask `check` first.
        self.stop(app, env).await?;
        let program = self.check(app, env, &spec)?;
        let (mut child, pid) = process::spawn(app, env, &spec, &program)?;
        let pidfile = self.pidfile(app, env);
        if let Err(source) = write_pidfile(&self.run_dir, &pidfile, pid) {
            // Untracked, it would outlive an agent crash: do not leave it running.
            let _ = signal_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
            return Err(SupervisorError::Pidfile {
                app: app.to_string(),
                env: env.to_string(),
                command: program,
                path: pidfile,
                source,
            });
        }
        tracing::info!(app, env, release = release_id, pid, command = %program.display(), "app process started");

        let key = (app.to_string(), env.to_string());
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task {
            key: key.clone(),
            release: release_id.to_string(),
            generation,
            spec,
            program,
            pidfile,
            run_dir: self.run_dir.clone(),
            grace: self.grace,
            slots: self.slots.clone(),
        };
        let displaced = {
            let mut slots = lock(&self.slots);
            let handle = tokio::spawn(task.run(child, pid, stop_rx));
            let slot = Slot {
                generation,
                status: ProcessStatus {
                    release_id: release_id.to_string(),
                    pid: Some(pid),
                    restarts: 0,
                    last_exit: None,
                },
                control: Control {
                    stop: stop_tx,
                    task: handle,
                },
            };
            slots.insert(key, slot)
        };
        // Only when another start for the same (app, env) raced this one.
        if let Some(old) = displaced {
            finish(app, env, old.control).await?;
        }
        Ok(())
    }

    /// Stop (app, env)'s process: SIGTERM to its group, SIGKILL after the grace; no-op if nothing runs.
    pub async fn stop(&self, app: &str, env: &str) -> Result<(), SupervisorError> {
        let slot = lock(&self.slots).remove(&(app.to_string(), env.to_string()));
        match slot {
            Some(slot) => finish(app, env, slot.control).await,
            None => Ok(()),
        }
    }

    /// Stop every supervised process, in parallel; for agent shutdown.
    pub async fn stop_all(&self) {
        let slots: Vec<(Key, Slot)> = lock(&self.slots).drain().collect();
        // Signal every task first so the grace periods run concurrently.
        let mut waiting = Vec::new();
        for ((app, env), slot) in slots {
            let _ = slot.control.stop.send(());
            waiting.push((app, env, slot.control.task));
        }
        for (app, env, task) in waiting {
            if let Err(e) = task.await {
                tracing::error!(app = %app, env = %env, error = %e, "supervising task failed while stopping");
            }
        }
    }

    /// The state of (app, env)'s process, if it is supervised.
    pub fn status(&self, app: &str, env: &str) -> Option<ProcessStatus> {
        lock(&self.slots)
            .get(&(app.to_string(), env.to_string()))
            .map(|slot| slot.status.clone())
    }

    /// SIGKILL the process groups named by pidfiles a previous agent left in `run_dir`; returns (pidfile name, pid) killed.
    ///
    /// Call once at agent start, before `start`. A group is killed only if it
    /// still exists (`kill(-pid, 0)`, which also catches grandchildren whose
    /// leader died), the pid is > 1, and it is not the agent's own group.
    /// Every pidfile is removed.
    pub fn kill_orphans(&self) -> Vec<(String, u32)> {
        let entries = match std::fs::read_dir(&self.run_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(run_dir = %self.run_dir.display(), error = %e, "cannot read the run directory");
                return Vec::new();
            }
        };
        let mut killed = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !name.ends_with(".pid") || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            match read_pidfile(&path) {
                Some(pid) if pid > 1 && group_exists(pid) => match signal_group(pid, libc::SIGKILL)
                {
                    Ok(()) => killed.push((name.clone(), pid)),
                    Err(e) => {
                        tracing::warn!(pidfile = %name, pid, error = %e, "cannot kill a leftover process group")
                    }
                },
                Some(pid) => tracing::debug!(pidfile = %name, pid, "stale pidfile: process gone"),
                None => tracing::warn!(pidfile = %name, "pidfile without a pid"),
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(pidfile = %name, error = %e, "cannot remove pidfile");
            }
        }
        killed.sort();
        killed
    }

    /// `<run_dir>/<app>.<env>.pid`.
    fn pidfile(&self, app: &str, env: &str) -> PathBuf {
        self.run_dir.join(format!("{app}.{env}.pid"))
    }
}

/// The last `max_lines` lines of a log file (from its last 64 KiB); empty if unreadable.
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    if max_lines == 0 {
        return String::new();
    }
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(TAIL_WINDOW).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut text: &str = &text;
    if start > 0 {
        // The window starts mid-line: drop the partial line.
        text = text.split_once('\n').map_or("", |(_, rest)| rest);
    }
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(max_lines);
    lines.get(from..).unwrap_or_default().join("\n")
}

/// App and env names must make a plain file name.
fn check_names(app: &str, env: &str) -> Result<(), SupervisorError> {
    let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    if ok(app) && ok(env) {
        Ok(())
    } else {
        Err(SupervisorError::InvalidName {
            app: app.to_string(),
            env: env.to_string(),
        })
    }
}

/// Lock the slots, ignoring poisoning (the map stays consistent: every
/// critical section is a single insert, remove or field update).
fn lock(slots: &Mutex<HashMap<Key, Slot>>) -> MutexGuard<'_, HashMap<Key, Slot>> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tell a task to stop its process and wait until it has.
async fn finish(app: &str, env: &str, control: Control) -> Result<(), SupervisorError> {
    let _ = control.stop.send(());
    control.task.await.map_err(|e| SupervisorError::Stop {
        app: app.to_string(),
        env: env.to_string(),
        reason: e.to_string(),
    })
}

/// Everything the supervising task of one (app, env) needs.
struct Task {
    key: Key,
    release: String,
    generation: u64,
    spec: RunSpec,
    program: PathBuf,
    pidfile: PathBuf,
    run_dir: PathBuf,
    grace: Duration,
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
}

impl Task {
    /// Keep the process running until `stop` fires (or its sender is dropped).
    async fn run(self, mut child: Child, mut pid: u32, mut stop: oneshot::Receiver<()>) {
        let (app, env, release) = (
            self.key.0.as_str(),
            self.key.1.as_str(),
            self.release.as_str(),
        );
        let mut backoff = BACKOFF_START;
        let mut started = Instant::now();
        loop {
            let exited = tokio::select! {
                exited = child.wait() => exited,
                _ = &mut stop => {
                    self.terminate(&mut child, pid).await;
                    self.remove_pidfile(pid);
                    return;
                }
            };
            let how = match exited {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            if group_exists(pid) {
                // Its leftovers would hold the ports the restart needs.
                tracing::info!(
                    app,
                    env,
                    release,
                    pid,
                    "killing what is left of the exited process's group"
                );
                let _ = signal_group(pid, libc::SIGKILL);
            }
            if started.elapsed() >= BACKOFF_RESET {
                backoff = BACKOFF_START;
            }
            tracing::warn!(app, env, release, pid, status = %how, backoff_ms = backoff.as_millis() as u64,
                "app process exited; restarting");
            self.update(|s| {
                s.pid = None;
                s.last_exit = Some(how);
            });
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => {
                        self.remove_pidfile(pid);
                        return;
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let respawn = process::check_cwd(app, env, &self.spec)
                    .and_then(|()| process::check_program(app, env, &self.program))
                    .and_then(|()| process::spawn(app, env, &self.spec, &self.program));
                match respawn {
                    Ok((new_child, new_pid)) => {
                        (child, pid) = (new_child, new_pid);
                        started = Instant::now();
                        if let Err(e) = write_pidfile(&self.run_dir, &self.pidfile, pid) {
                            tracing::warn!(app, env, release, pid, error = %e, "cannot write pidfile");
                        }
                        tracing::info!(app, env, release, pid, "app process restarted");
                        self.update(|s| {
                            s.pid = Some(pid);
                            s.restarts = s.restarts.saturating_add(1);
                        });
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(app, env, release, error = %e, backoff_ms = backoff.as_millis() as u64,
                            "cannot restart app process");
                        self.update(|s| s.last_exit = Some(format!("could not restart: {e}")));
                    }
                }
            }
        }
    }

    /// SIGTERM the group, wait up to `grace` for it to empty, SIGKILL what is left, reap the leader.
    async fn terminate(&self, child: &mut Child, pid: u32) {
        let (app, env, release) = (
            self.key.0.as_str(),
            self.key.1.as_str(),
            self.release.as_str(),
        );
        if let Err(e) = signal_group(pid, libc::SIGTERM)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            tracing::warn!(app, env, release, pid, error = %e, "cannot send SIGTERM");
        }
        let deadline = Instant::now() + self.grace;
        let mut exited = tokio::time::timeout_at(deadline, child.wait()).await.ok();
        if exited.is_some() {
            // The leader is gone; give the rest of its group the remaining grace.
            while group_exists(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if group_exists(pid) {
            tracing::warn!(
                app,
                env,
                release,
                pid,
                grace_ms = self.grace.as_millis() as u64,
                "app process did not stop within the grace period; sending SIGKILL"
            );
            if let Err(e) = signal_group(pid, libc::SIGKILL) {
                tracing::warn!(app, env, release, pid, error = %e, "cannot send SIGKILL");
            }
        }
        if exited.is_none() {
            exited = Some(child.wait().await);
        }
        match exited {
            Some(Ok(status)) => {
                tracing::info!(app, env, release, pid, status = %status, "app process stopped")
            }
            Some(Err(e)) => {
                tracing::warn!(app, env, release, pid, error = %e, "cannot wait for the app process")
            }
            None => {}
        }
    }

    /// Remove the pidfile if it still names our process (a newer start may own it).
    fn remove_pidfile(&self, pid: u32) {
        if read_pidfile(&self.pidfile) == Some(pid)
            && let Err(e) = std::fs::remove_file(&self.pidfile)
        {
            tracing::warn!(pidfile = %self.pidfile.display(), error = %e, "cannot remove pidfile");
        }
    }

    /// Change our slot's status, if the slot is still ours.
    fn update(&self, change: impl FnOnce(&mut ProcessStatus)) {
        if let Some(slot) = lock(&self.slots).get_mut(&self.key)
            && slot.generation == self.generation
        {
            change(&mut slot.status);
        }
    }
}
