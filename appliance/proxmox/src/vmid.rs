//! VMID allocation that survives races.
//!
//! `GET /cluster/nextid` answers the lowest VMID free *at that moment* and
//! reserves nothing: it keeps answering the same id until a VM config with
//! it exists, and a clone writes its config only once its worker runs. Two
//! callers asking at once get the same id, and one clone then fails with
//! `unable to create VM N: config file already exists` (at the call, or in
//! the task when both passed the early check).
//!
//! The allocator makes that safe:
//! 1. **In this process**, a candidate is leased: concurrent callers skip
//!    leased ids, and an id stays skipped for a while after its VM was made
//!    (the cluster file system may lag).
//! 2. **Against other writers** (another appliance, a human), the candidate
//!    is checked with `nextid?vmid=N` and the creation is retried with the
//!    next candidate when PVE says the id is taken, a bounded number of
//!    times with jittered backoff.
//!
//! Use [`VmidAllocator::create`] with a closure that makes the VM with the
//! given id and waits for its task, so the lease is held until the config
//! exists.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::client::Client;
use crate::error::{ErrorKind, PveError};
use crate::types::{CloneMode, CloneRequest, Vmid, VMID_MAX, VMID_MIN};

/// How long a freshly made VMID stays skipped locally.
const RECENT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Book {
    leased: BTreeSet<Vmid>,
    recent: HashMap<Vmid, Instant>,
}

impl Book {
    fn busy(&mut self, v: Vmid) -> bool {
        self.recent.retain(|_, t| t.elapsed() < RECENT);
        self.leased.contains(&v) || self.recent.contains_key(&v)
    }
}

/// Allocates VMIDs for new VMs (share one per process; it is cheap to
/// clone).
#[derive(Debug, Clone)]
pub struct VmidAllocator {
    client: Client,
    book: Arc<Mutex<Book>>,
    attempts: u32,
    max_vmid: Vmid,
}

/// A VMID held for one creation; released on drop.
#[derive(Debug)]
pub struct VmidLease {
    vmid: Vmid,
    book: Arc<Mutex<Book>>,
    made: bool,
}

impl VmidLease {
    /// The id.
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// Marks the VM as made: the id stays skipped locally for a while.
    pub fn made(mut self) {
        self.made = true;
    }
}

impl Drop for VmidLease {
    fn drop(&mut self) {
        if let Ok(mut b) = self.book.lock() {
            b.leased.remove(&self.vmid);
            if self.made {
                b.recent.insert(self.vmid, Instant::now());
            }
        }
    }
}

impl VmidAllocator {
    /// An allocator that tries up to 20 candidates per creation.
    pub fn new(client: Client) -> VmidAllocator {
        VmidAllocator {
            client,
            book: Arc::default(),
            attempts: 20,
            max_vmid: VMID_MAX,
        }
    }

    /// Sets how many candidates one creation tries.
    pub fn with_attempts(mut self, attempts: u32) -> VmidAllocator {
        self.attempts = attempts.max(1);
        self
    }

    /// Leases a VMID that is free on the server and not leased here.
    pub async fn lease(&self) -> Result<VmidLease, PveError> {
        let mut candidate = self.client.next_vmid().await?;
        let mut checks = 0u32;
        loop {
            if candidate < VMID_MIN || candidate > self.max_vmid {
                return Err(PveError::VmidExhausted { attempts: checks });
            }
            {
                let mut b = self
                    .book
                    .lock()
                    .map_err(|_| PveError::Config("poisoned".into()))?;
                while b.busy(candidate) {
                    candidate = candidate.saturating_add(1);
                }
                if candidate > self.max_vmid {
                    return Err(PveError::VmidExhausted { attempts: checks });
                }
                // Lease before asking, so concurrent callers move on.
                b.leased.insert(candidate);
            }
            let lease = VmidLease {
                vmid: candidate,
                book: self.book.clone(),
                made: false,
            };
            checks += 1;
            if self.client.vmid_is_free(candidate).await? {
                return Ok(lease);
            }
            drop(lease);
            if checks >= self.attempts.saturating_mul(4) {
                return Err(PveError::VmidExhausted { attempts: checks });
            }
            candidate = candidate.saturating_add(1);
        }
    }

    /// Creates something with a fresh VMID: `make(vmid)` must create the
    /// VM and wait until its config exists (a clone and its task). When PVE
    /// says the id is taken, the next candidate is tried. Returns the id
    /// and what `make` returned.
    pub async fn create<T, F, Fut>(&self, mut make: F) -> Result<(Vmid, T), PveError>
    where
        F: FnMut(Vmid) -> Fut,
        Fut: Future<Output = Result<T, PveError>>,
    {
        for attempt in 1..=self.attempts {
            let lease = self.lease().await?;
            let vmid = lease.vmid();
            match make(vmid).await {
                Ok(t) => {
                    lease.made();
                    return Ok((vmid, t));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Someone else got it: skip it locally too.
                    lease.made();
                    debug!(
                        vmid,
                        attempt, "VMID taken by another writer, trying the next"
                    );
                    let wait = Duration::from_millis(20 + rand::random::<u64>() % 80);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
        warn!(attempts = self.attempts, "no VMID could be allocated");
        Err(PveError::VmidExhausted {
            attempts: self.attempts,
        })
    }

    /// Clones `source` into a new VM with a fresh VMID and waits for it:
    /// linked, or full (onto `full_storage`, default the source's) where
    /// PVE says the source or its storage cannot link. Returns the VMID and
    /// the mode used. `name` must be a DNS name.
    pub async fn clone_new(
        &self,
        node: &str,
        source: Vmid,
        name: &str,
        full_storage: Option<&str>,
    ) -> Result<(Vmid, CloneMode), PveError> {
        let client = self.client.clone();
        self.create(|newid| {
            let client = client.clone();
            let mut req = CloneRequest {
                node: node.to_owned(),
                vmid: source,
                newid,
                name: Some(name.to_owned()),
                mode: CloneMode::Linked,
                target: None,
                description: None,
                pool: None,
            };
            let full = CloneMode::Full {
                storage: full_storage.map(str::to_owned),
            };
            async move {
                let task = match client.clone_vm(&req).await {
                    Err(e) if e.kind() == ErrorKind::LinkedCloneUnsupported => {
                        debug!(source, "linked clone refused, making a full clone");
                        req.mode = full;
                        client.clone_vm(&req).await?
                    }
                    other => other?,
                };
                task.wait().await?;
                Ok(req.mode)
            }
        })
        .await
    }
}
