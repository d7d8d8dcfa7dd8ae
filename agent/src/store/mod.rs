//! The journal: the agent's durable record, in one SQLite file, of what
//! happened and what is true on this server now. It holds deployments and
//! their steps (with the plugins' logs), the releases on disk, which release
//! each environment runs and which one it would roll back to, the history of
//! those changes, and the specs pinned as bad after they failed.
//!
//! The engine writes each transition here *before* acting on it and reads
//! the journal back after a crash, so every method is one transaction that
//! is committed (and, with `synchronous=FULL`, on disk) before it returns.
//!
//! It is not the desired state (that is the config file), not a work queue,
//! and it decides nothing: callers decide, the journal records. It is not
//! async either: every call is a short local transaction, so it takes a
//! `std::sync::Mutex` and callers may use it from async code directly.

use rusqlite::types::Type;
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Schema migrations in order; migration `i` (0-based) takes the schema to
/// version `i + 1`, kept in `PRAGMA user_version`. Only ever append.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_cancelled.sql"),
];

/// How long a call waits for another connection's write lock (the CLI or a
/// test may read the journal while the agent writes it) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch: the journal's one time format.
pub fn now_ms() -> i64 {
    // A clock before 1970 is a broken clock, not a reason to fail a write;
    // it records as 0. Saturate instead of wrapping far in the future.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why a journal operation failed; each names what failed and the db file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The journal's directory could not be created.
    #[error("creating the journal directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open or configure the file.
    #[error("opening the journal {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file exists but is not a SQLite database, or is corrupt.
    #[error(
        "the journal {path} is not a SQLite database or is corrupt ({source}); \
         move it aside or restore a backup"
    )]
    NotADatabase {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer slipway; it is left untouched.
    #[error(
        "the journal {path} has schema version {found}, newer than this slipway knows \
         ({known}); refusing to use it: run a newer slipway"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// A schema migration failed; it was rolled back, the file is as before.
    #[error("migrating the journal {path} to schema version {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    /// A query or write failed; `op` is the journal method.
    #[error("journal {path}: {op}: {source}")]
    Sql {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A row the caller named by id does not exist.
    #[error("journal {path}: {what} {id} does not exist")]
    NotFound {
        path: PathBuf,
        what: &'static str,
        id: String,
    },
    /// A finished deployment or step is final; it cannot finish again.
    #[error("journal {path}: {what} {id} has already finished")]
    AlreadyFinished {
        path: PathBuf,
        what: &'static str,
        id: i64,
    },
    /// `finish_deployment` was given `running`, which is not an end state.
    #[error("journal {path}: deployment {id} cannot finish as `running`")]
    NotAnEndState { path: PathBuf, id: i64 },
    /// The backup could not be written.
    #[error("backing up the journal {path} to {dest}: {reason}")]
    Backup {
        path: PathBuf,
        dest: PathBuf,
        reason: String,
    },
    /// A file opened as a journal to read (a backup, one about to be
    /// restored) is not one this slipway can use; `reason` says why.
    #[error("{path} is not a usable Slipway journal: {reason}")]
    NotAJournal { path: PathBuf, reason: String },
}

pub use crate::vocab::DeploymentState;

/// One deployment of one spec of one app (the spec JSON itself is stored
/// but not loaded here: it is for people reading the journal).
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    /// Journal id; also the suffix of the release id it builds.
    pub id: i64,
    /// The app deployed.
    pub app: String,
    /// The app version deployed, as configured.
    pub version: String,
    /// Hash of version + source + params: what "the same deployment" means.
    pub spec_hash: String,
    /// The release it built, once the build succeeded.
    pub release_id: Option<String>,
    /// Running, or how it ended.
    pub state: DeploymentState,
    /// Why it failed or was interrupted.
    pub reason: Option<String>,
    /// Start time, ms since the epoch.
    pub started_at: i64,
    /// End time, ms since the epoch; `None` while running.
    pub ended_at: Option<i64>,
}

/// A built release directory on disk, which environments run and roll back to.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// Unique across apps (the caller builds it from version and deployment id).
    pub id: String,
    /// The app it belongs to.
    pub app: String,
    /// The app version it was built from.
    pub version: String,
    /// The release directory (a copy of the source).
    pub dir: String,
    /// What the build produced; `dir` if there is no build step.
    pub artifact_dir: String,
    /// Creation time, ms since the epoch; orders `releases()`.
    pub created_at: i64,
}

/// One run of one plugin step within a deployment.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Journal id, from `start_step`.
    pub id: i64,
    /// The deployment it ran for.
    pub deployment_id: i64,
    /// The environment; `None` for the build.
    pub environment: Option<String>,
    /// Step kind (build, deploy, smoke, health, rollback...).
    pub kind: String,
    /// The plugin that ran it.
    pub plugin: String,
    /// 1 for the first try, counting up on retries.
    pub attempt: u32,
    /// Start time, ms since the epoch.
    pub started_at: i64,
    /// End time, ms since the epoch; `None` while running or if cut off.
    pub ended_at: Option<i64>,
    /// The caller's result word ("ok", "failed", "timeout", "trap"...).
    pub outcome: Option<String>,
    /// The caller's message for the result.
    pub message: Option<String>,
}

/// One log line a step's plugin emitted, kept with the step.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    /// When the plugin logged it, ms since the epoch.
    pub at: i64,
    /// Log level, lower case.
    pub level: String,
    /// Where the line came from (plugin log, stdout, stderr...).
    pub source: String,
    /// The log line.
    pub message: String,
    /// Structured fields, in the order given (keys may repeat).
    pub fields: Vec<(String, String)>,
}

/// What one environment of one app runs now, and what it would roll back to.
#[derive(Debug, Clone, Serialize)]
pub struct EnvState {
    /// The app.
    pub app: String,
    /// The environment of the app.
    pub environment: String,
    /// The release it runs or is being moved to; `None`: stopped.
    pub current_release: Option<String>,
    /// The newest release that passed its gates here.
    pub last_good_release: Option<String>,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
}

/// One change of an environment's current release (activation, rollback,
/// stop), for the history people read after the fact.
#[derive(Debug, Clone, Serialize)]
pub struct EnvEvent {
    /// Journal id; orders the history.
    pub id: i64,
    /// The app.
    pub app: String,
    /// The environment of the app.
    pub environment: String,
    /// The release it was pointed at; `None`: stopped.
    pub release_id: Option<String>,
    /// The deployment that did it; `None` for recovery at start-up.
    pub deployment_id: Option<i64>,
    /// The caller's word for it ("activated", "rolled-back", "stopped"...).
    pub event: String,
    /// When, ms since the epoch.
    pub at: i64,
}

/// A spec that failed and must not be deployed again on its own.
#[derive(Debug, Clone, Serialize)]
pub struct Pin {
    /// The app.
    pub app: String,
    /// The pinned spec (see `Deployment::spec_hash`).
    pub spec_hash: String,
    /// Why its deployment failed.
    pub reason: String,
    /// The deployment that failed (the latest one if pinned twice).
    pub deployment_id: i64,
    /// When it was pinned, ms since the epoch.
    pub at: i64,
}

/// What a journal file holds, in numbers: what `slipway backup` and
/// `slipway restore` tell the operator they copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JournalSummary {
    /// `PRAGMA user_version`: the schema the file is at.
    pub schema_version: i64,
    /// Deployments recorded, however they ended.
    pub deployments: i64,
    /// Releases recorded, also those whose directory was removed.
    pub releases: i64,
}

/// The tables every schema version has; a file without them is not a
/// journal, whatever its `user_version` says.
const JOURNAL_TABLES: &[&str] = &[
    "releases",
    "deployments",
    "steps",
    "step_logs",
    "environments",
    "env_history",
    "pins",
];

/// An error inside a journal method, before the method's name and the db
/// path are attached (once, by `Journal::read` / `Journal::write`), so the
/// method bodies can use `?` on rusqlite calls.
enum Fail {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The open journal; share it (`Arc<Journal>`), it is `Send + Sync`.
pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Bumped by every write: see [`Journal::generation`].
    generation: AtomicU64,
}

// The engine shares one journal between tasks; keep that true at compile time.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Journal>();
};

impl Journal {
    /// Open (creating if needed) the journal at `path` and bring its schema
    /// up to date; refuses corrupt files and files from a newer slipway.
    pub fn open(path: &Path) -> Result<Journal, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(path, e))?;
        // The first read of the file, before anything writes to it: a file
        // that is not SQLite fails here, and a too-new one is refused before
        // `journal_mode=WAL` (which is persistent) could change it.
        let found = user_version(&conn).map_err(|e| open_error(path, e))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| open_error(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Still durable (rollback journal + synchronous=FULL), only
            // readers block writers; not worth refusing to start over.
            tracing::warn!(path = %path.display(), mode = %mode,
                "the journal could not switch to WAL mode; continuing in this mode");
        }
        // FULL: the WAL is synced on every commit, so a transition the engine
        // has recorded survives kill -9 and power loss, not just a crash.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_error(path, e))?;
        // Migrations run with foreign keys off (a table rebuild needs it;
        // `migrate` checks them before committing), then they are enforced.
        // (The bundled SQLite turns them on by default.)
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(|e| open_error(path, e))?;
        migrate(&mut conn, path, found)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| open_error(path, e))?;
        Ok(Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            generation: AtomicU64::new(0),
        })
    }

    /// The file this journal lives in, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- deployments ----

    /// Record that a deployment of this spec starts (state `running`).
    pub fn start_deployment(
        &self,
        app: &str,
        version: &str,
        spec_hash: &str,
        spec_json: &str,
    ) -> Result<i64, StoreError> {
        self.write("start_deployment", |tx| {
            tx.execute(
                "INSERT INTO deployments (app, version, spec_hash, spec_json, state, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    app,
                    version,
                    spec_hash,
                    spec_json,
                    DeploymentState::Running,
                    now_ms()
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Record that a rollback of `release` starts, as a deployment of its
    /// own already naming that release, and with `pin` pin the spec as bad
    /// (reason), all in one transaction: the decision is made, so a crash
    /// before the rollback ends must neither redeploy the bad spec nor leave
    /// a deployment that does not say which release it moved away from.
    pub fn start_rollback(
        &self,
        app: &str,
        version: &str,
        spec_hash: &str,
        spec_json: &str,
        release_id: &str,
        pin: Option<&str>,
    ) -> Result<i64, StoreError> {
        self.write("start_rollback", |tx| {
            let at = now_ms();
            tx.execute(
                "INSERT INTO deployments (app, version, spec_hash, spec_json, release_id, state, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    app,
                    version,
                    spec_hash,
                    spec_json,
                    release_id,
                    DeploymentState::Running,
                    at
                ],
            )?;
            let id = tx.last_insert_rowid();
            if let Some(reason) = pin {
                upsert_pin(tx, app, spec_hash, reason, id, at)?;
            }
            Ok(id)
        })
    }

    /// Record which release a deployment built (the release must be recorded).
    pub fn set_deployment_release(&self, id: i64, release_id: &str) -> Result<(), StoreError> {
        self.write("set_deployment_release", |tx| {
            let n = tx.execute(
                "UPDATE deployments SET release_id = ?2 WHERE id = ?1",
                params![id, release_id],
            )?;
            if n == 0 {
                return Err(self.not_found("deployment", id).into());
            }
            Ok(())
        })
    }

    /// Record how a running deployment ended; an ended one stays as it ended.
    pub fn finish_deployment(
        &self,
        id: i64,
        state: DeploymentState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write("finish_deployment", |tx| {
            self.end_deployment(tx, id, state, reason)
        })
    }

    /// Record how a failed deployment ended and pin its app's `spec_hash`
    /// as bad, in one transaction: with two, a crash between them left a
    /// rolled-back deployment unpinned, and the next start deployed the
    /// bad version again (the crash matrix found it).
    pub fn finish_deployment_pinned(
        &self,
        id: i64,
        state: DeploymentState,
        reason: &str,
        spec_hash: &str,
    ) -> Result<(), StoreError> {
        self.write("finish_deployment_pinned", |tx| {
            self.end_deployment(tx, id, state, Some(reason))?;
            let app: String =
                tx.query_row("SELECT app FROM deployments WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            upsert_pin(tx, &app, spec_hash, reason, id, now_ms())?;
            Ok(())
        })
    }

    fn end_deployment(
        &self,
        tx: &Transaction<'_>,
        id: i64,
        state: DeploymentState,
        reason: Option<&str>,
    ) -> Result<(), Fail> {
        if state == DeploymentState::Running {
            return Err(StoreError::NotAnEndState {
                path: self.path.clone(),
                id,
            }
            .into());
        }
        let n = tx.execute(
            "UPDATE deployments SET state = ?2, reason = ?3, ended_at = ?4
             WHERE id = ?1 AND state = 'running'",
            params![id, state, reason, now_ms()],
        )?;
        if n == 0 {
            return Err(self
                .why_not_updated(tx, "deployments", "deployment", id)?
                .into());
        }
        Ok(())
    }

    /// One deployment by id.
    pub fn deployment(&self, id: i64) -> Result<Option<Deployment>, StoreError> {
        self.read("deployment", |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"),
                    [id],
                    deployment_row,
                )
                .optional()?)
        })
    }

    /// The newest `limit` deployments, of one app or of all, newest first.
    pub fn deployments(
        &self,
        app: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let limit = sql_limit(limit);
        self.read("deployments", |conn| {
            // Two statements rather than `?1 IS NULL OR app = ?1`, which
            // would keep SQLite from using the (app, id) index.
            Ok(match app {
                Some(app) => collect(
                    conn,
                    &format!(
                        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                         WHERE app = ?1 ORDER BY id DESC LIMIT ?2"
                    ),
                    params![app, limit],
                    deployment_row,
                )?,
                None => collect(
                    conn,
                    &format!(
                        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY id DESC LIMIT ?1"
                    ),
                    params![limit],
                    deployment_row,
                )?,
            })
        })
    }

    /// Deployments still `running`, oldest first: after a restart, the ones
    /// the agent was in the middle of.
    pub fn unfinished_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        self.read("unfinished_deployments", |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                     WHERE state = 'running' ORDER BY id"
                ),
                [],
                deployment_row,
            )
        })
    }

    /// The newest deployment of this exact spec, to tell whether it is done.
    pub fn latest_deployment_for_spec(
        &self,
        app: &str,
        spec_hash: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        self.read("latest_deployment_for_spec", |conn| {
            Ok(conn
                .query_row(
                    &format!(
                        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                         WHERE app = ?1 AND spec_hash = ?2 ORDER BY id DESC LIMIT 1"
                    ),
                    params![app, spec_hash],
                    deployment_row,
                )
                .optional()?)
        })
    }

    // ---- releases ----

    /// Record a new release directory; its id must be new.
    pub fn record_release(&self, release: &Release) -> Result<(), StoreError> {
        self.write("record_release", |tx| {
            tx.execute(
                "INSERT INTO releases (id, app, version, dir, artifact_dir, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    release.id,
                    release.app,
                    release.version,
                    release.dir,
                    release.artifact_dir,
                    release.created_at
                ],
            )?;
            Ok(())
        })
    }

    /// One release by id, also if it has been removed (its record stays so
    /// old deployments and history still name it).
    pub fn release(&self, id: &str) -> Result<Option<Release>, StoreError> {
        self.read("release", |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?1"),
                    [id],
                    release_row,
                )
                .optional()?)
        })
    }

    /// The releases of an app still on disk, newest first (for pruning).
    pub fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        self.read("releases", |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases
                     WHERE app = ?1 AND removed_at IS NULL
                     ORDER BY created_at DESC, rowid DESC"
                ),
                [app],
                release_row,
            )
        })
    }

    /// Record that a release's directory was deleted; repeating it is a no-op.
    pub fn mark_release_removed(&self, id: &str) -> Result<(), StoreError> {
        self.write("mark_release_removed", |tx| {
            // Keep the first removal time if it is marked twice.
            let n = tx.execute(
                "UPDATE releases SET removed_at = coalesce(removed_at, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )?;
            if n == 0 {
                return Err(self.not_found("release", id).into());
            }
            Ok(())
        })
    }

    /// The releases of every app not marked removed, oldest first: what
    /// start-up checks against the disk (after a restore most are gone).
    pub fn live_releases(&self) -> Result<Vec<Release>, StoreError> {
        self.read("live_releases", |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases
                     WHERE removed_at IS NULL ORDER BY created_at, rowid"
                ),
                [],
                release_row,
            )
        })
    }

    // ---- steps ----

    /// Record that a step of a deployment starts; returns its id.
    pub fn start_step(
        &self,
        deployment_id: i64,
        environment: Option<&str>,
        kind: &str,
        plugin: &str,
        attempt: u32,
    ) -> Result<i64, StoreError> {
        self.write("start_step", |tx| {
            tx.execute(
                "INSERT INTO steps (deployment_id, environment, kind, plugin, attempt, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![deployment_id, environment, kind, plugin, attempt, now_ms()],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Record how a step ended, with its logs, all in one transaction.
    pub fn finish_step(
        &self,
        step_id: i64,
        outcome: &str,
        message: &str,
        logs: &[LogRecord],
    ) -> Result<(), StoreError> {
        self.write("finish_step", |tx| {
            let n = tx.execute(
                "UPDATE steps SET outcome = ?2, message = ?3, ended_at = ?4
                 WHERE id = ?1 AND ended_at IS NULL",
                params![step_id, outcome, message, now_ms()],
            )?;
            if n == 0 {
                return Err(self.why_not_updated(tx, "steps", "step", step_id)?.into());
            }
            let mut insert = tx.prepare(
                "INSERT INTO step_logs (step_id, at, level, source, message, fields_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for log in logs {
                let fields = serde_json::to_string(&log.fields)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                insert.execute(params![
                    step_id,
                    log.at,
                    log.level,
                    log.source,
                    log.message,
                    fields
                ])?;
            }
            Ok(())
        })
    }

    /// The steps of a deployment in the order they started.
    pub fn steps(&self, deployment_id: i64) -> Result<Vec<StepRecord>, StoreError> {
        self.read("steps", |conn| {
            collect(
                conn,
                "SELECT id, deployment_id, environment, kind, plugin, attempt,
                        started_at, ended_at, outcome, message
                 FROM steps WHERE deployment_id = ?1 ORDER BY id",
                [deployment_id],
                |r| {
                    Ok(StepRecord {
                        id: r.get(0)?,
                        deployment_id: r.get(1)?,
                        environment: r.get(2)?,
                        kind: r.get(3)?,
                        plugin: r.get(4)?,
                        attempt: r.get(5)?,
                        started_at: r.get(6)?,
                        ended_at: r.get(7)?,
                        outcome: r.get(8)?,
                        message: r.get(9)?,
                    })
                },
            )
        })
    }

    /// The logs of one step in the order they were given.
    pub fn step_logs(&self, step_id: i64) -> Result<Vec<LogRecord>, StoreError> {
        self.read("step_logs", |conn| {
            collect(
                conn,
                "SELECT at, level, source, message, fields_json
                 FROM step_logs WHERE step_id = ?1 ORDER BY id",
                [step_id],
                |r| {
                    let json: String = r.get(4)?;
                    let fields = serde_json::from_str(&json).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(4, Type::Text, Box::new(e))
                    })?;
                    Ok(LogRecord {
                        at: r.get(0)?,
                        level: r.get(1)?,
                        source: r.get(2)?,
                        message: r.get(3)?,
                        fields,
                    })
                },
            )
        })
    }

    // ---- environments ----

    /// What one environment runs now, if the journal has heard of it.
    pub fn env_state(&self, app: &str, env: &str) -> Result<Option<EnvState>, StoreError> {
        // Cached: the health guard asks this before every check.
        self.read("env_state", |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {ENV_COLUMNS} FROM environments
                     WHERE app = ?1 AND environment = ?2"
                ))?
                .query_row(params![app, env], env_row)
                .optional()?)
        })
    }

    /// Every environment the journal knows, by app then environment.
    pub fn env_states(&self) -> Result<Vec<EnvState>, StoreError> {
        self.read("env_states", |conn| {
            collect(
                conn,
                &format!("SELECT {ENV_COLUMNS} FROM environments ORDER BY app, environment"),
                [],
                env_row,
            )
        })
    }

    /// Point an environment at a release (or at none: stopped) and append
    /// the change to its history, in one transaction.
    pub fn set_current_release(
        &self,
        app: &str,
        env: &str,
        release: Option<&str>,
        deployment_id: Option<i64>,
        event: &str,
    ) -> Result<(), StoreError> {
        self.write("set_current_release", |tx| {
            let at = now_ms();
            tx.execute(
                "INSERT INTO environments (app, environment, current_release, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, environment) DO UPDATE
                 SET current_release = excluded.current_release,
                     updated_at = excluded.updated_at",
                params![app, env, release, at],
            )?;
            record_history(tx, app, env, release, deployment_id, event, at)
        })
    }

    /// Put an environment back on `release`, a release that passed its gates
    /// before, and make it the one to roll back to, in one transaction: a
    /// crash between the two would leave the journal saying the failed
    /// release is the good one, and recovery would restart it.
    pub fn roll_back_to(
        &self,
        app: &str,
        env: &str,
        release: &str,
        deployment_id: Option<i64>,
        event: &str,
    ) -> Result<(), StoreError> {
        self.write("roll_back_to", |tx| {
            let at = now_ms();
            tx.execute(
                "INSERT INTO environments (app, environment, current_release, last_good_release, updated_at)
                 VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT (app, environment) DO UPDATE
                 SET current_release = excluded.current_release,
                     last_good_release = excluded.last_good_release,
                     updated_at = excluded.updated_at",
                params![app, env, release, at],
            )?;
            record_history(tx, app, env, Some(release), deployment_id, event, at)
        })
    }

    /// Record that a release passed an environment's gates: the one to roll
    /// back to. Not a history event (the activation before it was).
    pub fn set_last_good_release(
        &self,
        app: &str,
        env: &str,
        release: &str,
    ) -> Result<(), StoreError> {
        self.write("set_last_good_release", |tx| {
            tx.execute(
                "INSERT INTO environments (app, environment, last_good_release, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, environment) DO UPDATE
                 SET last_good_release = excluded.last_good_release,
                     updated_at = excluded.updated_at",
                params![app, env, release, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Forget an environment's last good release (its directory is gone):
    /// a failed gate then stops the environment instead of rolling back to
    /// nothing. Not a history event; a no-op for an unknown environment.
    pub fn clear_last_good_release(&self, app: &str, env: &str) -> Result<(), StoreError> {
        self.write("clear_last_good_release", |tx| {
            tx.execute(
                "UPDATE environments SET last_good_release = NULL, updated_at = ?3
                 WHERE app = ?1 AND environment = ?2",
                params![app, env, now_ms()],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` changes of one environment, newest first.
    pub fn history(&self, app: &str, env: &str, limit: usize) -> Result<Vec<EnvEvent>, StoreError> {
        self.read("history", |conn| {
            collect(
                conn,
                "SELECT id, app, environment, release_id, deployment_id, event, at
                 FROM env_history WHERE app = ?1 AND environment = ?2
                 ORDER BY id DESC LIMIT ?3",
                params![app, env, sql_limit(limit)],
                |r| {
                    Ok(EnvEvent {
                        id: r.get(0)?,
                        app: r.get(1)?,
                        environment: r.get(2)?,
                        release_id: r.get(3)?,
                        deployment_id: r.get(4)?,
                        event: r.get(5)?,
                        at: r.get(6)?,
                    })
                },
            )
        })
    }

    // ---- pins ----

    /// Pin a failed spec so it is not deployed again on its own; pinning it
    /// again replaces the reason with the latest failure.
    pub fn pin(
        &self,
        app: &str,
        spec_hash: &str,
        reason: &str,
        deployment_id: i64,
    ) -> Result<(), StoreError> {
        self.write("pin", |tx| {
            upsert_pin(tx, app, spec_hash, reason, deployment_id, now_ms())
        })
    }

    /// The pin on this spec, if it is pinned.
    pub fn pin_for(&self, app: &str, spec_hash: &str) -> Result<Option<Pin>, StoreError> {
        self.read("pin_for", |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {PIN_COLUMNS} FROM pins WHERE app = ?1 AND spec_hash = ?2"),
                    params![app, spec_hash],
                    pin_row,
                )
                .optional()?)
        })
    }

    /// The pins of an app, newest first.
    pub fn pins(&self, app: &str) -> Result<Vec<Pin>, StoreError> {
        self.read("pins", |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {PIN_COLUMNS} FROM pins WHERE app = ?1 ORDER BY at DESC, spec_hash"
                ),
                [app],
                pin_row,
            )
        })
    }

    /// Allow a pinned spec to be deployed again; false if it was not pinned.
    pub fn unpin(&self, app: &str, spec_hash: &str) -> Result<bool, StoreError> {
        self.write("unpin", |tx| {
            let n = tx.execute(
                "DELETE FROM pins WHERE app = ?1 AND spec_hash = ?2",
                params![app, spec_hash],
            )?;
            Ok(n > 0)
        })
    }

    // ---- backup ----

    /// Write a consistent copy of the journal to `dest` (which must not
    /// exist) while the agent keeps using it.
    pub fn backup_to(&self, dest: &Path) -> Result<(), StoreError> {
        let fail = |reason: String| StoreError::Backup {
            path: self.path.clone(),
            dest: dest.to_path_buf(),
            reason,
        };
        // rusqlite's online backup API needs its "backup" feature, which is
        // not enabled; `VACUUM INTO` is as consistent (one read transaction)
        // and also compacts the copy.
        let dest_str = dest
            .to_str()
            .ok_or_else(|| fail("the destination path is not valid UTF-8".into()))?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
        }
        self.conn()
            .execute("VACUUM INTO ?1", [dest_str])
            .map_err(|e| fail(e.to_string()))?;
        // VACUUM INTO does not promise to sync its output; a backup that a
        // power cut can lose is not one.
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail(format!("syncing the copy: {e}")))?;
        Ok(())
    }

    /// Open an existing journal only to read it or copy it (`backup_to`):
    /// the live one next to a running agent, a backup, or a file about to be
    /// restored. Nothing is created, migrated or switched to WAL, so it is
    /// safe beside the agent and on a file that may be anything. Refuses a
    /// file that is not a journal or is from a newer slipway.
    pub fn open_read_only(path: &Path) -> Result<Journal, StoreError> {
        let not_a_journal = |reason: String| StoreError::NotAJournal {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(not_a_journal(if path.exists() {
                "it is not a regular file".into()
            } else {
                "no such file".into()
            }));
        }
        // Without SQLITE_OPEN_URI: the path is a file name, never a URI.
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // Named as what it is here: a file someone means to read or restore.
        let opening = |e| match open_error(path, e) {
            StoreError::NotADatabase { source, .. } => not_a_journal(format!(
                "it is not a SQLite database, or it is damaged ({source})"
            )),
            other => other,
        };
        let conn = Connection::open_with_flags(path, flags).map_err(opening)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
        let found = user_version(&conn).map_err(opening)?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        if found < 1 {
            return Err(not_a_journal(
                "it is a SQLite database without a Slipway schema (user_version 0)".into(),
            ));
        }
        for table in JOURNAL_TABLES {
            let present: bool = conn
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .map_err(opening)?;
            if !present {
                return Err(not_a_journal(format!("its table `{table}` is missing")));
            }
        }
        Ok(Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            generation: AtomicU64::new(0),
        })
    }

    /// SQLite's `quick_check` of the whole file: a restore must not put a
    /// damaged journal in place of the agent's.
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        let problems: Vec<String> = self.read("check_integrity", |conn| {
            collect(conn, "PRAGMA quick_check(5)", [], |r| r.get(0))
        })?;
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::NotAJournal {
            path: self.path.clone(),
            reason: format!("it fails SQLite's integrity check: {}", problems.join("; ")),
        })
    }

    /// How many deployments and releases the journal holds, and its schema.
    pub fn summary(&self) -> Result<JournalSummary, StoreError> {
        self.read("summary", |conn| {
            Ok(JournalSummary {
                schema_version: user_version(conn)?,
                deployments: conn
                    .query_row("SELECT count(*) FROM deployments", [], |r| r.get(0))?,
                releases: conn.query_row("SELECT count(*) FROM releases", [], |r| r.get(0))?,
            })
        })
    }

    // ---- plumbing ----

    /// The connection. A panic in another call cannot leave it mid-write
    /// (its transaction rolled back when dropped), so a poisoned lock is
    /// safe to take over rather than failing every later call.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run read-only queries (each statement sees one consistent snapshot).
    /// A number that changes with every write this journal makes (the
    /// agent is its only writer). A reader that keeps what it read with the
    /// generation it read at can skip reading again until it changes: the
    /// health guard asks for an environment's state before every check.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let conn = self.conn();
        f(&conn).map_err(|e| self.error(op, e))
    }

    /// Run `f` in one transaction, committed before returning. IMMEDIATE
    /// takes the write lock up front, so waiting for another writer goes
    /// through busy_timeout instead of failing on a read→write upgrade.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let run = || -> Result<T, Fail> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        let result = run();
        self.generation.fetch_add(1, Ordering::Release);
        let value = result.map_err(|e| self.error(op, with_os_cause(&conn, e)))?;
        // Still holding the connection: the crash matrix numbers transitions
        // in commit order, and an injected crash lets nothing commit after.
        crate::fault::transition(op);
        Ok(value)
    }

    fn error(&self, op: &'static str, fail: Fail) -> StoreError {
        match fail {
            Fail::Store(e) => e,
            Fail::Sql(source) => StoreError::Sql {
                path: self.path.clone(),
                op,
                source,
            },
        }
    }

    fn not_found(&self, what: &'static str, id: impl ToString) -> StoreError {
        StoreError::NotFound {
            path: self.path.clone(),
            what,
            id: id.to_string(),
        }
    }

    /// After an update "of the unfinished row with this id" touched nothing:
    /// tell a missing row from an already finished one.
    fn why_not_updated(
        &self,
        tx: &Transaction<'_>,
        table: &'static str,
        what: &'static str,
        id: i64,
    ) -> Result<StoreError, Fail> {
        let exists = tx
            .query_row(
                &format!("SELECT 1 FROM {table} WHERE id = ?1"),
                [id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        Ok(if exists {
            StoreError::AlreadyFinished {
                path: self.path.clone(),
                what,
                id,
            }
        } else {
            self.not_found(what, id)
        })
    }
}

/// SQLite reports a failed write as "disk I/O error" or "database or disk
/// is full"; the OS error behind it (ENOSPC, EFBIG, EROFS, EIO) is what an
/// operator can act on, so it joins the message.
fn with_os_cause(conn: &Connection, fail: Fail) -> Fail {
    match fail {
        Fail::Sql(rusqlite::Error::SqliteFailure(code, message))
            if matches!(code.code, ErrorCode::SystemIoFailure | ErrorCode::DiskFull) =>
        {
            // SAFETY: the handle of this open connection, used under its
            // mutex on this thread, right after the failed call.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
            let what =
                message.unwrap_or_else(|| rusqlite::ffi::code_to_str(code.extended_code).into());
            let message = match errno {
                0 => what,
                errno => format!("{what}: {}", std::io::Error::from_raw_os_error(errno)),
            };
            Fail::Sql(rusqlite::Error::SqliteFailure(code, Some(message)))
        }
        other => other,
    }
}

/// Pin (app, spec_hash) as bad, or renew its pin with this reason.
fn upsert_pin(
    tx: &Transaction<'_>,
    app: &str,
    spec_hash: &str,
    reason: &str,
    deployment_id: i64,
    at: i64,
) -> Result<(), Fail> {
    tx.execute(
        "INSERT INTO pins (app, spec_hash, reason, deployment_id, at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app, spec_hash) DO UPDATE
         SET reason = excluded.reason,
             deployment_id = excluded.deployment_id,
             at = excluded.at",
        params![app, spec_hash, reason, deployment_id, at],
    )?;
    Ok(())
}

/// One event of an environment's history (what it runs, and why).
fn record_history(
    tx: &Transaction<'_>,
    app: &str,
    env: &str,
    release: Option<&str>,
    deployment_id: Option<i64>,
    event: &str,
    at: i64,
) -> Result<(), Fail> {
    tx.execute(
        "INSERT INTO env_history (app, environment, release_id, deployment_id, event, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![app, env, release, deployment_id, event, at],
    )?;
    Ok(())
}

/// Open-time errors: a file SQLite does not recognise gets its own message.
fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::NotADatabase {
            path: path.to_path_buf(),
            source,
        },
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Apply the migrations after version `from`, each in its own transaction
/// together with its `user_version` bump: a crash leaves the schema at
/// one version or the next, never between.
fn migrate(conn: &mut Connection, path: &Path, from: i64) -> Result<(), StoreError> {
    for (version, sql) in (1_i64..).zip(MIGRATIONS).skip(from.max(0) as usize) {
        let apply = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process opening the same file may have just done it.
            if user_version(&tx)? >= version {
                return Ok(false);
            }
            tx.execute_batch(sql)?;
            let dangling: i64 =
                tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })?;
            if dangling > 0 {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!("{dangling} rows would break a foreign key")),
                ));
            }
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
            Ok(true)
        };
        let applied = apply(conn).map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        })?;
        if applied {
            tracing::info!(path = %path.display(), version, "journal schema migrated");
        }
    }
    Ok(())
}

/// SQLite's LIMIT is an i64; a usize beyond it means "no limit".
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Run a query and map every row.
fn collect<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, Fail> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, map)?;
    Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
}

const DEPLOYMENT_COLUMNS: &str =
    "id, app, version, spec_hash, release_id, state, reason, started_at, ended_at";

fn deployment_row(r: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        app: r.get(1)?,
        version: r.get(2)?,
        spec_hash: r.get(3)?,
        release_id: r.get(4)?,
        state: r.get(5)?,
        reason: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
    })
}

const RELEASE_COLUMNS: &str = "id, app, version, dir, artifact_dir, created_at";

fn release_row(r: &Row<'_>) -> rusqlite::Result<Release> {
    Ok(Release {
        id: r.get(0)?,
        app: r.get(1)?,
        version: r.get(2)?,
        dir: r.get(3)?,
        artifact_dir: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const ENV_COLUMNS: &str = "app, environment, current_release, last_good_release, updated_at";

fn env_row(r: &Row<'_>) -> rusqlite::Result<EnvState> {
    Ok(EnvState {
        app: r.get(0)?,
        environment: r.get(1)?,
        current_release: r.get(2)?,
        last_good_release: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

const PIN_COLUMNS: &str = "app, spec_hash, reason, deployment_id, at";

fn pin_row(r: &Row<'_>) -> rusqlite::Result<Pin> {
    Ok(Pin {
        app: r.get(0)?,
        spec_hash: r.get(1)?,
        reason: r.get(2)?,
        deployment_id: r.get(3)?,
        at: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(j.start_step(99, None, "build", "command", 1).is_err());
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

        let build = j.start_step(id, None, "build", "command", 1).unwrap();
        let smoke = j
            .start_step(id, Some("staging"), "smoke", "http-check", 2)
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
        j.finish_step(build, "ok", "artifact out", &logs).unwrap();
        j.finish_step(smoke, "timeout", "no answer in 5s", &[])
            .unwrap();
        assert!(matches!(
            j.finish_step(build, "ok", "", &[]),
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
        assert!(j.start_step(424242, None, "build", "x", 1).is_err());
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

        j.set_current_release("web", "prod", Some("r1"), None, "activated")
            .unwrap();
        j.set_last_good_release("web", "prod", "r1").unwrap();
        j.set_current_release("web", "prod", Some("r2"), Some(d), "activated")
            .unwrap();
        let s = j.env_state("web", "prod").unwrap().unwrap();
        assert_eq!(s.current_release.as_deref(), Some("r2"));
        assert_eq!(s.last_good_release.as_deref(), Some("r1"));
        j.set_current_release("web", "prod", Some("r1"), Some(d), "rolled-back")
            .unwrap();
        j.set_current_release("web", "staging", None, Some(d), "stopped")
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
                ("activated", Some("r2"), Some(d)),
                ("activated", Some("r1"), None),
            ]
        );
        assert_eq!(j.history("web", "prod", 1).unwrap().len(), 1);
        assert_eq!(j.history("web", "staging", 10).unwrap()[0].release_id, None);

        // An environment can only point at a release the journal knows.
        assert!(
            j.set_current_release("web", "prod", Some("ghost"), None, "activated")
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
                .start_step(id, Some("prod"), "deploy", "command", 1)
                .unwrap();
            j.set_current_release("web", "prod", Some("r1"), Some(id), "activated")
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
            .set_current_release("web", "prod", Some("r1"), None, "activated")
            .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writing = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = if n % 2 == 0 { "r2" } else { "r1" };
                    writer
                        .set_current_release("web", "prod", Some(r), None, "activated")
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
}
