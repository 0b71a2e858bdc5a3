//! The warm pool: Apps kept resumed ahead of demand, so that opening one
//! takes no backend work at all (no task, no rollback, no start).
//!
//! - An App is *wanted* warm when `warm_pool` is 1 and it was made or
//!   opened on this appliance; the wanted set is kept in
//!   `<state_dir>/proxmox/warm.json`, so a restart refills it.
//! - *Filling* an App rolls its Deployment's VM back to the snapshot (a
//!   live one resumes it), launches the app through the guest-proxy (when
//!   `guest` is on) and tags the VM `warm` and `a-<app id>`. It happens
//!   after the App is made, after each instance of it stops, and at start.
//! - An open takes the warm entry (in memory) and returns its connection;
//!   the VM's tags are rewritten to the instance's in the background.
//! - Bounded: at most `warm_pool_max` VMs warm (or filling) at once; an
//!   App's VM holds one instance at a time, so at most one per App.
//! - Drained (VMs stopped, marks removed) when the App is deleted and when
//!   the appliance shuts down; the wanted set stays.
//! - After a crash, warm VMs of wanted Apps that still run are adopted;
//!   any other VM tagged `warm` is reaped.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{app_tag, instance_tag, AppTarget, Inner, VmRef, TAG_WARM};
use crate::jobs::{error_chain, JobLog};

/// A warm instance ready to hand out.
#[derive(Debug, Clone)]
pub(crate) struct Warm {
    pub(crate) vm: VmRef,
    pub(crate) ip: Ipv4Addr,
}

#[derive(Default)]
struct PoolState {
    ready: HashMap<String, Warm>,
    wanted: HashMap<String, AppTarget>,
    filling: HashSet<String>,
    /// The drain at shutdown has begun: nothing new fills.
    closed: bool,
}

/// The warm pool of the Proxmox backend.
pub struct WarmPool {
    per_app: u32,
    max: u32,
    file: PathBuf,
    state: Mutex<PoolState>,
}

impl WarmPool {
    pub(crate) fn new(per_app: u32, max: u32, state_dir: &Path) -> WarmPool {
        let file = state_dir.join("proxmox").join("warm.json");
        let wanted = if per_app > 0 {
            std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Vec<AppTarget>>(&b).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.app.clone(), t))
                .collect()
        } else {
            HashMap::new()
        };
        WarmPool {
            per_app,
            max,
            file,
            state: Mutex::new(PoolState {
                wanted,
                ..PoolState::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apps with a warm instance ready now.
    pub fn ready_apps(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().ready.keys().cloned().collect();
        v.sort();
        v
    }

    /// Takes the App's warm instance, if one is ready.
    pub(crate) fn take(&self, app: &str) -> Option<Warm> {
        self.lock().ready.remove(app)
    }

    /// Forgets a warm instance on `vm` (something else is about to use the
    /// VM); returns its App.
    pub(crate) fn evict_vm(&self, vm: &VmRef) -> Option<String> {
        let mut st = self.lock();
        let app = st
            .ready
            .iter()
            .find(|(_, w)| w.vm == *vm)
            .map(|(a, _)| a.clone())?;
        st.ready.remove(&app);
        Some(app)
    }

    fn save(&self, st: &PoolState) {
        let mut v: Vec<&AppTarget> = st.wanted.values().collect();
        v.sort_by(|a, b| a.app.cmp(&b.app));
        let write = || -> std::io::Result<()> {
            if let Some(d) = self.file.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = self.file.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&v).unwrap_or_default())?;
            std::fs::rename(&tmp, &self.file)
        };
        if let Err(e) = write() {
            warn!(error = %e, file = %self.file.display(), "cannot keep the warm pool's list");
        }
    }
}

/// Marks an App as wanted warm (if the pool is on) and fills it.
pub(crate) fn want(inner: &Arc<Inner>, t: AppTarget) {
    if inner.pool.per_app == 0 {
        return;
    }
    {
        let mut st = inner.pool.lock();
        if st.wanted.get(&t.app) != Some(&t) {
            st.wanted.insert(t.app.clone(), t.clone());
            inner.pool.save(&st);
        }
    }
    refill(inner, &t.app);
}

/// Fills the App's warm instance in the background, if it is wanted.
pub(crate) fn refill(inner: &Arc<Inner>, app: &str) {
    if inner.pool.per_app == 0 {
        return;
    }
    let inner = inner.clone();
    let app = app.to_owned();
    tokio::spawn(async move { fill(&inner, &app).await });
}

async fn fill(inner: &Arc<Inner>, app: &str) {
    let target = {
        let mut st = inner.pool.lock();
        let Some(t) = st.wanted.get(app).cloned() else {
            return;
        };
        let in_use = st.ready.len() + st.filling.len();
        if st.closed || st.ready.contains_key(app) || st.filling.contains(app) {
            return;
        }
        if in_use >= inner.pool.max as usize {
            debug!(app, "warm pool full");
            return;
        }
        st.filling.insert(app.to_owned());
        t
    };
    let r = fill_one(inner, &target).await;
    let mut st = inner.pool.lock();
    st.filling.remove(app);
    match r {
        Ok(Some(w)) if st.wanted.contains_key(app) && !st.closed => {
            info!(app, vmid = w.vm.vmid, "warm instance ready");
            st.ready.insert(app.to_owned(), w);
        }
        Ok(Some(w)) => {
            // Drained while it filled: stop it again.
            drop(st);
            let inner = inner.clone();
            tokio::spawn(async move {
                let _ = strip(&inner, &w.vm, true).await;
            });
        }
        Ok(None) => {}
        Err(e) => warn!(app, error = %error_chain(&e), "cannot fill the warm instance"),
    }
}

/// Resumes the App's VM (unless an instance runs on it) and marks it warm.
async fn fill_one(
    inner: &Arc<Inner>,
    t: &AppTarget,
) -> Result<Option<Warm>, crate::backend::BackendError> {
    let lock = inner.vm_lock(t.vm.vmid);
    let _g = lock.lock().await;
    let busy = {
        let active = inner.active.lock().unwrap_or_else(|p| p.into_inner());
        active.values().any(|v| *v == t.vm)
    };
    if busy {
        return Ok(None);
    }
    let c = inner
        .client
        .vm_config(&t.vm.node, t.vm.vmid)
        .await
        .map_err(super::pve(format!("the Deployment's VM {}", t.vm.vmid)))?;
    if c.lock.is_some() && !inner.wait_unlocked(&t.vm).await? {
        return Ok(None);
    }
    if c.tags.iter().any(|x| x.starts_with("i-")) {
        return Ok(None); // an instance runs on it; refilled when it stops
    }
    let subject = format!("warm:{}", t.app);
    let ip = inner.resume_app(t, &subject, &JobLog::detached()).await?;
    inner.guests.remove(&subject);
    let mut tags = inner.base_tags(&t.vm).await?;
    tags.push(TAG_WARM.to_owned());
    tags.push(app_tag(&t.app));
    inner.set_tags(&t.vm, tags).await?;
    Ok(Some(Warm {
        vm: t.vm.clone(),
        ip,
    }))
}

/// After a start (warm or not): the VM's marks become the instance's, in
/// the background under the VM's lock, unless it stopped meanwhile.
pub(crate) fn mark_instance(inner: &Arc<Inner>, iid: &str, vm: &VmRef) {
    let inner = inner.clone();
    let iid = iid.to_owned();
    let vm = vm.clone();
    tokio::spawn(async move {
        let lock = inner.vm_lock(vm.vmid);
        let _g = lock.lock().await;
        let still = inner
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&iid);
        if !still {
            return; // stopped already
        }
        let r = async {
            let mut tags = inner.base_tags(&vm).await?;
            tags.push(instance_tag(&iid));
            inner.set_tags(&vm, tags).await
        }
        .await;
        if let Err(e) = r {
            warn!(instance_id = %iid, error = %error_chain(&e), "cannot mark the VM as the instance's");
        }
    });
}

/// Stops a warm VM and removes its warm marks (with its lock unless held).
async fn strip(
    inner: &Arc<Inner>,
    vm: &VmRef,
    take_lock: bool,
) -> Result<(), crate::backend::BackendError> {
    let lock = inner.vm_lock(vm.vmid);
    let _g = if take_lock {
        Some(lock.lock().await)
    } else {
        None
    };
    let c = match inner.client.vm_config(&vm.node, vm.vmid).await {
        Ok(c) => c,
        Err(e) if e.kind() == daas_proxmox::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::pve(format!("cannot read VM {}", vm.vmid))(e)),
    };
    if c.tags.iter().any(|t| t.starts_with("i-")) {
        return Ok(()); // handed out meanwhile: the instance owns it
    }
    inner.hard_stop(vm).await?;
    if c.tags.iter().any(|t| t == TAG_WARM || t.starts_with("a-")) {
        let keep = c
            .tags
            .into_iter()
            .filter(|t| t != TAG_WARM && !t.starts_with("a-"))
            .collect();
        inner.set_tags(vm, keep).await?;
    }
    Ok(())
}

/// The App is deleted: no longer wanted, its warm VM stopped.
pub(crate) async fn drain_app(
    inner: &Arc<Inner>,
    app: &str,
) -> Result<(), crate::backend::BackendError> {
    {
        let mut st = inner.pool.lock();
        if st.wanted.remove(app).is_some() {
            inner.pool.save(&st);
        }
    }
    // A fill under way ends soon; it sees the App is no longer wanted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while inner.pool.lock().filling.contains(app) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w = inner.pool.take(app);
    if let Some(w) = w {
        strip(inner, &w.vm, true).await?;
    }
    // A warm VM the pool lost track of (a crash) still carries the App's mark.
    let tag = app_tag(app);
    for v in inner.our_vms().await? {
        if v.tags.contains(&tag) {
            strip(
                inner,
                &VmRef {
                    node: v.node.clone(),
                    vmid: v.id(),
                },
                true,
            )
            .await?;
        }
    }
    Ok(())
}

/// Shutdown: every warm VM stopped (the wanted list stays for the restart).
pub(crate) async fn drain_all(inner: &Arc<Inner>) {
    let ready: Vec<Warm> = {
        let mut st = inner.pool.lock();
        st.closed = true;
        st.ready.drain().map(|(_, w)| w).collect()
    };
    // Fills under way finish and find the pool closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !inner.pool.lock().filling.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in ready {
        if let Err(e) = strip(inner, &w.vm, true).await {
            warn!(vmid = w.vm.vmid, error = %error_chain(&e), "cannot drain a warm VM");
        }
    }
    if inner.pool.per_app > 0 {
        info!("warm pool drained");
    }
}

/// At start: warm VMs of wanted Apps that still run are adopted, other
/// warm VMs reaped; then every wanted App is filled.
pub(crate) async fn adopt(inner: &Arc<Inner>) {
    let vms = match inner.our_vms().await {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot look for warm VMs left by a crash");
            return;
        }
    };
    for v in vms
        .into_iter()
        .filter(|v| v.tags.iter().any(|t| t == TAG_WARM))
    {
        let vm = VmRef {
            node: v.node.clone(),
            vmid: v.id(),
        };
        let app = v
            .tags
            .iter()
            .find_map(|t| t.strip_prefix("a-"))
            .map(str::to_owned);
        let target = app.as_ref().and_then(|a| {
            inner
                .pool
                .lock()
                .wanted
                .get(a)
                .filter(|t| t.vm == vm)
                .cloned()
        });
        let whole = v.status.as_deref() == Some("running")
            && v.lock.is_none()
            && !v.tags.iter().any(|t| t.starts_with("i-"));
        match target {
            Some(t) if whole && inner.pool.per_app > 0 => match inner.address(&vm, &t.env).await {
                Ok(ip) => {
                    info!(app = %t.app, vmid = vm.vmid, "warm instance adopted");
                    inner
                        .pool
                        .lock()
                        .ready
                        .insert(t.app.clone(), Warm { vm, ip });
                }
                Err(e) => {
                    warn!(vmid = vm.vmid, error = %error_chain(&e), "warm VM without address: reaped");
                    let _ = strip(inner, &vm, true).await;
                }
            },
            _ => {
                info!(vmid = vm.vmid, "reaping a warm VM left by a crash");
                if let Err(e) = strip(inner, &vm, true).await {
                    warn!(vmid = vm.vmid, error = %error_chain(&e), "cannot reap a warm VM");
                }
            }
        }
    }
    let apps: Vec<String> = inner.pool.lock().wanted.keys().cloned().collect();
    for a in apps {
        refill(inner, &a);
    }
}
