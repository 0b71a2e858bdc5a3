//! The names in the certificates of the node CA, and how each side checks them.
//!
//! At join the appliance signs the node's CSR with its **node CA**. It takes
//! only the public key from the CSR and sets every name itself:
//!
//! - a **node certificate** carries the DNS name [`node_dns_name`]
//!   (`<node-id>.nodes.daas.internal`), the common name of the node's name,
//!   `CA:FALSE`, and the extended key usages serverAuth and clientAuth. The
//!   agent serves its mutual-TLS API with it, and presents it as a client
//!   certificate with heartbeats.
//! - the **appliance's client certificate**, signed by the same CA, carries
//!   the DNS name [`APPLIANCE_CLIENT_NAME`] and clientAuth. The agent's TLS
//!   API accepts a client only if its certificate chains to the CA it got at
//!   join **and** is valid for that name: a node certificate (same CA, other
//!   name) is refused. The appliance must never put this name into a node
//!   certificate.
//!
//! The appliance connecting to an agent verifies the server certificate
//! against the node CA with the server name [`node_dns_name`] of the node it
//! means to reach (any IP address or host name in the URL; the TLS name is
//! this one).

use crate::NodeId;

/// The DNS suffix of node certificate names. `.internal` is reserved for
/// private use, so these names never clash with a public one.
pub const NODE_DNS_SUFFIX: &str = "nodes.daas.internal";

/// The DNS name in the appliance's client certificate.
pub const APPLIANCE_CLIENT_NAME: &str = "appliance.daas.internal";

/// The DNS name in the certificate of node `id`:
/// `<id>.nodes.daas.internal`.
pub fn node_dns_name(id: &NodeId) -> String {
    format!("{id}.{NODE_DNS_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let id: NodeId = "n-1".parse().unwrap();
        assert_eq!(node_dns_name(&id), "n-1.nodes.daas.internal");
        assert_ne!(node_dns_name(&id), APPLIANCE_CLIENT_NAME);
    }
}
