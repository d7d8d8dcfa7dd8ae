//! The agent daemon: load the config, recover from the journal, deploy what
//! the config asks for, then keep watching the config until told to stop.
//!
//! On SIGTERM (a restart, an upgrade) it exits and leaves its apps and the
//! traffic layer serving; the next agent adopts them. On SIGINT (Ctrl-C in
//! a terminal) it stops every app process it supervises (SIGTERM, then
//! SIGKILL after `stop_grace`) and the traffic layer. Either way a
//! deployment cut short is marked interrupted at the next start and redone.

use crate::config::{self, Config, ConfigErrors, Resolve};
use crate::engine::Deployer;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::Journal;
use crate::supervisor::Supervisor;
use std::path::Path;
use std::sync::Arc;

/// Why the agent could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Startup(String),
}

/// The runtime with its compile cache in the state dir.
pub fn runtime_for(state_dir: &Path) -> Result<Runtime, AgentError> {
    Runtime::new(&RuntimeConfig {
        cache_dir: Some(state_dir.join("cache")),
        ..RuntimeConfig::default()
    })
    .map_err(AgentError::Startup)
}

/// Create the state dir (private to the agent's user), or say why the
/// agent cannot use it: it must be able to create it, and own it to make
/// it private (then it can write it).
pub(crate) fn create_state_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = unsafe { libc::geteuid() };
    std::fs::create_dir_all(dir).map_err(|e| {
        AgentError::Startup(format!(
            "cannot create the state dir {}: {e}; create it for the agent's user (uid {uid}) or set `state_dir` to a directory it can write",
            dir.display()
        ))
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        let owner = std::fs::metadata(dir)
            .map(|m| format!("owned by uid {}", m.uid()))
            .unwrap_or_else(|_| "owner unknown".into());
        AgentError::Startup(format!(
            "the state dir {} is not usable by the agent's user (uid {uid}; the dir is {owner}): {e}; run the agent as the dir's owner or `chown -R` it to the agent's user",
            dir.display()
        ))
    })
}

/// An exclusive hold on a state dir: `flock` on `state_dir/agent.lock`.
/// The agent takes it before touching anything in the dir and keeps it
/// until it exits (the kernel drops it even on `kill -9`), so a second
/// agent on the same dir (which would kill the first one's apps as
/// orphans) refuses to start, and `slipway restore` knows no agent runs.
pub struct StateLock {
    _file: std::fs::File,
}

/// Why a state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it; `holder` is what it wrote in the file.
    #[error(
        "the state dir {} is in use by a running slipway ({holder}; lock {}): stop it first (`systemctl stop slipway`)",
        .path.parent().unwrap_or(Path::new(".")).display(), .path.display()
    )]
    Held {
        path: std::path::PathBuf,
        holder: String,
    },
    /// Something else than a plain file is in the lock's place.
    #[error(
        "{} is {what}: refusing to use it as the state dir's lock (something other than slipway put it there; remove it)",
        .path.display()
    )]
    NotAFile {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error("locking {}: {source}", .path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateLock {
    /// The lock file's name in the state dir.
    pub const FILE: &'static str = "agent.lock";

    /// Take the lock without waiting; `holder` ("agent", "restore") is
    /// written in the file with the pid for whoever finds it held.
    pub fn acquire(state_dir: &Path, holder: &str) -> Result<StateLock, LockError> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join(Self::FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Opened close-on-exec (Rust's default), so the app processes the
        // agent starts do not inherit the lock and keep it after it exits.
        // Never through a symlink: whoever can write the state dir could
        // point `agent.lock` at any file, and `slipway restore` runs as
        // root (audit finding).
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => LockError::NotAFile {
                    path: path.clone(),
                    what: "a symlink",
                },
                _ => io(e),
            })?;
        // A hard link to another file is that file: refused too.
        let meta = file.metadata().map_err(io)?;
        let what = if !meta.is_file() {
            Some("not a regular file")
        } else if std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
            Some("a hard link to another file")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(LockError::NotAFile { path, what });
        }
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(error));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim() {
                "" => "pid unknown".to_string(),
                t => t.to_string(),
            };
            return Err(LockError::Held { path, holder });
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{holder} pid {}", std::process::id()))
            .map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

/// How the agent was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM (a service manager's stop or restart, an upgrade): the
    /// agent exits; apps and the traffic layer keep serving, and the next
    /// agent adopts them.
    Leave,
    /// SIGINT (Ctrl-C on an agent in a terminal): everything it runs
    /// stops with it, the traffic layer of its state dir too.
    StopAll,
}

/// Run the agent until `shutdown` resolves.
pub async fn run(
    config_file: &Path,
    shutdown: impl Future<Output = Shutdown>,
) -> Result<(), AgentError> {
    // The text read here is the one in force: the watcher reports only
    // content different from it.
    let text = config::read(config_file)?;
    let mut config = Config::parse(config_file, &text)?;
    config::resolve_secrets(&mut config, Resolve::Agent)?;
    log_warnings(&config);
    warn_fault_injection()?;
    let state_dir = config.agent.state_dir.clone();
    create_state_dir(&state_dir)?;
    // Held until `run` returns: one agent per state dir.
    let _lock =
        StateLock::acquire(&state_dir, "agent").map_err(|e| AgentError::Startup(e.to_string()))?;
    // Plugins compile in a child process: the compiler's memory and code
    // never join the agent's (see `RuntimeConfig::compiler`).
    let runtime = Runtime::new(&RuntimeConfig {
        cache_dir: Some(state_dir.join("cache")),
        compiler: std::env::current_exe().ok(),
        ..RuntimeConfig::default()
    })
    .map_err(AgentError::Startup)?;
    let plugins = config::check(&config, &runtime).await?;
    return_freed_memory();
    let journal = open_journal(&state_dir.join("journal.db"))?;
    let supervisor = Supervisor::new(state_dir.join("run"), config.agent.stop_grace);
    for found in supervisor.adopt() {
        tracing::info!(app = %found.app, env = %found.env, release = %found.release, pid = found.pid,
            "found an app process a previous agent left running");
    }
    let supervisor = Arc::new(supervisor);
    let engine = Arc::new(Deployer::new(
        Arc::new(journal),
        supervisor.clone(),
        state_dir.clone(),
    ));
    let token = crate::api::ensure_token(&state_dir).map_err(AgentError::Startup)?;
    let server = crate::api::Server::bind(&config.agent.listen, &state_dir)
        .await
        .map_err(AgentError::Startup)?;
    tracing::info!(config = %config_file.display(), state_dir = %state_dir.display(), api = %server.addr, "agent starting");
    engine.recover(&config).await;
    let config = Arc::new(config);
    engine.apply(config.clone(), &plugins);
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(
        server.serve(crate::api::router(engine.clone(), token), async move {
            let _ = api_stopped.await;
        }),
    );

    let mut changes =
        crate::watch::watch(config_file, text).map_err(|e| AgentError::Startup(e.to_string()))?;
    tokio::pin!(shutdown);
    let how = loop {
        tokio::select! {
            how = &mut shutdown => break how,
            Some(text) = changes.recv() => {
                reload(config_file, &text, &state_dir, &runtime, &engine).await;
            }
        }
    };
    let _ = api_stop.send(());
    match how {
        Shutdown::Leave => {
            tracing::info!(
                "agent stopping: recording work in progress; apps and the traffic layer keep running for the next agent"
            );
            engine.shutdown().await;
            supervisor.leave_all().await;
        }
        Shutdown::StopAll => {
            tracing::info!(
                "agent stopping: recording work in progress, then stopping app processes and the traffic layer"
            );
            engine.shutdown().await;
            supervisor.stop_all().await;
            match engine.traffic().stop().await {
                Ok(()) => tracing::info!("traffic layer stopped"),
                Err(crate::traffic::ControlError::NotRunning(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not stop the traffic layer"),
            }
        }
    }
    let _ = api.await;
    let _ = std::fs::remove_file(state_dir.join("api-address"));
    tracing::info!("agent stopped");
    Ok(())
}

/// Fault injection is a test tool (see `fault`): refuse a bad value, and
/// say loudly that it is on before anything is journaled.
fn warn_fault_injection() -> Result<(), AgentError> {
    use crate::fault::{CRASH_VAR, ENABLE_VAR, Mode};
    match crate::fault::mode().map_err(|e| AgentError::Startup(e.to_string()))? {
        Mode::Off => {}
        Mode::Count => tracing::warn!(
            "FAULT INJECTION IS ON ({ENABLE_VAR}=1): every journal transition is numbered on stderr; never set this on a server"
        ),
        Mode::CrashAfter(n) => tracing::warn!(
            "FAULT INJECTION IS ON ({ENABLE_VAR}=1, {CRASH_VAR}={n}): the agent will exit hard after journal transition {n}; never set this on a server"
        ),
    }
    Ok(())
}

/// The journal, checked whole before the agent trusts it: a damaged file
/// (a bad disk, a copy cut short) stops the agent with what to do, instead
/// of deploying from a history that is partly unreadable.
fn open_journal(path: &Path) -> Result<Journal, AgentError> {
    use crate::store::StoreError;
    let damaged = |e: StoreError| {
        AgentError::Startup(format!(
            "{e}\nthe agent did not start and changed nothing: put a backup in place with `slipway restore --from BACKUP --force` (it keeps the damaged file beside it); see docs/runbook.md, \"The journal is damaged\""
        ))
    };
    let journal = Journal::open(path).map_err(|e| match e {
        StoreError::NotADatabase { .. } => damaged(e),
        e => AgentError::Startup(e.to_string()),
    })?;
    journal.check_integrity().map_err(damaged)?;
    Ok(journal)
}

/// Apply an edited config, or log why it was refused and keep the last good.
async fn reload(file: &Path, text: &str, state_dir: &Path, runtime: &Runtime, engine: &Deployer) {
    let checked = match config::load_checked(file, text, runtime, Resolve::Agent).await {
        Ok((config, _)) if config.agent.state_dir != state_dir => Err(format!(
            "{}: `state_dir` cannot change while the agent runs (restart it to move state)",
            file.display()
        )),
        Ok(checked) => Ok(checked),
        Err(e) => Err(e.to_string()),
    };
    return_freed_memory();
    match checked {
        Ok((config, plugins)) => {
            crate::metrics::metrics().reload(true);
            tracing::info!(config = %file.display(), "config change accepted");
            log_warnings(&config);
            engine.apply(Arc::new(config), &plugins);
        }
        Err(errors) => {
            crate::metrics::metrics().reload(false);
            for line in errors.lines() {
                tracing::error!("{line}");
            }
            tracing::error!(
                "config change rejected: keeping the last good config; nothing was touched"
            );
        }
    }
}

/// Give the memory a config load freed back to the system. Compiling a
/// plugin allocates and frees tens of MB on the compiler's threads; glibc
/// keeps freed pages in its heaps, and the agent would carry its biggest
/// load's peak for good.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands glibc's free pages back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The config's warnings (literal secrets, ...), one log line each.
fn log_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}

/// What `slipway validate` found in a valid config.
#[derive(Debug)]
pub struct Validated {
    /// One line for stdout: the file is valid, and what it holds.
    pub summary: String,
    /// `FILE:LINE:COL: warning: ...` lines for stderr; they do not make the
    /// config invalid.
    pub warnings: Vec<String>,
}

/// `slipway validate`: parse, read the secrets and check a config.
pub async fn validate(config_file: &Path) -> Result<Validated, AgentError> {
    let text = config::read(config_file)?;
    // Use the agent's compile cache if it exists; never create a state dir
    // just to validate.
    let cache_dir = Config::parse(config_file, &text)
        .ok()
        .map(|c| c.agent.state_dir)
        .filter(|d| d.is_dir())
        .map(|d| d.join("cache"));
    let runtime = Runtime::new(&RuntimeConfig {
        cache_dir,
        ..RuntimeConfig::default()
    })
    .map_err(AgentError::Startup)?;
    let (config, plugins) =
        config::load_checked(config_file, &text, &runtime, Resolve::Validate).await?;
    Ok(Validated {
        summary: format!(
            "{}: ok ({} apps, {} plugins)\n",
            config_file.display(),
            config.apps.len(),
            plugins.len()
        ),
        warnings: config.warnings.iter().map(ToString::to_string).collect(),
    })
}
