//! A real WebSocket server around `run_tunnel` (tokio-tungstenite, subprotocol
//! `guacamole` echoed), the adapter from tungstenite's messages to
//! `WsMessage`, and a client. Shared by the integration tests and examples.
#![allow(dead_code, unreachable_pub, clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use daas_gateway::{
    run_tunnel, DisplayParams, FromQuery, Metrics, TunnelConfig, TunnelEnd, Upstream, WsMessage,
};
use futures_util::{future, Sink, SinkExt, Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// tungstenite's message as the gateway's.
pub fn from_tungstenite(m: Message) -> WsMessage {
    match m {
        Message::Text(t) => WsMessage::Text(t.as_str().to_owned()),
        Message::Binary(b) => WsMessage::Binary(b.into()),
        Message::Ping(b) => WsMessage::Ping(b.into()),
        Message::Pong(b) => WsMessage::Pong(b.into()),
        Message::Close(c) => {
            WsMessage::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())))
        }
        Message::Frame(_) => WsMessage::Binary(Vec::new()),
    }
}

/// The gateway's message as tungstenite's.
pub fn to_tungstenite(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(t) => Message::Text(t.into()),
        WsMessage::Binary(b) => Message::Binary(b.into()),
        WsMessage::Ping(b) => Message::Ping(b.into()),
        WsMessage::Pong(b) => Message::Pong(b.into()),
        WsMessage::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })),
    }
}

/// A tungstenite WebSocket seen as `Stream<Item = Result<WsMessage, _>> +
/// Sink<WsMessage>`, as `run_tunnel` wants it.
pub fn adapt<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
) -> impl Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin + Send
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    ws.map(|r| r.map(from_tungstenite))
        .with(|m: WsMessage| future::ready(Ok::<_, WsError>(to_tungstenite(m))))
}

/// Splits a query string into percent-decoded pairs.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// What the server decides for one tunnel, from its query.
pub type Route = Arc<dyn Fn(&[(String, String)]) -> (Upstream, TunnelConfig) + Send + Sync>;

/// A WebSocket server that runs `run_tunnel` for each connection.
pub struct TunnelServer {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    ends: mpsc::UnboundedReceiver<TunnelEnd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunnelServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// tungstenite's buffers sized for many idle tunnels: 4 KiB to read into,
/// messages written out at once. Its message limit sits above the tunnel's
/// own (64 KiB), so that the tunnel answers an oversized message with a
/// clean `CLIENT_OVERRUN`.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(256 * 1024))
        .max_frame_size(Some(256 * 1024))
}

impl TunnelServer {
    /// Listens on `addr` (such as `127.0.0.1:0`).
    pub async fn start(addr: &str, route: Route) -> TunnelServer {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the tunnel server");
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (end_tx, ends) = mpsc::unbounded_channel();
        let task = {
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let (route, metrics, shutdown, end_tx) = (
                        route.clone(),
                        metrics.clone(),
                        shutdown.clone(),
                        end_tx.clone(),
                    );
                    tokio::spawn(async move {
                        if let Some(end) = serve_one(socket, route, metrics, shutdown).await {
                            let _ = end_tx.send(end);
                        }
                    });
                }
            })
        };
        TunnelServer {
            addr,
            metrics,
            shutdown,
            ends,
            task,
        }
    }

    /// The `ws://` URL of the tunnel, with this query.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/tunnel?{}", self.addr, query)
    }

    /// How the next tunnel ended.
    pub async fn next_end(&mut self) -> TunnelEnd {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.ends.recv())
            .await
            .expect("a tunnel ends within 10 s")
            .expect("the server runs")
    }
}

/// Upgrades one connection (echoing the subprotocol, as the web layer does)
/// and runs the tunnel on it.
pub async fn serve_one(
    socket: TcpStream,
    route: Route,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Option<TunnelEnd> {
    let _ = socket.set_nodelay(true);
    let mut query = String::new();
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        query = req.uri().query().unwrap_or_default().to_owned();
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == daas_gateway::SUBPROTOCOL);
        if !offered {
            let mut err = ErrorResponse::new(Some("subprotocol guacamole required".into()));
            *err.status_mut() = StatusCode::BAD_REQUEST;
            return Err(err);
        }
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(daas_gateway::SUBPROTOCOL),
        );
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(ws_config()))
        .await
        .ok()?;
    let pairs = parse_query(&query);
    let (upstream, cfg) = route(&pairs);
    let ws = adapt(ws);
    let params = match DisplayParams::from_query(&pairs) {
        Ok(p) => p,
        Err(e) => {
            // The web layer answers 400 before upgrading; here, close.
            let mut ws = ws;
            let _ = ws
                .send(WsMessage::Close(Some((
                    1002,
                    e.status().close_reason().to_owned(),
                ))))
                .await;
            return None;
        }
    };
    Some(run_tunnel(ws, upstream, params, cfg, shutdown, metrics).await)
}

/// A test client: a tungstenite WebSocket offering `guacamole`.
pub type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects to `url` offering the subprotocol `guacamole`, and checks it is
/// echoed.
pub async fn connect(url: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("guacamole"),
    );
    let (ws, response) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .expect("WebSocket connect");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("guacamole")
    );
    ws
}

/// What a client saw, message by message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Text messages, in order.
    pub texts: Vec<String>,
    /// The close frame's code and reason, if one came.
    pub close: Option<(u16, String)>,
}

impl Seen {
    /// All text, concatenated.
    pub fn all(&self) -> String {
        self.texts.concat()
    }
}

/// Reads until the server closes (or `within` passes).
pub async fn read_all(ws: &mut Client, within: std::time::Duration) -> Seen {
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => seen.texts.push(t.as_str().to_owned()),
                Message::Close(c) => {
                    seen.close = c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned()));
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    seen
}

/// Reads text messages until their concatenation contains `needle`.
pub async fn read_until(ws: &mut Client, needle: &str, within: std::time::Duration) -> Seen {
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => {
                    seen.texts.push(t.as_str().to_owned());
                    if seen.all().contains(needle) {
                        break;
                    }
                }
                Message::Close(c) => {
                    seen.close = c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned()));
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    seen
}
