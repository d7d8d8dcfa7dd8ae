//! The `releases` table: the release directories built on disk. A removed
//! release keeps its row, so old deployments and history still name it.

use super::{Journal, Release, StoreError, collect, now_ms};
use rusqlite::{OptionalExtension, Row, params};

impl Journal {
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
