//! Guacamole status codes, as guacamole-client's `GuacamoleStatus.java`
//! defines them, with their HTTP status and WebSocket close code.

use std::fmt;

/// A Guacamole protocol status.
///
/// The numbers are those of `org.apache.guacamole.protocol.GuacamoleStatus`
/// (guacamole-common) and of `Guacamole.Status.Code` (guacamole-common-js):
/// the Guacamole code travels in the `error` instruction and, as decimal
/// text, in the WebSocket close reason; the close code and the HTTP status
/// are the ones guacamole-client pairs with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The operation succeeded (`0x0000`).
    Success,
    /// The requested operation is unsupported (`0x0100`).
    Unsupported,
    /// An internal error occurred; the operation failed (`0x0200`).
    ServerError,
    /// The server is busy; the operation failed (`0x0201`).
    ServerBusy,
    /// The upstream server (guacd or the desktop) is not responding (`0x0202`).
    UpstreamTimeout,
    /// The upstream server returned an error (`0x0203`).
    UpstreamError,
    /// The requested resource does not exist (`0x0204`).
    ResourceNotFound,
    /// The requested resource is already in use (`0x0205`).
    ResourceConflict,
    /// The requested resource is now closed (`0x0206`).
    ResourceClosed,
    /// The upstream server does not appear to exist (`0x0207`).
    UpstreamNotFound,
    /// The upstream server is refusing service (`0x0208`).
    UpstreamUnavailable,
    /// The session conflicted with another session (`0x0209`).
    SessionConflict,
    /// The session appeared to be inactive (`0x020A`).
    SessionTimeout,
    /// The session was forcibly terminated (`0x020B`).
    SessionClosed,
    /// The parameters of the request are illegal or invalid (`0x0300`).
    ClientBadRequest,
    /// Permission was denied because the user is not logged in (`0x0301`).
    ClientUnauthorized,
    /// Permission was denied, and logging in will not help (`0x0303`).
    ClientForbidden,
    /// The client took too long to respond (`0x0308`).
    ClientTimeout,
    /// The client sent too much data (`0x030D`).
    ClientOverrun,
    /// The client sent data of an unsupported or unexpected type (`0x030F`).
    ClientBadType,
    /// The client is already using too many resources (`0x031D`).
    ClientTooMany,
}

impl Status {
    /// Every status, in the order of `GuacamoleStatus.java`.
    pub const ALL: [Status; 21] = [
        Status::Success,
        Status::Unsupported,
        Status::ServerError,
        Status::ServerBusy,
        Status::UpstreamTimeout,
        Status::UpstreamError,
        Status::ResourceNotFound,
        Status::ResourceConflict,
        Status::ResourceClosed,
        Status::UpstreamNotFound,
        Status::UpstreamUnavailable,
        Status::SessionConflict,
        Status::SessionTimeout,
        Status::SessionClosed,
        Status::ClientBadRequest,
        Status::ClientUnauthorized,
        Status::ClientForbidden,
        Status::ClientTimeout,
        Status::ClientOverrun,
        Status::ClientBadType,
        Status::ClientTooMany,
    ];

    /// The numeric Guacamole status code (`GuacamoleStatus.getGuacamoleStatusCode()`).
    pub const fn code(self) -> u16 {
        self.row().0
    }

    /// The HTTP status guacamole-client pairs with this status.
    pub const fn http_status(self) -> u16 {
        self.row().1
    }

    /// The WebSocket close code guacamole-client pairs with this status.
    pub const fn websocket_code(self) -> u16 {
        self.row().2
    }

    /// The constant's name in `GuacamoleStatus.java` and
    /// `Guacamole.Status.Code`, such as `"CLIENT_BAD_REQUEST"`. For logs.
    pub const fn name(self) -> &'static str {
        self.row().3
    }

    /// The WebSocket close reason: the Guacamole code in decimal, such as
    /// `"768"` for [`Status::ClientBadRequest`].
    ///
    /// This is what guacamole-client's `GuacamoleWebSocketTunnelEndpoint`
    /// sends (`Integer.toString(guacamoleStatusCode)`), and what
    /// guacamole-common-js reads back: its `WebSocketTunnel` takes
    /// `parseInt(event.reason)` as the status code whenever a reason is
    /// present, and only falls back to [`Status::from_websocket_code`]
    /// without one. A name would parse as `NaN` there.
    pub const fn close_reason(self) -> &'static str {
        self.row().4
    }

    /// The status with this numeric Guacamole code, if there is one.
    pub fn from_code(code: u16) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The status guacamole-common-js derives from a WebSocket close code
    /// when the close frame carries no reason
    /// (`Guacamole.Status.Code.fromWebSocketCode`). The mapping is lossy:
    /// most close codes become [`Status::ServerError`], which is why the
    /// tunnel always sends [`Status::close_reason`].
    pub const fn from_websocket_code(code: u16) -> Status {
        match code {
            1000 => Status::Success,
            1006 | 1015 => Status::UpstreamNotFound,
            1001 | 1012 | 1013 | 1014 => Status::UpstreamUnavailable,
            _ => Status::ServerError,
        }
    }

    /// Whether this status reports a failure (anything but `SUCCESS`).
    pub const fn is_error(self) -> bool {
        !matches!(self, Status::Success)
    }

    /// (Guacamole code, HTTP status, WebSocket close code, name, close reason).
    const fn row(self) -> (u16, u16, u16, &'static str, &'static str) {
        match self {
            Status::Success => (0x0000, 200, 1000, "SUCCESS", "0"),
            Status::Unsupported => (0x0100, 501, 1011, "UNSUPPORTED", "256"),
            Status::ServerError => (0x0200, 500, 1011, "SERVER_ERROR", "512"),
            Status::ServerBusy => (0x0201, 503, 1008, "SERVER_BUSY", "513"),
            Status::UpstreamTimeout => (0x0202, 504, 1011, "UPSTREAM_TIMEOUT", "514"),
            Status::UpstreamError => (0x0203, 502, 1011, "UPSTREAM_ERROR", "515"),
            Status::ResourceNotFound => (0x0204, 404, 1002, "RESOURCE_NOT_FOUND", "516"),
            Status::ResourceConflict => (0x0205, 409, 1008, "RESOURCE_CONFLICT", "517"),
            Status::ResourceClosed => (0x0206, 404, 1002, "RESOURCE_CLOSED", "518"),
            Status::UpstreamNotFound => (0x0207, 502, 1011, "UPSTREAM_NOT_FOUND", "519"),
            Status::UpstreamUnavailable => (0x0208, 502, 1011, "UPSTREAM_UNAVAILABLE", "520"),
            Status::SessionConflict => (0x0209, 409, 1008, "SESSION_CONFLICT", "521"),
            Status::SessionTimeout => (0x020A, 408, 1002, "SESSION_TIMEOUT", "522"),
            Status::SessionClosed => (0x020B, 404, 1002, "SESSION_CLOSED", "523"),
            Status::ClientBadRequest => (0x0300, 400, 1002, "CLIENT_BAD_REQUEST", "768"),
            Status::ClientUnauthorized => (0x0301, 403, 1008, "CLIENT_UNAUTHORIZED", "769"),
            Status::ClientForbidden => (0x0303, 403, 1008, "CLIENT_FORBIDDEN", "771"),
            Status::ClientTimeout => (0x0308, 408, 1002, "CLIENT_TIMEOUT", "776"),
            Status::ClientOverrun => (0x030D, 413, 1009, "CLIENT_OVERRUN", "781"),
            Status::ClientBadType => (0x030F, 415, 1003, "CLIENT_BAD_TYPE", "783"),
            Status::ClientTooMany => (0x031D, 429, 1008, "CLIENT_TOO_MANY", "797"),
        }
    }
}

impl fmt::Display for Status {
    /// Writes the name and the code, such as `CLIENT_BAD_REQUEST (0x0300)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04X})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    /// The table of `GuacamoleStatus.java` (apache/guacamole-client,
    /// guacamole-common), transcribed as (name, HTTP, WebSocket, code).
    const JAVA: [(&str, u16, u16, u16); 21] = [
        ("SUCCESS", 200, 1000, 0x0000),
        ("UNSUPPORTED", 501, 1011, 0x0100),
        ("SERVER_ERROR", 500, 1011, 0x0200),
        ("SERVER_BUSY", 503, 1008, 0x0201),
        ("UPSTREAM_TIMEOUT", 504, 1011, 0x0202),
        ("UPSTREAM_ERROR", 502, 1011, 0x0203),
        ("RESOURCE_NOT_FOUND", 404, 1002, 0x0204),
        ("RESOURCE_CONFLICT", 409, 1008, 0x0205),
        ("RESOURCE_CLOSED", 404, 1002, 0x0206),
        ("UPSTREAM_NOT_FOUND", 502, 1011, 0x0207),
        ("UPSTREAM_UNAVAILABLE", 502, 1011, 0x0208),
        ("SESSION_CONFLICT", 409, 1008, 0x0209),
        ("SESSION_TIMEOUT", 408, 1002, 0x020A),
        ("SESSION_CLOSED", 404, 1002, 0x020B),
        ("CLIENT_BAD_REQUEST", 400, 1002, 0x0300),
        ("CLIENT_UNAUTHORIZED", 403, 1008, 0x0301),
        ("CLIENT_FORBIDDEN", 403, 1008, 0x0303),
        ("CLIENT_TIMEOUT", 408, 1002, 0x0308),
        ("CLIENT_OVERRUN", 413, 1009, 0x030D),
        ("CLIENT_BAD_TYPE", 415, 1003, 0x030F),
        ("CLIENT_TOO_MANY", 429, 1008, 0x031D),
    ];

    #[test]
    fn matches_guacamole_status_java() {
        for (status, (name, http, ws, code)) in Status::ALL.into_iter().zip(JAVA) {
            assert_eq!(
                (
                    status.name(),
                    status.http_status(),
                    status.websocket_code(),
                    status.code()
                ),
                (name, http, ws, code),
                "{status:?}"
            );
        }
    }

    #[test]
    fn close_reason_round_trips_through_parse_int() {
        // guacamole-common-js: `new Guacamole.Status(parseInt(event.reason))`.
        for status in Status::ALL {
            let parsed: u16 = status.close_reason().parse().expect("decimal");
            assert_eq!(parsed, status.code(), "{status:?}");
            assert_eq!(Status::from_code(parsed), Some(status));
        }
    }

    #[test]
    fn codes_are_unique_and_unknown_codes_are_none() {
        for (i, a) in Status::ALL.iter().enumerate() {
            for b in &Status::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
            }
        }
        assert_eq!(Status::from_code(0x0302), None);
        assert_eq!(Status::from_code(0xFFFF), None);
    }

    #[test]
    fn websocket_code_fallback_is_that_of_guacamole_common_js() {
        let check = |code: u16, expect: Status| {
            assert_eq!(
                Status::from_websocket_code(code),
                expect,
                "close code {code}"
            );
        };
        check(1000, Status::Success);
        check(1006, Status::UpstreamNotFound);
        check(1015, Status::UpstreamNotFound);
        for code in [1001, 1012, 1013, 1014] {
            check(code, Status::UpstreamUnavailable);
        }
        for code in [1002, 1003, 1008, 1009, 1011, 4000] {
            check(code, Status::ServerError);
        }
        // Only SUCCESS survives the fallback unchanged: hence the reason.
        for status in Status::ALL {
            let back = Status::from_websocket_code(status.websocket_code());
            assert_eq!(
                back == status,
                matches!(status, Status::Success | Status::ServerError)
            );
        }
    }

    #[test]
    fn display_names_the_status() {
        assert_eq!(Status::ClientOverrun.to_string(), "CLIENT_OVERRUN (0x030D)");
        assert!(!Status::Success.is_error());
        assert!(Status::ServerBusy.is_error());
    }
}
