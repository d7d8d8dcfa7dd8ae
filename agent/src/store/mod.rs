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

mod backup;
mod deployments;
mod envs;
mod error;
mod migrate;
mod pins;
mod records;
mod releases;
mod steps;
#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use records::{
    Deployment, DeploymentState, EnvEvent, EnvState, JournalSummary, LogRecord, Pin, Release,
    StepRecord,
};

use error::{Fail, with_os_cause};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the journal's one time format.
pub fn now_ms() -> i64 {
    // A clock before 1970 is a broken clock, not a reason to fail a write;
    // it records as 0. Saturate instead of wrapping far in the future.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    /// The file this journal lives in, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- plumbing ----

    /// The connection. A panic in another call cannot leave it mid-write
    /// (its transaction rolled back when dropped), so a poisoned lock is
    /// safe to take over rather than failing every later call.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A number that changes with every write this journal makes (the
    /// agent is its only writer). A reader that keeps what it read with the
    /// generation it read at can skip reading again until it changes: the
    /// health guard asks for an environment's state before every check.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Run read-only queries (each statement sees one consistent snapshot).
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
