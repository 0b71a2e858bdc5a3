//! The typed requests and answers of the operations the backend needs.
//!
//! PVE's JSON is loose about types (numbers sometimes as strings, booleans
//! as 0/1): the answers here accept either.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::Secret;
use crate::upid::Upid;

/// A VM id (100 - 999999999).
pub type Vmid = u32;

/// The smallest VMID PVE allows.
pub const VMID_MIN: Vmid = 100;
/// The largest VMID PVE allows.
pub const VMID_MAX: Vmid = 999_999_999;

/// A unicast MAC address. Prints as PVE writes it (`BC:24:11:00:00:01`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A text that is not a unicast MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a unicast MAC address (XX:XX:XX:XX:XX:XX, I/G bit clear)")]
pub struct MacAddrError;

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<MacAddr, MacAddrError> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or(MacAddrError)?;
            if p.len() != 2 {
                return Err(MacAddrError);
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| MacAddrError)?;
        }
        if parts.next().is_some() || out[0] & 1 == 1 {
            return Err(MacAddrError);
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A network device (`net0` and friends): `virtio=MAC,bridge=vmbr0[,...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The NIC model (`virtio`, `e1000`, ...).
    pub model: String,
    /// The MAC; PVE makes one up when absent (and on every clone).
    pub mac: Option<MacAddr>,
    /// The bridge (`vmbr0`).
    pub bridge: Option<String>,
    /// Whether PVE's firewall filters it.
    pub firewall: Option<bool>,
    /// VLAN tag.
    pub tag: Option<u16>,
    /// Other options, kept as they were.
    pub other: Vec<(String, String)>,
}

/// The NIC models PVE knows (the `model` enum of `net[n]`).
const NIC_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

impl NetDevice {
    /// A virtio NIC with a fixed MAC on a bridge: what every Environment gets.
    pub fn virtio(mac: MacAddr, bridge: &str) -> NetDevice {
        NetDevice {
            model: "virtio".into(),
            mac: Some(mac),
            bridge: Some(bridge.into()),
            firewall: None,
            tag: None,
            other: Vec::new(),
        }
    }
}

impl fmt::Display for NetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mac {
            Some(mac) => write!(f, "{}={mac}", self.model)?,
            None => write!(f, "model={}", self.model)?,
        }
        if let Some(b) = &self.bridge {
            write!(f, ",bridge={b}")?;
        }
        if let Some(fw) = self.firewall {
            write!(f, ",firewall={}", u8::from(fw))?;
        }
        if let Some(t) = self.tag {
            write!(f, ",tag={t}")?;
        }
        for (k, v) in &self.other {
            write!(f, ",{k}={v}")?;
        }
        Ok(())
    }
}

/// A `net[n]` value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad network device: {0}")]
pub struct NetDeviceError(&'static str);

impl FromStr for NetDevice {
    type Err = NetDeviceError;

    fn from_str(s: &str) -> Result<NetDevice, NetDeviceError> {
        let mut dev = NetDevice {
            model: String::new(),
            mac: None,
            bridge: None,
            firewall: None,
            tag: None,
            other: Vec::new(),
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some(kv) => kv,
                None => ("model", part),
            };
            match k {
                "model" => dev.model = v.to_owned(),
                "macaddr" => dev.mac = Some(v.parse().map_err(|_| NetDeviceError("bad MAC"))?),
                "bridge" => dev.bridge = Some(v.to_owned()),
                "firewall" => dev.firewall = Some(v == "1"),
                "tag" => dev.tag = Some(v.parse().map_err(|_| NetDeviceError("bad tag"))?),
                m if NIC_MODELS.contains(&m) => {
                    dev.model = m.to_owned();
                    dev.mac = Some(v.parse().map_err(|_| NetDeviceError("bad MAC"))?);
                }
                _ => dev.other.push((k.to_owned(), v.to_owned())),
            }
        }
        if dev.model.is_empty() {
            return Err(NetDeviceError("no model"));
        }
        Ok(dev)
    }
}

// ---- lenient deserializers ----

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => {
            // `memory` is a property string since PVE 8: `[current=]2048`.
            let s = s.strip_prefix("current=").unwrap_or(&s);
            s.split(',').next().and_then(|v| v.trim().parse().ok())
        }
        _ => None,
    })
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_opt_u64(d)?.ok_or_else(|| serde::de::Error::custom("expected an integer"))
}

fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Bool(b)) => b,
        Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
        Some(serde_json::Value::String(s)) => matches!(s.as_str(), "1" | "true" | "yes" | "on"),
        _ => false,
    })
}

fn de_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    Ok(split_tags(&s))
}

/// Splits a PVE tag list (`a;b`, also `,` or spaces).
pub fn split_tags(s: &str) -> Vec<String> {
    s.split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn de_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    Ok(s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `GET /version`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Version {
    /// Full version (`8.3.2`).
    pub version: String,
    /// Release (`8.3`).
    #[serde(default)]
    pub release: Option<String>,
    /// Repository id.
    #[serde(default)]
    pub repoid: Option<String>,
}

/// A node of `GET /nodes`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NodeInfo {
    /// The node's name.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    #[serde(default)]
    pub status: Option<String>,
    /// The fingerprint of the node's certificate.
    #[serde(default)]
    pub ssl_fingerprint: Option<String>,
    /// CPUs.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub maxcpu: Option<u64>,
    /// Memory in bytes.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub maxmem: Option<u64>,
}

/// A guest of `GET /cluster/resources?type=vm`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VmResource {
    /// `qemu` or `lxc`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The VMID.
    #[serde(deserialize_with = "de_u64")]
    pub vmid: u64,
    /// Where it is.
    pub node: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// `running`, `stopped`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// Whether it is a template.
    #[serde(default, deserialize_with = "de_bool")]
    pub template: bool,
    /// Its tags (our marks).
    #[serde(default, deserialize_with = "de_tags")]
    pub tags: Vec<String>,
    /// The config lock, if any.
    #[serde(default)]
    pub lock: Option<String>,
}

impl VmResource {
    /// The VMID as a [`Vmid`].
    pub fn id(&self) -> Vmid {
        Vmid::try_from(self.vmid).unwrap_or(0)
    }
}

/// The parts of `GET .../config` we use; everything is also in `raw`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VmConfig {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Cores per socket.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub cores: Option<u64>,
    /// Memory in MiB.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub memory: Option<u64>,
    /// Tags.
    #[serde(default, deserialize_with = "de_tags")]
    pub tags: Vec<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether it is a template.
    #[serde(default, deserialize_with = "de_bool")]
    pub template: bool,
    /// The config lock.
    #[serde(default)]
    pub lock: Option<String>,
    /// The config's digest, for `digest=` on a later update.
    #[serde(default)]
    pub digest: Option<String>,
    /// The snapshot the current state derives from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Every key as PVE sent it.
    #[serde(flatten)]
    pub raw: BTreeMap<String, serde_json::Value>,
}

impl VmConfig {
    /// `net0` (or another index), parsed.
    pub fn net(&self, index: u8) -> Option<NetDevice> {
        self.raw
            .get(&format!("net{index}"))
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
    }
}

/// A config change (`PUT .../config`, applied at once).
#[derive(Debug, Clone, Default)]
pub struct ConfigUpdate {
    /// Name (a DNS name).
    pub name: Option<String>,
    /// Cores per socket.
    pub cores: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// `net0`.
    pub net0: Option<NetDevice>,
    /// Tags (replace all).
    pub tags: Option<Vec<String>>,
    /// Description.
    pub description: Option<String>,
    /// Enable the QEMU guest agent.
    pub agent: Option<bool>,
    /// Raw QEMU arguments: only `root@pam` (ticket login) may set them.
    pub args: Option<String>,
    /// Keys to remove.
    pub delete: Vec<String>,
    /// Refuse the change if the config changed since this digest.
    pub digest: Option<String>,
}

/// How to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneMode {
    /// Share the template's disks (only from templates, on storage that
    /// can: LVM-thin, ZFS, Ceph RBD, qcow2 on file storage, btrfs).
    Linked,
    /// Copy every disk, optionally to another storage.
    Full {
        /// Target storage (default: the source's).
        storage: Option<String>,
    },
}

/// `POST .../clone`.
#[derive(Debug, Clone)]
pub struct CloneRequest {
    /// The source's node.
    pub node: String,
    /// The source (a template for linked clones).
    pub vmid: Vmid,
    /// The new VM's id.
    pub newid: Vmid,
    /// The new VM's name (a DNS name).
    pub name: Option<String>,
    /// Linked or full.
    pub mode: CloneMode,
    /// Another node (shared storage only).
    pub target: Option<String>,
    /// Description of the new VM.
    pub description: Option<String>,
    /// A pool to put it in.
    pub pool: Option<String>,
}

/// A snapshot of `GET .../snapshot`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SnapshotInfo {
    /// Its name; `current` is the VM's present state.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// When it was taken.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub snaptime: Option<u64>,
    /// Whether it includes RAM (a live snapshot).
    #[serde(default, deserialize_with = "de_bool")]
    pub vmstate: bool,
    /// The snapshot before it.
    #[serde(default)]
    pub parent: Option<String>,
    /// For `current`: whether the VM runs.
    #[serde(default, deserialize_with = "de_bool")]
    pub running: bool,
}

/// `GET .../status/current`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VmStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// QEMU's own state (`running`, `paused`, `prelaunch`, ...).
    #[serde(default)]
    pub qmpstatus: Option<String>,
    /// The config lock.
    #[serde(default)]
    pub lock: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Whether it is a template.
    #[serde(default, deserialize_with = "de_bool")]
    pub template: bool,
    /// Seconds since start.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub uptime: Option<u64>,
}

impl VmStatus {
    /// Whether the VM runs.
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }
}

/// A storage of `GET /nodes/{node}/storage`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StorageInfo {
    /// Its id.
    pub storage: String,
    /// Its type (`lvmthin`, `zfspool`, `rbd`, `dir`, `lvm`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What it holds (`images`, `rootdir`, `iso`, ...).
    #[serde(default, deserialize_with = "de_string_list")]
    pub content: Vec<String>,
    /// Whether all nodes see it.
    #[serde(default, deserialize_with = "de_bool")]
    pub shared: bool,
    /// Whether it is usable now.
    #[serde(default, deserialize_with = "de_bool")]
    pub active: bool,
    /// Free bytes.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub avail: Option<u64>,
}

impl StorageInfo {
    /// Whether disks on this storage type can be linked-cloned (thin LVM,
    /// ZFS, Ceph RBD, btrfs, and file storages where disks are qcow2).
    pub fn can_linked_clone(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "lvmthin"
                | "zfspool"
                | "zfs"
                | "rbd"
                | "btrfs"
                | "dir"
                | "nfs"
                | "cifs"
                | "glusterfs"
                | "cephfs"
        )
    }

    /// Whether it holds VM disks (and so vmstate volumes).
    pub fn holds_images(&self) -> bool {
        self.content.iter().any(|c| c == "images")
    }
}

/// An interface the guest agent reports.
#[derive(Debug, Clone, Serialize)]
pub struct GuestInterface {
    /// Name in the guest.
    pub name: String,
    /// Its MAC.
    pub mac: Option<String>,
    /// Its addresses.
    pub addresses: Vec<std::net::IpAddr>,
}

/// `POST .../vncproxy`: where and how to reach the VM's display.
#[derive(Debug, Clone)]
pub struct VncProxy {
    /// The port on the node.
    pub port: u16,
    /// The one-time ticket (also the VNC password with `generate-password`).
    pub ticket: Secret,
    /// The user it was issued to.
    pub user: String,
    /// The proxy's task.
    pub upid: Upid,
}

/// A finished task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDone {
    /// The task.
    pub upid: Upid,
    /// `OK` or `WARNINGS: n`.
    pub exitstatus: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        let m: MacAddr = "bc:24:11:0a:0b:0c".parse().unwrap();
        assert_eq!(m.to_string(), "BC:24:11:0A:0B:0C");
        for bad in [
            "",
            "bc:24:11:0a:0b",
            "bc:24:11:0a:0b:0c:0d",
            "01:24:11:0a:0b:0c",
            "bc-24-11-0a-0b-0c",
            "bc:24:11:0a:0b:0",
            "bc:24:11:0a:0b:zz",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn net_devices() {
        let mac: MacAddr = "BC:24:11:00:00:01".parse().unwrap();
        let d = NetDevice::virtio(mac, "vmbr0");
        assert_eq!(d.to_string(), "virtio=BC:24:11:00:00:01,bridge=vmbr0");
        assert_eq!(d.to_string().parse::<NetDevice>().unwrap(), d);
        let d: NetDevice = "e1000=BC:24:11:00:00:02,bridge=vmbr1,firewall=1,tag=5,mtu=1400"
            .parse()
            .unwrap();
        assert_eq!(d.model, "e1000");
        assert_eq!(d.firewall, Some(true));
        assert_eq!(d.tag, Some(5));
        assert_eq!(d.other, vec![("mtu".into(), "1400".into())]);
        assert_eq!(
            "model=virtio,macaddr=BC:24:11:00:00:03"
                .parse::<NetDevice>()
                .unwrap()
                .mac,
            Some("BC:24:11:00:00:03".parse().unwrap())
        );
        assert!("bridge=vmbr0".parse::<NetDevice>().is_err());
        assert!("virtio=nope".parse::<NetDevice>().is_err());
    }

    #[test]
    fn lenient_answers() {
        let c: VmConfig = serde_json::from_value(serde_json::json!({
            "name": "env-1", "cores": "2", "memory": "2048", "tags": "daas;env-1",
            "template": 1, "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0", "digest": "ab"
        }))
        .unwrap();
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.memory, Some(2048));
        assert!(c.template);
        assert_eq!(c.tags, vec!["daas", "env-1"]);
        assert_eq!(c.net(0).unwrap().bridge.as_deref(), Some("vmbr0"));
        let c: VmConfig =
            serde_json::from_value(serde_json::json!({"memory": "current=4096", "cores": 4}))
                .unwrap();
        assert_eq!(c.memory, Some(4096));
        assert_eq!(c.cores, Some(4));
        let r: VmResource = serde_json::from_value(serde_json::json!({
            "type": "qemu", "vmid": "101", "node": "pve", "template": 0, "tags": "a;b"
        }))
        .unwrap();
        assert_eq!(r.id(), 101);
        assert!(!r.template);
    }
}
