//! The simulated cluster: VMs with configs, locks and snapshots, tasks and
//! their workers, file locks with timeouts.
//!
//! The model follows qemu-server and pve-guest-common:
//! - a config `lock` (`clone`, `snapshot`, `rollback`, `destroyed`) is held
//!   while the task that set it runs; config-changing calls on a locked VM
//!   fail with `VM is locked (<lock>)`;
//! - workers take file locks (`/var/lock/qemu-server/lock-<vmid>.conf`,
//!   `/var/lock/pve-manager/pve-storage-<id>` for volume allocation) with a
//!   timeout and fail with `can't lock file '...' - got timeout`;
//! - a clone's config appears only when its worker runs, so `nextid`
//!   answers the same id until then;
//! - a linked clone needs a template on storage that can link;
//! - a snapshot with `vmstate` of a running VM saves RAM, and a rollback to
//!   it leaves the VM running.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::{FaultKind, RecordedRequest, ScriptedFault, SimConfig};
use crate::types::MacAddr;
use crate::upid::Upid;

/// A snapshot in the simulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimSnapshot {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Seconds since the epoch.
    pub snaptime: u64,
    /// Whether RAM was saved.
    pub vmstate: bool,
    /// The snapshot before it.
    pub parent: Option<String>,
    /// The config at the time.
    pub config: BTreeMap<String, String>,
}

/// A VM in the simulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimVm {
    /// VMID.
    pub vmid: u32,
    /// Node.
    pub node: String,
    /// Whether it is a template.
    pub template: bool,
    /// Whether it runs.
    pub running: bool,
    /// The config lock.
    pub lock: Option<String>,
    /// Config keys (name, cores, memory, net0, scsi0, tags, ...).
    pub config: BTreeMap<String, String>,
    /// Snapshots by name.
    pub snapshots: BTreeMap<String, SimSnapshot>,
    /// The snapshot the current state derives from.
    pub parent: Option<String>,
    /// The storage of its disk.
    pub storage: String,
    /// The template it is a linked clone of.
    pub linked_from: Option<u32>,
    #[serde(skip)]
    pub(crate) started: Option<Instant>,
    #[serde(skip)]
    pub(crate) generation: u64,
}

impl SimVm {
    pub(crate) fn name(&self) -> String {
        self.config
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM{}", self.vmid))
    }

    pub(crate) fn disk_volume(&self) -> String {
        let prefix = if self.template { "base" } else { "vm" };
        format!("{}:{prefix}-{}-disk-0", self.storage, self.vmid)
    }

    pub(crate) fn digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (k, v) in &self.config {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        h.update(self.generation.to_le_bytes());
        hex::encode(&h.finalize()[..20])
    }
}

/// A task's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimTask {
    /// The UPID.
    pub upid: String,
    /// The node.
    pub node: String,
    /// Worker type.
    pub kind: String,
    /// `running` or `stopped`.
    pub status: String,
    /// Set once stopped.
    pub exitstatus: Option<String>,
    /// Log lines.
    pub log: Vec<String>,
    #[serde(skip)]
    pub(crate) starttime: u64,
    #[serde(skip)]
    pub(crate) pid: u32,
    #[serde(skip)]
    pub(crate) pstart: u64,
    #[serde(skip)]
    pub(crate) user: String,
    #[serde(skip)]
    pub(crate) id: String,
}

/// A password login's session.
#[derive(Debug, Clone)]
pub(crate) struct TicketSession {
    pub(crate) user: String,
    pub(crate) csrf: String,
}

/// Everything mutable.
pub(crate) struct World {
    pub(crate) vms: BTreeMap<u32, SimVm>,
    pub(crate) tasks: HashMap<String, SimTask>,
    pub(crate) task_order: Vec<String>,
    pub(crate) tickets: HashMap<String, TicketSession>,
    pub(crate) next_pid: u32,
    pub(crate) next_mac: u32,
    pub(crate) rng: StdRng,
    pub(crate) fault_rate: f64,
    pub(crate) scripted: Vec<ScriptedFault>,
    pub(crate) faults_injected: u64,
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) request_count: u64,
}

/// State shared by the server and the workers.
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) world: Mutex<World>,
    flocks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    pub(crate) fingerprint: String,
}

/// A failure inside the simulator, as PVE would report it.
#[derive(Debug, Clone)]
pub(crate) struct SimError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl SimError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> SimError {
        SimError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> SimError {
        SimError::new(500, message)
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn no_config(node: &str, vmid: u32) -> SimError {
    SimError::internal(format!(
        "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
    ))
}

pub(crate) fn locked(lock: &str) -> String {
    format!("VM is locked ({lock})")
}

impl Shared {
    pub(crate) fn new(config: SimConfig, fingerprint: String) -> Shared {
        let mut vms = BTreeMap::new();
        for t in &config.vms {
            let mut cfg = BTreeMap::new();
            cfg.insert("name".into(), t.name.clone());
            cfg.insert("cores".into(), "2".into());
            cfg.insert("memory".into(), "2048".into());
            cfg.insert("sockets".into(), "1".into());
            cfg.insert("ostype".into(), "l26".into());
            cfg.insert("scsihw".into(), "virtio-scsi-single".into());
            cfg.insert(
                "net0".into(),
                format!("virtio={},bridge=vmbr0", mac_for(t.vmid)),
            );
            cfg.insert("agent".into(), "1".into());
            cfg.insert("boot".into(), "order=scsi0".into());
            let mut vm = SimVm {
                vmid: t.vmid,
                node: t.node.clone(),
                template: t.template,
                running: false,
                lock: None,
                config: cfg,
                snapshots: BTreeMap::new(),
                parent: None,
                storage: t.storage.clone(),
                linked_from: None,
                started: None,
                generation: 0,
            };
            let vol = vm.disk_volume();
            vm.config
                .insert("scsi0".into(), format!("{vol},iothread=1,size=16G"));
            if t.template {
                vm.config.insert("template".into(), "1".into());
            }
            vms.insert(t.vmid, vm);
        }
        let rng = StdRng::seed_from_u64(config.faults.seed);
        let fault_rate = config.faults.rate;
        Shared {
            config,
            world: Mutex::new(World {
                vms,
                tasks: HashMap::new(),
                task_order: Vec::new(),
                tickets: HashMap::new(),
                next_pid: 0x1000,
                next_mac: 1,
                rng,
                fault_rate,
                scripted: Vec::new(),
                faults_injected: 0,
                requests: Vec::new(),
                request_count: 0,
            }),
            flocks: Mutex::new(HashMap::new()),
            fingerprint,
        }
    }

    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        match self.world.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Takes a file lock, waiting at most the configured lock timeout.
    pub(crate) async fn flock(&self, path: &str) -> Result<OwnedMutexGuard<()>, String> {
        let m = {
            let mut f = match self.flocks.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            f.entry(path.to_owned())
                .or_insert_with(|| Arc::new(AsyncMutex::new(())))
                .clone()
        };
        match tokio::time::timeout(self.config.timings.lock_timeout, m.lock_owned()).await {
            Ok(g) => Ok(g),
            Err(_) => Err(format!("can't lock file '{path}' - got timeout")),
        }
    }

    /// Decides a fault for a request: scripted ones first, then at the
    /// configured rate.
    pub(crate) fn pick_fault(&self, method: &str, path: &str) -> Option<FaultKind> {
        let mut w = self.world();
        if let Some(i) = w.scripted.iter().position(|f| f.matches(method, path)) {
            let kind = w.scripted[i].kind;
            w.scripted[i].count = w.scripted[i].count.saturating_sub(1);
            if w.scripted[i].count == 0 {
                w.scripted.remove(i);
            }
            w.faults_injected += 1;
            return Some(kind);
        }
        let kinds = &self.config.faults.kinds;
        if w.fault_rate <= 0.0 || kinds.is_empty() {
            return None;
        }
        let rate = w.fault_rate;
        if w.rng.gen_bool(rate.clamp(0.0, 1.0)) {
            let k = kinds[w.rng.gen_range(0..kinds.len())];
            // Task failures only make sense for calls that start tasks.
            let starts_task =
                method != "GET" && !path.ends_with("/config") && !path.starts_with("/access/");
            if k == FaultKind::TaskFail && !starts_task {
                return None;
            }
            w.faults_injected += 1;
            return Some(k);
        }
        None
    }

    /// Registers a task and runs `work(upid)` as its worker: `Ok(())`
    /// ends it with `TASK OK`, an error with `TASK ERROR: <message>`.
    pub(crate) fn spawn_task<W, F>(
        self: &Arc<Self>,
        node: &str,
        kind: &str,
        id: &str,
        user: &str,
        work: W,
    ) -> Upid
    where
        W: FnOnce(String) -> F,
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let upid = {
            let mut w = self.world();
            w.next_pid += 1;
            let pid = w.next_pid;
            let pstart = 0x0100_0000 + u64::from(pid) * 7;
            let starttime = now_secs();
            let upid = Upid::new(node, pid, pstart, starttime, kind, id, user)
                .expect("the simulator makes valid UPIDs");
            let key = upid.as_str().to_owned();
            w.tasks.insert(
                key.clone(),
                SimTask {
                    upid: key.clone(),
                    node: node.to_owned(),
                    kind: kind.to_owned(),
                    status: "running".into(),
                    exitstatus: None,
                    log: Vec::new(),
                    starttime,
                    pid,
                    pstart,
                    user: user.to_owned(),
                    id: id.to_owned(),
                },
            );
            w.task_order.push(key);
            // Keep the task list bounded.
            if w.task_order.len() > 10_000 {
                let old = w.task_order.remove(0);
                w.tasks.remove(&old);
            }
            upid
        };
        let shared = self.clone();
        let key = upid.as_str().to_owned();
        let fut = work(key.clone());
        tokio::spawn(async move {
            let result = fut.await;
            let mut w = shared.world();
            if let Some(t) = w.tasks.get_mut(&key) {
                t.status = "stopped".into();
                match result {
                    Ok(()) => {
                        t.log.push("TASK OK".into());
                        t.exitstatus = Some("OK".into());
                    }
                    Err(msg) => {
                        t.log.push(format!("TASK ERROR: {msg}"));
                        t.exitstatus = Some(msg);
                    }
                }
            }
        });
        upid
    }

    pub(crate) fn task_log(&self, upid: &str, line: impl Into<String>) {
        if let Some(t) = self.world().tasks.get_mut(upid) {
            t.log.push(line.into());
        }
    }

    /// A fresh MAC in PVE's default OUI (BC:24:11).
    pub(crate) fn new_mac(&self) -> MacAddr {
        let mut w = self.world();
        w.next_mac += 1;
        let n = w.next_mac;
        let b = n.to_be_bytes();
        MacAddr([0xBC, 0x24, 0x11, b[1] ^ 0x80, b[2], b[3]])
    }

    pub(crate) fn random_hex(&self, n: usize) -> String {
        let mut w = self.world();
        (0..n)
            .map(|_| format!("{:x}", w.rng.gen_range(0..16u8)))
            .collect()
    }
}

fn mac_for(vmid: u32) -> MacAddr {
    let b = vmid.to_be_bytes();
    MacAddr([0xBC, 0x24, 0x11, b[1], b[2], b[3]])
}

/// A deterministic IPv4 address for a MAC (what the guest agent reports).
pub(crate) fn ip_for(mac: &MacAddr) -> String {
    format!("10.99.{}.{}", mac.0[4], mac.0[5].max(2))
}

pub(crate) fn sleep(d: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(d)
}
