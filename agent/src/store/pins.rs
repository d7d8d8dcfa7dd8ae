//! The `pins` table: specs whose deployment failed, which the engine must
//! not deploy again on its own until someone unpins them.

use super::error::Fail;
use super::{Journal, Pin, StoreError, collect, now_ms};
use rusqlite::{OptionalExtension, Row, Transaction, params};

impl Journal {
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
}

/// Pin (app, spec_hash) as bad, or renew its pin with this reason.
pub(super) fn upsert_pin(
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
