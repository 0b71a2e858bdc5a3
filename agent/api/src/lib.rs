//! The `daas-agent` API: every type that crosses the wire between the agent
//! and the appliance, and nothing that does IO.
//!
//! Two directions:
//! - **appliance → agent** (the agent serves it, on a unix socket and, once
//!   the node has joined, on mutual TLS): leases, facts, status. See
//!   [`paths`] for the routes and [`leases`], [`facts`], [`status`] for the
//!   bodies.
//! - **agent → appliance** (the appliance serves it, over HTTPS pinned by the
//!   fingerprint in the [`JoinToken`]): [`join`] and [`heartbeat`].
//!
//! Errors in both directions are JSON `{"error":{"code":"...","message":"..."}}`
//! ([`error::ErrorBody`]).
//!
//! The validated newtypes ([`MacAddr`], [`Hostname`], [`NodeId`],
//! [`Ipv4Net`], [`JoinToken`], [`Fingerprint`]) refuse bad input when they
//! are parsed, so a value of one of these types is always valid; their serde
//! forms are plain strings.

pub mod error;
pub mod facts;
pub mod heartbeat;
pub mod identity;
pub mod join;
pub mod leases;
pub mod paths;
pub mod status;

mod hostname;
mod mac;
mod net;
mod node;
mod token;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use facts::NodeFacts;
pub use heartbeat::{Heartbeat, HeartbeatResponse};
pub use hostname::{Hostname, HostnameError};
pub use join::{JoinRequest, JoinResponse};
pub use leases::{AllocateRequest, ConvergeRequest, ConvergeResponse, Lease, LeaseList};
pub use mac::{MacAddr, MacAddrError};
pub use net::{Ipv4Net, Ipv4NetError, Ipv4Range, Ipv4RangeError};
pub use node::{NodeId, NodeIdError, NodeSecret};
pub use status::{AgentStatus, DnsmasqState, DnsmasqStatus};
pub use token::{Fingerprint, FingerprintError, JoinToken, JoinTokenError};

/// The version of this API. It goes up only on an incompatible change;
/// fields may be added without it (readers ignore unknown fields).
pub const API_VERSION: u32 = 1;

/// The largest request or answer body either side accepts, in bytes
/// (2 MiB: a heartbeat or converge with [`MAX_LEASES`] leases is about 1.2 MB).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// The most leases one agent holds (and one converge request carries).
pub const MAX_LEASES: usize = 16_384;

/// Serde helpers: a type that is `Display + FromStr` travels as a string.
macro_rules! serde_via_str {
    ($t:ty, $expecting:literal) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
pub(crate) use serde_via_str;
