//! Heartbeats: `POST /api/v1/nodes/{id}/heartbeat` on the appliance
//! ([`crate::paths::appliance_heartbeat`]).
//!
//! Every `heartbeat_interval_secs` the agent sends a [`Heartbeat`] over
//! HTTPS (the appliance's certificate pinned by fingerprint, the node
//! certificate presented as client certificate) with
//! `Authorization: Bearer <node secret>`. The appliance checks the secret
//! (hash at rest, constant-time compare) and that the `{id}` of the path
//! equals the body's `node_id`, records the heartbeat and answers `200`
//! [`HeartbeatResponse`]. A node whose heartbeats stop is marked unavailable
//! by the appliance after a few missed intervals.
//!
//! Errors: `unauthorized` (401) for a wrong secret; `unknown_node` (404) for
//! a node the appliance removed; the agent logs them and keeps trying with a
//! growing delay (up to a minute).

use serde::{Deserialize, Serialize};

use crate::status::DnsmasqStatus;
use crate::{Lease, NodeFacts, NodeId};

/// The agent's periodic report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    /// Unix seconds when this agent process started; `(agent_started_at,
    /// sequence)` only grows, so a replayed or reordered heartbeat shows.
    pub agent_started_at: u64,
    /// 1 for the first heartbeat of an agent process, then +1 per heartbeat
    /// (failed sends included).
    pub sequence: u64,
    /// Unix seconds when it was sent.
    pub sent_at: u64,
    /// The node's facts; `facts.versions` has the agent, kernel and dnsmasq
    /// versions.
    pub facts: NodeFacts,
    /// The instances the node serves: its leases, one per instance.
    pub instances: Vec<Lease>,
    pub dnsmasq: DnsmasqStatus,
}

/// The appliance's answer to a heartbeat. Both fields are optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// A new interval, in seconds, if the appliance wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<u32>,
    /// How many instances the appliance runs on this node; the agent reports
    /// it in its facts (`instances.source = "appliance"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_instances: Option<u32>,
}
