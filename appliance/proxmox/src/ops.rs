//! The typed operations the Proxmox backend needs.
//!
//! Reads and config writes come back at once. Everything that PVE runs as a
//! worker returns a [`Task`]: call [`Task::wait`] for the outcome. Task
//! calls take a slot of their node's limit ([`crate::NodeLimiter`]) until
//! the task has ended.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;

use crate::client::{Client, Idempotency, Params};
use crate::error::{ErrorKind, PveError};
use crate::task::Task;
use crate::types::{
    CloneMode, CloneRequest, ConfigUpdate, GuestInterface, NodeInfo, SnapshotInfo, StorageInfo,
    Version, VmConfig, VmResource, VmStatus, Vmid, VncProxy,
};
use crate::Secret;

const GET: Method = Method::GET;
const IDEM: Idempotency = Idempotency::Idempotent;
const ONCE: Idempotency = Idempotency::NonIdempotent;

impl ConfigUpdate {
    /// The request parameters.
    pub fn params(&self) -> Params {
        let mut p = Params::new()
            .opt_str("name", self.name.clone())
            .opt_str("description", self.description.clone())
            .opt_str("args", self.args.clone())
            .opt_str("digest", self.digest.clone());
        if let Some(c) = self.cores {
            p = p.int("cores", c);
        }
        if let Some(m) = self.memory_mib {
            p = p.str("memory", m.to_string());
        }
        if let Some(n) = &self.net0 {
            p = p.str("net0", n.to_string());
        }
        if let Some(t) = &self.tags {
            p = p.str("tags", t.join(";"));
        }
        if let Some(a) = self.agent {
            p = p.bool("agent", a);
        }
        if !self.delete.is_empty() {
            p = p.str("delete", self.delete.join(","));
        }
        p
    }
}

impl Client {
    /// `GET /version`: also a cheap credentials check.
    pub async fn version(&self) -> Result<Version, PveError> {
        self.call_data(GET, &["version"], &Params::new(), IDEM)
            .await
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, PveError> {
        self.call_data(GET, &["nodes"], &Params::new(), IDEM).await
    }

    /// `GET /cluster/nextid`: the lowest free VMID *now*. It reserves
    /// nothing: use [`crate::VmidAllocator`] to create VMs.
    pub async fn next_vmid(&self) -> Result<Vmid, PveError> {
        let v: serde_json::Value = self
            .call_data(GET, &["cluster", "nextid"], &Params::new(), IDEM)
            .await?;
        parse_vmid(&v).ok_or_else(|| PveError::Protocol {
            method: "GET",
            path: "/cluster/nextid".into(),
            detail: format!("not a VMID: {v}"),
        })
    }

    /// `GET /cluster/nextid?vmid=N`: whether `vmid` is free at the time of
    /// the check.
    pub async fn vmid_is_free(&self, vmid: Vmid) -> Result<bool, PveError> {
        let params = Params::new().int("vmid", vmid);
        match self.call(GET, &["cluster", "nextid"], &params, IDEM).await {
            Ok(_) => Ok(true),
            Err(PveError::Validation { errors, .. }) if errors.contains_key("vmid") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The cluster's QEMU VMs (`GET /cluster/resources?type=vm`), with
    /// names, tags, status and locks: the inventory.
    pub async fn vms(&self) -> Result<Vec<VmResource>, PveError> {
        let all: Vec<VmResource> = self
            .call_data(
                GET,
                &["cluster", "resources"],
                &Params::new().str("type", "vm"),
                IDEM,
            )
            .await?;
        Ok(all.into_iter().filter(|r| r.kind == "qemu").collect())
    }

    /// `GET /nodes/{node}/storage`.
    pub async fn storages(&self, node: &str) -> Result<Vec<StorageInfo>, PveError> {
        self.call_data(GET, &["nodes", node, "storage"], &Params::new(), IDEM)
            .await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/config`.
    pub async fn vm_config(&self, node: &str, vmid: Vmid) -> Result<VmConfig, PveError> {
        let id = vmid.to_string();
        self.call_data(
            GET,
            &["nodes", node, "qemu", &id, "config"],
            &Params::new(),
            IDEM,
        )
        .await
    }

    /// `PUT /nodes/{node}/qemu/{vmid}/config`: applied at once (a running
    /// VM gets what can be hot-plugged; the rest is pending until restart).
    /// Idempotent, so retried.
    pub async fn update_vm_config(
        &self,
        node: &str,
        vmid: Vmid,
        update: &ConfigUpdate,
    ) -> Result<(), PveError> {
        let id = vmid.to_string();
        self.call(
            Method::PUT,
            &["nodes", node, "qemu", &id, "config"],
            &update.params(),
            IDEM,
        )
        .await
        .map(|_| ())
    }

    /// `POST .../clone`: never retried (a lost answer may mean a clone).
    /// A linked clone from a template on storage that cannot link fails
    /// with [`ErrorKind::LinkedCloneUnsupported`]: fall back to a full one.
    pub async fn clone_vm(&self, req: &CloneRequest) -> Result<Task, PveError> {
        let id = req.vmid.to_string();
        let mut p = Params::new().int("newid", req.newid);
        p = p.opt_str("name", req.name.clone());
        match &req.mode {
            CloneMode::Linked => p = p.bool("full", false),
            CloneMode::Full { storage } => {
                p = p.bool("full", true).opt_str("storage", storage.clone());
            }
        }
        p = p
            .opt_str("target", req.target.clone())
            .opt_str("description", req.description.clone())
            .opt_str("pool", req.pool.clone());
        self.start_task(
            &req.node,
            Method::POST,
            &["nodes", &req.node, "qemu", &id, "clone"],
            &p,
            ONCE,
        )
        .await
    }

    /// `POST .../template`: converts a stopped VM without snapshots.
    pub async fn convert_to_template(&self, node: &str, vmid: Vmid) -> Result<Task, PveError> {
        let id = vmid.to_string();
        self.start_task(
            node,
            Method::POST,
            &["nodes", node, "qemu", &id, "template"],
            &Params::new(),
            ONCE,
        )
        .await
    }

    /// `POST .../snapshot`. With `vmstate` and a running VM, RAM is saved
    /// too (a live snapshot; a rollback to it resumes the VM). PVE ignores
    /// `vmstate` for a stopped VM.
    pub async fn create_snapshot(
        &self,
        node: &str,
        vmid: Vmid,
        name: &str,
        vmstate: bool,
        description: Option<&str>,
    ) -> Result<Task, PveError> {
        let id = vmid.to_string();
        let mut p = Params::new().str("snapname", name);
        if vmstate {
            p = p.bool("vmstate", true);
        }
        p = p.opt_str("description", description);
        self.start_task(
            node,
            Method::POST,
            &["nodes", node, "qemu", &id, "snapshot"],
            &p,
            ONCE,
        )
        .await
    }

    /// `GET .../snapshot`: the snapshots and `current`.
    pub async fn snapshots(&self, node: &str, vmid: Vmid) -> Result<Vec<SnapshotInfo>, PveError> {
        let id = vmid.to_string();
        self.call_data(
            GET,
            &["nodes", node, "qemu", &id, "snapshot"],
            &Params::new(),
            IDEM,
        )
        .await
    }

    /// `DELETE .../snapshot/{name}`.
    pub async fn delete_snapshot(
        &self,
        node: &str,
        vmid: Vmid,
        name: &str,
    ) -> Result<Task, PveError> {
        let id = vmid.to_string();
        self.start_task(
            node,
            Method::DELETE,
            &["nodes", node, "qemu", &id, "snapshot", name],
            &Params::new(),
            ONCE,
        )
        .await
    }

    /// `POST .../snapshot/{name}/rollback`. The VM is stopped first if it
    /// runs. A snapshot with RAM leaves it running (resumed); otherwise it
    /// is stopped unless `start` asks for a start afterwards.
    pub async fn rollback(
        &self,
        node: &str,
        vmid: Vmid,
        name: &str,
        start: bool,
    ) -> Result<Task, PveError> {
        let id = vmid.to_string();
        let p = if start {
            Params::new().bool("start", true)
        } else {
            Params::new()
        };
        self.start_task(
            node,
            Method::POST,
            &["nodes", node, "qemu", &id, "snapshot", name, "rollback"],
            &p,
            ONCE,
        )
        .await
    }

    /// `GET .../status/current`.
    pub async fn vm_status(&self, node: &str, vmid: Vmid) -> Result<VmStatus, PveError> {
        let id = vmid.to_string();
        self.call_data(
            GET,
            &["nodes", node, "qemu", &id, "status", "current"],
            &Params::new(),
            IDEM,
        )
        .await
    }

    /// `POST .../status/start`: fails (in the task) if it already runs.
    pub async fn start_vm(&self, node: &str, vmid: Vmid) -> Result<Task, PveError> {
        let id = vmid.to_string();
        self.start_task(
            node,
            Method::POST,
            &["nodes", node, "qemu", &id, "status", "start"],
            &Params::new(),
            ONCE,
        )
        .await
    }

    /// `POST .../status/shutdown`: ACPI (or guest agent) shutdown; after
    /// `timeout`, `force_stop` kills the VM, else the task fails. A stopped
    /// VM is fine. Repeatable, so retried.
    pub async fn shutdown_vm(
        &self,
        node: &str,
        vmid: Vmid,
        timeout: Option<Duration>,
        force_stop: bool,
    ) -> Result<Task, PveError> {
        let id = vmid.to_string();
        let mut p = Params::new();
        if let Some(t) = timeout {
            p = p.int("timeout", i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
        }
        if force_stop {
            p = p.bool("forceStop", true);
        }
        self.start_task(
            node,
            Method::POST,
            &["nodes", node, "qemu", &id, "status", "shutdown"],
            &p,
            IDEM,
        )
        .await
    }

    /// `POST .../status/stop`: pulls the plug. A stopped VM is fine.
    /// Repeatable, so retried.
    pub async fn stop_vm(&self, node: &str, vmid: Vmid) -> Result<Task, PveError> {
        let id = vmid.to_string();
        self.start_task(
            node,
            Method::POST,
            &["nodes", node, "qemu", &id, "status", "stop"],
            &Params::new(),
            IDEM,
        )
        .await
    }

    /// `DELETE /nodes/{node}/qemu/{vmid}?purge=1&destroy-unreferenced-disks=1`:
    /// removes the VM, its disks (also unreferenced ones with its VMID) and
    /// its entries in backup, replication and HA jobs. `None` when the VM
    /// does not exist. The VM must be stopped. Retried: a repeat after a
    /// lost answer ends in a task that finds nothing ([`ErrorKind::NotFound`]).
    pub async fn destroy_vm(&self, node: &str, vmid: Vmid) -> Result<Option<Task>, PveError> {
        let id = vmid.to_string();
        let p = Params::new()
            .bool("purge", true)
            .bool("destroy-unreferenced-disks", true);
        match self
            .start_task(
                node,
                Method::DELETE,
                &["nodes", node, "qemu", &id],
                &p,
                IDEM,
            )
            .await
        {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET .../agent/network-get-interfaces`: the guest's addresses, from
    /// the QEMU guest agent (optional: the appliance knows the address from
    /// the static lease).
    pub async fn guest_interfaces(
        &self,
        node: &str,
        vmid: Vmid,
    ) -> Result<Vec<GuestInterface>, PveError> {
        #[derive(Deserialize)]
        struct Addr {
            #[serde(rename = "ip-address")]
            ip: String,
        }
        #[derive(Deserialize)]
        struct Iface {
            name: String,
            #[serde(rename = "hardware-address", default)]
            mac: Option<String>,
            #[serde(rename = "ip-addresses", default)]
            ips: Vec<Addr>,
        }
        #[derive(Deserialize)]
        struct Answer {
            result: Vec<Iface>,
        }
        let id = vmid.to_string();
        let a: Answer = self
            .call_data(
                GET,
                &[
                    "nodes",
                    node,
                    "qemu",
                    &id,
                    "agent",
                    "network-get-interfaces",
                ],
                &Params::new(),
                IDEM,
            )
            .await?;
        Ok(a.result
            .into_iter()
            .map(|i| GuestInterface {
                name: i.name,
                mac: i.mac,
                addresses: i.ips.iter().filter_map(|a| a.ip.parse().ok()).collect(),
            })
            .collect())
    }

    /// `POST .../vncproxy` with `websocket=1`: a one-time VNC ticket for
    /// the VM's display. Its websocket (`vncwebsocket`) wants a ticket
    /// login, not a token.
    pub async fn vnc_proxy(&self, node: &str, vmid: Vmid) -> Result<VncProxy, PveError> {
        #[derive(Deserialize)]
        struct Answer {
            port: serde_json::Value,
            ticket: String,
            user: String,
            upid: crate::Upid,
        }
        let id = vmid.to_string();
        let a: Answer = self
            .call_data(
                Method::POST,
                &["nodes", node, "qemu", &id, "vncproxy"],
                &Params::new().bool("websocket", true),
                ONCE,
            )
            .await?;
        let port = parse_vmid(&a.port)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| PveError::Protocol {
                method: "POST",
                path: format!("/nodes/{node}/qemu/{vmid}/vncproxy"),
                detail: "bad port".into(),
            })?;
        Ok(VncProxy {
            port,
            ticket: Secret::new(a.ticket),
            user: a.user,
            upid: a.upid,
        })
    }
}

fn parse_vmid(v: &serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{MacAddr, NetDevice};

    #[test]
    fn config_update_params() {
        let mac: MacAddr = "BC:24:11:00:00:07".parse().unwrap();
        let u = ConfigUpdate {
            name: Some("env-7".into()),
            cores: Some(2),
            memory_mib: Some(2048),
            net0: Some(NetDevice::virtio(mac, "vmbr0")),
            tags: Some(vec!["daas".into(), "env-7".into()]),
            agent: Some(true),
            delete: vec!["ide2".into(), "serial0".into()],
            ..ConfigUpdate::default()
        };
        let p = u.params();
        let got: Vec<(&str, &str)> = p
            .pairs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("name", "env-7"),
                ("cores", "2"),
                ("memory", "2048"),
                ("net0", "virtio=BC:24:11:00:00:07,bridge=vmbr0"),
                ("tags", "daas;env-7"),
                ("agent", "1"),
                ("delete", "ide2,serial0"),
            ]
        );
    }

    #[test]
    fn vmids_from_either_json() {
        assert_eq!(parse_vmid(&serde_json::json!("101")), Some(101));
        assert_eq!(parse_vmid(&serde_json::json!(101)), Some(101));
        assert_eq!(parse_vmid(&serde_json::json!("x")), None);
        assert_eq!(parse_vmid(&serde_json::json!(null)), None);
    }
}
