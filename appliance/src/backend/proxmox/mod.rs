//! The Proxmox VE backend: desktops as VMs of a Proxmox VE cluster, driven
//! through its REST API by the `daas-proxmox` client (docs/proxmox.md).
//!
//! | phase | artefact |
//! | --- | --- |
//! | Baseimage | VM `daas-<id>`, a clone of the VM or template `spec.source` (a VMID); Finalize seals it and converts it to a template |
//! | Environment | VM `daas-<id>`: a linked clone of the Baseimage's template (full where the storage cannot link), with a fixed MAC on `net0`, cores, memory, and the snapshot `daasroot` |
//! | Deployment | snapshot `d<id without dashes>` of its Environment's VM, taken at Finalize (after its ConfigAuto scripts): with RAM (`vmstate`) when `spec.live`, else without |
//! | App | nothing of its own: it names its Deployment's VM and snapshot |
//! | App instance | the Deployment's VM rolled back to the snapshot (a live rollback resumes it; otherwise it is started), then the app launched through the guest-proxy; tagged `i-<instance id>` |
//! | configuration instance | the object's VM, started; tagged `i-<instance id>` |
//!
//! Invariants:
//! - Names and tags derive from ids: VM `daas-<object id>`, tags `daas`,
//!   `daas-<scope>` (this appliance), the phase, and `i-<instance id>`
//!   while an instance runs on it, `warm` + `a-<app id>` while it is a warm
//!   instance. `inventory` lists by them and never touches a VM without
//!   `daas-<scope>`.
//! - Every step is idempotent: a clone whose answer was lost is found again
//!   by its name (and extra copies made by a repeat are destroyed); a
//!   snapshot that exists is not taken again; a delete of what is gone
//!   succeeds.
//! - One operation at a time per VM in this process (a per-VMID mutex); an
//!   App's VM holds one instance at a time.
//! - Tasks go through the client, which holds a slot of the node's
//!   [`daas_proxmox::NodeLimiter`] while they run; VMIDs come from the
//!   [`daas_proxmox::VmidAllocator`].
//! - The desktop is the guest's own VNC (or RDP) server on the VM's
//!   address: the address is the agent's static lease for the VM's MAC
//!   (or, without an agent, what the QEMU guest agent reports).

mod pool;

use super::safe_id;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use daas_proxmox::{
    ApiToken, Client, ClientConfig, CloneMode, CloneRequest, ConfigUpdate, Credentials, ErrorKind,
    Fingerprint, MacAddr, NetDevice, PollPolicy, PveError, TlsTrust, VmResource, Vmid,
    VmidAllocator,
};
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Backend, BackendError, Capabilities, Inventory, Orphan, StartRequest, Started};
use crate::config;
use crate::guest::ssh::{ApplianceKey, SshConnector, SshTimeouts};
use crate::guest::{
    instance_subject, object_subject, Connector, Guest, GuestChannels, GuestPolicy, HostKeyPins,
};
use crate::jobs::{error_chain, JobLog};
use crate::model::*;
use crate::nodes::agent::LeaseAllocator;

pub use pool::WarmPool;

/// The root snapshot of every Environment.
const ROOT_SNAPSHOT: &str = "daasroot";
const TAG_OURS: &str = "daas";
const TAG_WARM: &str = "warm";
/// How long a VM lock of someone else's task is waited out.
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// The Proxmox VE backend.
pub struct ProxmoxBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: config::ProxmoxBackend,
    client: Client,
    vmids: VmidAllocator,
    scope: String,
    leases: Option<Arc<dyn LeaseAllocator>>,
    guests: GuestChannels,
    guest_key: ApplianceKey,
    pins: Arc<dyn HostKeyPins>,
    vm_locks: Mutex<HashMap<Vmid, Arc<tokio::sync::Mutex<()>>>>,
    /// Instances running now (id → VM), for the inventory between a warm
    /// hand-out and its tag being written.
    active: Mutex<HashMap<String, VmRef>>,
    pool: WarmPool,
}

/// A VM and its node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct VmRef {
    node: String,
    vmid: Vmid,
}

/// What an App instance runs on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AppTarget {
    app: String,
    vm: VmRef,
    snapshot: String,
    live: bool,
    env: String,
    protocol: Protocol,
    command: Vec<String>,
}

/// The VM name of an object.
fn vm_name(object_id: &str) -> String {
    format!("daas-{}", safe_id(object_id))
}

/// The object id in a VM name of ours.
fn object_of_name(name: &str) -> Option<&str> {
    name.strip_prefix("daas-").filter(|s| !s.is_empty())
}

/// A Deployment's snapshot name (PVE: a letter, then letters, digits, `_`
/// and `-`; at most 40).
fn snapshot_name(object_id: &str) -> String {
    let s: String = safe_id(object_id).chars().filter(|c| *c != '-').collect();
    format!("d{}", &s[..s.len().min(38)])
}

fn instance_tag(instance_id: &str) -> String {
    format!("i-{}", safe_id(instance_id))
}

fn app_tag(app_id: &str) -> String {
    format!("a-{}", safe_id(app_id))
}

/// The fixed MAC of an object's VM: locally administered, unicast, from a
/// hash of the scope and the id (stable across retries and restarts).
fn mac_of(scope: &str, object_id: &str) -> MacAddr {
    let h = sha2::Sha256::digest(format!("{scope}/{object_id}").as_bytes());
    MacAddr([0x02, h[0], h[1], h[2], h[3], h[4]])
}

/// Maps a client error onto the backend's: what may pass (a lock, an
/// unreachable node) is retryable; a missing VM is `NotFound`.
fn pve(what: impl Into<String>) -> impl FnOnce(PveError) -> BackendError {
    let what = what.into();
    move |e| match e.kind() {
        ErrorKind::NotFound => BackendError::NotFound(format!("{what}: {}", error_chain(&e))),
        k if k.is_transient() => BackendError::unavailable(what, e),
        ErrorKind::PermissionDenied => BackendError::failed_with(
            format!("{what}: the API token lacks a privilege (docs/proxmox.md lists the role)"),
            e,
        ),
        _ => BackendError::failed_with(what, e),
    }
}

fn ref_of(v: &Value) -> Option<VmRef> {
    serde_json::from_value(v.clone()).ok()
}

impl ProxmoxBackend {
    /// A backend on the cluster `cfg.url`; its scope is the configured one
    /// or the one kept in `state_dir/proxmox/scope` (made once).
    pub fn new(
        cfg: config::ProxmoxBackend,
        state_dir: &Path,
        leases: Option<Arc<dyn LeaseAllocator>>,
        guest_key: ApplianceKey,
        pins: Arc<dyn HostKeyPins>,
    ) -> Result<ProxmoxBackend, BackendError> {
        let scope = match &cfg.scope {
            Some(s) => s.clone(),
            None => {
                let dir = state_dir.join("proxmox");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    BackendError::failed_with(format!("cannot create {}", dir.display()), e)
                })?;
                let f = dir.join("scope");
                match std::fs::read_to_string(&f) {
                    Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
                    _ => {
                        let s = new_id()[..8].to_owned();
                        std::fs::write(&f, &s).map_err(|e| {
                            BackendError::failed_with(format!("cannot write {}", f.display()), e)
                        })?;
                        s
                    }
                }
            }
        };
        let token_id = match &cfg.token_id {
            Some(t) => Some(
                t.parse()
                    .map_err(|e| BackendError::failed_with("[backends.proxmox] token_id", e))?,
            ),
            None => None,
        };
        let token = ApiToken::from_file(&cfg.token_file, token_id).map_err(|e| {
            BackendError::failed_with(
                format!("[backends.proxmox] token_file {}", cfg.token_file.display()),
                e,
            )
        })?;
        let tls = match (&cfg.fingerprint, &cfg.ca_file) {
            (Some(f), _) => TlsTrust::Fingerprint(
                f.parse::<Fingerprint>()
                    .map_err(|e| BackendError::failed_with("[backends.proxmox] fingerprint", e))?,
            ),
            (None, Some(ca)) => TlsTrust::CaPem(std::fs::read_to_string(ca).map_err(|e| {
                BackendError::failed_with(format!("[backends.proxmox] ca_file {}", ca.display()), e)
            })?),
            (None, None) => {
                return Err(BackendError::failed(
                    "[backends.proxmox] needs fingerprint or ca_file",
                ))
            }
        };
        let mut cc = ClientConfig::new(cfg.url.clone(), Credentials::Token(token), tls);
        cc.request_timeout = Duration::from_secs(cfg.request_timeout_secs);
        cc.tasks_per_node = cfg.tasks_per_node;
        cc.poll = PollPolicy {
            initial: Duration::from_millis(cfg.poll_initial_ms),
            max: Duration::from_millis(cfg.poll_max_ms),
            factor: 1.5,
        };
        let client = Client::new(cc).map_err(|e| {
            BackendError::failed_with("[backends.proxmox]: cannot set up the API client", e)
        })?;
        let vmids = VmidAllocator::new(client.clone());
        let pool = WarmPool::new(cfg.warm_pool, cfg.warm_pool_max, state_dir);
        Ok(ProxmoxBackend {
            inner: Arc::new(Inner {
                cfg,
                client,
                vmids,
                scope,
                leases,
                guests: GuestChannels::default(),
                guest_key,
                pins,
                vm_locks: Mutex::new(HashMap::new()),
                active: Mutex::new(HashMap::new()),
                pool,
            }),
        })
    }

    /// This appliance's scope (the tag `daas-<scope>`).
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// Warm instances ready now, by App id.
    pub fn warm_apps(&self) -> Vec<String> {
        self.inner.pool.ready_apps()
    }
}

impl Inner {
    fn scope_tag(&self) -> String {
        format!("daas-{}", self.scope)
    }

    fn tags(&self, phase: &str, extra: &[String]) -> Vec<String> {
        let mut t = vec![TAG_OURS.to_owned(), self.scope_tag(), phase.to_owned()];
        t.extend(extra.iter().cloned());
        t
    }

    fn vm_lock(&self, vmid: Vmid) -> Arc<tokio::sync::Mutex<()>> {
        self.vm_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vmid)
            .or_default()
            .clone()
    }

    fn node(&self) -> &str {
        &self.cfg.node
    }

    /// Our VMs (with this appliance's scope tag).
    async fn our_vms(&self) -> Result<Vec<VmResource>, BackendError> {
        let scope = self.scope_tag();
        let all = self
            .client
            .vms()
            .await
            .map_err(pve("cannot list the cluster's VMs"))?;
        Ok(all
            .into_iter()
            .filter(|v| v.tags.contains(&scope))
            .collect())
    }

    /// Every VM of ours named for `object_id`, lowest VMID first.
    async fn vms_named(&self, object_id: &str) -> Result<Vec<VmResource>, BackendError> {
        let name = vm_name(object_id);
        let scope = self.scope_tag();
        let all = self
            .client
            .vms()
            .await
            .map_err(pve("cannot list the cluster's VMs"))?;
        let mut v: Vec<VmResource> = all
            .into_iter()
            .filter(|v| v.name.as_deref() == Some(name.as_str()))
            // A clone cut off before its tags were set carries only the name.
            .filter(|v| v.tags.is_empty() || v.tags.contains(&scope))
            .collect();
        v.sort_by_key(|r| r.vmid);
        Ok(v)
    }

    /// Waits until the VM carries no lock (a task of ours or someone's);
    /// `Ok(false)` when it vanished meanwhile.
    async fn wait_unlocked(&self, vm: &VmRef) -> Result<bool, BackendError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match self.client.vm_status(&vm.node, vm.vmid).await {
                Ok(s) if s.lock.is_none() => return Ok(true),
                Ok(s) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(BackendError::Unavailable {
                            message: format!(
                                "VM {} stays locked ({})",
                                vm.vmid,
                                s.lock.unwrap_or_default()
                            ),
                            source: None,
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(pve(format!("cannot read VM {}", vm.vmid))(e)),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The VM of `object` if it exists: by its stored ref, else by name.
    /// Extra copies with the same name (a clone repeated after a lost
    /// answer) are destroyed.
    async fn find_vm(&self, object_id: &str, log: &JobLog) -> Result<Option<VmRef>, BackendError> {
        let vms = self.vms_named(object_id).await?;
        let mut found = None;
        for v in vms {
            let r = VmRef {
                node: v.node.clone(),
                vmid: v.id(),
            };
            if !self.wait_unlocked(&r).await? {
                continue; // a failed clone PVE removed
            }
            if found.is_none() {
                found = Some(r);
            } else {
                log.warn(&format!(
                    "VM {} is a second copy of {} (a repeated clone): destroying it",
                    r.vmid,
                    vm_name(object_id)
                ));
                self.destroy(&r).await?;
            }
        }
        Ok(found)
    }

    /// Stops (hard) and destroys a VM with purge; fine when it is gone.
    async fn destroy(&self, vm: &VmRef) -> Result<(), BackendError> {
        let lock = self.vm_lock(vm.vmid);
        let _g = lock.lock().await;
        if !self.wait_unlocked(vm).await? {
            return Ok(());
        }
        self.hard_stop(vm).await?;
        match self.client.destroy_vm(&vm.node, vm.vmid).await {
            Ok(Some(t)) => match t.wait().await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(pve(format!("cannot destroy VM {}", vm.vmid))(e)),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(pve(format!("cannot destroy VM {}", vm.vmid))(e)),
        }
    }

    async fn is_running(&self, vm: &VmRef) -> Result<bool, BackendError> {
        self.client
            .vm_status(&vm.node, vm.vmid)
            .await
            .map(|s| s.is_running())
            .map_err(pve(format!("cannot read VM {}", vm.vmid)))
    }

    async fn hard_stop(&self, vm: &VmRef) -> Result<(), BackendError> {
        match self.client.vm_status(&vm.node, vm.vmid).await {
            Ok(s) if !s.is_running() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(pve(format!("cannot read VM {}", vm.vmid))(e)),
        }
        let t = self
            .client
            .stop_vm(&vm.node, vm.vmid)
            .await
            .map_err(pve(format!("cannot stop VM {}", vm.vmid)))?;
        t.wait()
            .await
            .map_err(pve(format!("cannot stop VM {}", vm.vmid)))?;
        Ok(())
    }

    /// A clean shutdown that turns into a hard stop after the timeout.
    async fn shutdown(&self, vm: &VmRef) -> Result<(), BackendError> {
        if !self.is_running(vm).await? {
            return Ok(());
        }
        let t = self
            .client
            .shutdown_vm(
                &vm.node,
                vm.vmid,
                Some(Duration::from_secs(self.cfg.shutdown_timeout_secs)),
                true,
            )
            .await
            .map_err(pve(format!("cannot shut VM {} down", vm.vmid)))?;
        t.wait()
            .await
            .map_err(pve(format!("cannot shut VM {} down", vm.vmid)))?;
        Ok(())
    }

    async fn start_vm(&self, vm: &VmRef) -> Result<(), BackendError> {
        if self.is_running(vm).await? {
            return Ok(());
        }
        let t = self
            .client
            .start_vm(&vm.node, vm.vmid)
            .await
            .map_err(pve(format!("cannot start VM {}", vm.vmid)))?;
        t.wait()
            .await
            .map_err(pve(format!("cannot start VM {}", vm.vmid)))?;
        Ok(())
    }

    /// Clones `source` into a new VM named for `object_id` (linked, or full
    /// where PVE says the source or its storage cannot link) and waits.
    async fn clone_for(
        &self,
        source: &VmRef,
        object_id: &str,
        log: &JobLog,
    ) -> Result<VmRef, BackendError> {
        let name = vm_name(object_id);
        let client = self.client.clone();
        let full_storage = self.cfg.storage.clone();
        let pool = self.cfg.pool.clone();
        let node = source.node.clone();
        let src = source.vmid;
        let (vmid, mode) = self
            .vmids
            .create(|newid| {
                let client = client.clone();
                let mut req = CloneRequest {
                    node: node.clone(),
                    vmid: src,
                    newid,
                    name: Some(name.clone()),
                    mode: CloneMode::Linked,
                    target: None,
                    description: Some(format!("DaaS appliance object {object_id}")),
                    pool: pool.clone(),
                };
                let full = CloneMode::Full {
                    storage: full_storage.clone(),
                };
                async move {
                    let task = match client.clone_vm(&req).await {
                        Err(e) if e.kind() == ErrorKind::LinkedCloneUnsupported => {
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
            .map_err(pve(format!("cannot clone VM {src}")))?;
        log.info(&format!(
            "VM {vmid} {name}: {} clone of {src}",
            match mode {
                CloneMode::Linked => "linked",
                CloneMode::Full { .. } => "full (the source or its storage cannot link)",
            }
        ));
        Ok(VmRef {
            node: source.node.clone(),
            vmid,
        })
    }

    async fn set_config(&self, vm: &VmRef, u: &ConfigUpdate) -> Result<(), BackendError> {
        self.client
            .update_vm_config(&vm.node, vm.vmid, u)
            .await
            .map_err(pve(format!("cannot configure VM {}", vm.vmid)))
    }

    async fn set_tags(&self, vm: &VmRef, tags: Vec<String>) -> Result<(), BackendError> {
        self.set_config(
            vm,
            &ConfigUpdate {
                tags: Some(tags),
                ..ConfigUpdate::default()
            },
        )
        .await
    }

    /// The VM's phase tags without instance and warm marks.
    async fn base_tags(&self, vm: &VmRef) -> Result<Vec<String>, BackendError> {
        let c = self
            .client
            .vm_config(&vm.node, vm.vmid)
            .await
            .map_err(pve(format!("cannot read VM {}", vm.vmid)))?;
        Ok(c.tags
            .into_iter()
            .filter(|t| !t.starts_with("i-") && !t.starts_with("a-") && t != TAG_WARM)
            .collect())
    }

    /// The VM's address: the agent's static lease for its MAC, or what the
    /// QEMU guest agent reports.
    async fn address(&self, vm: &VmRef, env_id: &str) -> Result<Ipv4Addr, BackendError> {
        let mac = mac_of(&self.scope, env_id);
        if let Some(l) = &self.leases {
            return self.lease(l.as_ref(), &mac, env_id).await;
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.guest_timeout_secs);
        loop {
            let r = self.client.guest_interfaces(&vm.node, vm.vmid).await;
            if let Ok(ifaces) = &r {
                let want = mac.to_string().to_ascii_lowercase();
                for i in ifaces {
                    if i.mac.as_deref().map(str::to_ascii_lowercase).as_deref() == Some(&want) {
                        if let Some(ip) = i.addresses.iter().find_map(|a| match a {
                            std::net::IpAddr::V4(v) if !v.is_loopback() => Some(*v),
                            _ => None,
                        }) {
                            return Ok(ip);
                        }
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(match r {
                    Err(e) => pve(format!(
                        "no address for VM {}: no agent lease is configured and the QEMU guest agent does not answer",
                        vm.vmid
                    ))(e),
                    Ok(_) => BackendError::failed(format!(
                        "no address for VM {}: the guest reports none on {mac}",
                        vm.vmid
                    )),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn lease(
        &self,
        l: &dyn LeaseAllocator,
        mac: &MacAddr,
        env_id: &str,
    ) -> Result<Ipv4Addr, BackendError> {
        let amac = daas_agent_api::MacAddr::new(mac.0)
            .map_err(|e| BackendError::failed_with("the VM's MAC", e))?;
        let host: daas_agent_api::Hostname = vm_name(env_id)
            .parse()
            .map_err(|e| BackendError::failed_with("the VM's host name", e))?;
        l.allocate_lease(&amac, &host).await.map_err(|e| {
            if e.retryable() {
                BackendError::unavailable("the agent could not write the lease", e)
            } else {
                BackendError::failed_with("the agent could not write the lease", e)
            }
        })
    }

    async fn release_lease(&self, env_id: &str) -> Result<(), BackendError> {
        let Some(l) = &self.leases else { return Ok(()) };
        let mac = mac_of(&self.scope, env_id);
        let amac = daas_agent_api::MacAddr::new(mac.0)
            .map_err(|e| BackendError::failed_with("the VM's MAC", e))?;
        l.release(&amac).await.map_err(|e| {
            if e.retryable() {
                BackendError::unavailable("the agent could not release the lease", e)
            } else {
                BackendError::failed_with("the agent could not release the lease", e)
            }
        })
    }

    /// The guest of a subject (SSH to its address).
    fn guest(&self, subject: &str, ip: Ipv4Addr) -> Arc<Guest> {
        let addr = format!("{ip}:{}", self.cfg.guest_port);
        let c = SshConnector {
            addr,
            user: self.cfg.guest_user.clone(),
            subject: subject.to_owned(),
            key: self.guest_key.clone(),
            pins: self.pins.clone(),
            timeouts: SshTimeouts::default(),
        };
        self.guests.get_or_insert(
            subject,
            move || Arc::new(c) as Arc<dyn Connector>,
            GuestPolicy::default(),
        )
    }

    fn guest_err(what: &str) -> impl FnOnce(crate::guest::GuestError) -> BackendError + '_ {
        move |e| {
            if e.retryable() {
                BackendError::unavailable(what.to_owned(), e)
            } else {
                BackendError::failed_with(what.to_owned(), e)
            }
        }
    }

    /// The connection to a VM's desktop.
    fn connection(&self, ip: Ipv4Addr, protocol: Protocol) -> Connection {
        let port = match protocol {
            Protocol::Rdp => 3389,
            _ => self.cfg.vnc_port,
        };
        Connection {
            protocol,
            target: Target::Tcp {
                host: ip.to_string(),
                port,
            },
            password: None,
            username: None,
        }
    }

    /// Rolls an App's VM back to its snapshot and runs it: a live rollback
    /// resumes it; otherwise it is started. Then the app is launched in the
    /// guest (when `guest` is on). Returns the address. Called with the
    /// VM's lock held.
    async fn resume_app(
        &self,
        t: &AppTarget,
        subject: &str,
        log: &JobLog,
    ) -> Result<Ipv4Addr, BackendError> {
        let vm = &t.vm;
        // The caller read the VM's config and waited out any lock.
        // A rollback stops a running VM first.
        let task = self
            .client
            .rollback(&vm.node, vm.vmid, &t.snapshot, !t.live)
            .await
            .map_err(pve(format!(
                "cannot roll VM {} back to {}",
                vm.vmid, t.snapshot
            )))?;
        task.wait().await.map_err(pve(format!(
            "cannot roll VM {} back to {}",
            vm.vmid, t.snapshot
        )))?;
        // A live rollback leaves the VM running; an offline one started it
        // (`start=1`): no status read needed.
        log.info(&format!(
            "VM {} rolled back to {} ({})",
            vm.vmid,
            t.snapshot,
            if t.live { "resumed" } else { "started" }
        ));
        let ip = self.address(vm, &t.env).await?;
        if self.cfg.guest {
            let g = self.guest(subject, ip);
            g.wait_ready(Duration::from_secs(self.cfg.guest_timeout_secs))
                .await
                .map_err(Self::guest_err("the guest-proxy did not answer"))?;
            let pid = g
                .spawn_app(&self.cfg.desktop_user, &self.cfg.display, &t.command)
                .await
                .map_err(Self::guest_err("the guest-proxy could not launch the app"))?;
            log.info(&format!("app launched in the guest (pid {pid})"));
        } else {
            log.info(
                "guest step skipped ([backends.proxmox] guest = false): the snapshot's desktop is the app",
            );
        }
        Ok(ip)
    }

    fn target_of(&self, app: &Object, dep: &Object) -> Result<AppTarget, BackendError> {
        let vm = ref_of(&dep.backend_ref).ok_or_else(|| {
            BackendError::failed(format!(
                "the Deployment {} has no VM (was it made on this backend?)",
                dep.id
            ))
        })?;
        let env = dep
            .parent_id
            .clone()
            .ok_or_else(|| BackendError::failed("the Deployment has no Environment"))?;
        Ok(AppTarget {
            app: app.id.clone(),
            vm,
            snapshot: snapshot_name(&dep.id),
            // What the snapshot really holds (a "live" snapshot of a
            // stopped VM has no RAM), else what was asked for.
            live: dep.backend_ref["live"].as_bool().unwrap_or(dep.spec.live),
            env,
            protocol: app.protocol,
            command: app.spec.command.clone(),
        })
    }

    fn mark_active(&self, iid: &str, vm: &VmRef) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(iid.to_owned(), vm.clone());
    }

    fn unmark_active(&self, iid: &str) -> Option<VmRef> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(iid)
    }

    /// Which VM runs instance `iid`: its ref, the active map, or its tag.
    async fn vm_of_instance(&self, inst: &Instance) -> Result<Option<VmRef>, BackendError> {
        if let Some(r) = ref_of(&inst.backend_ref) {
            return Ok(Some(r));
        }
        if let Some(r) = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&inst.id)
            .cloned()
        {
            return Ok(Some(r));
        }
        let tag = instance_tag(&inst.id);
        Ok(self
            .our_vms()
            .await?
            .into_iter()
            .find(|v| v.tags.contains(&tag))
            .map(|v| VmRef {
                node: v.node.clone(),
                vmid: v.id(),
            }))
    }

    /// Ends an instance on its VM: a configuration desktop shuts down
    /// cleanly (its changes stay); an App's VM stops hard (the next
    /// rollback discards its state anyway). Removes the instance's tag.
    async fn end_instance(
        &self,
        iid: &str,
        vm: &VmRef,
        clean: bool,
        log: &JobLog,
    ) -> Result<(), BackendError> {
        let lock = self.vm_lock(vm.vmid);
        let _g = lock.lock().await;
        if !self.wait_unlocked(vm).await? {
            self.unmark_active(iid);
            return Ok(());
        }
        let tags = match self.client.vm_config(&vm.node, vm.vmid).await {
            Ok(c) => c.tags,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.unmark_active(iid);
                return Ok(());
            }
            Err(e) => return Err(pve(format!("cannot read VM {}", vm.vmid))(e)),
        };
        let mine = instance_tag(iid);
        let others = tags.iter().any(|t| t.starts_with("i-") && *t != mine);
        if others {
            // The VM serves another instance now: ours ended already.
            self.unmark_active(iid);
            return Ok(());
        }
        if clean {
            self.shutdown(vm).await?;
        } else {
            self.hard_stop(vm).await?;
        }
        if tags.iter().any(|t| t == &mine) {
            let keep: Vec<String> = tags.into_iter().filter(|t| *t != mine).collect();
            self.set_tags(vm, keep).await?;
        }
        self.unmark_active(iid);
        self.guests.remove(&instance_subject(iid));
        log.info(&format!("VM {} stopped", vm.vmid));
        Ok(())
    }
}

#[async_trait]
impl Backend for ProxmoxBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Proxmox
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            linked_clone: true,
            live_snapshot: true,
            vm: true,
            container: false,
            resize: false,
            clipboard: true,
        }
    }

    async fn check(&self) -> Result<(), BackendError> {
        let me = &self.inner;
        let v = me.client.version().await.map_err(|e| {
            BackendError::failed_with(
                format!(
                    "[backends.proxmox] url: Proxmox VE at {} does not answer as expected",
                    me.cfg.url
                ),
                e,
            )
        })?;
        let nodes =
            me.client.nodes().await.map_err(|e| {
                BackendError::failed_with("[backends.proxmox]: cannot list nodes", e)
            })?;
        if !nodes.iter().any(|n| n.node == me.cfg.node) {
            return Err(BackendError::failed(format!(
                "[backends.proxmox] node: the cluster has no node {:?} (it has {})",
                me.cfg.node,
                nodes
                    .iter()
                    .map(|n| n.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        info!(version = %v.version, node = %me.cfg.node, scope = %me.scope, "proxmox backend ready");
        // Warm instances left by a crash: adopted when whole, else reaped.
        let inner = self.inner.clone();
        tokio::spawn(async move { pool::adopt(&inner).await });
        Ok(())
    }

    async fn create(
        &self,
        object: &Object,
        parent: Option<&Object>,
        log: &JobLog,
    ) -> Result<Value, BackendError> {
        let me = &self.inner;
        match object.phase {
            Phase::Baseimage => {
                let src = object
                    .spec
                    .source
                    .as_deref()
                    .and_then(|s| s.trim().parse::<Vmid>().ok())
                    .ok_or_else(|| {
                        BackendError::failed(
                            "a Proxmox Baseimage needs spec.source: the VMID of a VM or template on the node",
                        )
                    })?;
                let vm = match me.find_vm(&object.id, log).await? {
                    Some(vm) => {
                        log.info(&format!("VM {} exists (resumed)", vm.vmid));
                        vm
                    }
                    None => {
                        let source = VmRef {
                            node: me.node().to_owned(),
                            vmid: src,
                        };
                        match me.client.vm_config(&source.node, src).await {
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {
                                return Err(BackendError::failed(format!(
                                    "spec.source: there is no VM {src} on node {}",
                                    source.node
                                )))
                            }
                            Err(e) => return Err(pve(format!("cannot read VM {src}"))(e)),
                        }
                        me.clone_for(&source, &object.id, log).await?
                    }
                };
                me.set_config(
                    &vm,
                    &ConfigUpdate {
                        tags: Some(me.tags("baseimage", &[])),
                        agent: Some(true),
                        ..ConfigUpdate::default()
                    },
                )
                .await?;
                Ok(json!({"node": vm.node, "vmid": vm.vmid, "source": src}))
            }
            Phase::Environment => {
                let base = parent.ok_or_else(|| BackendError::failed("no Baseimage"))?;
                let src = ref_of(&base.backend_ref).ok_or_else(|| {
                    BackendError::failed("the Baseimage has no VM on this backend")
                })?;
                let vm = match me.find_vm(&object.id, log).await? {
                    Some(vm) => {
                        log.info(&format!("VM {} exists (resumed)", vm.vmid));
                        vm
                    }
                    None => me.clone_for(&src, &object.id, log).await?,
                };
                let mac = mac_of(&me.scope, &object.id);
                let r = &object.spec.resources;
                me.set_config(
                    &vm,
                    &ConfigUpdate {
                        net0: Some(NetDevice::virtio(mac, &me.cfg.bridge)),
                        cores: Some(r.cpus.unwrap_or(me.cfg.cores)),
                        memory_mib: Some(u64::from(r.memory_mib.unwrap_or(me.cfg.memory_mib))),
                        tags: Some(me.tags("environment", &[])),
                        agent: Some(true),
                        ..ConfigUpdate::default()
                    },
                )
                .await?;
                if let Some(l) = &me.leases {
                    let ip = me.lease(l.as_ref(), &mac, &object.id).await?;
                    log.info(&format!("static lease {mac} → {ip}"));
                }
                let lock = me.vm_lock(vm.vmid);
                let _g = lock.lock().await;
                let snaps = me
                    .client
                    .snapshots(&vm.node, vm.vmid)
                    .await
                    .map_err(pve("cannot list snapshots"))?;
                if !snaps.iter().any(|s| s.name == ROOT_SNAPSHOT) {
                    me.wait_unlocked(&vm).await?;
                    let t = me
                        .client
                        .create_snapshot(&vm.node, vm.vmid, ROOT_SNAPSHOT, false, None)
                        .await
                        .map_err(pve("cannot take the root snapshot"))?;
                    t.wait()
                        .await
                        .map_err(pve("cannot take the root snapshot"))?;
                }
                log.info(&format!("VM {} ready, MAC {mac}", vm.vmid));
                Ok(json!({"node": vm.node, "vmid": vm.vmid, "mac": mac.to_string()}))
            }
            Phase::Deployment => {
                let env = parent.ok_or_else(|| BackendError::failed("no Environment"))?;
                let vm = ref_of(&env.backend_ref).ok_or_else(|| {
                    BackendError::failed("the Environment has no VM on this backend")
                })?;
                match me.client.vm_config(&vm.node, vm.vmid).await {
                    Ok(_) => {}
                    Err(e) => return Err(pve(format!("the Environment's VM {}", vm.vmid))(e)),
                }
                // The snapshot is taken at Finalize, after the scripts.
                Ok(json!({"node": vm.node, "vmid": vm.vmid, "snapshot": snapshot_name(&object.id)}))
            }
            Phase::App => {
                let dep = parent.ok_or_else(|| BackendError::failed("no Deployment"))?;
                let t = me.target_of(object, dep)?;
                let snaps = me
                    .client
                    .snapshots(&t.vm.node, t.vm.vmid)
                    .await
                    .map_err(pve(format!("the Deployment's VM {}", t.vm.vmid)))?;
                if !snaps.iter().any(|s| s.name == t.snapshot) {
                    return Err(BackendError::failed(format!(
                        "the Deployment's snapshot {} is not on VM {}",
                        t.snapshot, t.vm.vmid
                    )));
                }
                log.info(&format!(
                    "app on VM {} at snapshot {}",
                    t.vm.vmid, t.snapshot
                ));
                pool::want(&self.inner, t.clone());
                Ok(json!({"node": t.vm.node, "vmid": t.vm.vmid, "snapshot": t.snapshot}))
            }
        }
    }

    async fn run_script(
        &self,
        object: &Object,
        script: &Script,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), BackendError> {
        let me = &self.inner;
        if !me.cfg.guest {
            return Err(BackendError::failed(
                "ConfigAuto scripts run through the guest-proxy: set [backends.proxmox] guest = true (and bake daas-guest-proxy into the template)",
            ));
        }
        let vm = ref_of(&object.backend_ref)
            .ok_or_else(|| BackendError::failed("the object has no VM"))?;
        let env_id = match object.phase {
            Phase::Deployment => object.parent_id.clone().unwrap_or_default(),
            _ => object.id.clone(),
        };
        {
            let lock = me.vm_lock(vm.vmid);
            let _g = lock.lock().await;
            me.wait_unlocked(&vm).await?;
            me.start_vm(&vm).await?;
        }
        let ip = me.address(&vm, &env_id).await?;
        let g = me.guest(&object_subject(&object.id), ip);
        g.wait_ready(Duration::from_secs(me.cfg.guest_timeout_secs))
            .await
            .map_err(Inner::guest_err("the guest-proxy did not answer"))?;
        g.exec_script(script, log, cancel)
            .await
            .map_err(Inner::guest_err("the script failed"))
    }

    async fn finalize(&self, object: &Object, log: &JobLog) -> Result<Value, BackendError> {
        let me = &self.inner;
        let Some(vm) = ref_of(&object.backend_ref) else {
            return Ok(object.backend_ref.clone());
        };
        match object.phase {
            Phase::Baseimage => {
                let c = me
                    .client
                    .vm_config(&vm.node, vm.vmid)
                    .await
                    .map_err(pve(format!("the Baseimage's VM {}", vm.vmid)))?;
                if c.template {
                    log.info("already a template (resumed)");
                    return Ok(object.backend_ref.clone());
                }
                if me.cfg.guest && me.is_running(&vm).await? {
                    let ip = me.address(&vm, &object.id).await?;
                    let g = me.guest(&object_subject(&object.id), ip);
                    let seal = Script {
                        name: "seal".into(),
                        run: "rm -f /etc/machine-id /var/lib/dbus/machine-id /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; touch /etc/machine-id; true".into(),
                        timeout_secs: 60,
                    };
                    g.exec_script(&seal, log, &CancellationToken::new())
                        .await
                        .map_err(Inner::guest_err("the seal script failed"))?;
                    me.guests.remove(&object_subject(&object.id));
                }
                let lock = me.vm_lock(vm.vmid);
                let _g = lock.lock().await;
                me.shutdown(&vm).await?;
                me.wait_unlocked(&vm).await?;
                let t = me
                    .client
                    .convert_to_template(&vm.node, vm.vmid)
                    .await
                    .map_err(pve("cannot convert to a template"))?;
                t.wait()
                    .await
                    .map_err(pve("cannot convert to a template"))?;
                log.info(&format!("VM {} is now a template", vm.vmid));
                Ok(object.backend_ref.clone())
            }
            Phase::Environment => {
                let lock = me.vm_lock(vm.vmid);
                let _g = lock.lock().await;
                me.shutdown(&vm).await?;
                me.guests.remove(&object_subject(&object.id));
                Ok(object.backend_ref.clone())
            }
            Phase::Deployment => {
                let snap = snapshot_name(&object.id);
                let lock = me.vm_lock(vm.vmid);
                let _g = lock.lock().await;
                me.wait_unlocked(&vm).await?;
                let snaps = me
                    .client
                    .snapshots(&vm.node, vm.vmid)
                    .await
                    .map_err(pve("cannot list snapshots"))?;
                if let Some(s) = snaps.iter().find(|s| s.name == snap) {
                    log.info(&format!("snapshot {snap} exists (resumed)"));
                    let live = s.vmstate;
                    me.hard_stop(&vm).await?;
                    return Ok(
                        json!({"node": vm.node, "vmid": vm.vmid, "snapshot": snap, "live": live}),
                    );
                }
                if object.spec.live {
                    me.start_vm(&vm).await?;
                }
                let t = me
                    .client
                    .create_snapshot(
                        &vm.node,
                        vm.vmid,
                        &snap,
                        object.spec.live,
                        Some(&format!("DaaS Deployment {}", object.id)),
                    )
                    .await
                    .map_err(pve("cannot take the Deployment's snapshot"))?;
                t.wait()
                    .await
                    .map_err(pve("cannot take the Deployment's snapshot"))?;
                // The snapshot holds the state: the VM need not run on.
                me.hard_stop(&vm).await?;
                me.guests.remove(&object_subject(&object.id));
                log.info(&format!(
                    "snapshot {snap} of VM {} taken ({})",
                    vm.vmid,
                    if object.spec.live {
                        "live, with RAM"
                    } else {
                        "without RAM"
                    }
                ));
                Ok(
                    json!({"node": vm.node, "vmid": vm.vmid, "snapshot": snap, "live": object.spec.live}),
                )
            }
            Phase::App => Ok(object.backend_ref.clone()),
        }
    }

    async fn delete(&self, object: &Object, log: &JobLog) -> Result<(), BackendError> {
        let me = &self.inner;
        match object.phase {
            Phase::App => {
                pool::drain_app(me, &object.id).await?;
                log.info("no warm instance left for the app");
                Ok(())
            }
            Phase::Deployment => {
                let Some(vm) = ref_of(&object.backend_ref) else {
                    return Ok(());
                };
                let snap = snapshot_name(&object.id);
                let lock = me.vm_lock(vm.vmid);
                let _g = lock.lock().await;
                if !me.wait_unlocked(&vm).await? {
                    return Ok(());
                }
                let snaps = match me.client.snapshots(&vm.node, vm.vmid).await {
                    Ok(s) => s,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(pve("cannot list snapshots")(e)),
                };
                if snaps.iter().any(|s| s.name == snap) {
                    let t = me
                        .client
                        .delete_snapshot(&vm.node, vm.vmid, &snap)
                        .await
                        .map_err(pve("cannot delete the snapshot"))?;
                    match t.wait().await {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(pve("cannot delete the snapshot")(e)),
                    }
                    log.info(&format!("snapshot {snap} of VM {} deleted", vm.vmid));
                }
                Ok(())
            }
            Phase::Baseimage | Phase::Environment => {
                for v in me.vms_named(&object.id).await? {
                    let r = VmRef {
                        node: v.node.clone(),
                        vmid: v.id(),
                    };
                    me.destroy(&r).await?;
                    log.info(&format!("VM {} destroyed (purged)", r.vmid));
                }
                if object.phase == Phase::Environment {
                    me.release_lease(&object.id).await?;
                }
                me.guests.remove(&object_subject(&object.id));
                Ok(())
            }
        }
    }

    async fn start(&self, req: StartRequest<'_>, log: &JobLog) -> Result<Started, BackendError> {
        let me = &self.inner;
        let inst = req.instance;
        let subject = instance_subject(&inst.id);
        match (req.object.phase, inst.purpose) {
            (Phase::App, _) => {
                let dep = req
                    .parent
                    .ok_or_else(|| BackendError::failed("the app has no deployment"))?;
                let t = me.target_of(req.object, dep)?;
                pool::want(&self.inner, t.clone());
                if let Some(w) = me.pool.take(&t.app) {
                    // Resumed ahead of demand: nothing to do on the backend.
                    me.mark_active(&inst.id, &w.vm);
                    log.info(&format!("warm instance on VM {} handed out", w.vm.vmid));
                    pool::mark_instance(&self.inner, &inst.id, &w.vm);
                    return Ok(Started {
                        backend_ref: json!({"node": w.vm.node, "vmid": w.vm.vmid, "app": t.app, "warm": true}),
                        connection: me.connection(w.ip, t.protocol),
                    });
                }
                let lock = me.vm_lock(t.vm.vmid);
                let _g = lock.lock().await;
                let c = match me.client.vm_config(&t.vm.node, t.vm.vmid).await {
                    Ok(c) => c,
                    Err(e) => return Err(pve(format!("the Deployment's VM {}", t.vm.vmid))(e)),
                };
                if c.lock.is_some() && !me.wait_unlocked(&t.vm).await? {
                    return Err(BackendError::NotFound(format!(
                        "the Deployment's VM {}",
                        t.vm.vmid
                    )));
                }
                let tags = c.tags;
                let busy = me
                    .active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(i, v)| **v == t.vm && **i != inst.id)
                    .map(|(i, _)| i.clone());
                if let Some(other) = busy {
                    return Err(BackendError::failed(format!(
                        "the Deployment's VM {} runs another instance ({other}); a VM holds one instance at a time",
                        t.vm.vmid
                    )));
                }
                if let Some(a) = me.pool.evict_vm(&t.vm) {
                    log.info(&format!("the VM's warm instance of app {a} gives way"));
                }
                let mine = instance_tag(&inst.id);
                if let Some(other) = tags.iter().find(|x| x.starts_with("i-") && **x != mine) {
                    return Err(BackendError::failed(format!(
                        "the Deployment's VM {} runs another instance ({}); a VM holds one instance at a time",
                        t.vm.vmid,
                        other.trim_start_matches("i-")
                    )));
                }
                me.mark_active(&inst.id, &t.vm);
                let r = me.resume_app(&t, &subject, log).await;
                match r {
                    Ok(ip) => {
                        // The instance's mark, off the open's path (the
                        // active map covers the inventory meanwhile).
                        drop(_g);
                        pool::mark_instance(&self.inner, &inst.id, &t.vm);
                        Ok(Started {
                            backend_ref: json!({"node": t.vm.node, "vmid": t.vm.vmid, "app": t.app}),
                            connection: me.connection(ip, t.protocol),
                        })
                    }
                    Err(e) => {
                        me.unmark_active(&inst.id);
                        if !e.retryable() {
                            // Nothing will retry: the VM does not run on
                            // for an instance that failed (the job's undo
                            // cannot find it, as no ref was stored).
                            if let Err(s) = me.hard_stop(&t.vm).await {
                                log.warn(&format!(
                                    "cannot stop VM {} after the failed start: {}",
                                    t.vm.vmid,
                                    error_chain(&s)
                                ));
                            }
                        }
                        Err(e)
                    }
                }
            }
            (_, Purpose::Configure) => {
                let vm = ref_of(&req.object.backend_ref)
                    .ok_or_else(|| BackendError::failed("the object has no VM"))?;
                let env_id = match req.object.phase {
                    Phase::Deployment => req.object.parent_id.clone().unwrap_or_default(),
                    _ => req.object.id.clone(),
                };
                let lock = me.vm_lock(vm.vmid);
                let _g = lock.lock().await;
                me.pool.evict_vm(&vm);
                me.wait_unlocked(&vm).await?;
                me.start_vm(&vm).await?;
                let mut tags = me.base_tags(&vm).await?;
                tags.push(instance_tag(&inst.id));
                me.set_tags(&vm, tags).await?;
                me.mark_active(&inst.id, &vm);
                let ip = me.address(&vm, &env_id).await?;
                log.info(&format!("VM {} runs for configuration at {ip}", vm.vmid));
                Ok(Started {
                    backend_ref: json!({"node": vm.node, "vmid": vm.vmid}),
                    connection: me.connection(ip, req.object.protocol),
                })
            }
            (p, Purpose::Run) => Err(BackendError::failed(format!(
                "a {p} is not run, only configured"
            ))),
        }
    }

    async fn stop(&self, instance: &Instance, log: &JobLog) -> Result<(), BackendError> {
        let me = &self.inner;
        let Some(vm) = me.vm_of_instance(instance).await? else {
            log.info("nothing to stop");
            return Ok(());
        };
        let clean = instance.purpose == Purpose::Configure;
        me.end_instance(&instance.id, &vm, clean, log).await?;
        if instance.purpose == Purpose::Run {
            pool::refill(&self.inner, &instance.object_id);
        }
        Ok(())
    }

    async fn inventory(&self) -> Result<Inventory, BackendError> {
        let me = &self.inner;
        let mut inv = Inventory::default();
        for v in me.our_vms().await? {
            if let Some(o) = v.name.as_deref().and_then(object_of_name) {
                inv.objects.insert(o.to_owned());
            }
            if v.status.as_deref() == Some("running") {
                for t in &v.tags {
                    if let Some(i) = t.strip_prefix("i-") {
                        inv.instances.insert(i.to_owned());
                    }
                }
            }
        }
        for iid in me.active.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            inv.instances.insert(iid.clone());
        }
        Ok(inv)
    }

    async fn remove_orphan(&self, orphan: &Orphan) -> Result<(), BackendError> {
        let me = &self.inner;
        let log = JobLog::detached();
        match orphan.what {
            "instance" => {
                let id = orphan.id.trim_end_matches("#dead");
                let tag = instance_tag(id);
                for v in me.our_vms().await? {
                    if v.tags.contains(&tag) {
                        let r = VmRef {
                            node: v.node.clone(),
                            vmid: v.id(),
                        };
                        me.end_instance(id, &r, false, &log).await?;
                    }
                }
                me.unmark_active(id);
                Ok(())
            }
            "object" => {
                for v in me.vms_named(&orphan.id).await? {
                    me.destroy(&VmRef {
                        node: v.node.clone(),
                        vmid: v.id(),
                    })
                    .await?;
                }
                Ok(())
            }
            w => Err(BackendError::failed(format!("unknown orphan kind {w}"))),
        }
    }

    async fn shutdown(&self) {
        pool::drain_all(&self.inner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_come_from_ids() {
        let id = "5F0C1A2B-0000-4000-8000-00000000ABCD";
        assert_eq!(vm_name(id), "daas-5f0c1a2b-0000-4000-8000-00000000abcd");
        assert_eq!(object_of_name(&vm_name("x-1")), Some("x-1"));
        assert_eq!(object_of_name("daas-"), None);
        assert_eq!(object_of_name("web01"), None);
        let s = snapshot_name(id);
        assert!(s.len() <= 40 && s.starts_with('d'), "{s}");
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(instance_tag("../Ab"), "i-ab");
        assert_eq!(app_tag("A-1"), "a-a-1");
    }

    #[test]
    fn macs_are_stable_local_unicast_and_per_scope() {
        let a = mac_of("s1", "env-1");
        assert_eq!(a, mac_of("s1", "env-1"));
        assert_ne!(a, mac_of("s2", "env-1"));
        assert_ne!(a, mac_of("s1", "env-2"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
        assert!(a.to_string().parse::<MacAddr>().is_ok());
    }

    #[test]
    fn client_errors_map_by_what_can_be_done() {
        let e = |kind, message: &str| PveError::Api {
            method: "POST",
            path: "/x".into(),
            status: 500,
            message: message.into(),
            kind,
        };
        assert!(pve("x")(e(ErrorKind::Locked, "VM 1 is locked (clone)")).retryable());
        assert!(pve("x")(e(ErrorKind::LockTimeout, "got timeout")).retryable());
        assert!(matches!(
            pve("x")(e(ErrorKind::NotFound, "does not exist")),
            BackendError::NotFound(_)
        ));
        let p = pve("x")(e(ErrorKind::PermissionDenied, "Permission check failed"));
        assert!(!p.retryable());
        assert!(p.to_string().contains("privilege"), "{p}");
    }
}
