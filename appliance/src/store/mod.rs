//! The store: lifecycle state in SQLite. **Only this module knows SQL.**
//!
//! Invariants:
//! - WAL journal, foreign keys on, a busy timeout; migrations embedded and
//!   applied at open, each in one transaction, versioned by `user_version`.
//! - Every change of more than one row runs in one transaction.
//! - The per-object lock of the job engine is a partial unique index: at most
//!   one unfinished job per object and per instance. A conflicting insert is
//!   reported as [`StoreError::Conflict`].
//! - Secrets are stored hashed (sessions, tokens) or not at all; connection
//!   secrets are stored for the gateway and never returned by the web layer.
//!
//! Connections: one writer and a few readers, each behind a mutex. Queries
//! are short and run inline; the online backup runs on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::model::*;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_guest_host_keys.sql"),
    include_str!("migrations/0003_nodes.sql"),
];
const READERS: usize = 4;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("cannot open the store at {path}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the store to version {version}")]
    Migrate {
        /// The version that failed.
        version: usize,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database is newer than this program.
    #[error("the store is at schema version {found}, newer than this program's {supported}")]
    TooNew {
        /// Version on disk.
        found: i64,
        /// Newest known here.
        supported: usize,
    },
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule refused the change.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other SQLite failure.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    fn from_constraint(e: rusqlite::Error, what: &str) -> StoreError {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(what.to_owned())
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
}

/// A session row joined with its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The user.
    pub user: User,
    /// Last request time.
    pub last_seen_at: Timestamp,
    /// Idle expiry.
    pub idle_expires_at: Timestamp,
    /// Absolute expiry.
    pub absolute_expires_at: Timestamp,
}

/// A join token as checked: its secret hash, expiry and use.
pub type JoinTokenRow = (String, Timestamp, Option<Timestamp>);

/// What a new job looks like before it is stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Identifier.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// Object it locks.
    pub object_id: Option<String>,
    /// Instance it locks.
    pub instance_id: Option<String>,
    /// Who asked.
    pub user_id: String,
    /// Its steps, in order.
    pub steps: Vec<Step>,
}

/// Filters for listing objects.
#[derive(Debug, Clone, Default)]
pub struct ObjectFilter {
    /// Only this phase.
    pub phase: Option<Phase>,
    /// Only what this user may see: own objects, every Baseimage and shared Apps.
    pub visible_to: Option<String>,
    /// Only children of this object.
    pub parent_id: Option<String>,
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

/// Checkpoints the WAL every 200 ms (passive: never waits for readers or
/// the writer) while the store is open, and once more, truncating, when it
/// is dropped.
fn spawn_checkpointer(store: std::sync::Weak<Inner>, c: Connection) {
    let pass = move |mode: &str| {
        if let Err(e) = c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    };
    let spawned = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if store.strong_count() == 0 {
                pass("TRUNCATE");
                return;
            }
            pass("PASSIVE");
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no checkpoint thread: the WAL grows until the next start");
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut writer = open_conn(path).map_err(open_err)?;
        migrate(&mut writer)?;
        // Checkpoints (copying the WAL into the database, with an fsync)
        // run on a thread of their own, not in whichever commit crossed the
        // threshold: commits stay short.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        let checkpointer = open_conn(path).map_err(open_err)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_conn(path).map_err(open_err)?));
        }
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers,
        });
        spawn_checkpointer(Arc::downgrade(&inner), checkpointer);
        Ok(Store { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        for r in &self.inner.readers {
            if let Ok(g) = r.try_lock() {
                return g;
            }
        }
        // All busy: wait for one, spread by thread.
        let n = thread_slot() % self.inner.readers.len();
        self.inner.readers[n]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Schema version on disk.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .reader()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// A cheap query proving the database answers.
    pub fn ping(&self) -> Result<()> {
        self.reader().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// Writes a consistent copy of the live database to `dest` (SQLite's
    /// online backup API; readers and writers go on meanwhile).
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let src = open_conn(&self.inner.path).map_err(|source| StoreError::Open {
            path: self.inner.path.clone(),
            source,
        })?;
        let tmp = dest.with_extension("partial");
        let _ = std::fs::remove_file(&tmp);
        {
            let mut dst = Connection::open(&tmp).map_err(|source| StoreError::Open {
                path: tmp.clone(),
                source,
            })?;
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            backup.run_to_completion(256, Duration::from_millis(5), None)?;
        }
        std::fs::rename(&tmp, dest)
            .map_err(|e| StoreError::Corrupt(format!("rename backup: {e}")))?;
        Ok(())
    }

    // ---- users ------------------------------------------------------------

    /// Creates a user. A taken name is a conflict.
    pub fn create_user(&self, name: &str, role: Role, password_hash: &str) -> Result<User> {
        let user = User {
            id: new_id(),
            name: name.to_owned(),
            role,
            disabled: false,
            created_at: now(),
        };
        self.writer()
            .execute(
                "INSERT INTO users (id, name, role, password_hash, disabled, created_at) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                params![user.id, user.name, role.as_str(), password_hash, user.created_at],
            )
            .map_err(|e| StoreError::from_constraint(e, "a user with that name exists"))?;
        Ok(user)
    }

    /// A user by id.
    pub fn user(&self, id: &str) -> Result<User> {
        self.reader()
            .query_row(
                "SELECT id, name, role, disabled, created_at FROM users WHERE id = ?1",
                [id],
                user_from_row,
            )
            .optional()?
            .ok_or(StoreError::NotFound)?
    }

    /// A user and their password hash, by name.
    pub fn user_by_name(&self, name: &str) -> Result<(User, String)> {
        let row = self
            .reader()
            .query_row(
                "SELECT id, name, role, disabled, created_at, password_hash FROM users WHERE name = ?1",
                [name],
                |r| Ok((user_from_row(r), r.get::<_, String>(5)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound)?;
        Ok((row.0??, row.1))
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT id, name, role, disabled, created_at FROM users ORDER BY name",
        )?;
        let rows = st.query_map([], user_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// How many admins can log in.
    pub fn active_admins(&self) -> Result<i64> {
        Ok(self.reader().query_row(
            "SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0",
            [],
            |r| r.get(0),
        )?)
    }

    /// Replaces a password hash and ends the user's sessions.
    pub fn set_password(&self, user_id: &str, password_hash: &str) -> Result<()> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2 WHERE id = ?1",
            params![user_id, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
        tx.commit()?;
        Ok(())
    }

    /// Disables or enables a user; disabling ends their sessions.
    pub fn set_disabled(&self, user_id: &str, disabled: bool) -> Result<()> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE users SET disabled = ?2 WHERE id = ?1",
            params![user_id, disabled],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        if disabled {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    // ---- sessions ----------------------------------------------------------

    /// Stores a new session.
    pub fn create_session(
        &self,
        token_hash: &str,
        user_id: &str,
        idle_expires_at: Timestamp,
        absolute_expires_at: Timestamp,
    ) -> Result<()> {
        let t = now();
        self.writer().execute(
            "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
            params![token_hash, user_id, t, idle_expires_at, absolute_expires_at],
        )?;
        Ok(())
    }

    /// A session and its user.
    pub fn session(&self, token_hash: &str) -> Result<Option<SessionRow>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT u.id, u.name, u.role, u.disabled, u.created_at, s.last_seen_at, s.idle_expires_at, s.absolute_expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1",
        )?;
        let row = st
            .query_row([token_hash], |r| {
                Ok((
                    user_from_row(r),
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((user, last_seen_at, idle_expires_at, absolute_expires_at)) => {
                Ok(Some(SessionRow {
                    user: user??,
                    last_seen_at,
                    idle_expires_at,
                    absolute_expires_at,
                }))
            }
        }
    }

    /// Records activity on a session, extending its idle expiry.
    pub fn touch_session(&self, token_hash: &str, idle_expires_at: Timestamp) -> Result<()> {
        self.writer().execute(
            "UPDATE sessions SET last_seen_at = ?2, idle_expires_at = ?3 WHERE token_hash = ?1",
            params![token_hash, now(), idle_expires_at],
        )?;
        Ok(())
    }

    /// Ends a session.
    pub fn delete_session(&self, token_hash: &str) -> Result<()> {
        self.writer()
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
        Ok(())
    }

    /// Removes expired sessions; returns how many.
    pub fn purge_sessions(&self, at: Timestamp) -> Result<usize> {
        Ok(self.writer().execute(
            "DELETE FROM sessions WHERE idle_expires_at <= ?1 OR absolute_expires_at <= ?1",
            [at],
        )?)
    }

    // ---- API tokens ----------------------------------------------------------

    /// Stores a token (by its hash).
    pub fn create_token(
        &self,
        user_id: &str,
        name: &str,
        token_hash: &str,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiToken> {
        let t = ApiToken {
            id: new_id(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            created_at: now(),
            expires_at,
            last_used_at: None,
        };
        self.writer().execute(
            "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.id, t.user_id, t.name, token_hash, t.created_at, t.expires_at],
        ).map_err(|e| StoreError::from_constraint(e, "token"))?;
        Ok(t)
    }

    /// The user a token acts as, if the token is valid at `at`.
    pub fn token_user(&self, token_hash: &str, at: Timestamp) -> Result<Option<User>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT u.id, u.name, u.role, u.disabled, u.created_at FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?1 AND (t.expires_at IS NULL OR t.expires_at > ?2)",
        )?;
        let row = st
            .query_row(params![token_hash, at], user_from_row)
            .optional()?;
        row.transpose()
    }

    /// A user's tokens.
    pub fn tokens(&self, user_id: &str) -> Result<Vec<ApiToken>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT id, user_id, name, created_at, expires_at, last_used_at FROM api_tokens WHERE user_id = ?1 ORDER BY created_at",
        )?;
        let rows = st.query_map([user_id], |r| {
            Ok(ApiToken {
                id: r.get(0)?,
                user_id: r.get(1)?,
                name: r.get(2)?,
                created_at: r.get(3)?,
                expires_at: r.get(4)?,
                last_used_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes a token of a user.
    pub fn delete_token(&self, user_id: &str, token_id: &str) -> Result<()> {
        let n = self.writer().execute(
            "DELETE FROM api_tokens WHERE id = ?1 AND user_id = ?2",
            params![token_id, user_id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ---- nodes ---------------------------------------------------------------

    /// Stores a new join token (by the hash of its secret).
    pub fn create_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        created_by: Option<&str>,
        expires_at: Timestamp,
    ) -> Result<JoinTokenInfo> {
        let t = now();
        self.writer()
            .execute(
                "INSERT INTO join_tokens (id, secret_hash, created_by, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, secret_hash, created_by, t, expires_at],
            )
            .map_err(|e| StoreError::from_constraint(e, "a join token with that id exists"))?;
        Ok(JoinTokenInfo {
            id: id.to_owned(),
            created_at: t,
            expires_at,
            used_at: None,
        })
    }

    /// A join token's secret hash, expiry and use, by id.
    pub fn join_token(&self, id: &str) -> Result<Option<JoinTokenRow>> {
        Ok(self
            .reader()
            .query_row(
                "SELECT secret_hash, expires_at, used_at FROM join_tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Marks a token used, once: true if this call used it (it was unused).
    pub fn use_join_token(&self, id: &str, at: Timestamp) -> Result<bool> {
        Ok(self.writer().execute(
            "UPDATE join_tokens SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL",
            params![id, at],
        )? == 1)
    }

    /// Join tokens, newest first.
    pub fn join_tokens(&self) -> Result<Vec<JoinTokenInfo>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT id, created_at, expires_at, used_at FROM join_tokens ORDER BY created_at DESC, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(JoinTokenInfo {
                id: r.get(0)?,
                created_at: r.get(1)?,
                expires_at: r.get(2)?,
                used_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Registers a joined node (available) and links the token to it. A live
    /// node with the same name is a conflict.
    pub fn insert_node(&self, node: &Node, secret_hash: &str, token_id: &str) -> Result<()> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO nodes (id, name, api_addr, facts, secret_hash, state, joined_at, last_heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                node.id,
                node.name,
                node.api_addr,
                json(&node.facts),
                secret_hash,
                node.state.as_str(),
                node.joined_at,
                node.last_heartbeat_at
            ],
        )
        .map_err(|e| StoreError::from_constraint(e, "a node with that name exists"))?;
        tx.execute(
            "UPDATE join_tokens SET node_id = ?2 WHERE id = ?1",
            params![token_id, node.id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A node by id (removed ones included).
    pub fn node(&self, id: &str) -> Result<Node> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?1"))?;
        st.query_row([id], node_from_row)
            .optional()?
            .ok_or(StoreError::NotFound)?
    }

    /// What a heartbeat is checked against: the secret hash and the state.
    pub fn node_auth(&self, id: &str) -> Result<Option<(String, NodeState)>> {
        let c = self.reader();
        let mut st = c.prepare_cached("SELECT secret_hash, state FROM nodes WHERE id = ?1")?;
        let row = st
            .query_row([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((h, s)) => Ok(Some((h, parse(s)?))),
        }
    }

    /// What a heartbeat is checked against: the node's secret hash, state,
    /// and the last (agent start, sequence) recorded.
    pub fn node_beat_state(&self, id: &str) -> Result<Option<(String, NodeState, i64, i64)>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT secret_hash, state, agent_started_at, sequence FROM nodes WHERE id = ?1",
        )?;
        let row = st
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((h, s, started, seq)) => Ok(Some((h, parse(s)?, started, seq))),
        }
    }

    /// Records many available nodes' heartbeats (id, time, agent start,
    /// sequence, facts) in one transaction. Rows are changed only where the
    /// node is still available and the (agent start, sequence) grew; the
    /// ids whose row did not change are returned.
    pub fn record_heartbeats(
        &self,
        beats: &[(String, Timestamp, i64, i64, String)],
    ) -> Result<Vec<String>> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let mut skipped = Vec::new();
        {
            let mut st = tx.prepare_cached(
                "UPDATE nodes SET facts = ?2, last_heartbeat_at = ?3, agent_started_at = ?4, sequence = ?5
                 WHERE id = ?1 AND state = 'available' AND (agent_started_at < ?4 OR (agent_started_at = ?4 AND sequence < ?5))",
            )?;
            for (id, at, started, seq, facts) in beats {
                if st.execute(params![id, facts, at, started, seq])? == 0 {
                    skipped.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(skipped)
    }

    /// Records a heartbeat: facts, time, sequence; an unavailable node is
    /// available again. Returns the state before, or `None` when the node
    /// is unknown, removed, or the sequence did not grow (nothing changed).
    pub fn record_heartbeat(
        &self,
        id: &str,
        at: Timestamp,
        started_at: i64,
        sequence: i64,
        facts: &str,
    ) -> Result<Option<NodeState>> {
        let c = self.writer();
        let before: Option<String> = c
            .prepare_cached("SELECT state FROM nodes WHERE id = ?1 AND state != 'removed'")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        let Some(before) = before else {
            return Ok(None);
        };
        let n = c
            .prepare_cached(
                "UPDATE nodes SET facts = ?2, last_heartbeat_at = ?3, agent_started_at = ?4, sequence = ?5, state = 'available'
                 WHERE id = ?1 AND state != 'removed' AND (agent_started_at < ?4 OR (agent_started_at = ?4 AND sequence < ?5))",
            )?
            .execute(params![id, facts, at, started_at, sequence])?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(parse(before)?))
    }

    /// Marks available nodes whose last heartbeat is older than `before`
    /// unavailable; returns their ids.
    pub fn mark_stale_nodes(&self, before: Timestamp) -> Result<Vec<String>> {
        let c = self.writer();
        let mut st = c.prepare_cached(
            "UPDATE nodes SET state = 'unavailable'
             WHERE state = 'available' AND (last_heartbeat_at IS NULL OR last_heartbeat_at < ?1)
             RETURNING id",
        )?;
        let rows = st.query_map([before], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Nodes, by name; `removed` includes removed ones.
    pub fn nodes(&self, removed: bool) -> Result<Vec<Node>> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE ?1 OR state != 'removed' ORDER BY name, joined_at"
        ))?;
        let rows = st.query_map([removed], node_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Removes a node (it stays listed as removed; its heartbeats are
    /// refused). Not found if unknown or already removed.
    pub fn remove_node(&self, id: &str, at: Timestamp) -> Result<()> {
        let n = self.writer().execute(
            "UPDATE nodes SET state = 'removed', removed_at = ?2 WHERE id = ?1 AND state != 'removed'",
            params![id, at],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The desired leases of one node's agent (`""` is the local agent).
    pub fn leases(&self, node_id: &str) -> Result<Vec<(String, String, String)>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT mac, ip, hostname FROM leases WHERE node_id = ?1 ORDER BY mac",
        )?;
        let rows = st.query_map([node_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores (or replaces) the desired lease of a MAC.
    pub fn put_lease(&self, node_id: &str, mac: &str, ip: &str, hostname: &str) -> Result<()> {
        self.writer()
            .execute(
                "INSERT INTO leases (mac, node_id, ip, hostname, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (mac) DO UPDATE SET node_id = ?2, ip = ?3, hostname = ?4",
                params![mac, node_id, ip, hostname, now()],
            )
            .map_err(|e| StoreError::from_constraint(e, "the address is leased to another MAC"))?;
        Ok(())
    }

    /// Forgets the desired lease of a MAC; true if there was one.
    pub fn delete_lease(&self, mac: &str) -> Result<bool> {
        Ok(self
            .writer()
            .execute("DELETE FROM leases WHERE mac = ?1", [mac])?
            == 1)
    }

    // ---- objects ------------------------------------------------------------

    /// An object by id.
    pub fn object(&self, id: &str) -> Result<Object> {
        let c = self.reader();
        let mut st =
            c.prepare_cached(&format!("SELECT {OBJECT_COLS} FROM objects WHERE id = ?1"))?;
        st.query_row([id], object_from_row)
            .optional()?
            .ok_or(StoreError::NotFound)?
    }

    /// Objects matching a filter, oldest first.
    pub fn objects(&self, f: &ObjectFilter) -> Result<Vec<Object>> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!(
            "SELECT {OBJECT_COLS} FROM objects
             WHERE (?1 IS NULL OR phase = ?1)
               AND (?2 IS NULL OR owner_id = ?2 OR phase = 'baseimage' OR (phase = 'app' AND shared = 1))
               AND (?3 IS NULL OR parent_id = ?3)
             ORDER BY created_at, id"
        ))?;
        let rows = st.query_map(
            params![f.phase.map(Phase::as_str), f.visible_to, f.parent_id],
            object_from_row,
        )?;
        rows.map(|r| r?).collect()
    }

    /// How many live (not deleted) environments a user owns.
    pub fn environments_owned(&self, user_id: &str) -> Result<u32> {
        Ok(self.reader().query_row(
            "SELECT count(*) FROM objects WHERE owner_id = ?1 AND phase = 'environment'",
            [user_id],
            |r| r.get(0),
        )?)
    }

    /// Stores a new object with the job that creates it, atomically. When
    /// `env_limit` is set and the object is an Environment, the owner's
    /// count is checked inside the same transaction.
    pub fn insert_object_with_job(
        &self,
        obj: &Object,
        job: &NewJob,
        env_limit: Option<u32>,
    ) -> Result<Job> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        if let (Some(limit), Phase::Environment) = (env_limit, obj.phase) {
            let n: u32 = tx.query_row(
                "SELECT count(*) FROM objects WHERE owner_id = ?1 AND phase = 'environment'",
                [&obj.owner_id],
                |r| r.get(0),
            )?;
            if n >= limit {
                return Err(StoreError::Conflict(format!(
                    "the limit of {limit} environment(s) per user is reached"
                )));
            }
        }
        tx.execute(
            &format!("INSERT INTO objects ({OBJECT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
            params![
                obj.id,
                obj.phase.as_str(),
                obj.name,
                obj.parent_id,
                obj.owner_id,
                obj.kind.as_str(),
                obj.platform.as_str(),
                obj.protocol.as_str(),
                obj.backend.as_str(),
                obj.subphase.as_str(),
                obj.status.as_str(),
                obj.error,
                obj.shared,
                json(&obj.spec),
                obj.backend_ref.to_string(),
                obj.created_at,
                obj.updated_at,
            ],
        )
        .map_err(|e| StoreError::from_constraint(e, "object"))?;
        let job = insert_job(&tx, job)?;
        tx.commit()?;
        Ok(job)
    }

    /// Queues a job on an existing object, marking it busy, atomically.
    /// `expect` lists the subphases the object may be in; anything else (or
    /// an unfinished job) is a conflict.
    pub fn enqueue_object_job(
        &self,
        object_id: &str,
        expect: &[Subphase],
        job: &NewJob,
    ) -> Result<Job> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let (sub, status): (String, String) = tx
            .query_row(
                "SELECT subphase, status FROM objects WHERE id = ?1",
                [object_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound)?;
        let sub: Subphase = sub
            .parse()
            .map_err(|e: UnknownName| StoreError::Corrupt(e.to_string()))?;
        if status == ObjectStatus::Busy.as_str() {
            return Err(StoreError::Conflict(
                "another job is working on this object".into(),
            ));
        }
        if !expect.contains(&sub) {
            return Err(StoreError::Conflict(format!(
                "the object is in subphase {sub}, not {}",
                expect
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        tx.execute(
            "UPDATE objects SET status = 'busy', error = NULL, updated_at = ?2 WHERE id = ?1",
            params![object_id, now()],
        )?;
        let job = insert_job(&tx, job)?;
        tx.commit()?;
        Ok(job)
    }

    /// Sets an object's subphase.
    pub fn set_object_subphase(&self, id: &str, sub: Subphase) -> Result<()> {
        self.update_object(id, "subphase = ?2", params![id, sub.as_str(), now()])
    }

    /// Sets an object's status and error.
    pub fn set_object_status(
        &self,
        id: &str,
        status: ObjectStatus,
        error: Option<&str>,
    ) -> Result<()> {
        self.update_object(
            id,
            "status = ?2, error = ?4",
            params![id, status.as_str(), now(), error],
        )
    }

    /// Stores the backend's identifiers of an object.
    pub fn set_object_backend_ref(&self, id: &str, r: &serde_json::Value) -> Result<()> {
        self.update_object(id, "backend_ref = ?2", params![id, r.to_string(), now()])
    }

    fn update_object(&self, _id: &str, set: &str, p: impl rusqlite::Params) -> Result<()> {
        let n = self.writer().execute(
            &format!("UPDATE objects SET {set}, updated_at = ?3 WHERE id = ?1"),
            p,
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes an object row. Refused while children or instances refer to it.
    pub fn delete_object(&self, id: &str) -> Result<()> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let children: i64 = tx.query_row(
            "SELECT count(*) FROM objects WHERE parent_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if children > 0 {
            return Err(StoreError::Conflict("the object has children".into()));
        }
        tx.execute(
            "DELETE FROM instances WHERE object_id = ?1 AND state IN ('stopped', 'failed', 'lost')",
            [id],
        )?;
        tx.execute(
            "UPDATE jobs SET object_id = NULL WHERE object_id = ?1",
            [id],
        )?;
        tx.execute("DELETE FROM objects WHERE id = ?1", [id])
            .map_err(|e| StoreError::from_constraint(e, "the object has live instances"))?;
        tx.commit()?;
        Ok(())
    }

    /// Counts an object's children and live instances.
    pub fn object_dependents(&self, id: &str) -> Result<(i64, i64)> {
        let c = self.reader();
        let children = c.query_row(
            "SELECT count(*) FROM objects WHERE parent_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        let live = c.query_row(
            "SELECT count(*) FROM instances WHERE object_id = ?1 AND state IN ('starting', 'running', 'stopping')",
            [id],
            |r| r.get(0),
        )?;
        Ok((children, live))
    }

    // ---- instances ------------------------------------------------------------

    /// Opens an instance of an object for a user: returns the user's live one
    /// and its latest job if there is one (`false`), else stores a new
    /// instance in `starting` with its start job (`true`), atomically.
    pub fn open_instance(
        &self,
        object_id: &str,
        user_id: &str,
        purpose: Purpose,
        job: impl FnOnce(&str) -> NewJob,
    ) -> Result<(Instance, Job, bool)> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let existing = tx
            .query_row(
                &format!("SELECT {INSTANCE_COLS} FROM instances WHERE object_id = ?1 AND user_id = ?2 AND state IN ('starting', 'running')"),
                params![object_id, user_id],
                instance_from_row,
            )
            .optional()?;
        if let Some(inst) = existing {
            let inst = inst?;
            let job = tx
                .query_row(
                    &format!("SELECT {JOB_COLS} FROM jobs WHERE instance_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"),
                    [&inst.id],
                    job_from_row,
                )
                .optional()?
                .ok_or_else(|| StoreError::Corrupt("live instance without a job".into()))??;
            return Ok((inst, job, false));
        }
        let t = now();
        let inst = Instance {
            id: new_id(),
            object_id: object_id.to_owned(),
            user_id: user_id.to_owned(),
            purpose,
            state: InstanceState::Starting,
            error: None,
            backend_ref: serde_json::Value::Null,
            connection: None,
            created_at: t,
            updated_at: t,
        };
        tx.execute(
            &format!("INSERT INTO instances ({INSTANCE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL, 'null', NULL, ?6, ?6)"),
            params![inst.id, inst.object_id, inst.user_id, purpose.as_str(), inst.state.as_str(), t],
        )
        .map_err(|e| StoreError::from_constraint(e, "instance"))?;
        let job = insert_job(&tx, &job(&inst.id))?;
        tx.commit()?;
        Ok((inst, job, true))
    }

    /// An instance by id.
    pub fn instance(&self, id: &str) -> Result<Instance> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE id = ?1"
        ))?;
        st.query_row([id], instance_from_row)
            .optional()?
            .ok_or(StoreError::NotFound)?
    }

    /// Instances, newest first: a user's, or everyone's; `active` limits to
    /// starting, running and stopping ones.
    pub fn instances(&self, user_id: Option<&str>, active: bool) -> Result<Vec<Instance>> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!(
            "SELECT {INSTANCE_COLS} FROM instances
             WHERE (?1 IS NULL OR user_id = ?1)
               AND (?2 = 0 OR state IN ('starting', 'running', 'stopping'))
             ORDER BY created_at DESC, id LIMIT 1000"
        ))?;
        let rows = st.query_map(params![user_id, active], instance_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Sets an instance's state (and error), returning the previous state.
    pub fn set_instance_state(
        &self,
        id: &str,
        state: InstanceState,
        error: Option<&str>,
    ) -> Result<InstanceState> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let prev: String = tx
            .query_row("SELECT state FROM instances WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(StoreError::NotFound)?;
        tx.execute(
            "UPDATE instances SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), error, now()],
        )?;
        tx.commit()?;
        prev.parse()
            .map_err(|e: UnknownName| StoreError::Corrupt(e.to_string()))
    }

    /// Stores what the backend started: its identifiers and the connection.
    pub fn set_instance_started(
        &self,
        id: &str,
        backend_ref: &serde_json::Value,
        connection: &crate::model::Connection,
    ) -> Result<()> {
        let n = self.writer().execute(
            "UPDATE instances SET state = 'running', backend_ref = ?2, connection = ?3, error = NULL, updated_at = ?4 WHERE id = ?1",
            params![id, backend_ref.to_string(), json(connection), now()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Stores an instance's backend identifiers before the backend acts, so
    /// that a crash can be cleaned up.
    pub fn set_instance_backend_ref(
        &self,
        id: &str,
        backend_ref: &serde_json::Value,
    ) -> Result<()> {
        self.writer().execute(
            "UPDATE instances SET backend_ref = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, backend_ref.to_string(), now()],
        )?;
        Ok(())
    }

    /// Queues a stop job for an instance, atomically with its move to
    /// `stopping`. Stopping a stopped instance is a conflict.
    pub fn enqueue_stop(&self, instance_id: &str, job: &NewJob) -> Result<Job> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let state: String = tx
            .query_row(
                "SELECT state FROM instances WHERE id = ?1",
                [instance_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(StoreError::NotFound)?;
        if !matches!(state.as_str(), "starting" | "running" | "failed" | "lost") {
            return Err(StoreError::Conflict(format!("the instance is {state}")));
        }
        // A start job still queued is cancelled in favour of the stop.
        tx.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE instance_id = ?1 AND state IN ('queued', 'running')",
            [instance_id],
        )?;
        let active: i64 = tx.query_row(
            "SELECT count(*) FROM jobs WHERE instance_id = ?1 AND state IN ('queued', 'running')",
            [instance_id],
            |r| r.get(0),
        )?;
        if active > 0 {
            tx.commit()?;
            return Err(StoreError::Conflict(
                "the instance is still starting; its start was cancelled, try again".into(),
            ));
        }
        tx.execute(
            "UPDATE instances SET state = 'stopping', updated_at = ?2 WHERE id = ?1",
            params![instance_id, now()],
        )?;
        let job = insert_job(&tx, job)?;
        tx.commit()?;
        Ok(job)
    }

    // ---- jobs -------------------------------------------------------------------

    /// Stores a job that locks nothing but itself (or an instance).
    pub fn insert_job(&self, job: &NewJob) -> Result<Job> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let j = insert_job(&tx, job)?;
        tx.commit()?;
        Ok(j)
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Result<Job> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"))?;
        st.query_row([id], job_from_row)
            .optional()?
            .ok_or(StoreError::NotFound)?
    }

    /// Jobs, newest first: a user's or everyone's.
    pub fn jobs(&self, user_id: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE (?1 IS NULL OR user_id = ?1) ORDER BY created_at DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![user_id, limit], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Unfinished jobs, oldest first (for the engine at start).
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>> {
        let c = self.reader();
        let mut st = c.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, rowid"
        ))?;
        let rows = st.query_map([], job_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// A job's steps in order.
    pub fn job_steps(&self, job_id: &str) -> Result<Vec<JobStep>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT idx, step, state, error FROM job_steps WHERE job_id = ?1 ORDER BY idx",
        )?;
        let rows = st.query_map([job_id], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (idx, step, state, error) = row?;
            out.push(JobStep {
                idx,
                step: serde_json::from_str(&step)
                    .map_err(|e| StoreError::Corrupt(format!("step: {e}")))?,
                state: state
                    .parse()
                    .map_err(|e: UnknownName| StoreError::Corrupt(e.to_string()))?,
                error,
            });
        }
        Ok(out)
    }

    /// Marks a job running (counting an attempt).
    pub fn start_job(&self, id: &str) -> Result<()> {
        self.writer().execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = coalesce(started_at, ?2) WHERE id = ?1",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Sets a step's state and the job's progress in one transaction.
    pub fn set_step_state(
        &self,
        job_id: &str,
        idx: u32,
        state: StepState,
        error: Option<&str>,
        progress: u8,
    ) -> Result<()> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE job_steps SET state = ?3, error = ?4 WHERE job_id = ?1 AND idx = ?2",
            params![job_id, idx, state.as_str(), error],
        )?;
        tx.execute(
            "UPDATE jobs SET progress = ?2 WHERE id = ?1",
            params![job_id, progress],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a job, and in the same transaction applies the final state of the
    /// object and instance it worked on.
    pub fn finish_job(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
        effects: &FinishEffects,
    ) -> Result<()> {
        let mut c = self.writer();
        let tx = c.transaction()?;
        let t = now();
        tx.execute(
            "UPDATE jobs SET state = ?2, error = ?3, finished_at = ?4, progress = CASE WHEN ?2 = 'succeeded' THEN 100 ELSE progress END WHERE id = ?1",
            params![id, state.as_str(), error, t],
        )?;
        if let Some((obj, status, err)) = &effects.object_status {
            tx.execute(
                "UPDATE objects SET status = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                params![obj, status.as_str(), err, t],
            )?;
        }
        if let Some((inst, st, err)) = &effects.instance_state {
            tx.execute(
                "UPDATE instances SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
                params![inst, st.as_str(), err, t],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Asks a job to cancel. Returns whether it was still unfinished.
    pub fn request_cancel(&self, id: &str) -> Result<bool> {
        let n = self.writer().execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state IN ('queued', 'running')",
            [id],
        )?;
        Ok(n > 0)
    }

    /// Whether a cancel was asked for.
    pub fn cancel_requested(&self, id: &str) -> Result<bool> {
        Ok(self.reader().query_row(
            "SELECT cancel_requested FROM jobs WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?)
    }

    /// Appends a log line; returns its sequence number.
    pub fn append_log(&self, job_id: &str, level: &str, line: &str) -> Result<LogLine> {
        let c = self.writer();
        let ts = now();
        let seq: i64 = c.query_row(
            "INSERT INTO job_logs (job_id, seq, ts, level, line)
             VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM job_logs WHERE job_id = ?1), ?2, ?3, ?4)
             RETURNING seq",
            params![job_id, ts, level, line],
            |r| r.get(0),
        )?;
        Ok(LogLine {
            seq,
            ts,
            level: level.to_owned(),
            line: line.to_owned(),
        })
    }

    /// Log lines after `after`, at most `limit`.
    pub fn logs(&self, job_id: &str, after: i64, limit: u32) -> Result<Vec<LogLine>> {
        let c = self.reader();
        let mut st = c.prepare_cached(
            "SELECT seq, ts, level, line FROM job_logs WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![job_id, after, limit], |r| {
            Ok(LogLine {
                seq: r.get(0)?,
                ts: r.get(1)?,
                level: r.get(2)?,
                line: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// A guest host key pinned at first contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedHostKey {
    /// `instance:<id>` or `object:<id>`.
    pub subject: String,
    /// OpenSSH public key text without comment.
    pub public_key: String,
    /// `SHA256:...`
    pub fingerprint: String,
    /// When it was pinned.
    pub pinned_at: Timestamp,
}

impl Store {
    // ---- guest host keys ---------------------------------------------------

    /// The key pinned for `subject`, if any.
    pub fn guest_host_key(&self, subject: &str) -> Result<Option<PinnedHostKey>> {
        Ok(self
            .reader()
            .query_row(
                "SELECT subject, public_key, fingerprint, pinned_at FROM guest_host_keys WHERE subject = ?1",
                [subject],
                |r| {
                    Ok(PinnedHostKey {
                        subject: r.get(0)?,
                        public_key: r.get(1)?,
                        fingerprint: r.get(2)?,
                        pinned_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Pins `public_key` for `subject` unless a key is pinned already, and
    /// returns the key in force (the earlier one if there was one: the
    /// caller compares). One statement, so two first contacts cannot both win.
    pub fn pin_guest_host_key(
        &self,
        subject: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<PinnedHostKey> {
        {
            let c = self.writer();
            c.execute(
                "INSERT INTO guest_host_keys (subject, public_key, fingerprint, pinned_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (subject) DO NOTHING",
                params![subject, public_key, fingerprint, now()],
            )?;
        }
        self.guest_host_key(subject)?.ok_or(StoreError::NotFound)
    }

    /// Forgets the pin of `subject` (its guest is gone for good, or an
    /// admin accepted a rebuilt guest). Returns whether there was one.
    pub fn forget_guest_host_key(&self, subject: &str) -> Result<bool> {
        let n = self
            .writer()
            .execute("DELETE FROM guest_host_keys WHERE subject = ?1", [subject])?;
        Ok(n > 0)
    }
}

/// What ending a job changes besides the job row.
#[derive(Debug, Clone, Default)]
pub struct FinishEffects {
    /// An object's new status and error.
    pub object_status: Option<(String, ObjectStatus, Option<String>)>,
    /// An instance's new state and error.
    pub instance_state: Option<(String, InstanceState, Option<String>)>,
}

fn thread_slot() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    // Truncation is fine: this only spreads waiters over readers.
    #[allow(clippy::cast_possible_truncation)]
    let v = h.finish() as usize;
    v
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn insert_job(tx: &rusqlite::Transaction<'_>, job: &NewJob) -> Result<Job> {
    let t = now();
    tx.execute(
        "INSERT INTO jobs (id, kind, object_id, instance_id, user_id, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
        params![job.id, job.kind.as_str(), job.object_id, job.instance_id, job.user_id, t],
    )
    .map_err(|e| StoreError::from_constraint(e, "another job is working on this object"))?;
    for (i, step) in job.steps.iter().enumerate() {
        tx.execute(
            "INSERT INTO job_steps (job_id, idx, step, state) VALUES (?1, ?2, ?3, 'pending')",
            params![job.id, i64::try_from(i).unwrap_or(i64::MAX), json(step)],
        )?;
    }
    Ok(Job {
        id: job.id.clone(),
        kind: job.kind,
        object_id: job.object_id.clone(),
        instance_id: job.instance_id.clone(),
        user_id: job.user_id.clone(),
        state: JobState::Queued,
        progress: 0,
        error: None,
        cancel_requested: false,
        attempts: 0,
        created_at: t,
        started_at: None,
        finished_at: None,
    })
}

fn migrate(c: &mut Connection) -> Result<()> {
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(version).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: version,
            supported: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let v = i + 1;
        let tx = c
            .transaction()
            .map_err(|source| StoreError::Migrate { version: v, source })?;
        tx.execute_batch(sql)
            .and_then(|_| tx.pragma_update(None, "user_version", v))
            .map_err(|source| StoreError::Migrate { version: v, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migrate { version: v, source })?;
    }
    Ok(())
}

fn parse<T: std::str::FromStr<Err = UnknownName>>(s: String) -> Result<T> {
    s.parse()
        .map_err(|e: UnknownName| StoreError::Corrupt(e.to_string()))
}

const NODE_COLS: &str =
    "id, name, api_addr, facts, state, joined_at, last_heartbeat_at, removed_at";

fn node_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Node>> {
    let facts: String = r.get(3)?;
    let state: String = r.get(4)?;
    let node = (|| {
        Ok(Node {
            id: r.get(0)?,
            name: r.get(1)?,
            api_addr: r.get(2)?,
            facts: serde_json::from_str(&facts)
                .map_err(|e| StoreError::Corrupt(format!("node facts: {e}")))?,
            state: parse(state)?,
            joined_at: r.get(5)?,
            last_heartbeat_at: r.get(6)?,
            removed_at: r.get(7)?,
        })
    })();
    Ok(node)
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<Result<User>> {
    let role: String = r.get(2)?;
    Ok(Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        role: match parse(role) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        },
        disabled: r.get(3)?,
        created_at: r.get(4)?,
    }))
}

const OBJECT_COLS: &str = "id, phase, name, parent_id, owner_id, kind, platform, protocol, backend, subphase, status, error, shared, spec, backend_ref, created_at, updated_at";

fn object_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Object>> {
    let texts: [String; 7] = [
        r.get(1)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ];
    let spec: String = r.get(13)?;
    let backend_ref: String = r.get(14)?;
    let build = || -> Result<Object> {
        let [phase, kind, platform, protocol, backend, subphase, status] = texts.clone();
        Ok(Object {
            id: r.get(0)?,
            phase: parse(phase)?,
            name: r.get(2)?,
            parent_id: r.get(3)?,
            owner_id: r.get(4)?,
            kind: parse(kind)?,
            platform: parse(platform)?,
            protocol: parse(protocol)?,
            backend: parse(backend)?,
            subphase: parse(subphase)?,
            status: parse(status)?,
            error: r.get(11)?,
            shared: r.get(12)?,
            spec: serde_json::from_str(&spec)
                .map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?,
            backend_ref: serde_json::from_str(&backend_ref)
                .map_err(|e| StoreError::Corrupt(format!("backend_ref: {e}")))?,
            created_at: r.get(15)?,
            updated_at: r.get(16)?,
        })
    };
    Ok(build())
}

const INSTANCE_COLS: &str =
    "id, object_id, user_id, purpose, state, error, backend_ref, connection, created_at, updated_at";

fn instance_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Instance>> {
    let purpose: String = r.get(3)?;
    let state: String = r.get(4)?;
    let backend_ref: String = r.get(6)?;
    let connection: Option<String> = r.get(7)?;
    let build = || -> Result<Instance> {
        Ok(Instance {
            id: r.get(0)?,
            object_id: r.get(1)?,
            user_id: r.get(2)?,
            purpose: parse(purpose.clone())?,
            state: parse(state.clone())?,
            error: r.get(5)?,
            backend_ref: serde_json::from_str(&backend_ref)
                .map_err(|e| StoreError::Corrupt(format!("backend_ref: {e}")))?,
            connection: match &connection {
                None => None,
                Some(c) => Some(
                    serde_json::from_str(c)
                        .map_err(|e| StoreError::Corrupt(format!("connection: {e}")))?,
                ),
            },
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
        })
    };
    Ok(build())
}

const JOB_COLS: &str = "id, kind, object_id, instance_id, user_id, state, progress, error, cancel_requested, attempts, created_at, started_at, finished_at";

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Job>> {
    let kind: String = r.get(1)?;
    let state: String = r.get(5)?;
    let build = || -> Result<Job> {
        Ok(Job {
            id: r.get(0)?,
            kind: parse(kind.clone())?,
            object_id: r.get(2)?,
            instance_id: r.get(3)?,
            user_id: r.get(4)?,
            state: parse(state.clone())?,
            progress: r.get(6)?,
            error: r.get(7)?,
            cancel_requested: r.get(8)?,
            attempts: r.get(9)?,
            created_at: r.get(10)?,
            started_at: r.get(11)?,
            finished_at: r.get(12)?,
        })
    };
    Ok(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("t.db")).unwrap();
        (d, s)
    }

    fn obj(owner: &str, phase: Phase, parent: Option<&str>) -> Object {
        Object {
            id: new_id(),
            phase,
            name: "x".into(),
            parent_id: parent.map(str::to_owned),
            owner_id: owner.into(),
            kind: Kind::Container,
            platform: Platform::Linux,
            protocol: Protocol::Vnc,
            backend: BackendKind::Local,
            subphase: Subphase::Create,
            status: ObjectStatus::Busy,
            error: None,
            shared: false,
            spec: Spec::default(),
            backend_ref: serde_json::Value::Null,
            created_at: now(),
            updated_at: now(),
        }
    }

    fn job_for(o: &Object, user: &str) -> NewJob {
        NewJob {
            id: new_id(),
            kind: JobKind::Create,
            object_id: Some(o.id.clone()),
            instance_id: None,
            user_id: user.into(),
            steps: vec![Step::BackendCreate],
        }
    }

    #[test]
    fn migrates_once_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.db");
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(s);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn guest_host_keys_pin_once() {
        let (_d, s) = store();
        assert_eq!(s.guest_host_key("instance:a").unwrap(), None);
        let p = s
            .pin_guest_host_key("instance:a", "ssh-ed25519 AAA1", "SHA256:one")
            .unwrap();
        assert_eq!(p.public_key, "ssh-ed25519 AAA1");
        // a second, different key does not replace the pin
        let p = s
            .pin_guest_host_key("instance:a", "ssh-ed25519 AAA2", "SHA256:two")
            .unwrap();
        assert_eq!(p.fingerprint, "SHA256:one");
        assert!(s.forget_guest_host_key("instance:a").unwrap());
        assert!(!s.forget_guest_host_key("instance:a").unwrap());
        let p = s
            .pin_guest_host_key("instance:a", "ssh-ed25519 AAA2", "SHA256:two")
            .unwrap();
        assert_eq!(p.fingerprint, "SHA256:two");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.db");
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Store::open(&p),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn user_names_are_unique() {
        let (_d, s) = store();
        s.create_user("ann", Role::Admin, "h").unwrap();
        assert!(matches!(
            s.create_user("ann", Role::User, "h"),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn one_unfinished_job_per_object() {
        let (_d, s) = store();
        let u = s.create_user("ann", Role::Admin, "h").unwrap();
        let o = obj(&u.id, Phase::Baseimage, None);
        s.insert_object_with_job(&o, &job_for(&o, &u.id), None)
            .unwrap();
        // A second job on the same object while the first is queued.
        let second = s.insert_job(&job_for(&o, &u.id));
        assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
        // Nothing half-written: the failed insert left no steps behind.
        assert_eq!(s.jobs(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn environment_limit_is_checked_in_the_transaction() {
        let (_d, s) = store();
        let a = s.create_user("ann", Role::Admin, "h").unwrap();
        let u = s.create_user("bob", Role::User, "h").unwrap();
        let b = obj(&a.id, Phase::Baseimage, None);
        s.insert_object_with_job(&b, &job_for(&b, &a.id), None)
            .unwrap();
        let e1 = obj(&u.id, Phase::Environment, Some(&b.id));
        s.insert_object_with_job(&e1, &job_for(&e1, &u.id), Some(1))
            .unwrap();
        let e2 = obj(&u.id, Phase::Environment, Some(&b.id));
        let r = s.insert_object_with_job(&e2, &job_for(&e2, &u.id), Some(1));
        assert!(matches!(r, Err(StoreError::Conflict(_))));
        assert!(matches!(s.object(&e2.id), Err(StoreError::NotFound)));
    }

    #[test]
    fn open_instance_returns_the_live_one() {
        let (_d, s) = store();
        let a = s.create_user("ann", Role::Admin, "h").unwrap();
        let b = obj(&a.id, Phase::Baseimage, None);
        s.insert_object_with_job(&b, &job_for(&b, &a.id), None)
            .unwrap();
        let mk = |iid: &str| NewJob {
            id: new_id(),
            kind: JobKind::StartInstance,
            object_id: None,
            instance_id: Some(iid.to_owned()),
            user_id: a.id.clone(),
            steps: vec![Step::StartInstance],
        };
        let (i1, j1, new1) = s
            .open_instance(&b.id, &a.id, Purpose::Configure, mk)
            .unwrap();
        let (i2, j2, new2) = s
            .open_instance(&b.id, &a.id, Purpose::Configure, mk)
            .unwrap();
        assert!(new1 && !new2);
        assert_eq!(i1.id, i2.id);
        assert_eq!(j1.id, j2.id);
    }

    #[test]
    fn logs_are_sequenced() {
        let (_d, s) = store();
        let a = s.create_user("ann", Role::Admin, "h").unwrap();
        let b = obj(&a.id, Phase::Baseimage, None);
        let j = s
            .insert_object_with_job(&b, &job_for(&b, &a.id), None)
            .unwrap();
        for i in 0..5 {
            assert_eq!(
                s.append_log(&j.id, "info", &format!("l{i}")).unwrap().seq,
                i + 1
            );
        }
        let after = s.logs(&j.id, 3, 100).unwrap();
        assert_eq!(after.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn backup_is_a_consistent_copy() {
        let (d, s) = store();
        s.create_user("ann", Role::Admin, "h").unwrap();
        let dest = d.path().join("b.db");
        s.backup_to(&dest).unwrap();
        let b = Store::open(&dest).unwrap();
        assert_eq!(b.users().unwrap().len(), 1);
    }
}
