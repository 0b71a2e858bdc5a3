//! The HTTP routes of both sides, as constants (axum 0.8 `{param}` syntax).
//!
//! Served by the **agent** (unix socket; mutual TLS once joined):
//!
//! | route | body → answer |
//! | --- | --- |
//! | `GET /v1/status` | → [`crate::AgentStatus`] |
//! | `GET /v1/facts` | → [`crate::NodeFacts`] |
//! | `GET /v1/leases` | → [`crate::LeaseList`] |
//! | `POST /v1/leases` | [`crate::AllocateRequest`] → [`crate::Lease`] (201 new, 200 existed) |
//! | `PUT /v1/leases` | [`crate::ConvergeRequest`] → [`crate::ConvergeResponse`] |
//! | `DELETE /v1/leases/{mac}` | → [`crate::Lease`] (the removed one) |
//!
//! Served by the **appliance** (HTTPS):
//!
//! | route | body → answer |
//! | --- | --- |
//! | `POST /api/v1/nodes/join` | [`crate::JoinRequest`] → 201 [`crate::JoinResponse`] |
//! | `POST /api/v1/nodes/{id}/heartbeat` | [`crate::Heartbeat`] → 200 [`crate::HeartbeatResponse`] |
//!
//! Every body is JSON (`Content-Type: application/json`); every error is
//! [`crate::ErrorBody`].

use crate::{MacAddr, NodeId};

/// `GET`: the agent's [`crate::AgentStatus`].
pub const STATUS: &str = "/v1/status";
/// `GET`: the node's [`crate::NodeFacts`].
pub const FACTS: &str = "/v1/facts";
/// `GET` list, `POST` allocate, `PUT` converge.
pub const LEASES: &str = "/v1/leases";
/// `DELETE` release; the route pattern.
pub const LEASE: &str = "/v1/leases/{mac}";

/// The path to release the lease of `mac`.
pub fn lease(mac: &MacAddr) -> String {
    format!("{LEASES}/{mac}")
}

/// `POST` on the appliance: join.
pub const APPLIANCE_JOIN: &str = "/api/v1/nodes/join";
/// `POST` on the appliance: heartbeat; the route pattern.
pub const APPLIANCE_HEARTBEAT: &str = "/api/v1/nodes/{id}/heartbeat";

/// The heartbeat path of node `id`.
pub fn appliance_heartbeat(id: &NodeId) -> String {
    format!("/api/v1/nodes/{id}/heartbeat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(lease(&mac), "/v1/leases/52:54:00:00:00:01");
        let id: NodeId = "n1".parse().unwrap();
        assert_eq!(
            appliance_heartbeat(&id),
            APPLIANCE_HEARTBEAT.replace("{id}", "n1")
        );
    }
}
