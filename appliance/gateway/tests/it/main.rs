//! Integration tests of daas-gateway: `run_tunnel` behind a real WebSocket
//! server (tokio-tungstenite), a real WebSocket client, and the guacd
//! stand-in, a real TCP server performing guacd 1.6's handshake. The
//! guacamole-common-js tests (Node) run from `js`.

#[path = "../support/guacd.rs"]
mod guacd;
#[path = "../support/ws.rs"]
mod ws;
#[path = "../support/xvnc.rs"]
mod xvnc;

mod builtin;
mod common;
mod contract;
mod js;
mod relay;
mod tls;
