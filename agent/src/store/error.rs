//! Why a journal call failed: `StoreError`, the public error every method
//! returns, and `Fail`, the internal one the method bodies raise with `?`
//! before `Journal::read` / `Journal::write` attach the method and the path.

use rusqlite::{Connection, ErrorCode};
use std::path::PathBuf;

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

/// An error inside a journal method, before the method's name and the db
/// path are attached (once, by `Journal::read` / `Journal::write`), so the
/// method bodies can use `?` on rusqlite calls.
pub(super) enum Fail {
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

/// SQLite reports a failed write as "disk I/O error" or "database or disk
/// is full"; the OS error behind it (ENOSPC, EFBIG, EROFS, EIO) is what an
/// operator can act on, so it joins the message.
pub(super) fn with_os_cause(conn: &Connection, fail: Fail) -> Fail {
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
