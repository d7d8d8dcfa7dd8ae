-- Schema 2: a deployment may end `cancelled` (stopped at a manual gate:
-- not approved in time, or superseded by a newer config).
--
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt
-- the documented way (https://www.sqlite.org/lang_altertable.html, "making
-- other kinds of table schema changes"): the journal runs migrations with
-- foreign keys off and checks them before turning them back on; ids are
-- copied as they are, so every reference stays valid.

CREATE TABLE deployments_new (
    id         INTEGER PRIMARY KEY,
    app        TEXT NOT NULL,
    version    TEXT NOT NULL,
    spec_hash  TEXT NOT NULL,
    spec_json  TEXT NOT NULL CHECK (json_valid(spec_json)),
    release_id TEXT REFERENCES releases (id),
    state      TEXT NOT NULL
               CHECK (state IN ('running', 'succeeded', 'failed', 'rolled-back', 'interrupted', 'cancelled')),
    reason     TEXT,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    -- A deployment has an end time exactly when it is no longer running.
    CHECK ((state = 'running') = (ended_at IS NULL))
);

INSERT INTO deployments_new (id, app, version, spec_hash, spec_json, release_id, state, reason, started_at, ended_at)
    SELECT id, app, version, spec_hash, spec_json, release_id, state, reason, started_at, ended_at
    FROM deployments;
DROP TABLE deployments;
ALTER TABLE deployments_new RENAME TO deployments;

CREATE INDEX deployments_by_app ON deployments (app, id);
CREATE INDEX deployments_by_spec ON deployments (app, spec_hash, id);
-- Start-up recovery looks for these; there are almost never any.
CREATE INDEX deployments_running ON deployments (id) WHERE state = 'running';
