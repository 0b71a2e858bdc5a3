//! The lease store: the [`LeaseTable`] in memory, persisted in the dnsmasq
//! hosts file, with changes in a burst batched into one write and one reload.
//!
//! A change is applied to the pending table under a short lock (so two
//! concurrent allocations never get the same address), then the caller waits
//! for the flusher: it sleeps `batch_delay`, takes the pending table and the
//! waiters of every change in it, writes the file atomically, SIGHUPs
//! dnsmasq once, and answers all of them. So every call returns only after
//! its change is on disk. If the write fails, the pending table goes back to
//! what is on disk and every waiting change fails with it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use daas_agent_api::{AllocateRequest, Ipv4Range, Lease, MacAddr};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::dnsmasq::{Dnsmasq, ReloadError};
use crate::hostsfile;
use crate::leases::{ConvergeStats, LeaseError, LeaseTable};

/// Why a lease operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The hosts file could not be written; nothing changed.
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    /// The change is on disk, but dnsmasq could not be told.
    #[error("the change is stored in the hosts file, but dnsmasq could not be told to reload it")]
    Reload(#[source] ReloadError),
    /// The agent is stopping.
    #[error("the agent is stopping")]
    Stopping,
}

/// The hosts file could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: hostsfile::ParseError,
    },
    #[error("{path}")]
    Conflict {
        path: PathBuf,
        #[source]
        source: LeaseError,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Waiter = oneshot::Sender<Result<(), StoreError>>;

struct State {
    /// The table with every accepted change.
    pending: LeaseTable,
    /// The table as it is on disk.
    committed: LeaseTable,
    /// One per change not yet on disk.
    waiters: Vec<Waiter>,
    /// Whether `pending` differs from `committed` or a flush is running.
    dirty: bool,
}

struct Inner {
    state: Mutex<State>,
    wake: Notify,
    path: PathBuf,
    batch_delay: Duration,
    dnsmasq: Arc<Dnsmasq>,
    writes: AtomicU64,
    stop: CancellationToken,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct LeaseStore {
    inner: Arc<Inner>,
}

impl LeaseStore {
    /// Loads the hosts file (creating it, empty, if it does not exist) and
    /// starts the flusher; it runs until `stop` is cancelled.
    pub fn open(
        path: &Path,
        range: Ipv4Range,
        batch_delay: Duration,
        dnsmasq: Arc<Dnsmasq>,
        stop: CancellationToken,
    ) -> Result<(LeaseStore, tokio::task::JoinHandle<()>), LoadError> {
        let leases = match std::fs::read_to_string(path) {
            Ok(text) => hostsfile::parse(&text).map_err(|source| LoadError::Parse {
                path: path.to_owned(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                hostsfile::write_atomic(path, hostsfile::render([]).as_bytes()).map_err(
                    |source| LoadError::Write {
                        path: path.to_owned(),
                        source,
                    },
                )?;
                Vec::new()
            }
            Err(source) => {
                return Err(LoadError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let table =
            LeaseTable::from_leases(range, leases).map_err(|source| LoadError::Conflict {
                path: path.to_owned(),
                source,
            })?;
        for l in table.out_of_range() {
            tracing::warn!(mac = %l.mac, ip = %l.ip, %range, "lease outside the configured range kept");
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                pending: table.clone(),
                committed: table,
                waiters: Vec::new(),
                dirty: false,
            }),
            wake: Notify::new(),
            path: path.to_owned(),
            batch_delay,
            dnsmasq,
            writes: AtomicU64::new(0),
            stop,
        });
        let task = tokio::spawn(flusher(inner.clone()));
        Ok((LeaseStore { inner }, task))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("lease state lock poisoned")
    }

    /// Registers a waiter for the next flush (the caller holds the lock).
    fn enqueue(&self, st: &mut State) -> oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        st.waiters.push(tx);
        st.dirty = true;
        self.inner.wake.notify_one();
        rx
    }

    async fn wait(
        &self,
        rx: Option<oneshot::Receiver<Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        match rx {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Stopping)),
        }
    }

    /// Locks the state for a change; refused once the agent is stopping
    /// (checked under the lock, so no change can miss the last flush).
    fn lock_for_change(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let st = self.lock();
        if self.inner.stop.is_cancelled() {
            return Err(StoreError::Stopping);
        }
        Ok(st)
    }

    /// Allocates a lease; `true` if it is new. Returns once it is on disk.
    pub async fn allocate(&self, req: &AllocateRequest) -> Result<(Lease, bool), StoreError> {
        let (lease, created, rx) = {
            let mut st = self.lock_for_change()?;
            let (lease, created) = st.pending.allocate(req)?;
            // A repeated request changes nothing, but must not answer before
            // the first one is on disk.
            let rx = (created || st.dirty).then(|| self.enqueue(&mut st));
            (lease, created, rx)
        };
        self.wait(rx).await?;
        Ok((lease, created))
    }

    /// Releases the lease of `mac`. Returns once the removal is on disk.
    pub async fn release(&self, mac: &MacAddr) -> Result<Lease, StoreError> {
        let (lease, rx) = {
            let mut st = self.lock_for_change()?;
            let lease = st.pending.release(mac)?;
            (lease, self.enqueue(&mut st))
        };
        self.wait(Some(rx)).await?;
        Ok(lease)
    }

    /// Replaces all leases. Returns once the new set is on disk.
    pub async fn converge(
        &self,
        desired: Vec<Lease>,
    ) -> Result<(ConvergeStats, Vec<Lease>), StoreError> {
        let (stats, leases, rx) = {
            let mut st = self.lock_for_change()?;
            let stats = st.pending.converge(desired)?;
            let leases = st.pending.leases().cloned().collect();
            (stats, leases, self.enqueue(&mut st))
        };
        self.wait(Some(rx)).await?;
        Ok((stats, leases))
    }

    /// The leases on disk, ordered by MAC.
    pub fn list(&self) -> Vec<Lease> {
        self.lock().committed.leases().cloned().collect()
    }

    /// (leases, free addresses) on disk.
    pub fn counts(&self) -> (usize, u32) {
        let st = self.lock();
        (st.committed.len(), st.committed.free())
    }

    /// Writes of the hosts file since start.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn range(&self) -> Ipv4Range {
        self.lock().committed.range()
    }
}

async fn flusher(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = inner.stop.cancelled() => {
                // Answer what is queued, then stop.
                flush(&inner).await;
                return;
            }
        }
        tokio::time::sleep(inner.batch_delay).await;
        flush(&inner).await;
    }
}

async fn flush(inner: &Arc<Inner>) {
    let (text, table, waiters) = {
        let mut st = inner.state.lock().expect("lease state lock poisoned");
        if st.waiters.is_empty() {
            return;
        }
        let text = hostsfile::render(st.pending.leases());
        (text, st.pending.clone(), std::mem::take(&mut st.waiters))
    };
    let path = inner.path.clone();
    let written =
        tokio::task::spawn_blocking(move || hostsfile::write_atomic(&path, text.as_bytes()))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match written {
        Ok(()) => {
            inner.writes.fetch_add(1, Ordering::Relaxed);
            {
                let mut st = inner.state.lock().expect("lease state lock poisoned");
                st.committed = table;
                st.dirty = !st.waiters.is_empty();
            }
            let reload = inner.dnsmasq.reload().await;
            if let Err(e) = &reload {
                tracing::warn!(error = %crate::util::chain(e), "hosts file written, dnsmasq not reloaded");
            }
            let outcome = reload.map_err(StoreError::Reload);
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        }
        Err(e) => {
            tracing::error!(path = %inner.path.display(), error = %e, "cannot write the hosts file; changes undone");
            let err = StoreError::Write {
                path: inner.path.clone(),
                message: e.to_string(),
            };
            let later = {
                let mut st = inner.state.lock().expect("lease state lock poisoned");
                st.pending = st.committed.clone();
                st.dirty = false;
                std::mem::take(&mut st.waiters)
            };
            for w in waiters.into_iter().chain(later) {
                let _ = w.send(Err(err.clone()));
            }
        }
    }
}
