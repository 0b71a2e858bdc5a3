//! The `/api2/json` routes the simulator serves: routing, privileges,
//! parameter checks, the synchronous checks PVE makes before forking a
//! worker, and the workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::params::{int, opt, req, s, validate, Fmt, Spec, Ty, BOOL, NODE, SNAPNAME, VMID};
use super::world::{
    ip_for, locked, no_config, now_secs, sleep, Shared, SimError, SimSnapshot, SimVm,
};
use super::Privileges;
use crate::types::NetDevice;

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// `user@realm` or `user@realm!token`.
    pub(crate) user: String,
    pub(crate) privileges: Privileges,
}

/// A failed call.
pub(crate) enum Fail {
    Error(SimError),
    Params(BTreeMap<String, String>),
}

impl From<SimError> for Fail {
    fn from(e: SimError) -> Fail {
        Fail::Error(e)
    }
}

/// A successful answer.
pub(crate) struct Answer {
    pub(crate) data: Value,
    pub(crate) total: Option<u64>,
}

impl From<Value> for Answer {
    fn from(data: Value) -> Answer {
        Answer { data, total: None }
    }
}

type R = Result<Answer, Fail>;

const INJECTED: &str = "command '/sbin/lvcreate' failed: exit code 5 (injected by daas-pve-sim)";

const CONFIG_PRIVS: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.HWType",
    "VM.Config.Options",
    "VM.Config.Cloudinit",
];

fn need(caller: &Caller, path: &str, any_of: &[&str]) -> Result<(), Fail> {
    match &caller.privileges {
        Privileges::All => Ok(()),
        Privileges::Only(set) => {
            if any_of.iter().any(|p| set.contains(*p)) {
                Ok(())
            } else {
                Err(Fail::Error(SimError::new(
                    403,
                    format!("Permission check failed ({path}, {})", any_of.join(", ")),
                )))
            }
        }
    }
}

fn check(specs: &[Spec], indexed: &[(&str, Ty)], p: &BTreeMap<String, String>) -> Result<(), Fail> {
    validate(specs, indexed, p).map_err(Fail::Params)
}

fn vmid_of(p: &BTreeMap<String, String>) -> u32 {
    p.get("vmid").and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn flag(p: &BTreeMap<String, String>, k: &str) -> bool {
    p.get(k).is_some_and(|v| v == "1")
}

const CONFIG_SPECS: &[Spec] = &[
    NODE,
    VMID,
    opt("name", s(Fmt::DnsName)),
    opt("cores", int(Some(1), None)),
    opt("sockets", int(Some(1), None)),
    opt("memory", s(Fmt::Memory)),
    opt("tags", s(Fmt::TagList)),
    opt(
        "description",
        Ty::Str {
            fmt: Fmt::Any,
            max_len: Some(8192),
        },
    ),
    opt("agent", s(Fmt::Agent)),
    opt("args", s(Fmt::Any)),
    opt("delete", s(Fmt::ConfigIdList)),
    opt(
        "digest",
        Ty::Str {
            fmt: Fmt::Any,
            max_len: Some(40),
        },
    ),
    opt("onboot", BOOL),
    opt("protection", BOOL),
    opt(
        "ostype",
        Ty::Enum(&[
            "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11",
            "l24", "l26", "solaris",
        ]),
    ),
];

impl Shared {
    fn timings(&self) -> &super::SimTimings {
        &self.config.timings
    }

    fn check_node(&self, node: &str) -> Result<(), Fail> {
        if self.config.nodes.iter().any(|n| n == node) {
            Ok(())
        } else {
            Err(SimError::internal(format!("no such cluster node '{node}'")).into())
        }
    }

    fn vm(&self, node: &str, vmid: u32) -> Result<SimVm, Fail> {
        self.check_node(node)?;
        self.world()
            .vms
            .get(&vmid)
            .filter(|v| v.node == node)
            .cloned()
            .ok_or_else(|| Fail::Error(no_config(node, vmid)))
    }

    fn storage(&self, id: &str) -> Option<&super::SimStorage> {
        self.config.storages.iter().find(|s| s.id == id)
    }
}

/// Serves one authenticated API call.
pub(crate) async fn dispatch(
    sh: &Arc<Shared>,
    caller: &Caller,
    method: &str,
    segs: &[&str],
    p: &BTreeMap<String, String>,
    inject_task_failure: bool,
) -> R {
    match (method, segs) {
        ("GET", ["version"]) => {
            check(&[], &[], p)?;
            let v = &sh.config.version;
            let release: String = v.split('.').take(2).collect::<Vec<_>>().join(".");
            Ok(json!({"version": v, "release": release, "repoid": "d4a5513e"}).into())
        }
        ("GET", ["nodes"]) => {
            check(&[], &[], p)?;
            let nodes: Vec<Value> = sh
                .config
                .nodes
                .iter()
                .map(|n| {
                    json!({"node": n, "status": "online", "type": "node", "id": format!("node/{n}"),
                           "maxcpu": 16, "maxmem": 68_719_476_736u64, "cpu": 0.05,
                           "mem": 8_589_934_592u64, "uptime": 86_400, "level": "",
                           "ssl_fingerprint": sh.fingerprint})
                })
                .collect();
            Ok(json!(nodes).into())
        }
        ("GET", ["cluster", "nextid"]) => {
            check(
                &[opt(
                    "vmid",
                    Ty::Int {
                        min: Some(100),
                        max: Some(999_999_999),
                    },
                )],
                &[],
                p,
            )?;
            let w = sh.world();
            if let Some(v) = p.get("vmid") {
                let v: u32 = v.parse().unwrap_or(0);
                if w.vms.contains_key(&v) {
                    let mut e = BTreeMap::new();
                    e.insert("vmid".to_owned(), format!("VM {v} already exists"));
                    return Err(Fail::Params(e));
                }
                return Ok(json!(v.to_string()).into());
            }
            let mut id = 100u32;
            while w.vms.contains_key(&id) {
                id += 1;
            }
            Ok(json!(id.to_string()).into())
        }
        ("GET", ["cluster", "resources"]) => {
            check(
                &[opt("type", Ty::Enum(&["vm", "storage", "node", "sdn"]))],
                &[],
                p,
            )?;
            let ty = p.get("type").map(String::as_str);
            let mut out = Vec::new();
            if ty.is_none() || ty == Some("vm") {
                let w = sh.world();
                for vm in w.vms.values() {
                    if need(caller, &format!("/vms/{}", vm.vmid), &["VM.Audit"]).is_err() {
                        continue;
                    }
                    let mut r = json!({
                        "id": format!("qemu/{}", vm.vmid), "type": "qemu", "vmid": vm.vmid,
                        "node": vm.node, "name": vm.name(),
                        "status": if vm.running { "running" } else { "stopped" },
                        "template": u8::from(vm.template), "maxcpu": 2, "maxmem": 2_147_483_648u64,
                        "uptime": vm.started.map(|s| s.elapsed().as_secs()).unwrap_or(0),
                    });
                    if let Some(t) = vm.config.get("tags") {
                        r["tags"] = json!(t);
                    }
                    if let Some(l) = &vm.lock {
                        r["lock"] = json!(l);
                    }
                    out.push(r);
                }
            }
            if ty.is_none() || ty == Some("node") {
                for n in &sh.config.nodes {
                    out.push(json!({"id": format!("node/{n}"), "type": "node", "node": n, "status": "online"}));
                }
            }
            if ty.is_none() || ty == Some("storage") {
                for n in &sh.config.nodes {
                    for s in &sh.config.storages {
                        out.push(
                            json!({"id": format!("storage/{n}/{}", s.id), "type": "storage",
                                        "node": n, "storage": s.id, "status": "available",
                                        "plugintype": s.kind, "shared": u8::from(s.shared)}),
                        );
                    }
                }
            }
            Ok(json!(out).into())
        }
        ("GET", ["nodes", node, "storage"]) => {
            check(
                &[
                    NODE,
                    opt("content", s(Fmt::Any)),
                    opt("storage", s(Fmt::StorageId)),
                    opt("enabled", BOOL),
                ],
                &[],
                p,
            )?;
            sh.check_node(node)?;
            let list: Vec<Value> = sh
                .config
                .storages
                .iter()
                .map(|s| {
                    json!({"storage": s.id, "type": s.kind, "content": "images,rootdir",
                           "shared": u8::from(s.shared), "active": 1, "enabled": 1,
                           "total": 1_099_511_627_776u64, "used": 107_374_182_400u64,
                           "avail": 992_137_445_376u64})
                })
                .collect();
            Ok(json!(list).into())
        }
        ("GET", ["nodes", node, "qemu"]) => {
            check(&[NODE, opt("full", BOOL)], &[], p)?;
            sh.check_node(node)?;
            let w = sh.world();
            let list: Vec<Value> = w
                .vms
                .values()
                .filter(|v| v.node == *node)
                .map(|v| {
                    json!({"vmid": v.vmid, "name": v.name(),
                           "status": if v.running { "running" } else { "stopped" },
                           "template": u8::from(v.template)})
                })
                .collect();
            Ok(json!(list).into())
        }
        ("GET", ["nodes", node, "qemu", _, "config"]) => {
            check(
                &[
                    NODE,
                    VMID,
                    opt("current", BOOL),
                    opt("snapshot", s(Fmt::ConfigId)),
                ],
                &[],
                p,
            )?;
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Audit"])?;
            let vm = sh.vm(node, vmid)?;
            let config = match p.get("snapshot") {
                Some(snap) => vm
                    .snapshots
                    .get(snap)
                    .map(|s| s.config.clone())
                    .ok_or_else(|| {
                        SimError::internal(format!("snapshot '{snap}' does not exist"))
                    })?,
                None => vm.config.clone(),
            };
            let mut out = serde_json::Map::new();
            for (k, v) in &config {
                let val = match k.as_str() {
                    "cores" | "sockets" | "template" | "onboot" | "protection" => v
                        .parse::<u64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| json!(v)),
                    _ => json!(v),
                };
                out.insert(k.clone(), val);
            }
            if p.get("snapshot").is_none() {
                if let Some(l) = &vm.lock {
                    out.insert("lock".into(), json!(l));
                }
                if let Some(parent) = &vm.parent {
                    out.insert("parent".into(), json!(parent));
                }
            }
            out.insert("digest".into(), json!(vm.digest()));
            Ok(Value::Object(out).into())
        }
        ("PUT", ["nodes", node, "qemu", _, "config"]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), CONFIG_PRIVS)?;
            check(CONFIG_SPECS, &[("net", s(Fmt::Net))], p)?;
            update_config(sh, caller, node, vmid, p).await
        }
        ("POST", ["nodes", node, "qemu", _, "clone"]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Clone"])?;
            let newid: u32 = p.get("newid").and_then(|v| v.parse().ok()).unwrap_or(0);
            need(caller, &format!("/vms/{newid}"), &["VM.Allocate"])?;
            check(
                &[
                    NODE,
                    VMID,
                    req(
                        "newid",
                        Ty::Int {
                            min: Some(100),
                            max: Some(999_999_999),
                        },
                    ),
                    opt("name", s(Fmt::DnsName)),
                    opt("description", s(Fmt::Any)),
                    opt("full", BOOL),
                    opt("storage", s(Fmt::StorageId)),
                    opt("format", Ty::Enum(&["raw", "qcow2", "vmdk"])),
                    opt("target", s(Fmt::Node)),
                    opt("pool", s(Fmt::PoolId)),
                    opt(
                        "snapname",
                        Ty::Str {
                            fmt: Fmt::ConfigId,
                            max_len: Some(40),
                        },
                    ),
                    opt("bwlimit", int(Some(0), None)),
                ],
                &[],
                p,
            )?;
            clone(sh, caller, node, vmid, newid, p, inject_task_failure)
        }
        ("POST", ["nodes", node, "qemu", _, "template"]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Allocate"])?;
            check(&[NODE, VMID, opt("disk", s(Fmt::Any))], &[], p)?;
            template(sh, caller, node, vmid, inject_task_failure)
        }
        ("GET", ["nodes", node, "qemu", _, "snapshot"]) => {
            check(&[NODE, VMID], &[], p)?;
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Audit"])?;
            let vm = sh.vm(node, vmid)?;
            let mut list: Vec<Value> = vm
                .snapshots
                .values()
                .map(|s| {
                    let mut v = json!({"name": s.name, "description": s.description,
                                       "snaptime": s.snaptime, "vmstate": u8::from(s.vmstate)});
                    if let Some(parent) = &s.parent {
                        v["parent"] = json!(parent);
                    }
                    v
                })
                .collect();
            let mut current = json!({"name": "current", "description": "You are here!",
                                     "running": u8::from(vm.running), "digest": vm.digest()});
            if let Some(parent) = &vm.parent {
                current["parent"] = json!(parent);
            }
            list.push(current);
            Ok(json!(list).into())
        }
        ("POST", ["nodes", node, "qemu", _, "snapshot"]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Snapshot"])?;
            check(
                &[
                    NODE,
                    VMID,
                    SNAPNAME,
                    opt("vmstate", BOOL),
                    opt("description", s(Fmt::Any)),
                ],
                &[],
                p,
            )?;
            snapshot(sh, caller, node, vmid, p, inject_task_failure)
        }
        ("DELETE", ["nodes", node, "qemu", _, "snapshot", _]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Snapshot"])?;
            check(&[NODE, VMID, SNAPNAME, opt("force", BOOL)], &[], p)?;
            delete_snapshot(sh, caller, node, vmid, p, inject_task_failure)
        }
        ("POST", ["nodes", node, "qemu", _, "snapshot", _, "rollback"]) => {
            let vmid = vmid_of(p);
            need(
                caller,
                &format!("/vms/{vmid}"),
                &["VM.Snapshot", "VM.Snapshot.Rollback"],
            )?;
            if flag(p, "start") {
                need(caller, &format!("/vms/{vmid}"), &["VM.PowerMgmt"])?;
            }
            check(&[NODE, VMID, SNAPNAME, opt("start", BOOL)], &[], p)?;
            rollback(sh, caller, node, vmid, p, inject_task_failure)
        }
        ("GET", ["nodes", node, "qemu", _, "status", "current"]) => {
            check(&[NODE, VMID], &[], p)?;
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Audit"])?;
            let vm = sh.vm(node, vmid)?;
            let mut v = json!({
                "vmid": vm.vmid, "name": vm.name(),
                "status": if vm.running { "running" } else { "stopped" },
                "qmpstatus": if vm.running { "running" } else { "stopped" },
                "cpus": 2, "maxmem": 2_147_483_648u64,
                "uptime": vm.started.map(|s| s.elapsed().as_secs()).unwrap_or(0),
                "agent": 1, "ha": {"managed": 0},
            });
            if vm.template {
                v["template"] = json!(1);
            }
            if let Some(l) = &vm.lock {
                v["lock"] = json!(l);
            }
            if vm.running {
                v["pid"] = json!(10_000 + vm.vmid);
            }
            Ok(v.into())
        }
        (
            "POST",
            ["nodes", node, "qemu", _, "status", action @ ("start" | "shutdown" | "stop")],
        ) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.PowerMgmt"])?;
            let specs: &[Spec] = match *action {
                "start" => &[
                    NODE,
                    VMID,
                    opt("timeout", int(Some(0), None)),
                    opt("skiplock", BOOL),
                ],
                "shutdown" => &[
                    NODE,
                    VMID,
                    opt("timeout", int(Some(0), None)),
                    opt("forceStop", BOOL),
                    opt("keepActive", BOOL),
                    opt("skiplock", BOOL),
                ],
                _ => &[
                    NODE,
                    VMID,
                    opt("timeout", int(Some(0), None)),
                    opt("keepActive", BOOL),
                    opt("skiplock", BOOL),
                    opt("overrule-shutdown", BOOL),
                ],
            };
            check(specs, &[], p)?;
            power(sh, caller, node, vmid, action, p, inject_task_failure)
        }
        ("DELETE", ["nodes", node, "qemu", _]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Allocate"])?;
            check(
                &[
                    NODE,
                    VMID,
                    opt("purge", BOOL),
                    opt("destroy-unreferenced-disks", BOOL),
                    opt("skiplock", BOOL),
                ],
                &[],
                p,
            )?;
            destroy(sh, caller, node, vmid, inject_task_failure)
        }
        ("GET", ["nodes", node, "qemu", _, "agent", "network-get-interfaces"]) => {
            check(&[NODE, VMID], &[], p)?;
            let vmid = vmid_of(p);
            need(
                caller,
                &format!("/vms/{vmid}"),
                &[
                    "VM.GuestAgent.Audit",
                    "VM.GuestAgent.Unrestricted",
                    "VM.Monitor",
                ],
            )?;
            let vm = sh.vm(node, vmid)?;
            if !vm.running {
                return Err(SimError::internal(format!("VM {vmid} is not running")).into());
            }
            if vm
                .config
                .get("agent")
                .map(|a| a.starts_with('1') || a.contains("enabled=1"))
                != Some(true)
            {
                return Err(SimError::internal("No QEMU guest agent configured").into());
            }
            let mac = vm
                .config
                .get("net0")
                .and_then(|n| n.parse::<NetDevice>().ok())
                .and_then(|n| n.mac);
            let mut ifaces = vec![
                json!({"name": "lo", "hardware-address": "00:00:00:00:00:00",
                "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]}),
            ];
            if let Some(mac) = mac {
                ifaces.push(json!({"name": "eth0", "hardware-address": mac.to_string().to_lowercase(),
                    "ip-addresses": [{"ip-address": ip_for(&mac), "ip-address-type": "ipv4", "prefix": 24}]}));
            }
            Ok(json!({"result": ifaces}).into())
        }
        ("POST", ["nodes", node, "qemu", _, "vncproxy"]) => {
            let vmid = vmid_of(p);
            need(caller, &format!("/vms/{vmid}"), &["VM.Console"])?;
            check(
                &[
                    NODE,
                    VMID,
                    opt("websocket", BOOL),
                    opt("generate-password", BOOL),
                ],
                &[],
                p,
            )?;
            let vm = sh.vm(node, vmid)?;
            if !vm.running {
                return Err(SimError::internal(format!("VM {vmid} not running")).into());
            }
            let port = 5900 + (vmid % 100);
            let upid = sh.spawn_task(
                node,
                "vncproxy",
                &vmid.to_string(),
                &caller.user,
                |_| async {
                    sleep(Duration::from_secs(10)).await;
                    Ok(())
                },
            );
            let ticket = format!("PVEVNC:{:08X}::{}", now_secs(), sh.random_hex(32));
            Ok(
                json!({"port": port.to_string(), "ticket": ticket, "user": caller.user,
                      "cert": "(simulated)", "upid": upid.as_str()})
                .into(),
            )
        }
        ("GET", ["nodes", node, "tasks", upid, "status"]) => {
            check(&[NODE, req("upid", s(Fmt::Any))], &[], p)?;
            sh.check_node(node)?;
            if upid.parse::<crate::Upid>().is_err() {
                return Err(
                    SimError::internal(format!("unable to parse worker upid '{upid}'")).into(),
                );
            }
            let w = sh.world();
            let t = w
                .tasks
                .get(*upid)
                .filter(|t| t.node == *node)
                .ok_or_else(|| SimError::internal(format!("no such task '{upid}'")))?;
            let mut v = json!({
                "upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart,
                "starttime": t.starttime, "type": t.kind, "id": t.id, "user": t.user,
                "status": t.status,
            });
            if let Some(e) = &t.exitstatus {
                v["exitstatus"] = json!(e);
            }
            Ok(v.into())
        }
        ("GET", ["nodes", node, "tasks", upid, "log"]) => {
            check(
                &[
                    NODE,
                    req("upid", s(Fmt::Any)),
                    opt("start", int(Some(0), None)),
                    opt("limit", int(Some(0), None)),
                    opt("download", BOOL),
                ],
                &[],
                p,
            )?;
            sh.check_node(node)?;
            let w = sh.world();
            let t = w
                .tasks
                .get(*upid)
                .filter(|t| t.node == *node)
                .ok_or_else(|| SimError::internal(format!("no such task '{upid}'")))?;
            let start: usize = p.get("start").and_then(|v| v.parse().ok()).unwrap_or(0);
            let limit: usize = p.get("limit").and_then(|v| v.parse().ok()).unwrap_or(50);
            let lines: Vec<Value> = t
                .log
                .iter()
                .enumerate()
                .skip(start)
                .take(limit)
                .map(|(i, l)| json!({"n": i + 1, "t": l}))
                .collect();
            Ok(Answer {
                data: json!(lines),
                total: Some(t.log.len() as u64),
            })
        }
        _ => Err(SimError::new(
            501,
            format!("Method '{method} /{}' not implemented", segs.join("/")),
        )
        .into()),
    }
}

async fn update_config(
    sh: &Arc<Shared>,
    caller: &Caller,
    node: &str,
    vmid: u32,
    p: &BTreeMap<String, String>,
) -> R {
    sh.vm(node, vmid)?;
    // PVE changes configs under the VM's file lock (10 s).
    let _g = sh
        .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
        .await
        .map_err(SimError::internal)?;
    if p.contains_key("args") && caller.user != "root@pam" {
        return Err(SimError::internal("only root can set 'args' config").into());
    }
    let mut w = sh.world();
    let vm = w
        .vms
        .get_mut(&vmid)
        .filter(|v| v.node == node)
        .ok_or_else(|| Fail::Error(no_config(node, vmid)))?;
    if let Some(l) = &vm.lock {
        return Err(SimError::internal(locked(l)).into());
    }
    if let Some(d) = p.get("digest") {
        if *d != vm.digest() {
            return Err(SimError::internal(
                "detected modified configuration - file changed by other user? Try again.",
            )
            .into());
        }
    }
    for (k, v) in p {
        if matches!(k.as_str(), "node" | "vmid" | "digest" | "delete") {
            continue;
        }
        let v = if k == "memory" {
            v.strip_prefix("current=").unwrap_or(v).to_owned()
        } else {
            v.clone()
        };
        vm.config.insert(k.clone(), v);
    }
    if let Some(del) = p.get("delete") {
        for k in del.split([',', ';', ' ']).filter(|k| !k.is_empty()) {
            vm.config.remove(k);
        }
    }
    vm.generation += 1;
    Ok(Value::Null.into())
}

fn clone(
    sh: &Arc<Shared>,
    caller: &Caller,
    node: &str,
    vmid: u32,
    newid: u32,
    p: &BTreeMap<String, String>,
    inject: bool,
) -> R {
    let src = sh.vm(node, vmid)?;
    if let Some(l) = &src.lock {
        return Err(SimError::internal(locked(l)).into());
    }
    let target = p.get("target").filter(|t| *t != node).cloned();
    if let Some(t) = &target {
        sh.check_node(t)?;
    }
    let full = match p.get("full") {
        Some(f) => f == "1",
        None => !src.template,
    };
    let storage = p.get("storage").cloned();
    if storage.is_some() && !full {
        return Err(SimError::internal("parameter 'storage' not allowed for linked clones").into());
    }
    if p.contains_key("format") && !full {
        return Err(SimError::internal("parameter 'format' not allowed for linked clones").into());
    }
    if let Some(s) = &storage {
        if sh.storage(s).is_none() {
            return Err(SimError::internal(format!("storage '{s}' does not exist")).into());
        }
    }
    let src_store = sh
        .storage(&src.storage)
        .cloned()
        .ok_or_else(|| SimError::internal(format!("storage '{}' does not exist", src.storage)))?;
    if !full && (!src.template || !src_store.linked_clones) {
        return Err(SimError::internal(format!(
            "Linked clone feature is not supported for '{}' (scsi0)",
            src.disk_volume()
        ))
        .into());
    }
    let dest_store = storage.clone().unwrap_or_else(|| src.storage.clone());
    if let Some(t) = &target {
        let shared = sh.storage(&dest_store).is_some_and(|s| s.shared);
        if !shared {
            return Err(SimError::internal(format!(
                "can't clone VM to node '{t}' (VM uses local storage)"
            ))
            .into());
        }
    }
    if sh.world().vms.contains_key(&newid) {
        return Err(SimError::internal(format!(
            "unable to create VM {newid}: config file already exists"
        ))
        .into());
    }
    let name = p.get("name").cloned();
    let description = p.get("description").cloned();
    let shc = sh.clone();
    let dest_node = target.unwrap_or_else(|| node.to_owned());
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        "qmclone",
        &vmid.to_string(),
        &caller.user,
        move |upid| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            if inject {
                sleep(t.clone / 2).await;
                return Err(format!("clone failed: {INJECTED}"));
            }
            let _target_lock = shc
                .flock(&format!("/var/lock/qemu-server/lock-{newid}.conf"))
                .await?;
            let volume = {
                let mut w = shc.world();
                let src = w
                    .vms
                    .get(&vmid)
                    .filter(|v| v.node == node_s)
                    .cloned()
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                if let Some(l) = &src.lock {
                    return Err(locked(l));
                }
                if w.vms.contains_key(&newid) {
                    return Err(format!(
                        "unable to create VM {newid}: config file already exists"
                    ));
                }
                let mut config: BTreeMap<String, String> = src
                    .config
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "template" | "lock"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let volume = if full {
                    format!("{dest_store}:vm-{newid}-disk-0")
                } else {
                    format!("{}:base-{vmid}-disk-0/vm-{newid}-disk-0", src.storage)
                };
                config.insert("scsi0".into(), format!("{volume},iothread=1,size=16G"));
                config.insert(
                    "name".into(),
                    name.clone()
                        .unwrap_or_else(|| format!("Copy-of-VM-{}", src.name())),
                );
                if let Some(d) = &description {
                    config.insert("description".into(), d.clone());
                }
                config.insert(
                    "smbios1".into(),
                    format!("uuid={}", uuid_like(&format!("{newid}-{}", now_secs()))),
                );
                w.vms.insert(
                    newid,
                    SimVm {
                        vmid: newid,
                        node: dest_node.clone(),
                        template: false,
                        running: false,
                        lock: Some("clone".into()),
                        config,
                        snapshots: BTreeMap::new(),
                        parent: None,
                        storage: dest_store.clone(),
                        linked_from: (!full).then_some(vmid),
                        started: None,
                        generation: 0,
                    },
                );
                volume
            };
            // Every clone gets new MACs, as PVE does.
            let mac = shc.new_mac();
            if let Some(vm) = shc.world().vms.get_mut(&newid) {
                if let Some(net) = vm
                    .config
                    .get("net0")
                    .and_then(|n| n.parse::<NetDevice>().ok())
                {
                    let mut net = net;
                    net.mac = Some(mac);
                    vm.config.insert("net0".into(), net.to_string());
                }
            }
            shc.task_log(
                &upid,
                format!(
                    "create {} clone of drive scsi0 ({volume})",
                    if full { "full" } else { "linked" }
                ),
            );
            let storage_lock = format!("/var/lock/pve-manager/pve-storage-{dest_store}");
            let duration = if full { t.full_clone } else { t.clone };
            match shc.flock(&storage_lock).await {
                Ok(g) => {
                    sleep(t.storage_lock_hold).await;
                    drop(g);
                }
                Err(e) => {
                    // PVE unlinks the new config when a clone fails.
                    shc.world().vms.remove(&newid);
                    return Err(format!("clone failed: {e}"));
                }
            }
            sleep(duration.saturating_sub(t.storage_lock_hold)).await;
            let mut w = shc.world();
            if let Some(vm) = w.vms.get_mut(&newid) {
                vm.lock = None;
                vm.generation += 1;
            }
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}

fn uuid_like(seed: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn template(sh: &Arc<Shared>, caller: &Caller, node: &str, vmid: u32, inject: bool) -> R {
    let checks = |vm: &SimVm| -> Result<(), String> {
        if let Some(l) = &vm.lock {
            return Err(locked(l));
        }
        if !vm.snapshots.is_empty() {
            return Err("unable to create template, because VM contains snapshots".into());
        }
        if vm.template {
            return Err("you can't convert a template to a template".into());
        }
        if vm.running {
            return Err("you can't convert a VM to template if VM is running".into());
        }
        Ok(())
    };
    let vm = sh.vm(node, vmid)?;
    checks(&vm).map_err(SimError::internal)?;
    let shc = sh.clone();
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        "qmtemplate",
        &vmid.to_string(),
        &caller.user,
        move |_| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            if inject {
                return Err(INJECTED.into());
            }
            let _g = shc
                .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
                .await?;
            {
                let w = shc.world();
                let vm = w
                    .vms
                    .get(&vmid)
                    .filter(|v| v.node == node_s)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                checks(vm)?;
            }
            sleep(t.template).await;
            let mut w = shc.world();
            let vm = w
                .vms
                .get_mut(&vmid)
                .ok_or_else(|| no_config(&node_s, vmid).message)?;
            vm.template = true;
            vm.config.insert("template".into(), "1".into());
            let vol = vm.disk_volume();
            vm.config
                .insert("scsi0".into(), format!("{vol},iothread=1,size=16G"));
            vm.generation += 1;
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}

fn snapshot(
    sh: &Arc<Shared>,
    caller: &Caller,
    node: &str,
    vmid: u32,
    p: &BTreeMap<String, String>,
    inject: bool,
) -> R {
    let name = p.get("snapname").cloned().unwrap_or_default();
    if name == "current" {
        return Err(
            SimError::internal("unable to use snapshot name 'current' (reserved name)").into(),
        );
    }
    if name.eq_ignore_ascii_case("pending") {
        return Err(
            SimError::internal("unable to use snapshot name 'pending' (reserved name)").into(),
        );
    }
    sh.vm(node, vmid)?;
    let vmstate = flag(p, "vmstate");
    let description = p.get("description").cloned().unwrap_or_default();
    let shc = sh.clone();
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        "qmsnapshot",
        &vmid.to_string(),
        &caller.user,
        move |upid| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            let live = {
                let _g = shc
                    .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
                    .await?;
                let mut w = shc.world();
                let vm = w
                    .vms
                    .get_mut(&vmid)
                    .filter(|v| v.node == node_s)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                if vm.template {
                    return Err("you can't take a snapshot if it's a template".into());
                }
                if let Some(l) = &vm.lock {
                    return Err(locked(l));
                }
                if vm.snapshots.contains_key(&name) {
                    return Err(format!("snapshot name '{name}' already used"));
                }
                vm.lock = Some("snapshot".into());
                vmstate && vm.running
            };
            if inject {
                sleep(t.snapshot / 2).await;
                if let Some(vm) = shc.world().vms.get_mut(&vmid) {
                    vm.lock = None;
                }
                return Err(INJECTED.into());
            }
            if live {
                shc.task_log(
                    &upid,
                    format!("saving VM state and RAM using storage '{}'", "local-lvm"),
                );
                sleep(t.snapshot_vmstate).await;
            } else {
                sleep(t.snapshot).await;
            }
            let mut w = shc.world();
            let vm = w
                .vms
                .get_mut(&vmid)
                .ok_or_else(|| no_config(&node_s, vmid).message)?;
            let snap = SimSnapshot {
                name: name.clone(),
                description,
                snaptime: now_secs(),
                vmstate: live,
                parent: vm.parent.clone(),
                config: vm.config.clone(),
            };
            vm.snapshots.insert(name.clone(), snap);
            vm.parent = Some(name);
            vm.lock = None;
            vm.generation += 1;
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}

fn delete_snapshot(
    sh: &Arc<Shared>,
    caller: &Caller,
    node: &str,
    vmid: u32,
    p: &BTreeMap<String, String>,
    inject: bool,
) -> R {
    sh.vm(node, vmid)?;
    let name = p.get("snapname").cloned().unwrap_or_default();
    let shc = sh.clone();
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        "qmdelsnapshot",
        &vmid.to_string(),
        &caller.user,
        move |_| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            if inject {
                return Err(INJECTED.into());
            }
            {
                let _g = shc
                    .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
                    .await?;
                let mut w = shc.world();
                let vm = w
                    .vms
                    .get_mut(&vmid)
                    .filter(|v| v.node == node_s)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                if let Some(l) = &vm.lock {
                    return Err(locked(l));
                }
                if !vm.snapshots.contains_key(&name) {
                    return Err(format!("snapshot '{name}' does not exist"));
                }
                vm.lock = Some("snapshot-delete".into());
            }
            sleep(t.snapshot).await;
            let mut w = shc.world();
            if let Some(vm) = w.vms.get_mut(&vmid) {
                let removed = vm.snapshots.remove(&name);
                let grand = removed.and_then(|s| s.parent);
                for s in vm.snapshots.values_mut() {
                    if s.parent.as_deref() == Some(name.as_str()) {
                        s.parent = grand.clone();
                    }
                }
                if vm.parent.as_deref() == Some(name.as_str()) {
                    vm.parent = grand;
                }
                vm.lock = None;
                vm.generation += 1;
            }
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}

fn rollback(
    sh: &Arc<Shared>,
    caller: &Caller,
    node: &str,
    vmid: u32,
    p: &BTreeMap<String, String>,
    inject: bool,
) -> R {
    sh.check_node(node)?;
    let name = p.get("snapname").cloned().unwrap_or_default();
    let start = flag(p, "start");
    let shc = sh.clone();
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        "qmrollback",
        &vmid.to_string(),
        &caller.user,
        move |upid| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            let was_running = {
                let _g = shc
                    .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
                    .await?;
                let mut w = shc.world();
                let vm = w
                    .vms
                    .get_mut(&vmid)
                    .filter(|v| v.node == node_s)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                if vm.template {
                    return Err("you can't rollback if vm is a template".into());
                }
                if !vm.snapshots.contains_key(&name) {
                    return Err(format!("snapshot '{name}' does not exist"));
                }
                if let Some(l) = &vm.lock {
                    return Err(locked(l));
                }
                let was = vm.running;
                vm.running = false;
                vm.started = None;
                vm.lock = Some("rollback".into());
                was
            };
            if was_running {
                shc.task_log(&upid, format!("stopping VM {vmid} for the rollback"));
            }
            if inject {
                sleep(t.rollback / 2).await;
                if let Some(vm) = shc.world().vms.get_mut(&vmid) {
                    vm.lock = None;
                }
                return Err(INJECTED.into());
            }
            sleep(t.rollback).await;
            let live = {
                let mut w = shc.world();
                let vm = w
                    .vms
                    .get_mut(&vmid)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                let snap = vm
                    .snapshots
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| format!("snapshot '{name}' does not exist"))?;
                vm.config = snap.config.clone();
                vm.parent = Some(name.clone());
                vm.lock = None;
                vm.generation += 1;
                if snap.vmstate {
                    // The RAM state resumes: the VM runs again.
                    vm.running = true;
                    vm.started = Some(std::time::Instant::now());
                }
                snap.vmstate
            };
            if live {
                shc.task_log(&upid, "resuming VM from the saved state");
            } else if start {
                sleep(t.start).await;
                if let Some(vm) = shc.world().vms.get_mut(&vmid) {
                    vm.running = true;
                    vm.started = Some(std::time::Instant::now());
                }
            }
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}

fn power(
    sh: &Arc<Shared>,
    caller: &Caller,
    node: &str,
    vmid: u32,
    action: &str,
    p: &BTreeMap<String, String>,
    inject: bool,
) -> R {
    sh.vm(node, vmid)?;
    let timeout = p
        .get("timeout")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let force = flag(p, "forceStop");
    let kind = match action {
        "start" => "qmstart",
        "shutdown" => "qmshutdown",
        _ => "qmstop",
    };
    let action = action.to_owned();
    let shc = sh.clone();
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        kind,
        &vmid.to_string(),
        &caller.user,
        move |upid| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            // vm_start and vm_stop run under the VM's config file lock.
            let _g = shc
                .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
                .await?;
            let running = {
                let w = shc.world();
                let vm = w
                    .vms
                    .get(&vmid)
                    .filter(|v| v.node == node_s)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                if action == "start" && vm.template {
                    return Err("you can't start a vm if it's a template".into());
                }
                if action != "start" && !vm.running {
                    return Ok(());
                }
                if let Some(l) = &vm.lock {
                    return Err(locked(l));
                }
                vm.running
            };
            if inject {
                return Err(INJECTED.into());
            }
            match action.as_str() {
                "start" => {
                    if running {
                        return Err(format!("VM {vmid} already running"));
                    }
                    sleep(t.start).await;
                    if let Some(vm) = shc.world().vms.get_mut(&vmid) {
                        vm.running = true;
                        vm.started = Some(std::time::Instant::now());
                    }
                }
                "shutdown" => {
                    let limit = timeout.unwrap_or(Duration::from_secs(60));
                    if t.shutdown <= limit {
                        sleep(t.shutdown).await;
                    } else {
                        sleep(limit).await;
                        if !force {
                            return Err("VM quit/powerdown failed - got timeout".into());
                        }
                        shc.task_log(&upid, "VM still running - terminating now with SIGTERM");
                    }
                    if let Some(vm) = shc.world().vms.get_mut(&vmid) {
                        vm.running = false;
                        vm.started = None;
                    }
                }
                _ => {
                    sleep(t.stop).await;
                    if let Some(vm) = shc.world().vms.get_mut(&vmid) {
                        vm.running = false;
                        vm.started = None;
                    }
                }
            }
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}

fn destroy(sh: &Arc<Shared>, caller: &Caller, node: &str, vmid: u32, inject: bool) -> R {
    let vm = sh.vm(node, vmid)?;
    if vm.running {
        return Err(SimError::internal(format!("VM {vmid} is running - destroy failed")).into());
    }
    let shc = sh.clone();
    let node_s = node.to_owned();
    let upid = sh.spawn_task(
        node,
        "qmdestroy",
        &vmid.to_string(),
        &caller.user,
        move |upid| async move {
            let t = shc.timings().clone();
            sleep(t.fork).await;
            let _g = shc
                .flock(&format!("/var/lock/qemu-server/lock-{vmid}.conf"))
                .await?;
            {
                let mut w = shc.world();
                let in_use = w.vms.values().any(|v| v.linked_from == Some(vmid));
                let vm = w
                    .vms
                    .get_mut(&vmid)
                    .filter(|v| v.node == node_s)
                    .ok_or_else(|| no_config(&node_s, vmid).message)?;
                if vm.running {
                    return Err(format!("VM {vmid} is running - destroy failed"));
                }
                if let Some(l) = &vm.lock {
                    return Err(locked(l));
                }
                if vm.template && in_use {
                    return Err(format!(
                        "base volume '{}' is still in use by linked cloned",
                        vm.disk_volume()
                    ));
                }
                if inject {
                    return Err(INJECTED.into());
                }
                vm.lock = Some("destroyed".into());
            }
            sleep(t.destroy).await;
            shc.world().vms.remove(&vmid);
            shc.task_log(
                &upid,
                format!("purging VM {vmid} from related configurations.."),
            );
            Ok(())
        },
    );
    Ok(json!(upid.as_str()).into())
}
