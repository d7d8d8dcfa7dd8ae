//! The `steps` and `step_logs` tables: each plugin step a deployment runs,
//! how it ended, and the log lines its plugin emitted, written with its end.

use super::{Journal, LogRecord, StepRecord, StoreError, collect, now_ms};
use crate::vocab::{StepRole, Verdict};
use rusqlite::params;
use rusqlite::types::Type;

impl Journal {
    /// Record that a step of a deployment starts; returns its id.
    pub fn start_step(
        &self,
        deployment_id: i64,
        environment: Option<&str>,
        kind: StepRole,
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
        outcome: Verdict,
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
}
