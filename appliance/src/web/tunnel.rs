//! `GET /api/v1/tunnel?ticket=…`: the Guacamole WebSocket tunnel.
//!
//! The ticket (from `POST /api/v1/instances/{id}/connect`) is the only
//! authority: it is redeemed once, before the upgrade, and names the user
//! and the instance. Where to connect and with which secrets comes from the
//! instance's stored connection; the browser supplies only display
//! parameters. The tunnel itself (framing, pings, limits, status codes) is
//! `daas_gateway::run_tunnel`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use daas_gateway::{
    run_tunnel, DisplayParams, FromQuery, Status, TunnelConfig, Upstream, WsMessage, SUBPROTOCOL,
};
use daas_guacamole::Instruction;
use futures_util::{future, SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::AppState;
use crate::config::Engine;
use crate::lifecycle::LifecycleError;
use crate::model::{Connection, InstanceState, Protocol, Target};

/// Open tunnels by instance, so that stopping an instance (or shutting
/// down) closes its tunnels.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Tunnels {
    fn add(&self, instance_id: &str, token: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(instance_id.to_owned())
            .or_default()
            .push((id, token));
        id
    }

    fn remove(&self, instance_id: &str, id: u64) {
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = m.get_mut(instance_id) {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                m.remove(instance_id);
            }
        }
    }

    /// Closes every tunnel of an instance (with SESSION_CLOSED).
    pub fn close_instance(&self, instance_id: &str) -> usize {
        let v = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(instance_id)
            .unwrap_or_default();
        for (_, t) in &v {
            t.cancel();
        }
        v.len()
    }

    /// How many tunnels are open.
    pub fn count(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Closes tunnels of instances that stop running.
pub fn spawn_instance_watch(state: Arc<AppState>) {
    let mut rx = state.lifecycle.engine().instance_events();
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) if ev.state != InstanceState::Running => {
                        let n = state.tunnels.close_instance(&ev.instance_id);
                        if n > 0 {
                            info!(instance_id = %ev.instance_id, tunnels = n, state = %ev.state, "closed the tunnels of an instance that is no longer running");
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// What the gateway connects to for a stored connection.
fn upstream(state: &AppState, c: &Connection) -> Result<Upstream, String> {
    match state.cfg.gateway.engine {
        Engine::Builtin => {
            if c.protocol != Protocol::Vnc {
                return Err(
                    "the built-in engine speaks VNC only; RDP needs [gateway] engine = \"guacd\""
                        .into(),
                );
            }
            Ok(Upstream::Builtin {
                target: match &c.target {
                    Target::Tcp { host, port } => daas_gateway::Target::Tcp {
                        host: host.clone(),
                        port: *port,
                    },
                    Target::Unix { path } => daas_gateway::Target::Unix { path: path.into() },
                },
                password: c.password.clone(),
            })
        }
        Engine::Guacd => {
            let (host, port) = match &c.target {
                Target::Tcp { host, port } => (host.clone(), *port),
                Target::Unix { .. } => {
                    return Err("guacd cannot reach a unix socket; this instance was started for the built-in engine".into())
                }
            };
            let mut args = HashMap::new();
            args.insert("hostname".to_owned(), host);
            args.insert("port".to_owned(), port.to_string());
            if let Some(p) = &c.password {
                args.insert("password".to_owned(), p.clone());
            }
            if let Some(u) = &c.username {
                args.insert("username".to_owned(), u.clone());
            }
            if c.protocol == Protocol::Rdp {
                args.insert("ignore-cert".to_owned(), "true".into());
                args.insert("resize-method".to_owned(), "display-update".into());
            }
            Ok(Upstream::Guacd {
                addr: state.cfg.gateway.guacd.clone(),
                tls: state.cfg.gateway.guacd_tls,
                protocol: c.protocol.as_str().to_owned(),
                args,
            })
        }
    }
}

fn from_axum(m: Message) -> WsMessage {
    match m {
        Message::Text(t) => WsMessage::Text(t.to_string()),
        Message::Binary(b) => WsMessage::Binary(b.into()),
        Message::Ping(b) => WsMessage::Ping(b.into()),
        Message::Pong(b) => WsMessage::Pong(b.into()),
        Message::Close(c) => WsMessage::Close(c.map(|c| (c.code, c.reason.to_string()))),
    }
}

fn to_axum(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(t) => Message::Text(t.into()),
        WsMessage::Binary(b) => Message::Binary(b.into()),
        WsMessage::Ping(b) => Message::Ping(b.into()),
        WsMessage::Pong(b) => Message::Pong(b.into()),
        WsMessage::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

/// Refuses a tunnel the Guacamole way: the tunnel id, an `error`
/// instruction with the status, and the matching close code and reason, so
/// guacamole-common-js shows the reason instead of a generic failure.
async fn refuse(mut ws: WebSocket, status: Status, message: &str) {
    let mut out = Vec::new();
    Instruction::tunnel_id(&uuid::Uuid::new_v4().to_string()).write_to(&mut out);
    Instruction::error(message, status).write_to(&mut out);
    let _ = ws
        .send(Message::Text(
            String::from_utf8_lossy(&out).into_owned().into(),
        ))
        .await;
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: status.websocket_code(),
            reason: status.close_reason().into(),
        })))
        .await;
}

/// The handler.
pub(super) async fn tunnel(
    State(st): State<Arc<AppState>>,
    Query(query): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(4096)
        .max_message_size(256 * 1024);
    let ticket = query
        .iter()
        .find(|(k, _)| k == "ticket")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let params = match DisplayParams::from_query(&query) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            return ws
                .on_upgrade(move |s| async move { refuse(s, Status::ClientBadRequest, &msg).await })
                .into_response();
        }
    };
    let granted = st.lifecycle.redeem(&ticket);
    let (user, instance) = match granted {
        Ok(v) => v,
        Err(e) => {
            let (status, msg) = match &e {
                LifecycleError::Forbidden(m) => (Status::ClientForbidden, m.clone()),
                LifecycleError::NotFound(_) => (Status::ResourceNotFound, e.to_string()),
                LifecycleError::Conflict(m) => (Status::ResourceClosed, m.clone()),
                _ => (
                    Status::ServerError,
                    "the tunnel could not be opened".to_owned(),
                ),
            };
            warn!(error = %e, "tunnel refused");
            return ws
                .on_upgrade(move |s| async move { refuse(s, status, &msg).await })
                .into_response();
        }
    };
    let Some(conn) = instance.connection.as_ref() else {
        return ws
            .on_upgrade(|s| async move {
                refuse(s, Status::ResourceClosed, "the instance has no display").await
            })
            .into_response();
    };
    let upstream = match upstream(&st, conn) {
        Ok(u) => u,
        Err(msg) => {
            return ws
                .on_upgrade(move |s| async move { refuse(s, Status::UpstreamError, &msg).await })
                .into_response();
        }
    };
    let cfg = TunnelConfig {
        idle_timeout: std::time::Duration::from_secs(st.cfg.gateway.idle_timeout_secs),
        client_name: user.name.clone(),
        ..TunnelConfig::default()
    };
    let token = st.shutdown.child_token();
    let tunnel_id = st.tunnels.add(&instance.id, token.clone());
    let metrics = st.gateway.clone();
    let iid = instance.id.clone();
    ws.on_upgrade(move |socket| async move {
        info!(instance_id = %iid, user = %user.name, "tunnel opened");
        let socket = socket
            .map(|r| r.map(from_axum))
            .with(|m| future::ready(Ok::<_, axum::Error>(to_axum(m))));
        let end = run_tunnel(socket, upstream, params, cfg, token, metrics).await;
        st.tunnels.remove(&iid, tunnel_id);
        info!(instance_id = %iid, end = ?end, "tunnel closed");
    })
    .into_response()
}
