//! Opening the journal for the agent: the schema migrations, applied in
//! order inside their own transactions, and the checks that refuse a file
//! that is not SQLite or was written by a newer slipway.

use super::{Journal, StoreError};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Schema migrations in order; migration `i` (0-based) takes the schema to
/// version `i + 1`, kept in `PRAGMA user_version`. Only ever append.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_cancelled.sql"),
];

/// How long a call waits for another connection's write lock (the CLI or a
/// test may read the journal while the agent writes it) before failing.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        refuse_too_new(path, found)?;
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
}

/// Open-time errors: a file SQLite does not recognise gets its own message.
pub(super) fn open_error(path: &Path, source: rusqlite::Error) -> StoreError {
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

/// A journal whose schema is newer than this agent knows (written by a
/// newer slipway) is refused untouched.
pub(super) fn refuse_too_new(path: &Path, found: i64) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    Ok(())
}

pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
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
