//! Backends: where Baseimages, Environments, Deployments, Apps and their
//! instances live. The job engine sees them only through [`Backend`].
//!
//! Invariants every backend keeps:
//! - Operations are idempotent: a step cut off by a crash is run again, or
//!   undone, at the next start. Names of what a backend makes derive from
//!   the object or instance id, so they can be found without a stored ref.
//! - `stop` of an instance works from its id alone, and succeeds when there
//!   is nothing left to stop.
//! - Everything a backend makes carries our marks (labels, names or a
//!   directory of ours), so `inventory` can tell ours from others'.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::jobs::JobLog;
use crate::model::{BackendKind, Connection, Instance, Object, Script};

pub mod docker;
pub mod local;
pub mod proxmox;

/// What a backend can do, declared by it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Capabilities {
    /// Clones share storage with their template.
    pub linked_clone: bool,
    /// Snapshots can include RAM (resume a running app).
    pub live_snapshot: bool,
    /// Instances run VMs.
    pub vm: bool,
    /// Instances run containers (or sandboxes).
    pub container: bool,
    /// The desktop follows the browser's size.
    pub resize: bool,
    /// Clipboard through the display protocol.
    pub clipboard: bool,
}

/// A backend failure.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The thing worked on does not exist (any more).
    #[error("{0} not found")]
    NotFound(String),
    /// A transient failure: retrying may work.
    #[error("{message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A failure retrying will not fix.
    #[error("{message}")]
    Failed {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl BackendError {
    /// Whether a retry may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }

    /// A permanent failure with a message.
    pub fn failed(message: impl Into<String>) -> BackendError {
        BackendError::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// A permanent failure with a message and a cause.
    pub fn failed_with(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BackendError {
        BackendError::Failed {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A transient failure with a message and a cause.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BackendError {
        BackendError::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// An instance to start.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    /// The instance row (its id names what the backend makes).
    pub instance: &'a Instance,
    /// What it runs: an App, or an object in ConfigInteractive.
    pub object: &'a Object,
    /// The object's parent (an App's Deployment).
    pub parent: Option<&'a Object>,
}

/// What a started instance is.
#[derive(Debug, Clone)]
pub struct Started {
    /// The backend's identifiers.
    pub backend_ref: serde_json::Value,
    /// How the gateway reaches its display.
    pub connection: Connection,
}

/// What a backend holds that is marked as ours.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Object ids with an artefact.
    pub objects: BTreeSet<String>,
    /// Instance ids that are running.
    pub instances: BTreeSet<String>,
}

/// Something a backend holds that is ours but that the store does not know.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Orphan {
    /// The backend.
    pub backend: BackendKind,
    /// `object` or `instance`.
    pub what: &'static str,
    /// The id in our naming scheme.
    pub id: String,
}

/// An event a backend reports on its own (not as a job's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// An instance ended by itself (the app exited, the VM shut down).
    InstanceExited {
        /// The instance.
        instance_id: String,
        /// Why, for the user.
        reason: String,
        /// Whether it was a failure.
        failed: bool,
    },
}

/// Sends [`BackendEvent`]s to the engine.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<BackendEvent>;

/// The one trait the lifecycle and job layers see.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Checks that the backend can work (binaries, sockets, credentials).
    async fn check(&self) -> Result<(), BackendError>;

    /// Makes the artefact of a new object from its parent's (Create
    /// subphase, or the transitions CloneTemplate, CreateSnapshot, RunApp).
    /// Returns the backend's identifiers.
    async fn create(
        &self,
        object: &Object,
        parent: Option<&Object>,
        log: &JobLog,
    ) -> Result<serde_json::Value, BackendError>;

    /// Runs one ConfigAuto script inside the object.
    async fn run_script(
        &self,
        object: &Object,
        script: &Script,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), BackendError>;

    /// Seals the object (Finalize subphase). Returns updated identifiers.
    async fn finalize(
        &self,
        object: &Object,
        log: &JobLog,
    ) -> Result<serde_json::Value, BackendError>;

    /// Deletes the object's artefact; succeeds when there is none.
    async fn delete(&self, object: &Object, log: &JobLog) -> Result<(), BackendError>;

    /// Starts an instance and returns how to reach its display once it is
    /// connectable.
    async fn start(&self, req: StartRequest<'_>, log: &JobLog) -> Result<Started, BackendError>;

    /// Stops an instance and removes what it used; succeeds when it is gone.
    async fn stop(&self, instance: &Instance, log: &JobLog) -> Result<(), BackendError>;

    /// What exists that is marked as ours.
    async fn inventory(&self) -> Result<Inventory, BackendError>;

    /// Removes something of ours the store does not know.
    async fn remove_orphan(&self, orphan: &Orphan) -> Result<(), BackendError>;

    /// The appliance is shutting down: release what is kept ahead of
    /// demand (a warm pool). Instances of users stay.
    async fn shutdown(&self) {}
}

/// The configured backends, by kind, and the capabilities they share.
#[derive(Clone, Default)]
pub struct Backends {
    map: BTreeMap<BackendKind, Arc<dyn Backend>>,
    leases: Option<Arc<dyn crate::nodes::agent::LeaseAllocator>>,
}

impl Backends {
    /// Adds a backend.
    pub fn insert(&mut self, b: Arc<dyn Backend>) {
        self.map.insert(b.kind(), b);
    }

    /// A backend by kind.
    pub fn get(&self, kind: BackendKind) -> Option<&Arc<dyn Backend>> {
        self.map.get(&kind)
    }

    /// Sets the lease capability (the local node's agent).
    pub fn set_leases(&mut self, leases: Arc<dyn crate::nodes::agent::LeaseAllocator>) {
        self.leases = Some(leases);
    }

    /// The lease capability: backends whose instances need an address known
    /// before boot call `allocate_lease(mac, hostname)` and `release(mac)`
    /// on it. `None` without an agent (the local backend needs none).
    pub fn leases(&self) -> Option<&Arc<dyn crate::nodes::agent::LeaseAllocator>> {
        self.leases.as_ref()
    }

    /// Every backend.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.map.values()
    }
}

impl PartialOrd for BackendKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BackendKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Ids become container, VM and network names and tags: keep only what a
/// UUID can hold.
pub(crate) fn safe_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
