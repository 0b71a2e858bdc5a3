//! Nodes: join tokens, the node CA, the node registry with heartbeats and
//! liveness, placement, and the client to the agents.
//!
//! - [`Nodes`] is the service the web layer and the CLI call with typed
//!   commands ([`Nodes::create_token`], [`Nodes::join`],
//!   [`Nodes::heartbeat`], [`Nodes::remove`], [`Nodes::placeable`]); it
//!   knows no HTTP and no SQL.
//! - [`ca::NodeCa`] signs node certificates and the appliance's client
//!   certificate.
//! - [`agent::AgentClient`] reaches an agent only through `daas-agent-api`
//!   types, over its unix socket or mutual TLS; [`agent::AgentLeases`] is the
//!   lease capability backends call ([`agent::LeaseAllocator`]).
//!
//! Invariants:
//! - Join token and node secrets are stored as SHA-256 hashes and compared
//!   in constant time; a token is used once, whatever the join's outcome
//!   after its secret was shown; unknown, wrong, used and expired tokens get
//!   one answer (`invalid_token`).
//! - A removed node stays listed (state `removed`) and its heartbeats are
//!   refused with `unknown_node`.
//! - [`Nodes::placeable`] returns only available nodes whose last heartbeat
//!   is inside the window; future Docker/Proxmox backends place work only
//!   through it.
//! - Heartbeats of available nodes are checked against memory and written
//!   to the store in one transaction per second ([`Nodes::flush`]), not one
//!   write each: 1,000 nodes cost the appliance a few percent of a core.
//!   What changes a node's state (unavailable → available) is written at
//!   once; every read of the registry flushes first, so readers never see
//!   older heartbeats than were answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use daas_agent_api::{
    Fingerprint, Heartbeat, HeartbeatResponse, JoinRequest, JoinResponse, JoinToken, NodeId,
    NodeSecret, API_VERSION,
};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::auth;
use crate::config;
use crate::model::{new_id, now, JoinTokenInfo, Node, NodeState, Timestamp};
use crate::store::{Store, StoreError};

pub mod agent;
pub mod ca;

/// The bounds of a join token's lifetime, in minutes (one week at most).
pub const TOKEN_TTL_MINUTES: std::ops::RangeInclusive<u32> = 1..=10_080;

/// Why a node command failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The join token is unknown, used, expired or its secret is wrong.
    #[error("the join token is not valid (unknown, used, expired or wrong)")]
    InvalidToken,
    /// The node secret is missing or wrong.
    #[error("the node secret is missing or wrong")]
    Unauthorized,
    /// The node is not (or no longer) known.
    #[error("no such node, or it was removed")]
    UnknownNode,
    /// Another live node has the name.
    #[error("another node is named {0:?}; remove it first")]
    NameInUse(String),
    /// The request does not make sense.
    #[error("{0}")]
    Invalid(String),
    /// Joining needs the appliance's TLS listener.
    #[error(
        "joining nodes needs TLS ([server] tls = \"auto\"): agents pin the appliance's certificate"
    )]
    TlsOff,
    /// The node CA failed.
    #[error("node CA")]
    Ca(#[from] ca::CaError),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
}

/// A token just made: the whole printable token (shown once) and its row.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    /// `daas1.<id>.<secret>.<fingerprint>`.
    pub token: JoinToken,
    /// What is stored (never the secret).
    pub info: JoinTokenInfo,
}

/// The node service. Cheap to clone.
#[derive(Clone)]
pub struct Nodes {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    cfg: config::Nodes,
    ca_dir: PathBuf,
    ca: Mutex<Option<Arc<ca::NodeCa>>>,
    fingerprint: Option<Fingerprint>,
    /// Heartbeat state of the nodes heard from, loaded from the store on a
    /// node's first heartbeat.
    beats: Mutex<HashMap<String, Beat>>,
}

/// A node's heartbeat state between store writes.
struct Beat {
    secret_hash: String,
    state: NodeState,
    /// The last (agent start, sequence) answered.
    started: i64,
    seq: i64,
    /// Answered, not yet written: the time and the facts.
    pending: Option<(Timestamp, String)>,
}

impl Nodes {
    /// `fingerprint`: of the appliance's TLS certificate (`None` when TLS
    /// is off: then nodes cannot join).
    pub fn new(
        store: Store,
        cfg: config::Nodes,
        state_dir: &std::path::Path,
        fingerprint: Option<Fingerprint>,
    ) -> Nodes {
        Nodes {
            inner: Arc::new(Inner {
                store,
                cfg,
                ca_dir: state_dir.join("nodes"),
                ca: Mutex::new(None),
                fingerprint,
                beats: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The node CA, made on first use.
    pub fn ca(&self) -> Result<Arc<ca::NodeCa>, NodeError> {
        let mut g = self
            .inner
            .ca
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(ca) = &*g {
            return Ok(ca.clone());
        }
        let ca = Arc::new(ca::NodeCa::load_or_create(&self.inner.ca_dir)?);
        *g = Some(ca.clone());
        Ok(ca)
    }

    /// The heartbeat interval nodes are told, in seconds.
    pub fn heartbeat_interval_secs(&self) -> u32 {
        self.inner.cfg.heartbeat_interval_secs
    }

    /// Seconds without a heartbeat after which a node is unavailable.
    pub fn window_secs(&self) -> i64 {
        i64::from(self.inner.cfg.heartbeat_interval_secs)
            * i64::from(self.inner.cfg.missed_heartbeats)
    }

    /// Makes a one-time join token valid for `ttl_minutes` (the configured
    /// default if `None`).
    pub fn create_token(
        &self,
        ttl_minutes: Option<u32>,
        created_by: Option<&str>,
    ) -> Result<NewJoinToken, NodeError> {
        let fp = self.inner.fingerprint.ok_or(NodeError::TlsOff)?;
        let ttl = ttl_minutes.unwrap_or(self.inner.cfg.token_ttl_minutes);
        if !TOKEN_TTL_MINUTES.contains(&ttl) {
            return Err(NodeError::Invalid(format!(
                "ttl_minutes must be {} to {}",
                TOKEN_TTL_MINUTES.start(),
                TOKEN_TTL_MINUTES.end()
            )));
        }
        let expires = now() + i64::from(ttl) * 60;
        // Ids are 8 of 36 characters: a clash is rare; try again then.
        let mut last = None;
        for _ in 0..3 {
            let token = JoinToken::generate(|b| rand::rngs::OsRng.fill_bytes(b), fp);
            match self.inner.store.create_join_token(
                token.id(),
                &auth::hash_secret(token.secret()),
                created_by,
                expires,
            ) {
                Ok(info) => {
                    info!(token = token.id(), ttl_minutes = ttl, "join token made");
                    return Ok(NewJoinToken { token, info });
                }
                Err(e @ StoreError::Conflict(_)) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or(NodeError::InvalidToken, NodeError::Store))
    }

    /// Join tokens (never their secrets), newest first.
    pub fn tokens(&self) -> Result<Vec<JoinTokenInfo>, NodeError> {
        Ok(self.inner.store.join_tokens()?)
    }

    /// Checks a token and uses it up. One answer for every failure.
    fn redeem(&self, token: &JoinToken) -> Result<(), NodeError> {
        let t = now();
        let row = self.inner.store.join_token(token.id())?;
        let presented = auth::hash_secret(token.secret());
        // Compare against a dummy when the id is unknown, so both paths
        // take the same time.
        let (stored, expires_at, used_at) = row
            .clone()
            .unwrap_or_else(|| ("0".repeat(presented.len()), 0, Some(0)));
        let secret_ok: bool = presented.as_bytes().ct_eq(stored.as_bytes()).into();
        let secret_ok = secret_ok && row.is_some();
        let fp_ok = self
            .inner
            .fingerprint
            .is_some_and(|fp| fp.matches(&token.fingerprint()));
        if !secret_ok {
            warn!(
                token = token.id(),
                "join refused: unknown token or wrong secret"
            );
            return Err(NodeError::InvalidToken);
        }
        // The secret was shown: the token is used now, whatever follows.
        let first_use = self.inner.store.use_join_token(token.id(), t)?;
        if !first_use || used_at.is_some() || expires_at <= t || !fp_ok {
            warn!(
                token = token.id(),
                "join refused: token used, expired or for another certificate"
            );
            return Err(NodeError::InvalidToken);
        }
        Ok(())
    }

    /// A node joins: the token is checked and used, the CSR signed by the
    /// node CA, the node registered (available) with a fresh secret.
    /// `peer` is where the request came from (for an unspecified
    /// `api_listen`).
    pub fn join(&self, req: &JoinRequest, peer: SocketAddr) -> Result<JoinResponse, NodeError> {
        self.redeem(&req.token)?;
        if req.api_version != API_VERSION {
            return Err(NodeError::Invalid(format!(
                "agent API version {} is not this appliance's {API_VERSION}",
                req.api_version
            )));
        }
        let api_addr = req.api_listen.map(|a| {
            if a.ip().is_unspecified() {
                SocketAddr::new(peer.ip(), a.port()).to_string()
            } else {
                a.to_string()
            }
        });
        let id: NodeId = new_id()
            .parse()
            .map_err(|_| NodeError::Invalid("cannot make a node id".into()))?;
        let name = req.node_name.as_str().to_owned();
        if self
            .inner
            .store
            .nodes(false)?
            .iter()
            .any(|n| n.name == name)
        {
            return Err(NodeError::NameInUse(name));
        }
        let ca = self.ca()?;
        let certificate_pem = ca
            .sign_node(&req.csr_pem, &id, &name)
            .map_err(|e| match e {
                ca::CaError::BadCsr(m) => NodeError::Invalid(m),
                e => NodeError::Ca(e),
            })?;
        let secret = NodeSecret::new(auth::new_secret(""))
            .ok_or_else(|| NodeError::Invalid("cannot make a node secret".into()))?;
        let t = now();
        let node = Node {
            id: id.to_string(),
            name: name.clone(),
            api_addr,
            facts: serde_json::to_value(&req.facts).unwrap_or_default(),
            state: NodeState::Available,
            joined_at: t,
            last_heartbeat_at: Some(t),
            removed_at: None,
        };
        self.inner
            .store
            .insert_node(&node, &auth::hash_secret(secret.expose()), req.token.id())
            .map_err(|e| match e {
                StoreError::Conflict(_) => NodeError::NameInUse(name.clone()),
                e => e.into(),
            })?;
        info!(node_id = %id, node = %name, api = ?node.api_addr, "node joined");
        Ok(JoinResponse {
            node_id: id,
            certificate_pem,
            ca_certificate_pem: ca.pem().to_owned(),
            heartbeat_interval_secs: self.heartbeat_interval_secs(),
            node_secret: secret,
        })
    }

    /// A heartbeat of node `id` with the bearer secret `secret`.
    pub fn heartbeat(
        &self,
        id: &str,
        secret: Option<&str>,
        hb: &Heartbeat,
    ) -> Result<HeartbeatResponse, NodeError> {
        let store = &self.inner.store;
        let presented = auth::hash_secret(secret.unwrap_or(""));
        let mut beats = self.beats();
        let b = match beats.entry(id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Some((secret_hash, state, started, seq)) = store.node_beat_state(id)? else {
                    return Err(NodeError::UnknownNode);
                };
                e.insert(Beat {
                    secret_hash,
                    state,
                    started,
                    seq,
                    pending: None,
                })
            }
        };
        if b.state == NodeState::Removed {
            return Err(NodeError::UnknownNode);
        }
        let ok: bool = presented.as_bytes().ct_eq(b.secret_hash.as_bytes()).into();
        if !ok || secret.is_none() {
            warn!(node_id = id, "heartbeat refused: wrong node secret");
            return Err(NodeError::Unauthorized);
        }
        if hb.node_id.as_str() != id {
            return Err(NodeError::Invalid(
                "the body's node_id is not the node of the path".into(),
            ));
        }
        let started = i64::try_from(hb.agent_started_at).unwrap_or(i64::MAX);
        let seq = i64::try_from(hb.sequence).unwrap_or(i64::MAX);
        let replay = || {
            NodeError::Invalid(
                "a replayed or reordered heartbeat: (agent_started_at, sequence) did not grow"
                    .into(),
            )
        };
        if (started, seq) <= (b.started, b.seq) {
            return Err(replay());
        }
        let mut facts = serde_json::to_value(&hb.facts).unwrap_or_default();
        if let Some(o) = facts.as_object_mut() {
            o.insert(
                "dnsmasq".into(),
                serde_json::to_value(&hb.dnsmasq).unwrap_or_default(),
            );
            o.insert("leases".into(), hb.instances.len().into());
        }
        let facts = facts.to_string();
        let t = now();
        if b.state == NodeState::Available {
            (b.started, b.seq, b.pending) = (started, seq, Some((t, facts)));
        } else {
            // The node's state changes: written at once.
            match store.record_heartbeat(id, t, started, seq, &facts)? {
                None => {
                    // Removed or moved on behind our back: the store's
                    // truth is loaded again on the next heartbeat.
                    beats.remove(id);
                    return Err(replay());
                }
                Some(prev) => {
                    if prev == NodeState::Unavailable {
                        info!(node_id = id, "node available again: heartbeats are back");
                    }
                    (b.state, b.started, b.seq, b.pending) =
                        (NodeState::Available, started, seq, None);
                }
            }
        }
        Ok(HeartbeatResponse {
            heartbeat_interval_secs: Some(self.heartbeat_interval_secs()),
            running_instances: None,
        })
    }

    fn beats(&self) -> std::sync::MutexGuard<'_, HashMap<String, Beat>> {
        self.inner
            .beats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the heartbeats answered since the last flush, in one
    /// transaction. A node whose row did not take its heartbeat (removed,
    /// or changed behind our back) is forgotten, so that its next heartbeat
    /// is checked against the store again.
    pub fn flush(&self) -> Result<(), NodeError> {
        let batch: Vec<_> = self
            .beats()
            .iter_mut()
            .filter_map(|(id, b)| {
                let (at, facts) = b.pending.take()?;
                Some((id.clone(), at, b.started, b.seq, facts))
            })
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let skipped = self.inner.store.record_heartbeats(&batch)?;
        if !skipped.is_empty() {
            let mut beats = self.beats();
            for id in skipped {
                beats.remove(&id);
            }
        }
        Ok(())
    }

    /// Marks nodes unavailable whose heartbeats stopped; returns their ids.
    pub fn sweep(&self, at: Timestamp) -> Result<Vec<String>, NodeError> {
        self.flush()?;
        let ids = self.inner.store.mark_stale_nodes(at - self.window_secs())?;
        let mut beats = self.beats();
        for id in &ids {
            if let Some(b) = beats.get_mut(id) {
                b.state = NodeState::Unavailable;
            }
            warn!(node_id = %id, window_secs = self.window_secs(), "node unavailable: heartbeats missed");
        }
        Ok(ids)
    }

    /// Every node (removed ones if `removed`).
    pub fn list(&self, removed: bool) -> Result<Vec<Node>, NodeError> {
        self.flush()?;
        Ok(self.inner.store.nodes(removed)?)
    }

    /// One node, removed or not.
    pub fn get(&self, id: &str) -> Result<Node, NodeError> {
        self.flush()?;
        match self.inner.store.node(id) {
            Err(StoreError::NotFound) => Err(NodeError::UnknownNode),
            r => Ok(r?),
        }
    }

    /// Removes a node: it stays listed as `removed`, leaves placement, and
    /// its heartbeats are refused.
    pub fn remove(&self, id: &str) -> Result<Node, NodeError> {
        match self.inner.store.remove_node(id, now()) {
            Err(StoreError::NotFound) => return Err(NodeError::UnknownNode),
            r => r?,
        }
        self.beats().remove(id);
        info!(node_id = id, "node removed");
        self.get(id)
    }

    /// Placement: the nodes new instances may go to — available, and heard
    /// from within the window. Backends that place work on nodes (Docker,
    /// Proxmox) choose only among these.
    pub fn placeable(&self) -> Result<Vec<Node>, NodeError> {
        self.flush()?;
        let since = now() - self.window_secs();
        Ok(self
            .inner
            .store
            .nodes(false)?
            .into_iter()
            .filter(|n| {
                n.state == NodeState::Available && n.last_heartbeat_at.is_some_and(|t| t >= since)
            })
            .collect())
    }

    /// Writes heartbeats every second and runs [`Nodes::sweep`] every
    /// heartbeat interval until `stop` (the shutdown flushes the rest).
    pub async fn run_liveness(self, stop: tokio_util::sync::CancellationToken) {
        let every = u64::from(self.heartbeat_interval_secs()).max(1);
        let mut tick = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
            tick += 1;
            let r = if tick.is_multiple_of(every) {
                self.sweep(now()).map(drop)
            } else {
                self.flush()
            };
            if let Err(e) = r {
                warn!(error = %crate::jobs::error_chain(&e), "node liveness pass failed");
            }
        }
    }
}
