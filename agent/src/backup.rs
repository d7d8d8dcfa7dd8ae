//! `slipway backup` and `slipway restore`: the operator's copy of the
//! journal, and putting one back on a server (the same one, or a new one).
//!
//! A backup is one consistent snapshot taken while the agent runs: `VACUUM
//! INTO` from a read-only connection is a single read transaction, and
//! nothing is written to the live journal. A restore refuses while an agent
//! holds the state dir ([`StateLock`]), refuses to replace a journal unless
//! forced (the replaced one is kept beside it), checks that the file is a
//! journal this slipway can use and is not damaged, and copies it in the
//! same way, so a journal copied with its `-wal` is restored whole.
//!
//! Release directories are not part of a backup. After a restore, the
//! agent's start-up recovery marks the releases missing on disk as removed
//! and the reconciler deploys the config's version again.

use crate::agent::{LockError, StateLock, create_state_dir};
use crate::cli::CliError;
use crate::config::{Config, ConfigErrors};
use crate::store::{Journal, JournalSummary, StoreError};
use std::path::{Path, PathBuf};

/// The journal's file name in the state dir.
const JOURNAL: &str = "journal.db";

/// Why a backup or restore did nothing.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The config could not be read; it names the state dir.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The destination exists and `--force` was not given.
    #[error("{} already exists: {hint}", .path.display())]
    Exists { path: PathBuf, hint: String },
    /// There is no journal to back up.
    #[error(
        "there is no journal at {}: has an agent run with this config (state_dir)?",
        .0.display()
    )]
    NoJournal(PathBuf),
    /// Backing up onto the live journal (or restoring it onto itself).
    #[error("{} is the agent's journal itself: name another file", .0.display())]
    SameFile(PathBuf),
    /// The journal (or the file to restore) could not be read or copied.
    #[error("{0}")]
    Journal(#[from] StoreError),
    /// An agent (or another restore) holds the state dir.
    #[error("{0}")]
    Locked(#[from] LockError),
    /// A file operation failed; `what` says which, with the path.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<BackupError> for CliError {
    /// Refusals the operator can fix on the command line exit 2; the rest 1.
    fn from(e: BackupError) -> Self {
        let code = match &e {
            BackupError::Config(_) | BackupError::Exists { .. } | BackupError::SameFile(_) => 2,
            _ => 1,
        };
        CliError {
            message: e.to_string(),
            code,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// `slipway backup -c CONFIG --to FILE [--force]`: copy the journal of the
/// config's state dir to `to`, safe while the agent runs.
pub fn backup(config_file: &Path, to: &Path, force: bool) -> Result<String, BackupError> {
    let journal_path = Config::load(config_file)?.agent.state_dir.join(JOURNAL);
    if !journal_path.is_file() {
        return Err(BackupError::NoJournal(journal_path));
    }
    if same_file(to, &journal_path) {
        return Err(BackupError::SameFile(to.to_path_buf()));
    }
    if to.is_dir() {
        return Err(BackupError::Exists {
            path: to.to_path_buf(),
            hint: "it is a directory: name the backup file, e.g. DIR/slipway-journal.db".into(),
        });
    }
    if !force && to.symlink_metadata().is_ok() {
        return Err(BackupError::Exists {
            path: to.to_path_buf(),
            hint: "pass --force to replace it".into(),
        });
    }
    let source = Journal::open_read_only(&journal_path)?;
    // Written beside the destination and moved into place whole, so a
    // failure never leaves a half-written file under the name asked for.
    let name = to
        .file_name()
        .ok_or_else(|| BackupError::Exists {
            path: to.to_path_buf(),
            hint: "name a file, not a directory".into(),
        })?
        .to_string_lossy();
    let partial = to.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let placed = copy_verified(&source, &partial).and_then(|summary| {
        if force {
            std::fs::rename(&partial, to)
                .map_err(io(format!("moving the backup to {}", to.display())))?;
        } else {
            // A hard link does not replace a file that appeared meanwhile.
            std::fs::hard_link(&partial, to).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => BackupError::Exists {
                    path: to.to_path_buf(),
                    hint: "pass --force to replace it".into(),
                },
                _ => BackupError::Io {
                    what: format!("moving the backup to {}", to.display()),
                    source: e,
                },
            })?;
        }
        sync_parent(to)?;
        Ok(summary)
    });
    let _ = std::fs::remove_file(&partial);
    // A read-only reader creates the journal's `-wal`/`-shm` if the agent
    // is stopped (and cannot remove them): keep them the agent's.
    drop(source);
    if let Some(dir) = journal_path.parent() {
        for sidecar in ["-wal", "-shm"] {
            hand_over(&with_suffix(&journal_path, sidecar), dir)?;
        }
    }
    let summary = placed?;
    Ok(format!(
        "backed up {} to {}: {}\n",
        journal_path.display(),
        to.display(),
        counts(&summary)
    ))
}

/// `slipway restore -c CONFIG --from FILE [--force]`: put a backup in place
/// of the state dir's journal while no agent runs.
pub fn restore(config_file: &Path, from: &Path, force: bool) -> Result<String, BackupError> {
    let state_dir = Config::load(config_file)?.agent.state_dir;
    let journal_path = state_dir.join(JOURNAL);
    if same_file(from, &journal_path) {
        return Err(BackupError::SameFile(from.to_path_buf()));
    }
    // Check the file before touching the state dir at all.
    let source = Journal::open_read_only(from)?;
    source.check_integrity()?;
    create_state_dir(&state_dir).map_err(|e| BackupError::Io {
        what: "creating the state dir".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // Held until the restored journal is in place: an agent started
    // meanwhile refuses to run instead of opening a half-swapped journal.
    let _lock = StateLock::acquire(&state_dir, "restore")?;
    hand_over(&state_dir.join(StateLock::FILE), &state_dir)?;
    if !force && journal_path.exists() {
        return Err(BackupError::Exists {
            path: journal_path,
            hint: "pass --force to replace it (the replaced journal is kept beside it)".into(),
        });
    }
    let incoming = state_dir.join(format!("{JOURNAL}.restoring"));
    let _ = std::fs::remove_file(&incoming);
    let summary = match copy_verified(&source, &incoming) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }
    };
    let replaced = set_aside(&journal_path)?;
    std::fs::rename(&incoming, &journal_path).map_err(io(format!(
        "moving the restored journal to {}",
        journal_path.display()
    )))?;
    hand_over(&journal_path, &state_dir)?;
    sync_parent(&journal_path)?;
    let mut text = format!(
        "restored {} to {}: {}\n",
        from.display(),
        journal_path.display(),
        counts(&summary)
    );
    if let Some(old) = replaced {
        text.push_str(&format!(
            "the journal it replaced is kept as {}\n",
            old.display()
        ));
    }
    text.push_str(
        "start the agent: releases whose directory is not on this server are marked removed, \
         and the config's version is deployed again\n",
    );
    Ok(text)
}

/// Copy `source` to `dest` (which must not exist), readable by the owner
/// only (step logs are in it), then check the copy: what it holds is what
/// the operator is told.
fn copy_verified(source: &Journal, dest: &Path) -> Result<JournalSummary, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Made here, private and new (never through a symlink), so the copy
    // goes into this file and no other.
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io(format!("creating {}", dest.display())))?;
    source.backup_to(dest)?;
    let copy = Journal::open_read_only(dest)?;
    copy.check_integrity()?;
    Ok(copy.summary()?)
}

/// Move the journal at `path` and its `-wal`/`-shm` aside under one new
/// name (SQLite finds a WAL by the database's name, so they stay a pair).
/// The sidecars go first: a stale WAL must never sit beside the restored
/// journal. Sidecars without a journal are useless and removed.
fn set_aside(path: &Path) -> Result<Option<PathBuf>, BackupError> {
    let exists = path.exists();
    let aside = with_suffix(path, &format!(".replaced-{}", crate::store::now_ms()));
    for suffix in ["-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        if from.symlink_metadata().is_err() {
            continue;
        }
        let done = if exists {
            std::fs::rename(&from, with_suffix(&aside, suffix))
        } else {
            std::fs::remove_file(&from)
        };
        done.map_err(io(format!("moving {} aside", from.display())))?;
    }
    if !exists {
        return Ok(None);
    }
    std::fs::rename(path, &aside).map_err(io(format!("moving {} aside", path.display())))?;
    Ok(Some(aside))
}

/// `path` with `suffix` appended to its file name (`journal.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Give a file this command created in the state dir to the dir's owner
/// (the agent's user) when run as root, so the agent can still open it.
/// Missing files and files already theirs are left alone.
fn hand_over(path: &Path, state_dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(file), Ok(dir)) = (path.symlink_metadata(), state_dir.metadata()) else {
        return Ok(());
    };
    // Only root makes files for another user; a user who owns the dir has
    // nothing to hand over (and may not be in its group).
    if file.uid() == dir.uid() {
        return Ok(());
    }
    // lchown: a symlink planted in the dir is handed over, not its target.
    std::os::unix::fs::lchown(path, Some(dir.uid()), Some(dir.gid())).map_err(io(format!(
        "giving {} to the state dir's owner (uid {}): run this as that user or as root",
        path.display(),
        dir.uid()
    )))
}

/// Whether `a` names the file `b` (or would, once created).
fn same_file(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| -> Option<PathBuf> {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

/// A rename is durable once its directory is synced.
fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

fn counts(s: &JournalSummary) -> String {
    let n = |count: i64, what: &str| match count {
        1 => format!("1 {what}"),
        _ => format!("{count} {what}s"),
    };
    format!(
        "{}, {} (journal schema {})",
        n(s.deployments, "deployment"),
        n(s.releases, "release"),
        s.schema_version
    )
}
