//! The `environments` and `env_history` tables: which release each
//! environment runs, the last good one it would roll back to, and the
//! history of those changes, each change written with its history event.

use super::error::Fail;
use super::{EnvEvent, EnvState, Journal, StoreError, collect, now_ms, sql_limit};
use crate::vocab::EnvChange;
use rusqlite::{OptionalExtension, Row, Transaction, params};

impl Journal {
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
        event: EnvChange,
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
    /// release is the good one, and recovery would restart it. Recorded in
    /// the history as `rolled-back`.
    pub fn roll_back_to(
        &self,
        app: &str,
        env: &str,
        release: &str,
        deployment_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let event = EnvChange::RolledBack;
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
}

/// One event of an environment's history (what it runs, and why).
fn record_history(
    tx: &Transaction<'_>,
    app: &str,
    env: &str,
    release: Option<&str>,
    deployment_id: Option<i64>,
    event: EnvChange,
    at: i64,
) -> Result<(), Fail> {
    tx.execute(
        "INSERT INTO env_history (app, environment, release_id, deployment_id, event, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![app, env, release, deployment_id, event, at],
    )?;
    Ok(())
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
