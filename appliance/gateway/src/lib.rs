//! The appliance's Guacamole gateway: the WebSocket tunnel that
//! guacamole-common-js's `Guacamole.WebSocketTunnel` talks to, and the two
//! engines behind it.
//!
//! - [`Upstream::Builtin`]: the built-in VNC engine (`daas-vnc-engine`); the
//!   gateway connects to the VNC server itself and the engine translates RFB
//!   into Guacamole drawing.
//! - [`Upstream::Guacd`]: a relay to guacd (RDP, SSH, or VNC where an operator
//!   wants guacd). The gateway performs guacd's handshake (`select`, `args`,
//!   `size`/`audio`/`video`/`image`/`timezone`/`name`, `connect`, `ready`),
//!   filling `connect` **by name** from [`Upstream::Guacd::args`], then relays.
//!
//! # The tunnel contract
//!
//! [`run_tunnel`] runs one tunnel over an already-upgraded WebSocket (the
//! caller echoes the subprotocol `guacamole`). It
//!
//! - sends `0.,36.<uuid>;` first;
//! - answers the browser's internal pings (`0.,4.ping,<ts>;`) itself and never
//!   forwards an internal instruction upstream;
//! - requires each browser message to hold only whole instructions: a partial
//!   one ends the tunnel with `CLIENT_BAD_REQUEST`, and nothing of a bad
//!   message reaches upstream;
//! - sends the browser whole instructions only, batched per message: a batch
//!   is flushed as soon as upstream has nothing more to read right now, or when
//!   it reaches [`TunnelConfig::max_message_bytes`];
//! - parses every instruction guacd sends (zero-copy, with guacd's limits) and
//!   forwards its bytes unchanged: a wrong element length is an error, never a
//!   way to inject or alter an instruction (CVE-2023-30575);
//! - reports failures as an `error` instruction with the Guacamole status
//!   code, then a WebSocket close with the code guacamole-client's
//!   `GuacamoleStatus` pairs with it and the status code as the reason;
//! - keeps memory bounded: it reads upstream only while the WebSocket sink
//!   accepts messages, so a slow browser pushes back to guacd's TCP
//!   connection (or to the engine), never into a growing buffer.
//!
//! See `docs/gateway.md` for the operator's view.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builtin;
mod error;
mod guacd;
mod metrics;
mod params;
mod tunnel;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use daas_guacamole::Status;
pub use error::TunnelError;
pub use guacd::{guacd_tls_config, ProtocolVersion};
pub use metrics::Metrics;
pub use params::{DisplayParams, FromQuery, DEFAULT_DISPLAY};
pub use tunnel::{run_tunnel, TunnelEnd};

/// The subprotocol a Guacamole WebSocket tunnel speaks; the web layer echoes
/// it in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "guacamole";

/// One WebSocket message, independent of the WebSocket library. The web layer
/// maps its own message type to this one (`docs/gateway.md` shows it for
/// axum; `tests/support/ws.rs` for tokio-tungstenite). The WebSocket library
/// answers WebSocket pings itself; the tunnel ignores `Ping` and `Pong`.
#[derive(Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message: what guacamole-common-js sends, and what the tunnel
    /// sends.
    Text(String),
    /// A binary message: accepted from the browser as UTF-8 instructions.
    Binary(Vec<u8>),
    /// A WebSocket ping (the WebSocket library answers it).
    Ping(Vec<u8>),
    /// A WebSocket pong.
    Pong(Vec<u8>),
    /// A close frame: code and reason.
    Close(Option<(u16, String)>),
}

impl fmt::Debug for WsMessage {
    /// Lengths only: messages may carry typed text and clipboard contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsMessage::Text(s) => write!(f, "Text({} bytes)", s.len()),
            WsMessage::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
            WsMessage::Ping(b) => write!(f, "Ping({} bytes)", b.len()),
            WsMessage::Pong(b) => write!(f, "Pong({} bytes)", b.len()),
            WsMessage::Close(c) => f.debug_tuple("Close").field(c).finish(),
        }
    }
}

/// Where a tunnel's display comes from. Built by the web layer from the
/// connect ticket; the browser never supplies any of it.
#[derive(Clone)]
pub enum Upstream {
    /// The built-in VNC engine; the gateway connects to the target itself.
    Builtin {
        /// The VNC server.
        target: Target,
        /// Its VNC password, if it asks for one.
        password: Option<String>,
    },
    /// Relay to guacd; the gateway does the guacd handshake.
    Guacd {
        /// guacd's `HOST:PORT`.
        addr: String,
        /// Speak TLS to guacd ([`TunnelConfig::guacd_tls`] says how to verify it).
        tls: bool,
        /// The guacd protocol: `vnc`, `rdp` or `ssh`.
        protocol: String,
        /// Connection parameters by name (`hostname`, `port`, `password`,
        /// `username`, ...): each name guacd's `args` lists gets its value
        /// here, or an empty one.
        args: HashMap<String, String>,
    },
}

impl fmt::Debug for Upstream {
    /// Never prints passwords or connection arguments' values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Builtin { target, password } => f
                .debug_struct("Builtin")
                .field("target", target)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
            Upstream::Guacd {
                addr,
                tls,
                protocol,
                args,
            } => {
                let mut names: Vec<&str> = args.keys().map(String::as_str).collect();
                names.sort_unstable();
                f.debug_struct("Guacd")
                    .field("addr", addr)
                    .field("tls", tls)
                    .field("protocol", protocol)
                    .field("args", &names)
                    .finish()
            }
        }
    }
}

/// A VNC server's endpoint, for the built-in engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket on the appliance's machine.
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
}

/// How a tunnel behaves. `Default` gives the values documented on each field.
#[derive(Clone)]
pub struct TunnelConfig {
    /// Closes the tunnel with `SESSION_TIMEOUT` when the browser has sent
    /// nothing at all (no instruction, no ping) for this long. A live
    /// guacamole-common-js client sends a `nop` every 5 s and pings twice a
    /// second while it receives, so this catches dead browsers and half-open
    /// connections. Default 900 s (the appliance's `idle_timeout_secs`).
    pub idle_timeout: Duration,
    /// The most bytes of whole instructions batched into one message to the
    /// browser. A single instruction larger than this (up to the decoder's
    /// 64 KiB) still goes alone in one message. Default 64 KiB.
    pub max_message_bytes: usize,
    /// The largest message the browser may send; a larger one ends the tunnel
    /// with `CLIENT_OVERRUN`. Default 64 KiB (guacamole-common-js sends one
    /// instruction per message; clipboard text arrives in `blob`s of at most
    /// 8 KiB). Set the WebSocket library's own limit to match.
    pub max_client_message_bytes: usize,
    /// Timeout of each step of the upstream connection: TCP connect, TLS,
    /// each handshake instruction awaited from guacd. Also how long guacd may
    /// stay silent once relaying (guacd sends a `nop` every 5 s) before the
    /// tunnel ends with `UPSTREAM_TIMEOUT`. Default 15 s, as guacamole-client.
    pub upstream_timeout: Duration,
    /// How long to wait for the browser's close frame after sending ours.
    /// Default 1 s.
    pub close_timeout: Duration,
    /// The name sent to guacd in the `name` handshake instruction (protocol
    /// 1.5.0 and later); guacd shows it in its logs and to shared sessions.
    /// Default `"daas"`; the web layer puts the user's name here.
    pub client_name: String,
    /// Forward the browser's `size` to guacd for protocol `vnc`. guacd's VNC
    /// support (before 1.6) cannot resize the remote display, so the tunnel
    /// drops `size` there by default; RDP gets it always. Default false.
    pub forward_vnc_size: bool,
    /// How to verify guacd's certificate when [`Upstream::Guacd::tls`] is
    /// set. `None`: the system's CA bundle (`/etc/ssl/certs/ca-certificates.crt`).
    /// [`guacd_tls_config`] makes one from a PEM CA file.
    pub guacd_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            idle_timeout: Duration::from_secs(900),
            max_message_bytes: 64 * 1024,
            max_client_message_bytes: 64 * 1024,
            upstream_timeout: Duration::from_secs(15),
            close_timeout: Duration::from_secs(1),
            client_name: "daas".to_owned(),
            forward_vnc_size: false,
            guacd_tls: None,
        }
    }
}

impl fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_client_message_bytes", &self.max_client_message_bytes)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("client_name", &self.client_name)
            .field("forward_vnc_size", &self.forward_vnc_size)
            .field("guacd_tls", &self.guacd_tls.is_some())
            .finish()
    }
}
