//! The `deployments` table: a deployment starts `running`, names the
//! release it built, and ends once (succeeded, failed, rolled back,
//! interrupted, cancelled), pinning its spec in the same transaction when
//! it failed.

use super::error::Fail;
use super::pins::upsert_pin;
use super::{Deployment, DeploymentState, Journal, StoreError, collect, now_ms, sql_limit};
use rusqlite::{OptionalExtension, Row, Transaction, params};

impl Journal {
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
