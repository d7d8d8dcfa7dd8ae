//! The journal side of `slipway backup` and `slipway restore`: a
//! consistent copy of a live journal, opening a file read-only to check
//! that it is a usable journal, its integrity check and its counts.

use super::migrate::{BUSY_TIMEOUT, open_error, refuse_too_new, user_version};
use super::{Journal, JournalSummary, StoreError, collect};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

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

impl Journal {
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
        refuse_too_new(path, found)?;
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
}
