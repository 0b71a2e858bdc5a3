//! The tunnel's IO pump: browser WebSocket on one side, guacd or the built-in
//! engine on the other. Generic over the WebSocket's `Stream`/`Sink`, so the
//! web layer's axum socket and the tests' tungstenite socket both fit.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daas_guacamole::{Decoder, Instruction, Status};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::guacd::{self, GuacdStream};
use crate::metrics::{Metrics, OpenGuard};
use crate::{DisplayParams, TunnelConfig, TunnelError, Upstream, WsMessage};

/// How a tunnel ended. Everything the browser needed to be told has been
/// sent when [`run_tunnel`] returns this; it is for the caller's logs.
#[derive(Debug)]
pub enum TunnelEnd {
    /// The browser closed the WebSocket, or went away.
    ClientClosed,
    /// The upstream ended the session. `status` is that of the `error`
    /// instruction guacd sent last (forwarded unchanged), or `SUCCESS`; the
    /// WebSocket was closed with its code.
    UpstreamClosed {
        /// The status the browser's close frame carried.
        status: Status,
    },
    /// The tunnel failed; the browser got an `error` instruction and a close
    /// frame with this error's status.
    Failed(TunnelError),
}

impl TunnelEnd {
    /// The status the browser was given (`SUCCESS` when it closed itself).
    pub fn status(&self) -> Status {
        match self {
            TunnelEnd::ClientClosed => Status::Success,
            TunnelEnd::UpstreamClosed { status } => *status,
            TunnelEnd::Failed(e) => e.status(),
        }
    }
}

/// Bytes read from guacd at a time while waiting: an idle tunnel holds only
/// this, inside its task.
const IDLE_READ: usize = 2048;
/// Bytes read from guacd at a time during a burst (freed when it ends).
const BURST_READ: usize = 64 * 1024;
/// Ping answers waiting while the WebSocket is busy; more are dropped (the
/// browser pings twice a second and needs only some answers).
pub(crate) const PONG_QUEUE: usize = 8;
/// Above this capacity the browser-side decoder is replaced after a message,
/// so that one large message does not pin its buffer for the tunnel's life.
const KEEP_DECODER_BYTES: usize = 4096;

/// Runs one tunnel over an already-upgraded WebSocket (subprotocol
/// `guacamole`, echoed by the caller) until either side ends or `shutdown`
/// fires; then the browser gets `error` with `SESSION_CLOSED` and the matching
/// close frame. Never panics on any input; returns how it ended, once
/// everything the browser must be told has been sent (or
/// [`TunnelConfig::close_timeout`] has passed).
pub async fn run_tunnel<S, E>(
    ws: S,
    upstream: Upstream,
    params: DisplayParams,
    cfg: TunnelConfig,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> TunnelEnd
where
    S: Stream<Item = Result<WsMessage, E>> + Sink<WsMessage> + Unpin + Send,
    E: std::error::Error,
{
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    let span = tracing::info_span!("tunnel", tunnel_id = %id);
    async move {
        let _open = OpenGuard::new(&metrics);
        tracing::debug!(
            ?upstream,
            width = params.width,
            height = params.height,
            "tunnel opened"
        );
        let (sink, mut stream) = ws.split();
        let mut out = ToBrowser {
            sink,
            metrics: &metrics,
        };
        let mut batch = Batch::default();
        let result = match out.send(Instruction::tunnel_id(&id).encode(), 0, 0).await {
            Err(e) => Err(e),
            Ok(()) => {
                let mut tunnel = Tunnel {
                    cfg: &cfg,
                    metrics: &metrics,
                    rtt: RoundTrip::default(),
                    inbound: Inbound::new(&cfg),
                };
                tunnel
                    .run(
                        &mut out,
                        &mut stream,
                        &mut batch,
                        upstream,
                        params,
                        &shutdown,
                    )
                    .await
            }
        };
        let end = match result {
            Ok(end) => end,
            Err(e) => TunnelEnd::Failed(e),
        };
        finish(&mut out, &mut stream, &mut batch, &end, &cfg).await;
        log_end(&end);
        if end.status().is_error() {
            metrics.tunnel_failures_total.fetch_add(1, Relaxed);
        }
        end
    }
    .instrument(span)
    .await
}

fn log_end(end: &TunnelEnd) {
    match end {
        TunnelEnd::ClientClosed => tracing::debug!("tunnel closed by the browser"),
        TunnelEnd::UpstreamClosed { status } => {
            tracing::debug!(%status, "tunnel closed by upstream")
        }
        TunnelEnd::Failed(e) if e.is_client_fault() || matches!(e, TunnelError::Shutdown) => {
            tracing::info!(error = %ErrorChain(e), status = %e.status(), "tunnel ended")
        }
        TunnelEnd::Failed(e) => {
            tracing::error!(error = %ErrorChain(e), status = %e.status(), "tunnel failed")
        }
    }
}

/// Displays an error with its sources, for the one log line that handles it.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Tells the browser how the tunnel ended: what is batched, then `error` (on
/// failure), then the close frame; then waits briefly for the browser's close
/// frame so that ours is not lost to a reset connection. All within
/// `close_timeout`.
async fn finish<K, St, E>(
    out: &mut ToBrowser<'_, K>,
    stream: &mut St,
    batch: &mut Batch,
    end: &TunnelEnd,
    cfg: &TunnelConfig,
) where
    K: Sink<WsMessage> + Unpin,
    St: Stream<Item = Result<WsMessage, E>> + Unpin,
{
    let status = match end {
        TunnelEnd::ClientClosed | TunnelEnd::Failed(TunnelError::ClientTransport(_)) => return,
        TunnelEnd::UpstreamClosed { status } => *status,
        TunnelEnd::Failed(e) => e.status(),
    };
    let tell = async {
        if let TunnelEnd::Failed(e) = end {
            match e {
                TunnelError::Refused { raw, .. } => batch.push(raw),
                e => batch.push(&Instruction::error(e.client_message(), e.status()).encode()),
            }
        }
        if out.flush(batch).await.is_err() {
            return;
        }
        let close = WsMessage::Close(Some((
            status.websocket_code(),
            status.close_reason().to_owned(),
        )));
        if out.sink.send(close).await.is_err() {
            return;
        }
        // Read until the browser's close frame (or the end of the stream).
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, WsMessage::Close(_)) {
                break;
            }
        }
    };
    let _ = timeout(cfg.close_timeout, tell).await;
}

/// The browser's side of the WebSocket, with the metrics of what goes out.
pub(crate) struct ToBrowser<'m, K> {
    sink: K,
    metrics: &'m Metrics,
}

impl<K: Sink<WsMessage> + Unpin> ToBrowser<'_, K> {
    async fn send(
        &mut self,
        text: String,
        instructions: u64,
        frames: u64,
    ) -> Result<(), TunnelError> {
        let len = text.len() as u64;
        self.sink
            .send(WsMessage::Text(text))
            .await
            .map_err(|_| TunnelError::ClientTransport("sending failed".into()))?;
        let m = self.metrics;
        Metrics::add(&m.bytes_to_client, len);
        Metrics::add(&m.messages_to_client, 1);
        Metrics::add(&m.instructions_to_client, instructions);
        Metrics::add(&m.frames, frames);
        Ok(())
    }

    /// Sends the batch as one message, if it holds anything.
    pub(crate) async fn flush(&mut self, batch: &mut Batch) -> Result<(), TunnelError> {
        if batch.text.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut batch.text);
        let (instructions, frames) = (batch.instructions, batch.frames);
        batch.instructions = 0;
        batch.frames = 0;
        self.send(text, instructions, frames).await
    }
}

/// Whole instructions waiting to go to the browser in one message.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) text: String,
    instructions: u64,
    frames: u64,
}

impl Batch {
    pub(crate) fn push(&mut self, instruction: &str) {
        self.text.push_str(instruction);
    }
}

/// A sampled browser round trip: one `sync` sent to the browser at a time is
/// timed until the browser acknowledges it (guacamole-common-js answers each
/// rendered frame's `sync` with the same timestamp).
#[derive(Default)]
pub(crate) struct RoundTrip {
    pending: AtomicBool,
    sent: Mutex<Option<(u64, Instant)>>,
}

impl RoundTrip {
    /// A `sync` with this timestamp goes to the browser.
    fn sent(&self, timestamp: Option<&str>) {
        if self.pending.load(Relaxed) {
            return;
        }
        if let Some(ts) = timestamp.and_then(|t| t.parse::<u64>().ok()) {
            if let Ok(mut sent) = self.sent.lock() {
                *sent = Some((ts, Instant::now()));
                self.pending.store(true, Relaxed);
            }
        }
    }

    /// The browser acknowledged a `sync` with this timestamp.
    fn acked(&self, timestamp: Option<&str>, metrics: &Metrics) {
        if !self.pending.load(Relaxed) {
            return;
        }
        let Some(ts) = timestamp.and_then(|t| t.parse::<u64>().ok()) else {
            return;
        };
        let Ok(mut sent) = self.sent.lock() else {
            return;
        };
        if let Some((sent_ts, at)) = *sent {
            if ts >= sent_ts {
                let micros = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                Metrics::add(&metrics.sync_round_trips, 1);
                Metrics::add(&metrics.sync_round_trip_micros, micros);
                *sent = None;
                self.pending.store(false, Relaxed);
            }
        }
    }
}

/// What one browser message asks for, once checked whole.
#[derive(Default)]
pub(crate) struct Inbound {
    decoder: Decoder,
    max_message: usize,
    /// Drop `size` (guacd's VNC cannot resize).
    drop_size: bool,
    /// Keep owned instructions (the built-in engine) instead of raw bytes.
    owned: bool,
    /// Raw bytes of the instructions to forward (guacd).
    raw: Vec<u8>,
    /// The instructions to forward (built-in engine).
    pub(crate) instructions: Vec<Instruction>,
    /// Answers to internal pings.
    pub(crate) pongs: String,
}

impl Inbound {
    fn new(cfg: &TunnelConfig) -> Self {
        Inbound {
            max_message: cfg.max_client_message_bytes,
            ..Inbound::default()
        }
    }

    /// Checks one browser message and collects what it asks for. On error,
    /// nothing of this message is kept: a bad message injects nothing.
    pub(crate) fn message(
        &mut self,
        bytes: &[u8],
        rtt: &RoundTrip,
        metrics: &Metrics,
    ) -> Result<(), TunnelError> {
        let r = self.parse(bytes, rtt, metrics);
        if r.is_err() {
            self.raw.clear();
            self.instructions.clear();
            self.pongs.clear();
        }
        if bytes.len() > KEEP_DECODER_BYTES && self.decoder.buffered_len() == 0 {
            self.decoder = Decoder::new();
        }
        r
    }

    fn parse(
        &mut self,
        bytes: &[u8],
        rtt: &RoundTrip,
        metrics: &Metrics,
    ) -> Result<(), TunnelError> {
        if bytes.len() > self.max_message {
            return Err(TunnelError::ClientMessageTooLarge {
                len: bytes.len(),
                max: self.max_message,
            });
        }
        Metrics::add(&metrics.messages_from_client, 1);
        Metrics::add(&metrics.bytes_from_client, bytes.len() as u64);
        self.decoder
            .push(bytes)
            .map_err(TunnelError::ClientProtocol)?;
        let mut count = 0;
        while let Some(raw) = self
            .decoder
            .next_raw()
            .map_err(TunnelError::ClientProtocol)?
        {
            count += 1;
            if raw.is_internal() {
                if let Some(ts) = raw.ping_timestamp() {
                    Instruction::ping(ts).write_to_string(&mut self.pongs);
                }
                continue;
            }
            match raw.opcode() {
                "size" if self.drop_size => continue,
                "sync" => rtt.acked(raw.args().next(), metrics),
                _ => {}
            }
            if self.owned {
                self.instructions.push(raw.to_instruction());
            } else {
                self.raw.extend_from_slice(raw.as_bytes());
            }
        }
        Metrics::add(&metrics.instructions_from_client, count);
        if self.decoder.buffered_len() != 0 {
            return Err(TunnelError::PartialInstruction);
        }
        Ok(())
    }
}

/// Appending an encoded instruction to a `String`.
trait WriteToString {
    fn write_to_string(&self, out: &mut String);
}

impl WriteToString for Instruction {
    fn write_to_string(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "{self}");
    }
}

/// The next browser message's bytes: `None` when the browser closed.
pub(crate) async fn next_message<St, E>(
    stream: &mut St,
    idle: Duration,
) -> Result<Option<Vec<u8>>, TunnelError>
where
    St: Stream<Item = Result<WsMessage, E>> + Unpin,
    E: std::error::Error,
{
    loop {
        match timeout(idle, stream.next()).await {
            Err(_) => return Err(TunnelError::Idle),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(TunnelError::ClientTransport(e.to_string())),
            Ok(Some(Ok(msg))) => match msg {
                WsMessage::Text(s) => return Ok(Some(s.into_bytes())),
                WsMessage::Binary(b) => return Ok(Some(b)),
                WsMessage::Close(_) => return Ok(None),
                WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            },
        }
    }
}

/// One tunnel's state shared by its two directions.
pub(crate) struct Tunnel<'a> {
    pub(crate) cfg: &'a TunnelConfig,
    pub(crate) metrics: &'a Metrics,
    rtt: RoundTrip,
    inbound: Inbound,
}

impl Tunnel<'_> {
    pub(crate) fn inbound_mut(&mut self) -> &mut Inbound {
        &mut self.inbound
    }

    pub(crate) fn inbound_and_rtt(&mut self) -> (&mut Inbound, &RoundTrip) {
        (&mut self.inbound, &self.rtt)
    }

    async fn run<K, St, E>(
        &mut self,
        out: &mut ToBrowser<'_, K>,
        stream: &mut St,
        batch: &mut Batch,
        upstream: Upstream,
        params: DisplayParams,
        shutdown: &CancellationToken,
    ) -> Result<TunnelEnd, TunnelError>
    where
        K: Sink<WsMessage> + Unpin + Send,
        St: Stream<Item = Result<WsMessage, E>> + Unpin + Send,
        E: std::error::Error,
    {
        match upstream {
            Upstream::Guacd {
                addr,
                tls,
                protocol,
                args,
            } => {
                self.inbound.drop_size = protocol == "vnc" && !self.cfg.forward_vnc_size;
                let mut decoder = Decoder::new();
                let cfg = self.cfg;
                let connect = async {
                    let mut io = guacd::connect(&addr, tls, cfg).await?;
                    let request = guacd::Request {
                        protocol: &protocol,
                        args: &args,
                        params: &params,
                        name: &cfg.client_name,
                    };
                    let handshake =
                        guacd::handshake(&mut io, &mut decoder, &request, cfg.upstream_timeout)
                            .await?;
                    Ok::<_, TunnelError>((io, handshake))
                };
                let (io, handshake) = self.connecting(connect, out, stream, shutdown).await?;
                tracing::debug!(connection = %handshake.id, version = %handshake.version, "guacd ready");
                self.relay_guacd(io, decoder, out, stream, batch, shutdown)
                    .await
            }
            Upstream::Builtin { target, password } => {
                self.inbound.owned = true;
                crate::builtin::run(self, target, password, params, out, stream, batch, shutdown)
                    .await
            }
        }
    }

    /// Runs `connect` while answering the browser's pings and keeping what
    /// else it sends (at most one message's worth) for when it is done.
    pub(crate) async fn connecting<T, K, St, E>(
        &mut self,
        connect: impl std::future::Future<Output = Result<T, TunnelError>>,
        out: &mut ToBrowser<'_, K>,
        stream: &mut St,
        shutdown: &CancellationToken,
    ) -> Result<T, TunnelError>
    where
        K: Sink<WsMessage> + Unpin,
        St: Stream<Item = Result<WsMessage, E>> + Unpin,
        E: std::error::Error,
    {
        tokio::pin!(connect);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(TunnelError::Shutdown),
                r = &mut connect => return r,
                msg = next_message(stream, self.cfg.idle_timeout) => {
                    let Some(bytes) = msg? else {
                        return Err(TunnelError::ClientTransport("closed while connecting".into()));
                    };
                    self.inbound.message(&bytes, &self.rtt, self.metrics)?;
                    if self.inbound.raw.len() + self.inbound.instructions.len() > self.cfg.max_client_message_bytes {
                        return Err(TunnelError::ClientMessageTooLarge {
                            len: self.inbound.raw.len(),
                            max: self.cfg.max_client_message_bytes,
                        });
                    }
                    self.answer_pings_now(out).await?;
                }
            }
        }
    }

    async fn answer_pings_now<K: Sink<WsMessage> + Unpin>(
        &mut self,
        out: &mut ToBrowser<'_, K>,
    ) -> Result<(), TunnelError> {
        if self.inbound.pongs.is_empty() {
            return Ok(());
        }
        Metrics::add(&self.metrics.pings_answered, 1);
        let pongs = std::mem::take(&mut self.inbound.pongs);
        out.send(pongs, 0, 0).await
    }

    async fn relay_guacd<K, St, E>(
        &mut self,
        io: GuacdStream,
        mut decoder: Decoder,
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
        let (mut rd, mut wr) = tokio::io::split(io);
        let (pong_tx, mut pong_rx) = mpsc::channel::<String>(PONG_QUEUE);
        // What the browser sent while connecting goes first.
        if !self.inbound.raw.is_empty() {
            wr.write_all(&self.inbound.raw)
                .await
                .map_err(TunnelError::UpstreamIo)?;
            wr.flush().await.map_err(TunnelError::UpstreamIo)?;
            self.inbound.raw = Vec::new();
        }
        let cfg = self.cfg;
        let metrics = self.metrics;
        let rtt = &self.rtt;
        let inbound = &mut self.inbound;
        let down = GuacdDown {
            decoder: &mut decoder,
            batch,
            max_message: cfg.max_message_bytes,
            rtt,
            last_error: None,
        }
        .run(&mut rd, out, &mut pong_rx, cfg.upstream_timeout);
        let up = async {
            loop {
                let Some(bytes) = next_message(stream, cfg.idle_timeout).await? else {
                    return Ok(TunnelEnd::ClientClosed);
                };
                inbound.message(&bytes, rtt, metrics)?;
                if !inbound.pongs.is_empty() {
                    Metrics::add(&metrics.pings_answered, 1);
                    let _ = pong_tx.try_send(std::mem::take(&mut inbound.pongs));
                }
                if !inbound.raw.is_empty() {
                    wr.write_all(&inbound.raw)
                        .await
                        .map_err(TunnelError::UpstreamIo)?;
                    wr.flush().await.map_err(TunnelError::UpstreamIo)?;
                    inbound.raw.clear();
                    if inbound.raw.capacity() > KEEP_DECODER_BYTES {
                        inbound.raw = Vec::new();
                    }
                }
            }
        };
        let end = tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(TunnelError::Shutdown),
            r = down => r,
            r = up => r,
        };
        if matches!(end, Ok(TunnelEnd::ClientClosed)) {
            // Tell guacd politely; it would notice the closed socket anyway.
            let bye = async {
                let mut wr = wr;
                wr.write_all(Instruction::disconnect().encode().as_bytes())
                    .await?;
                wr.shutdown().await
            };
            let _ = timeout(Duration::from_millis(100), bye).await;
        }
        end
    }
}

/// guacd → browser: parse every instruction, batch whole ones, flush when
/// guacd has nothing more to read right now or the batch is full.
struct GuacdDown<'a> {
    decoder: &'a mut Decoder,
    batch: &'a mut Batch,
    max_message: usize,
    rtt: &'a RoundTrip,
    /// The status of the last `error` instruction guacd sent.
    last_error: Option<Status>,
}

impl GuacdDown<'_> {
    async fn run<R, K>(
        mut self,
        rd: &mut R,
        out: &mut ToBrowser<'_, K>,
        pongs: &mut mpsc::Receiver<String>,
        upstream_timeout: Duration,
    ) -> Result<TunnelEnd, TunnelError>
    where
        R: AsyncRead + Unpin,
        K: Sink<WsMessage> + Unpin,
    {
        // What guacd sent along with `ready` is in the decoder already.
        self.feed(&[], out).await?;
        out.flush(self.batch).await?;
        let mut small = [0u8; IDLE_READ];
        let mut burst: Vec<u8> = Vec::new();
        loop {
            let n = tokio::select! {
                biased;
                Some(pong) = pongs.recv() => {
                    self.batch.push(&pong);
                    out.flush(self.batch).await?;
                    continue;
                }
                r = timeout(upstream_timeout, rd.read(&mut small)) => match r {
                    Err(_) => return Err(TunnelError::UpstreamTimeout { step: "relay" }),
                    Ok(r) => r.map_err(TunnelError::UpstreamIo)?,
                },
            };
            if n == 0 {
                return self.end_of_stream();
            }
            self.feed(&small[..n], out).await?;
            if n == small.len() {
                // A burst: read on while guacd's bytes are already there,
                // into a buffer that lives only as long as the burst.
                burst.reserve(BURST_READ);
                loop {
                    burst.clear();
                    match rd.read_buf(&mut burst).now_or_never() {
                        None => break,
                        Some(Ok(0)) => {
                            out.flush(self.batch).await?;
                            return self.end_of_stream();
                        }
                        Some(Ok(_)) => {
                            // `feed` may await the WebSocket, so the burst
                            // buffer cannot be borrowed across it.
                            let chunk = std::mem::take(&mut burst);
                            self.feed(&chunk, out).await?;
                            burst = chunk;
                        }
                        Some(Err(e)) => return Err(TunnelError::UpstreamIo(e)),
                    }
                }
                burst = Vec::new();
            }
            out.flush(self.batch).await?;
        }
    }

    /// Parses `bytes` and batches the whole instructions, sending the batch
    /// whenever the next instruction would overfill it.
    async fn feed<K: Sink<WsMessage> + Unpin>(
        &mut self,
        bytes: &[u8],
        out: &mut ToBrowser<'_, K>,
    ) -> Result<(), TunnelError> {
        self.decoder
            .push(bytes)
            .map_err(TunnelError::UpstreamProtocol)?;
        loop {
            let raw = match self.decoder.next_raw() {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Whole instructions before the fault still go out.
                    out.flush(self.batch).await?;
                    return Err(TunnelError::UpstreamProtocol(e));
                }
            };
            let text = raw.as_str();
            if !self.batch.text.is_empty() && self.batch.text.len() + text.len() > self.max_message
            {
                out.flush(self.batch).await?;
            }
            if self.batch.text.is_empty() {
                self.batch
                    .text
                    .reserve(self.max_message.min(bytes.len().max(text.len())));
            }
            self.batch.text.push_str(text);
            self.batch.instructions += 1;
            match raw.opcode() {
                "sync" => {
                    self.batch.frames += 1;
                    self.rtt.sent(raw.args().next());
                }
                "error" => {
                    let status = raw
                        .args()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .and_then(Status::from_code)
                        .unwrap_or(Status::UpstreamError);
                    self.last_error = Some(status);
                }
                _ => {}
            }
        }
    }

    fn end_of_stream(&self) -> Result<TunnelEnd, TunnelError> {
        if self.decoder.buffered_len() != 0 {
            return Err(TunnelError::UpstreamTruncated);
        }
        Ok(TunnelEnd::UpstreamClosed {
            status: self.last_error.unwrap_or(Status::Success),
        })
    }
}
