//! The built-in VNC engine behind the tunnel: the gateway connects to the VNC
//! server and `daas-vnc-engine` turns RFB into Guacamole drawing, in a task of
//! its own (encoding runs beside the tunnel's IO).
//!
//! The engine hands over whole instructions, batched, through a bounded
//! channel: the tunnel sends each batch (coalescing what is already queued,
//! up to [`crate::TunnelConfig::max_message_bytes`]) and takes the next only
//! once the WebSocket has accepted it, so a slow browser stops the engine,
//! which then coalesces damage instead of queueing frames.

use std::sync::Arc;
use std::time::Duration;

use daas_vnc_engine::{EngineConfig, EngineError, EngineStats};
use futures_util::{Sink, Stream};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::metrics::EngineTap;
use crate::tunnel::{Batch, ToBrowser, Tunnel, TunnelEnd, PONG_QUEUE};
use crate::{DisplayParams, Target, TunnelError, WsMessage};

/// Batches of instructions waiting between the engine and the tunnel.
const TO_CLIENT_QUEUE: usize = 2;
/// Browser instructions waiting for the engine.
const FROM_CLIENT_QUEUE: usize = 64;

/// The VNC server's socket.
enum Server {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect(target: &Target, step_timeout: Duration) -> Result<Server, TunnelError> {
    let (addr, r) = match target {
        Target::Tcp { host, port } => {
            let r = timeout(step_timeout, TcpStream::connect((host.as_str(), *port))).await;
            let r = r.map(|r| {
                r.map(|s| {
                    let _ = s.set_nodelay(true);
                    Server::Tcp(s)
                })
            });
            (format!("{host}:{port}"), r)
        }
        Target::Unix { path } => {
            let r = timeout(step_timeout, UnixStream::connect(path)).await;
            (path.display().to_string(), r.map(|r| r.map(Server::Unix)))
        }
    };
    match r {
        Ok(Ok(server)) => Ok(server),
        Ok(Err(source)) => Err(TunnelError::UpstreamUnreachable {
            what: "the VNC server",
            addr,
            source,
        }),
        Err(_) => Err(TunnelError::UpstreamTimeout { step: "connect" }),
    }
}

/// Aborts the engine's task when the tunnel ends, whichever way.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), EngineError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<K, St, E>(
    tunnel: &mut Tunnel<'_>,
    target: Target,
    password: Option<String>,
    params: DisplayParams,
    out: &mut ToBrowser<'_, K>,
    stream: &mut St,
    batch: &mut Batch,
    shutdown: &CancellationToken,
) -> Result<TunnelEnd, TunnelError>
where
    K: Sink<WsMessage> + Unpin + Send,
    St: Stream<Item = Result<WsMessage, E>> + Unpin + Send,
    E: std::error::Error,
{
    let cfg = tunnel.cfg;
    let server = tunnel
        .connecting(
            connect(&target, cfg.upstream_timeout),
            out,
            stream,
            shutdown,
        )
        .await?;
    let engine_cfg = EngineConfig {
        password,
        connect_timeout: cfg.upstream_timeout,
        ..EngineConfig::default()
    };
    let stats = Arc::new(EngineStats::default());
    let (to_client, mut from_engine) = mpsc::channel::<Vec<u8>>(TO_CLIENT_QUEUE);
    let (to_engine, from_client) = mpsc::channel(FROM_CLIENT_QUEUE);
    let engine = {
        let stats = stats.clone();
        AbortOnDrop(tokio::spawn(async move {
            match server {
                Server::Tcp(s) => {
                    daas_vnc_engine::run(s, params, engine_cfg, to_client, from_client, stats).await
                }
                Server::Unix(s) => {
                    daas_vnc_engine::run(s, params, engine_cfg, to_client, from_client, stats).await
                }
            }
        }))
    };
    // What the browser sent while connecting goes first.
    for instruction in tunnel.inbound_mut().instructions.drain(..) {
        if to_engine.send(instruction).await.is_err() {
            break;
        }
    }
    let metrics = tunnel.metrics;
    let mut tap = EngineTap::new(stats);
    let (pong_tx, mut pong_rx) = mpsc::channel::<String>(PONG_QUEUE);
    let (inbound, rtt) = tunnel.inbound_and_rtt();
    let down = async {
        loop {
            tokio::select! {
                biased;
                Some(pong) = pong_rx.recv() => {
                    batch.push(&pong);
                    out.flush(batch).await?;
                }
                chunk = from_engine.recv() => {
                    let Some(chunk) = chunk else { break };
                    append(batch, chunk)?;
                    // Coalesce what the engine has queued already.
                    while batch.text.len() < cfg.max_message_bytes {
                        match from_engine.try_recv() {
                            Ok(chunk) => append(batch, chunk)?,
                            Err(_) => break,
                        }
                    }
                    out.flush(batch).await?;
                    tap.publish(metrics);
                }
            }
        }
        Ok::<_, TunnelError>(())
    };
    let up = async {
        loop {
            let Some(bytes) = crate::tunnel::next_message(stream, cfg.idle_timeout).await? else {
                return Ok::<_, TunnelError>(TunnelEnd::ClientClosed);
            };
            inbound.message(&bytes, rtt, metrics)?;
            if !inbound.pongs.is_empty() {
                crate::metrics::Metrics::add(&metrics.pings_answered, 1);
                let _ = pong_tx.try_send(std::mem::take(&mut inbound.pongs));
            }
            for instruction in inbound.instructions.drain(..) {
                if to_engine.send(instruction).await.is_err() {
                    // The engine ended: its result decides how the tunnel ends.
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let end = tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(TunnelError::Shutdown),
        r = down => r.map(|()| None),
        r = up => r.map(Some),
    };
    tap.publish(metrics);
    match end {
        Err(e) => Err(e),
        Ok(Some(end)) => Ok(end),
        // The engine closed its side: it ended, with this result.
        Ok(None) => {
            let mut engine = engine;
            match (&mut engine.0).await {
                Ok(Ok(())) => Ok(TunnelEnd::UpstreamClosed {
                    status: daas_guacamole::Status::Success,
                }),
                Ok(Err(e)) => Err(TunnelError::Engine {
                    status: e.status(),
                    source: Box::new(e),
                }),
                Err(join) => Err(TunnelError::Engine {
                    status: daas_guacamole::Status::ServerError,
                    source: Box::new(join),
                }),
            }
        }
    }
}

/// Appends an engine batch (whole instructions, valid UTF-8 by construction;
/// checked anyway, it is cheap next to encoding).
fn append(batch: &mut Batch, chunk: Vec<u8>) -> Result<(), TunnelError> {
    let text = String::from_utf8(chunk).map_err(|e| TunnelError::Engine {
        status: daas_guacamole::Status::ServerError,
        source: Box::new(e),
    })?;
    if batch.text.is_empty() {
        batch.text = text;
    } else {
        batch.text.push_str(&text);
    }
    Ok(())
}
