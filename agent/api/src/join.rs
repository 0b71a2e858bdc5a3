//! Joining a node to an appliance: `POST /api/v1/nodes/join` on the
//! appliance ([`crate::paths::APPLIANCE_JOIN`]).
//!
//! 1. An admin asks the appliance for a [`crate::JoinToken`]; it is single
//!    use, expires, and carries the SHA-256 fingerprint of the appliance's
//!    TLS certificate.
//! 2. On the node, `daas-agent join https://APPLIANCE --token T` makes a key
//!    pair (the private key never leaves the node), connects over HTTPS
//!    accepting only a server certificate with that fingerprint, and sends a
//!    [`JoinRequest`].
//! 3. The appliance checks the token (id known, secret equal in constant
//!    time, not used, not expired) and marks it used whatever follows,
//!    checks the CSR's self-signature, and signs a node certificate with its
//!    node CA using **only the CSR's public key**: the names are its own (see
//!    [`crate::identity`]). It answers `201` [`JoinResponse`].
//!
//! Errors (JSON [`crate::ErrorBody`]): `invalid_token` (401) for a token that
//! is unknown, used, expired or whose secret is wrong (one answer for all);
//! `invalid_request` (400) for a body or CSR that does not parse;
//! `node_name_in_use` (409) when another live node has the name.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{Hostname, JoinToken, NodeFacts, NodeId, NodeSecret};

/// The longest PEM text (CSR or certificate) either side accepts, in bytes.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The bounds of a heartbeat interval, in seconds.
pub const HEARTBEAT_INTERVAL_SECS: std::ops::RangeInclusive<u32> = 1..=3600;

/// The agent's request to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// [`crate::API_VERSION`] of the agent.
    pub api_version: u32,
    /// The whole one-time token, as the admin gave it.
    pub token: JoinToken,
    /// The name the node wants (its host name unless told otherwise).
    pub node_name: Hostname,
    /// A PKCS#10 certificate signing request, PEM (`-----BEGIN CERTIFICATE
    /// REQUEST-----`), signed by the node's new key.
    pub csr_pem: String,
    /// The node's facts at join.
    pub facts: NodeFacts,
    /// Where the agent's mutual-TLS API listens, if it does. An unspecified
    /// address (`0.0.0.0:7443`) means: the address this request came from,
    /// on that port.
    pub api_listen: Option<SocketAddr>,
}

/// The appliance's answer to a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The id the appliance gave the node.
    pub node_id: NodeId,
    /// The node certificate, PEM, signed by the node CA for the CSR's key,
    /// valid for [`crate::identity::node_dns_name`]`(node_id)`.
    pub certificate_pem: String,
    /// The node CA's certificate, PEM: the agent trusts client certificates
    /// signed by it (that also carry [`crate::identity::APPLIANCE_CLIENT_NAME`]).
    pub ca_certificate_pem: String,
    /// How often the agent sends a heartbeat, in seconds
    /// ([`HEARTBEAT_INTERVAL_SECS`]).
    pub heartbeat_interval_secs: u32,
    /// The node's secret, sent as `Authorization: Bearer` with heartbeats.
    pub node_secret: NodeSecret,
}
