//! The error body of both directions: `{"error":{"code":"...","message":"..."}}`.

use serde::{Deserialize, Serialize};

use crate::status::DnsmasqStatus;

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// One error: a stable code, a message for people, and for dnsmasq
/// failures the state of dnsmasq (its exit status and stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsmasq: Option<DnsmasqStatus>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            dnsmasq: None,
        }
    }

    /// The HTTP status this error is sent with.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

impl From<ApiError> for ErrorBody {
    fn from(error: ApiError) -> Self {
        ErrorBody { error }
    }
}

/// The stable error codes. Readers map codes they do not know to
/// [`ErrorCode::Unknown`] (and should go by the HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body or a path parameter does not parse.
    InvalidRequest,
    /// 401: missing or wrong credentials (node secret).
    Unauthorized,
    /// 403: authenticated, but not allowed.
    Forbidden,
    /// 404: no such lease, route or object.
    NotFound,
    /// 409: the address is leased to another MAC.
    AddressInUse,
    /// 409: the MAC has a lease with another address or hostname.
    MacInUse,
    /// 409: the hostname belongs to another MAC's lease.
    HostnameInUse,
    /// 409: no free address is left in the range.
    PoolExhausted,
    /// 413: the body is larger than [`crate::MAX_BODY_BYTES`], or a converge
    /// has more than [`crate::MAX_LEASES`] leases.
    PayloadTooLarge,
    /// 422: the address is outside the agent's range.
    OutOfRange,
    /// 500: the hosts file could not be written; nothing changed.
    StorageFailed,
    /// 500: a bug.
    Internal,
    /// 503: the change is stored, but dnsmasq is not running or could not
    /// be told to reload; `dnsmasq` in the error says why.
    DnsmasqUnavailable,
    /// 401 (appliance, join): the join token is unknown, used, expired or
    /// its secret is wrong.
    InvalidToken,
    /// 404 (appliance, heartbeat): the node is not (or no longer) known.
    UnknownNode,
    /// 409 (appliance, join): another live node has this name.
    NodeNameInUse,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest => 400,
            Unauthorized | InvalidToken => 401,
            Forbidden => 403,
            NotFound | UnknownNode => 404,
            AddressInUse | MacInUse | HostnameInUse | PoolExhausted | NodeNameInUse => 409,
            PayloadTooLarge => 413,
            OutOfRange => 422,
            StorageFailed | Internal | Unknown => 500,
            DnsmasqUnavailable => 503,
        }
    }

    /// The code as it is written in JSON.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not_found",
            AddressInUse => "address_in_use",
            MacInUse => "mac_in_use",
            HostnameInUse => "hostname_in_use",
            PoolExhausted => "pool_exhausted",
            PayloadTooLarge => "payload_too_large",
            OutOfRange => "out_of_range",
            StorageFailed => "storage_failed",
            Internal => "internal",
            DnsmasqUnavailable => "dnsmasq_unavailable",
            InvalidToken => "invalid_token",
            UnknownNode => "unknown_node",
            NodeNameInUse => "node_name_in_use",
            Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_read() {
        use ErrorCode::*;
        for c in [
            InvalidRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            AddressInUse,
            MacInUse,
            HostnameInUse,
            PoolExhausted,
            PayloadTooLarge,
            OutOfRange,
            StorageFailed,
            Internal,
            DnsmasqUnavailable,
            InvalidToken,
            UnknownNode,
            NodeNameInUse,
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
        }
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"}}"#).unwrap();
        assert_eq!(body.error.code, Unknown);
        assert_eq!(body.error.http_status(), 500);
        let e = ApiError::new(OutOfRange, "10.0.0.1 is outside 10.77.0.100-10.77.0.199");
        assert_eq!(
            serde_json::to_string(&ErrorBody::from(e)).unwrap(),
            r#"{"error":{"code":"out_of_range","message":"10.0.0.1 is outside 10.77.0.100-10.77.0.199"}}"#
        );
    }
}
