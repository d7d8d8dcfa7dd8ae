-- Journal schema version 1. Applied once, in one transaction with
-- `PRAGMA user_version = 1`; never edit it after release: add 0002_*.sql.
--
-- Conventions: times are milliseconds since the Unix epoch (INTEGER);
-- rows are never deleted (releases are marked removed), so INTEGER PRIMARY
-- KEY ids only grow and "newest first" is "highest id first". For the same
-- reason, foreign-key columns are indexed only where a query reads by them:
-- a parent row is never deleted, so no delete has to search its children.

-- Releases come first: deployments, environments and history refer to them.
CREATE TABLE releases (
    id           TEXT PRIMARY KEY NOT NULL,
    app          TEXT NOT NULL,
    version      TEXT NOT NULL,
    dir          TEXT NOT NULL,
    artifact_dir TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    removed_at   INTEGER
);
-- `releases(app)` lists the live releases of one app, newest first; the
-- index holds only live ones and ends in the rowid, the tie-break.
CREATE INDEX releases_live_by_app ON releases (app, created_at)
    WHERE removed_at IS NULL;

CREATE TABLE deployments (
    id         INTEGER PRIMARY KEY,
    app        TEXT NOT NULL,
    version    TEXT NOT NULL,
    spec_hash  TEXT NOT NULL,
    spec_json  TEXT NOT NULL CHECK (json_valid(spec_json)),
    release_id TEXT REFERENCES releases (id),
    state      TEXT NOT NULL
               CHECK (state IN ('running', 'succeeded', 'failed', 'rolled-back', 'interrupted')),
    reason     TEXT,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    -- A deployment has an end time exactly when it is no longer running.
    CHECK ((state = 'running') = (ended_at IS NULL))
);
CREATE INDEX deployments_by_app ON deployments (app, id);
CREATE INDEX deployments_by_spec ON deployments (app, spec_hash, id);
-- Start-up recovery looks for these; there are almost never any.
CREATE INDEX deployments_running ON deployments (id) WHERE state = 'running';

CREATE TABLE steps (
    id            INTEGER PRIMARY KEY,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    environment   TEXT,
    kind          TEXT NOT NULL,
    plugin        TEXT NOT NULL,
    attempt       INTEGER NOT NULL CHECK (attempt >= 0),
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    outcome       TEXT,
    message       TEXT,
    -- A step has an outcome exactly when it has ended.
    CHECK ((ended_at IS NULL) = (outcome IS NULL))
);
CREATE INDEX steps_by_deployment ON steps (deployment_id, id);

CREATE TABLE step_logs (
    id          INTEGER PRIMARY KEY,
    step_id     INTEGER NOT NULL REFERENCES steps (id),
    at          INTEGER NOT NULL,
    level       TEXT NOT NULL,
    source      TEXT NOT NULL,
    message     TEXT NOT NULL,
    -- [[key, value], ...]: keeps order and repeated keys.
    fields_json TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(fields_json))
);
CREATE INDEX step_logs_by_step ON step_logs (step_id, id);

-- One row per (app, environment): what runs there now and what to roll
-- back to. Small and keyed by its primary key, so WITHOUT ROWID.
CREATE TABLE environments (
    app               TEXT NOT NULL,
    environment       TEXT NOT NULL,
    current_release   TEXT REFERENCES releases (id),
    last_good_release TEXT REFERENCES releases (id),
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (app, environment)
) WITHOUT ROWID;

CREATE TABLE env_history (
    id            INTEGER PRIMARY KEY,
    app           TEXT NOT NULL,
    environment   TEXT NOT NULL,
    release_id    TEXT REFERENCES releases (id),
    deployment_id INTEGER REFERENCES deployments (id),
    event         TEXT NOT NULL,
    at            INTEGER NOT NULL
);
CREATE INDEX env_history_by_env ON env_history (app, environment, id);

-- A spec (version + source + params) that failed; not redeployed on its own.
CREATE TABLE pins (
    app           TEXT NOT NULL,
    spec_hash     TEXT NOT NULL,
    reason        TEXT NOT NULL,
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    at            INTEGER NOT NULL,
    PRIMARY KEY (app, spec_hash)
) WITHOUT ROWID;
