//! Node facts: what the appliance needs to place instances on a node.
//! `GET /v1/facts` answers [`NodeFacts`]; every heartbeat carries them too.

use serde::{Deserialize, Serialize};

/// What a node is and has, measured when asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The node's host name (the kernel's).
    pub hostname: String,
    pub cpu: CpuFacts,
    pub memory: MemoryFacts,
    /// One entry per storage path of the agent's config (`[node] storage_paths`).
    pub disks: Vec<DiskFacts>,
    pub load: LoadAverage,
    pub uptime_secs: u64,
    pub instances: InstanceFacts,
    pub versions: Versions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFacts {
    /// Logical CPUs (hardware threads) of the node.
    pub count: u32,
    /// The model name of the first CPU, as the kernel reports it; empty if unknown.
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFacts {
    pub total_bytes: u64,
    /// What can be given to new processes without swapping (MemAvailable).
    pub available_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFacts {
    /// The configured path.
    pub path: String,
    pub total_bytes: u64,
    /// Free for root.
    pub free_bytes: u64,
    /// Free for unprivileged users.
    pub available_bytes: u64,
    /// Set when the path could not be measured (then the sizes are 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// How many instances run on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFacts {
    pub running: u32,
    pub source: InstanceSource,
}

/// Where [`InstanceFacts::running`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceSource {
    /// Reported by the appliance in its last [`crate::HeartbeatResponse`].
    Appliance,
    /// Counted from the agent's leases (one per instance).
    Leases,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// The agent's version (its crate version).
    pub agent: String,
    /// The agent's API version ([`crate::API_VERSION`]).
    pub api: u32,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// dnsmasq's version from `dnsmasq --version`, if it could be run.
    pub dnsmasq: Option<String>,
}
