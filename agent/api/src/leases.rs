//! Static DHCP leases: one per instance, `MAC → IP, hostname`.
//!
//! Routes (see [`crate::paths`]):
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/leases` | | `200` [`LeaseList`] |
//! | `POST /v1/leases` | [`AllocateRequest`] | `201` [`Lease`] (new) or `200` [`Lease`] (the same lease existed: retries are safe) |
//! | `DELETE /v1/leases/{mac}` | | `200` [`Lease`] (the removed one); `404` `not_found` |
//! | `PUT /v1/leases` | [`ConvergeRequest`] | `200` [`ConvergeResponse`] |
//!
//! Every change is on disk (the dnsmasq hosts file, written atomically)
//! before the answer is sent, and dnsmasq has been told to re-read it. If the
//! file is written but dnsmasq could not be told (not running, or failed),
//! the answer is `503` `dnsmasq_unavailable` with [`crate::ApiError::dnsmasq`]
//! set: the change **is** stored, and dnsmasq serves it once it runs again;
//! repeating the request is safe.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{Hostname, MacAddr};

/// One static lease: dnsmasq answers DHCP from `mac` with `ip` and `hostname`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Hostname,
}

/// `POST /v1/leases`: give `mac` an address, a fixed one if `ip` is set,
/// else the next free one of the agent's range.
///
/// Errors: `out_of_range` (422) when `ip` is not in the range;
/// `address_in_use`, `mac_in_use`, `hostname_in_use` (409) when another
/// lease holds it; `pool_exhausted` (409) when the range is full;
/// `invalid_request` (400) for a body that does not parse (bad MAC, IP or
/// hostname, unknown field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    pub mac: MacAddr,
    pub hostname: Hostname,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

/// `GET /v1/leases`: every lease, ordered by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    pub items: Vec<Lease>,
}

/// `PUT /v1/leases`: the appliance's desired set of leases. It replaces the
/// agent's set whole (all or nothing): the request is refused with the first
/// problem if two leases share a MAC, an IP or a hostname, or an IP is
/// outside the range, or there are more than [`crate::MAX_LEASES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergeRequest {
    pub leases: Vec<Lease>,
}

/// What a converge changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvergeResponse {
    /// Leases whose MAC was not there before.
    pub added: u32,
    /// Leases whose MAC is gone.
    pub removed: u32,
    /// Leases whose MAC stayed but IP or hostname changed.
    pub changed: u32,
    /// Leases that were already as desired.
    pub unchanged: u32,
    /// The set now in force, ordered by MAC.
    pub leases: Vec<Lease>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_from_data() {
        let r: AllocateRequest =
            serde_json::from_str(r#"{"mac":"52:54:00:00:00:01","hostname":"app-1"}"#).unwrap();
        assert_eq!(r.ip, None);
        let r: AllocateRequest = serde_json::from_str(
            r#"{"mac":"52:54:00:00:00:01","hostname":"app-1","ip":"10.77.0.5"}"#,
        )
        .unwrap();
        assert_eq!(r.ip, Some(Ipv4Addr::new(10, 77, 0, 5)));
        for bad in [
            r#"{"mac":"52:54:00:00:00:0","hostname":"app-1"}"#,
            r#"{"mac":"52:54:00:00:00:01","hostname":"app_1"}"#,
            r#"{"mac":"52:54:00:00:00:01","hostname":"app-1","ip":"10.77.0.256"}"#,
            r#"{"mac":"52:54:00:00:00:01","hostname":"app-1","ip":"::1"}"#,
            r#"{"mac":"52:54:00:00:00:01","hostname":"app-1","extra":1}"#,
            r#"{"mac":"52:54:00:00:00:01"}"#,
            r#"{"mac":1,"hostname":"a"}"#,
            r#"[]"#,
        ] {
            assert!(
                serde_json::from_str::<AllocateRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
