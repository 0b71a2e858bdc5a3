-- The first schema. Migrations are applied in order at start, each in one
-- transaction, and recorded in PRAGMA user_version.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    password_hash TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    idle_expires_at     INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
) STRICT;

CREATE TABLE objects (
    id          TEXT PRIMARY KEY,
    phase       TEXT NOT NULL CHECK (phase IN ('baseimage', 'environment', 'deployment', 'app')),
    name        TEXT NOT NULL,
    parent_id   TEXT REFERENCES objects(id),
    owner_id    TEXT NOT NULL REFERENCES users(id),
    kind        TEXT NOT NULL,
    platform    TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    backend     TEXT NOT NULL,
    subphase    TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    shared      INTEGER NOT NULL DEFAULT 0,
    spec        TEXT NOT NULL,
    backend_ref TEXT NOT NULL DEFAULT 'null',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK ((phase = 'baseimage') = (parent_id IS NULL))
) STRICT;
CREATE INDEX objects_parent ON objects(parent_id);
CREATE INDEX objects_owner_phase ON objects(owner_id, phase);

CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    object_id   TEXT NOT NULL REFERENCES objects(id),
    user_id     TEXT NOT NULL REFERENCES users(id),
    purpose     TEXT NOT NULL CHECK (purpose IN ('run', 'configure')),
    state       TEXT NOT NULL,
    error       TEXT,
    backend_ref TEXT NOT NULL DEFAULT 'null',
    connection  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX instances_user ON instances(user_id, state);
CREATE INDEX instances_object ON instances(object_id, state);
-- One live instance of an object per user: opening it again returns that one.
CREATE UNIQUE INDEX instances_one_live
    ON instances(object_id, user_id) WHERE state IN ('starting', 'running');

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    object_id        TEXT REFERENCES objects(id) ON DELETE SET NULL,
    instance_id      TEXT REFERENCES instances(id) ON DELETE SET NULL,
    user_id          TEXT NOT NULL REFERENCES users(id),
    state            TEXT NOT NULL,
    progress         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
) STRICT;
CREATE INDEX jobs_state ON jobs(state);
-- The per-object lock: at most one unfinished job per object and per instance.
CREATE UNIQUE INDEX jobs_one_active_per_object
    ON jobs(object_id) WHERE state IN ('queued', 'running') AND object_id IS NOT NULL AND instance_id IS NULL;
CREATE UNIQUE INDEX jobs_one_active_per_instance
    ON jobs(instance_id) WHERE state IN ('queued', 'running') AND instance_id IS NOT NULL;

CREATE TABLE job_steps (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    step    TEXT NOT NULL,
    state   TEXT NOT NULL,
    error   TEXT,
    PRIMARY KEY (job_id, idx)
) STRICT;

CREATE TABLE job_logs (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    level  TEXT NOT NULL,
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT;
