//! Why a tunnel ended, or a request for one was refused.

use std::io;

use daas_guacamole::{DecodeError, Status};

/// Why a tunnel failed. Each variant has the Guacamole [`Status`] the
/// browser is told ([`TunnelError::status`]) and a short message for it
/// ([`TunnelError::client_message`]) that names no internals; `Display` is for
/// logs, and the cause, where there is one, is the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// A display parameter of the tunnel URL is missing its bounds or form.
    #[error("invalid tunnel parameter {name}: {reason}")]
    InvalidParameter {
        /// The query parameter, such as `GUAC_WIDTH`.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The browser sent bytes that are not Guacamole protocol.
    #[error("the browser sent invalid Guacamole protocol")]
    ClientProtocol(#[source] DecodeError),
    /// A browser message ended inside an instruction.
    #[error("a browser message ended inside an instruction")]
    PartialInstruction,
    /// A browser message was larger than allowed.
    #[error("a browser message of {len} bytes exceeds the limit of {max}")]
    ClientMessageTooLarge {
        /// Its size.
        len: usize,
        /// The limit, [`crate::TunnelConfig::max_client_message_bytes`].
        max: usize,
    },
    /// The WebSocket failed (a protocol error, a reset connection).
    #[error("the browser's WebSocket failed: {0}")]
    ClientTransport(String),
    /// The browser sent nothing for the idle timeout.
    #[error("the tunnel was idle for the idle timeout")]
    Idle,
    /// The appliance is shutting down, or the session was ended.
    #[error("the tunnel was closed by the appliance")]
    Shutdown,
    /// guacd or the VNC server could not be reached.
    #[error("cannot reach {what} at {addr}")]
    UpstreamUnreachable {
        /// `guacd` or `the VNC server`.
        what: &'static str,
        /// Where.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A step of connecting to guacd, or guacd once relaying, took too long.
    #[error("guacd did not answer in time ({step})")]
    UpstreamTimeout {
        /// The step: `connect`, `tls`, `args`, `ready` or `relay`.
        step: &'static str,
    },
    /// guacd broke its handshake (an unexpected instruction, a missing
    /// connection id).
    #[error("guacd's handshake failed: {0}")]
    Handshake(String),
    /// guacd refused the connection with an `error` instruction, which is
    /// forwarded to the browser as guacd sent it.
    #[error("guacd refused the connection: {message} ({status})")]
    Refused {
        /// The status guacd gave (`UPSTREAM_ERROR` if it gave an unknown one).
        status: Status,
        /// guacd's message.
        message: String,
        /// guacd's `error` instruction, exactly as received.
        raw: String,
    },
    /// guacd sent bytes that are not Guacamole protocol.
    #[error("guacd sent invalid Guacamole protocol")]
    UpstreamProtocol(#[source] DecodeError),
    /// Reading from or writing to the upstream failed.
    #[error("the upstream connection failed")]
    UpstreamIo(#[source] io::Error),
    /// The upstream connection ended inside an instruction.
    #[error("the upstream connection ended inside an instruction")]
    UpstreamTruncated,
    /// TLS to guacd is asked for but cannot be set up.
    #[error("TLS to guacd is not usable: {0}")]
    Tls(String),
    /// The built-in VNC engine failed.
    #[error("the VNC engine failed")]
    Engine {
        /// The status the engine gave.
        status: Status,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The requested engine or protocol is not available.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl TunnelError {
    /// The Guacamole status the browser gets.
    pub fn status(&self) -> Status {
        match self {
            TunnelError::InvalidParameter { .. } | TunnelError::PartialInstruction => {
                Status::ClientBadRequest
            }
            TunnelError::ClientProtocol(e) => match e {
                DecodeError::LengthTooLarge { .. }
                | DecodeError::ElementTooLong { .. }
                | DecodeError::BufferOverflow { .. } => Status::ClientOverrun,
                _ => Status::ClientBadRequest,
            },
            TunnelError::ClientMessageTooLarge { .. } => Status::ClientOverrun,
            TunnelError::ClientTransport(_) => Status::ClientBadRequest,
            TunnelError::Idle => Status::SessionTimeout,
            TunnelError::Shutdown => Status::SessionClosed,
            TunnelError::UpstreamUnreachable { .. } => Status::UpstreamUnavailable,
            TunnelError::UpstreamTimeout { .. } => Status::UpstreamTimeout,
            TunnelError::Handshake(_)
            | TunnelError::UpstreamProtocol(_)
            | TunnelError::UpstreamIo(_)
            | TunnelError::UpstreamTruncated => Status::UpstreamError,
            TunnelError::Refused { status, .. } | TunnelError::Engine { status, .. } => *status,
            TunnelError::Tls(_) => Status::ServerError,
            TunnelError::Unsupported(_) => Status::Unsupported,
        }
    }

    /// The message of the `error` instruction the browser gets: says what
    /// happened, names no host, path or internal detail.
    pub fn client_message(&self) -> &'static str {
        match self {
            TunnelError::InvalidParameter { .. } => "Invalid display parameters.",
            TunnelError::ClientProtocol(_) => "Invalid instruction.",
            TunnelError::PartialInstruction => "Incomplete instruction.",
            TunnelError::ClientMessageTooLarge { .. } => "Message too large.",
            TunnelError::ClientTransport(_) => "WebSocket error.",
            TunnelError::Idle => "Session idle for too long.",
            TunnelError::Shutdown => "Session closed.",
            TunnelError::UpstreamUnreachable { .. } => "The remote desktop cannot be reached.",
            TunnelError::UpstreamTimeout { .. } => "The remote desktop is not responding.",
            TunnelError::Handshake(_)
            | TunnelError::UpstreamProtocol(_)
            | TunnelError::UpstreamIo(_)
            | TunnelError::UpstreamTruncated => "The remote desktop connection failed.",
            TunnelError::Refused { .. } => "The remote desktop refused the connection.",
            TunnelError::Tls(_) => "Internal error.",
            TunnelError::Engine { .. } => "The remote desktop connection failed.",
            TunnelError::Unsupported(_) => "Unsupported connection.",
        }
    }

    /// Whether the browser caused it (logged at `info`, not `error`).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            TunnelError::InvalidParameter { .. }
                | TunnelError::ClientProtocol(_)
                | TunnelError::PartialInstruction
                | TunnelError::ClientMessageTooLarge { .. }
                | TunnelError::ClientTransport(_)
                | TunnelError::Idle
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let check = |e: TunnelError, s: Status| assert_eq!(e.status(), s, "{e}");
        check(TunnelError::PartialInstruction, Status::ClientBadRequest);
        check(
            TunnelError::ClientMessageTooLarge { len: 2, max: 1 },
            Status::ClientOverrun,
        );
        check(TunnelError::Idle, Status::SessionTimeout);
        check(TunnelError::Shutdown, Status::SessionClosed);
        check(
            TunnelError::UpstreamUnreachable {
                what: "guacd",
                addr: "127.0.0.1:1".into(),
                source: io::ErrorKind::ConnectionRefused.into(),
            },
            Status::UpstreamUnavailable,
        );
        check(
            TunnelError::UpstreamTimeout { step: "args" },
            Status::UpstreamTimeout,
        );
        check(TunnelError::Handshake("x".into()), Status::UpstreamError);
        check(TunnelError::UpstreamTruncated, Status::UpstreamError);
    }
}
