//! `GET /v1/status`: the agent's own state, dnsmasq's included.

use serde::{Deserialize, Serialize};

use crate::{Fingerprint, Ipv4Range, NodeId};

/// The agent's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's version.
    pub version: String,
    pub api_version: u32,
    /// The node's name (config, or the host name).
    pub node_name: String,
    /// Set once the node has joined an appliance.
    pub join: Option<JoinStatus>,
    pub leases: LeaseStats,
    pub dnsmasq: DnsmasqStatus,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
}

/// The join the node made, and how its heartbeats fare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinStatus {
    pub node_id: NodeId,
    pub appliance_url: String,
    pub appliance_fingerprint: Fingerprint,
    /// Unix seconds of the join.
    pub joined_at: u64,
    pub heartbeat: HeartbeatStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatStatus {
    pub interval_secs: u32,
    /// The sequence number of the last heartbeat sent (0: none yet).
    pub sequence: u64,
    /// Unix seconds of the last heartbeat the appliance accepted.
    pub last_ok: Option<u64>,
    /// Why the last heartbeat failed, if it did.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStats {
    pub count: u32,
    pub range: Ipv4Range,
    /// Addresses of the range not leased.
    pub free: u32,
    /// The dnsmasq hosts file the agent owns.
    pub hosts_file: String,
    /// Writes of the hosts file since the agent started (each carries one
    /// or more changes: changes in a burst share a write).
    pub writes: u64,
}

/// dnsmasq as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsmasqStatus {
    pub mode: DnsmasqMode,
    pub state: DnsmasqState,
    pub pid: Option<u32>,
    /// How the last dnsmasq run ended (managed mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    /// The last lines dnsmasq wrote to stderr (managed mode), for errors
    /// such as `dnsmasq: unknown interface br9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Restarts of a managed dnsmasq since the agent started.
    pub restarts: u32,
    /// SIGHUPs sent to make dnsmasq re-read the hosts file.
    pub reloads: u64,
    /// In words, what is wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Who runs dnsmasq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsmasqMode {
    /// The agent starts and supervises dnsmasq (`[dnsmasq] manage = true`).
    Managed,
    /// dnsmasq is run by the system; the agent finds it by its pid file.
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsmasqState {
    /// Running; the agent can tell it to reload.
    Running,
    /// Managed: being started (or waiting to be restarted after a failure).
    Starting,
    /// Managed: exited; see `last_exit` and `stderr`. The agent restarts it
    /// with a growing delay.
    Failed,
    /// External: no dnsmasq found through the pid file.
    NotRunning,
    /// Managed: stopped because the agent is stopping.
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal number, if a signal ended it.
    pub signal: Option<i32>,
    /// Unix seconds.
    pub at: u64,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("ended"),
        }
    }
}
