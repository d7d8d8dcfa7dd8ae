//! The process supervisor: runs each (app, environment, release) as a
//! process of its own and keeps it running.
//!
//! One tokio task per (app, env, release) owns the process. If it exits on
//! its own, the task restarts it with exponential backoff (500 ms doubling
//! to 30 s, reset once a run lasted 10 s), so a crash-looping app neither
//! spins the CPU nor stays down for long after a transient failure. `stop`
//! asks the task to end: SIGTERM to the process group, `grace`, then
//! SIGKILL to the group. Signals go to the group, not the pid, because
//! apps started through a shell or a launcher leave grandchildren that
//! would otherwise keep running and hold the app's ports.
//!
//! An environment runs one release, or two side by side while traffic
//! moves from one to the other (`start_beside`); `start` replaces
//! whatever ran there.
//!
//! Apps outlive the agent. Each process's pidfile names it by pid, start
//! time and boot id (`pidfile.rs`); an agent that stops with `leave_all`
//! (SIGTERM: a restart or an upgrade follows) leaves them running, and the
//! next agent `adopt`s them: the engine `claim`s each one it still wants
//! and the rest are stopped. A pidfile that no longer names a running
//! process is removed without signalling anyone.
//!
//! It is not a deployment engine: it does not decide what runs, check health
//! or roll back; it runs what it is told until told otherwise. Output goes
//! straight from the child to its log file (not through the agent), so logs
//! keep flowing even while the agent is down. The library never prints; it
//! reports through `tracing`.

mod pidfile;
mod process;
mod task;
#[cfg(test)]
mod tests;

pub use pidfile::Pidfile;
use process::signal_group;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use task::{Running, Task};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    /// The release's own port (set in `env` as PORT by the caller),
    /// recorded in its pidfile so the next agent knows where it listens.
    pub port: Option<u16>,
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
    /// Its own port, with `traffic`.
    #[serde(default)]
    pub port: Option<u16>,
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

/// Supervises one process per (app, env, release).
pub struct Supervisor {
    run_dir: PathBuf,
    grace: Duration,
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
    /// Processes a previous agent left running, until claimed or stopped.
    adopted: Mutex<Vec<Pidfile>>,
    next_gen: AtomicU64,
}

/// (app, env, release).
type Key = (String, String, String);

/// One supervised process: its status and the handle on its task.
struct Slot {
    /// Which start this slot belongs to; a task only updates its own slot.
    generation: u64,
    status: ProcessStatus,
    control: Control,
}

/// How a supervising task is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Stop the process.
    Stop,
    /// Leave it running for the next agent to adopt.
    Leave,
}

/// How to end a supervising task and wait for it.
struct Control {
    end: oneshot::Sender<Ending>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// A supervisor keeping pidfiles in `run_dir`, giving processes `grace` between SIGTERM and SIGKILL.
    pub fn new(run_dir: PathBuf, grace: Duration) -> Self {
        Self {
            run_dir,
            grace,
            slots: Arc::new(Mutex::new(HashMap::new())),
            adopted: Mutex::new(Vec::new()),
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

    /// Run `spec` for (app, env) as `release_id`, replacing whatever ran
    /// there; errs if it cannot be spawned.
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
        self.start_beside(app, env, release_id, spec).await
    }

    /// Run `spec` for (app, env) as `release_id` beside what runs there
    /// (another release keeps running); a process of the same release is
    /// replaced.
    pub async fn start_beside(
        &self,
        app: &str,
        env: &str,
        release_id: &str,
        spec: RunSpec,
    ) -> Result<(), SupervisorError> {
        check_names(app, env)?;
        self.stop_release(app, env, release_id).await?;
        let program = self.check(app, env, &spec)?;
        let (child, pid) = process::spawn(app, env, &spec, &program)?;
        let pidfile = self.pidfile(app, env, release_id);
        let recorded = Pidfile::of(pid, app, env, release_id, spec.port)
            .ok_or_else(|| std::io::Error::other("the process is already gone"))
            .and_then(|record| record.write(&self.run_dir, &pidfile));
        if let Err(source) = recorded {
            // Untracked, it would outlive the agent unnoticed: do not leave it running.
            let _ = signal_group(pid, libc::SIGKILL);
            let mut child = child;
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
        self.supervise(
            app,
            env,
            release_id,
            spec,
            program,
            pidfile,
            Running::Child(child),
            pid,
        )
        .await
    }

    /// Give the task of (app, env, release) the running process.
    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        &self,
        app: &str,
        env: &str,
        release_id: &str,
        spec: RunSpec,
        program: PathBuf,
        pidfile: PathBuf,
        running: Running,
        pid: u32,
    ) -> Result<(), SupervisorError> {
        let key = (app.to_string(), env.to_string(), release_id.to_string());
        let generation = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let (end_tx, end_rx) = oneshot::channel();
        let port = spec.port;
        let task = Task {
            key: key.clone(),
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
            let handle = tokio::spawn(task.run(running, pid, end_rx));
            let slot = Slot {
                generation,
                status: ProcessStatus {
                    release_id: release_id.to_string(),
                    pid: Some(pid),
                    restarts: 0,
                    last_exit: None,
                    port,
                },
                control: Control {
                    end: end_tx,
                    task: handle,
                },
            };
            slots.insert(key, slot)
        };
        // Only when another start for the same release raced this one.
        if let Some(old) = displaced {
            finish(app, env, old.control, Ending::Stop).await?;
        }
        Ok(())
    }

    /// Stop every process of (app, env): SIGTERM to its group, SIGKILL after the grace; no-op if nothing runs.
    pub async fn stop(&self, app: &str, env: &str) -> Result<(), SupervisorError> {
        let slots: Vec<Slot> = {
            let mut slots = lock(&self.slots);
            let keys: Vec<Key> = slots
                .keys()
                .filter(|(a, e, _)| a == app && e == env)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| slots.remove(k)).collect()
        };
        for slot in slots {
            finish(app, env, slot.control, Ending::Stop).await?;
        }
        Ok(())
    }

    /// Stop one release's process in (app, env); no-op if it does not run.
    pub async fn stop_release(
        &self,
        app: &str,
        env: &str,
        release: &str,
    ) -> Result<(), SupervisorError> {
        let key = (app.to_string(), env.to_string(), release.to_string());
        let slot = lock(&self.slots).remove(&key);
        match slot {
            Some(slot) => finish(app, env, slot.control, Ending::Stop).await,
            None => Ok(()),
        }
    }

    /// Stop every supervised process, in parallel; for an agent that stops
    /// its apps with it (Ctrl-C).
    pub async fn stop_all(&self) {
        self.end_all(Ending::Stop).await;
    }

    /// Stop supervising, leaving every process running with its pidfile,
    /// for the next agent to adopt (SIGTERM: a restart or upgrade).
    pub async fn leave_all(&self) {
        self.end_all(Ending::Leave).await;
    }

    async fn end_all(&self, ending: Ending) {
        let slots: Vec<(Key, Slot)> = lock(&self.slots).drain().collect();
        // Signal every task first so the grace periods run concurrently.
        let mut waiting = Vec::new();
        for ((app, env, _), slot) in slots {
            let _ = slot.control.end.send(ending);
            waiting.push((app, env, slot.control.task));
        }
        for (app, env, task) in waiting {
            if let Err(e) = task.await {
                tracing::error!(app = %app, env = %env, error = %e, "supervising task failed while stopping");
            }
        }
    }

    /// The process of (app, env) started last, if any is supervised.
    pub fn status(&self, app: &str, env: &str) -> Option<ProcessStatus> {
        lock(&self.slots)
            .iter()
            .filter(|((a, e, _), _)| a == app && e == env)
            .max_by_key(|(_, slot)| slot.generation)
            .map(|(_, slot)| slot.status.clone())
    }

    /// The process of one release in (app, env), if supervised.
    pub fn status_of(&self, app: &str, env: &str, release: &str) -> Option<ProcessStatus> {
        let key = (app.to_string(), env.to_string(), release.to_string());
        lock(&self.slots).get(&key).map(|slot| slot.status.clone())
    }

    /// Every release supervised in (app, env).
    pub fn releases(&self, app: &str, env: &str) -> Vec<ProcessStatus> {
        let slots = lock(&self.slots);
        let mut list: Vec<(u64, ProcessStatus)> = slots
            .iter()
            .filter(|((a, e, _), _)| a == app && e == env)
            .map(|(_, slot)| (slot.generation, slot.status.clone()))
            .collect();
        list.sort_by_key(|(g, _)| *g);
        list.into_iter().map(|(_, s)| s).collect()
    }

    /// The ports supervised processes were given (a new release gets another).
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = lock(&self.slots)
            .values()
            .filter_map(|s| s.status.port)
            .collect();
        ports.extend(self.adopted_lock().iter().filter_map(|p| p.port));
        ports
    }

    /// Read the pidfiles a previous agent left in `run_dir`: a process
    /// still running (same pid, start time and boot) is held for
    /// [`Self::claim`]; any other pidfile is removed without signalling
    /// anyone. Returns what was found running. Call once at agent start.
    pub fn adopt(&self) -> Vec<Pidfile> {
        let entries = match std::fs::read_dir(&self.run_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(run_dir = %self.run_dir.display(), error = %e, "cannot read the run directory");
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !name.ends_with(".pid") || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            let keep = match Pidfile::read(&path) {
                Ok(record)
                    if record.alive()
                        && path == self.pidfile(&record.app, &record.env, &record.release) =>
                {
                    found.push(record);
                    true
                }
                Ok(record) => {
                    tracing::debug!(pidfile = %name, pid = record.pid, "pidfile of a process that is gone");
                    false
                }
                Err(why) => {
                    tracing::warn!(pidfile = %name, "ignoring the pidfile: {why}; nothing is signalled");
                    false
                }
            };
            if !keep && let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(pidfile = %name, error = %e, "cannot remove pidfile");
            }
        }
        found.sort_by(|a, b| (&a.app, &a.env, &a.release).cmp(&(&b.app, &b.env, &b.release)));
        *self.adopted_lock() = found.clone();
        found
    }

    /// The adopted processes of (app, env) not claimed yet.
    pub fn adopted(&self, app: &str, env: &str) -> Vec<Pidfile> {
        self.adopted_lock()
            .iter()
            .filter(|p| p.app == app && p.env == env)
            .cloned()
            .collect()
    }

    /// Supervise the adopted process of (app, env, release) as if this
    /// agent had started it from `spec` (a restart uses `spec`). `false`
    /// if no such process was adopted, or it is gone by now.
    pub async fn claim(&self, app: &str, env: &str, release: &str, spec: RunSpec) -> bool {
        let record = {
            let mut adopted = self.adopted_lock();
            let at = adopted
                .iter()
                .position(|p| p.app == app && p.env == env && p.release == release);
            match at {
                Some(i) => adopted.remove(i),
                None => return false,
            }
        };
        let Ok(program) = self.check(app, env, &spec) else {
            return false;
        };
        let Some(running) = Running::adopted(&record) else {
            return false;
        };
        let pidfile = self.pidfile(app, env, release);
        let mut spec = RunSpec {
            port: record.port,
            ..spec
        };
        if let Some(port) = record.port {
            // Restarted after a crash, it keeps the port traffic goes to.
            spec.env.insert("PORT".into(), port.to_string());
        }
        tracing::info!(
            app,
            env,
            release,
            pid = record.pid,
            "adopted the app process a previous agent left running"
        );
        self.supervise(
            app, env, release, spec, program, pidfile, running, record.pid,
        )
        .await
        .is_ok()
    }

    /// Stop the adopted processes nobody claimed (their release is no
    /// longer wanted); returns (pidfile name, pid) of each.
    pub async fn stop_unclaimed(&self) -> Vec<(String, u32)> {
        let left: Vec<Pidfile> = std::mem::take(&mut *self.adopted_lock());
        self.stop_records(left).await
    }

    /// Stop the unclaimed adopted processes of (app, env) (before a
    /// release starts on the port they hold).
    pub async fn stop_adopted(&self, app: &str, env: &str) -> Vec<(String, u32)> {
        let left: Vec<Pidfile> = {
            let mut adopted = self.adopted_lock();
            let (these, others) = std::mem::take(&mut *adopted)
                .into_iter()
                .partition(|p| p.app == app && p.env == env);
            *adopted = others;
            these
        };
        self.stop_records(left).await
    }

    async fn stop_records(&self, left: Vec<Pidfile>) -> Vec<(String, u32)> {
        let mut stopped = Vec::new();
        for record in left {
            if !record.alive() {
                continue;
            }
            let name = format!("{}.{}.{}.pid", record.app, record.env, record.release);
            if let Some(running) = Running::adopted(&record) {
                task::terminate(
                    &record.app,
                    &record.env,
                    &record.release,
                    running,
                    record.pid,
                    self.grace,
                )
                .await;
                stopped.push((name, record.pid));
            }
            let _ = std::fs::remove_file(self.pidfile(&record.app, &record.env, &record.release));
        }
        stopped
    }

    fn adopted_lock(&self) -> MutexGuard<'_, Vec<Pidfile>> {
        self.adopted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `<run_dir>/<app>.<env>.<release>.pid`.
    fn pidfile(&self, app: &str, env: &str, release: &str) -> PathBuf {
        self.run_dir.join(format!("{app}.{env}.{release}.pid"))
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

/// Tell a task to end and wait until it has.
async fn finish(
    app: &str,
    env: &str,
    control: Control,
    ending: Ending,
) -> Result<(), SupervisorError> {
    let _ = control.end.send(ending);
    control.task.await.map_err(|e| SupervisorError::Stop {
        app: app.to_string(),
        env: env.to_string(),
        reason: e.to_string(),
    })
}
