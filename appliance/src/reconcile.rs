//! The reconciler: compares the store with what each backend holds.
//!
//! - A running instance whose backend object vanished becomes `lost`.
//! - Things marked as ours that the store does not know are orphans: listed
//!   for admins, who may remove them; at start, orphaned *instances* (a
//!   crash's leftovers) are reaped at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{BackendError, Backends, Orphan};
use crate::jobs::{error_chain, Engine, InstanceEvent};
use crate::model::*;
use crate::store::Store;

/// The reconciler and its last findings.
#[derive(Clone)]
pub struct Reconciler {
    store: Store,
    backends: Backends,
    engine: Engine,
    orphans: Arc<Mutex<Vec<Orphan>>>,
}

/// Seconds a running instance must have been running before a missing
/// backend object makes it lost (a start may still be settling).
const SETTLE_SECS: i64 = 5;

impl Reconciler {
    /// A reconciler.
    pub fn new(store: Store, backends: Backends, engine: Engine) -> Reconciler {
        Reconciler {
            store,
            backends,
            engine,
            orphans: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The orphans found by the last pass.
    pub fn orphans(&self) -> Vec<Orphan> {
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One pass. With `reap`, orphaned instances are removed at once.
    pub async fn pass(&self, reap: bool) -> Result<(), BackendError> {
        let objects = self
            .store
            .objects(&Default::default())
            .map_err(|e| BackendError::unavailable("cannot read the store", e))?;
        let instances = self
            .store
            .instances(None, false)
            .map_err(|e| BackendError::unavailable("cannot read the store", e))?;
        let mut found = Vec::new();
        for b in self.backends.iter() {
            let inv = b.inventory().await?;
            let kind = b.kind();
            let backend_of = |object_id: &str| {
                objects
                    .iter()
                    .find(|o| o.id == object_id)
                    .map(|o| o.backend)
            };
            let ours_objects: BTreeSet<&str> = objects
                .iter()
                .filter(|o| o.backend == kind)
                .map(|o| o.id.as_str())
                .collect();
            for id in &inv.objects {
                if !ours_objects.contains(id.as_str()) {
                    found.push(Orphan {
                        backend: kind,
                        what: "object",
                        id: id.clone(),
                    });
                }
            }
            let alive: BTreeSet<&str> = inv
                .instances
                .iter()
                .filter(|i| !i.ends_with("#dead"))
                .map(String::as_str)
                .collect();
            for i in instances
                .iter()
                .filter(|i| backend_of(&i.object_id) == Some(kind))
            {
                if i.state == InstanceState::Running
                    && !alive.contains(i.id.as_str())
                    && now() - i.updated_at >= SETTLE_SECS
                {
                    warn!(instance_id = %i.id, "the backend no longer has this instance: lost");
                    if self
                        .store
                        .set_instance_state(
                            &i.id,
                            InstanceState::Lost,
                            Some("the backend no longer has it"),
                        )
                        .is_ok()
                    {
                        self.engine.notify(InstanceEvent {
                            instance_id: i.id.clone(),
                            state: InstanceState::Lost,
                        });
                    }
                }
            }
            for id in &inv.instances {
                let bare = id.trim_end_matches("#dead");
                let known_live = instances
                    .iter()
                    .any(|i| i.id == bare && i.state.is_active());
                if !known_live {
                    let o = Orphan {
                        backend: kind,
                        what: "instance",
                        id: id.clone(),
                    };
                    if reap {
                        info!(instance_id = %bare, "reaping a session left by a crash");
                        if let Err(e) = b.remove_orphan(&o).await {
                            warn!(instance_id = %bare, error = %error_chain(&e), "cannot reap");
                            found.push(o);
                        }
                    } else {
                        found.push(o);
                    }
                }
            }
        }
        *self.orphans.lock().unwrap_or_else(|p| p.into_inner()) = found;
        Ok(())
    }

    /// Removes an orphan an admin named, if the last pass found it.
    pub async fn remove(
        &self,
        backend: BackendKind,
        what: &str,
        id: &str,
    ) -> Result<bool, BackendError> {
        let Some(o) = self
            .orphans()
            .into_iter()
            .find(|o| o.backend == backend && o.what == what && o.id == id)
        else {
            return Ok(false);
        };
        let b = self
            .backends
            .get(backend)
            .ok_or_else(|| BackendError::failed("backend not configured"))?;
        b.remove_orphan(&o).await?;
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|x| x != &o);
        Ok(true)
    }

    /// Runs passes every `interval` until `stop`.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.pass(false).await {
                warn!(error = %error_chain(&e), "reconciler pass failed");
            }
        }
    }
}
