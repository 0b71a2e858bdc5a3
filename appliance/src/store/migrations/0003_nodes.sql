-- Nodes: one-time join tokens, the node registry, and the desired static
-- DHCP leases the appliance holds for the agents (issue 6).

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,           -- the public 8-character id
    secret_hash TEXT NOT NULL,              -- SHA-256 hex of the secret
    created_by  TEXT,                       -- user id, NULL from the CLI
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,                    -- set once, whatever the join's outcome
    node_id     TEXT                        -- the node it made, if any
) STRICT;

CREATE TABLE nodes (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    api_addr          TEXT,                 -- the agent's mutual-TLS API, HOST:PORT
    facts             TEXT NOT NULL DEFAULT 'null',
    secret_hash       TEXT NOT NULL,        -- SHA-256 hex of the node secret
    state             TEXT NOT NULL CHECK (state IN ('available', 'unavailable', 'removed')),
    joined_at         INTEGER NOT NULL,
    last_heartbeat_at INTEGER,
    agent_started_at  INTEGER NOT NULL DEFAULT 0,
    sequence          INTEGER NOT NULL DEFAULT 0,
    removed_at        INTEGER
) STRICT;
-- One live node per name.
CREATE UNIQUE INDEX nodes_live_name ON nodes(name) WHERE state != 'removed';

CREATE TABLE leases (
    mac         TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL DEFAULT '',   -- '' is the local agent
    ip          TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX leases_node_ip ON leases(node_id, ip);
