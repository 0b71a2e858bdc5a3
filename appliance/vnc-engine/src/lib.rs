//! The appliance's built-in VNC engine: it speaks RFB to a VNC server
//! (through the sans-IO client of `daas-rfb`) and Guacamole drawing
//! instructions to the browser (guacamole-common-js), in place of guacd's
//! VNC support. The tunnel (`daas-gateway`) performs the Guacamole
//! handshake with the browser, connects the server's socket and calls
//! [`run`] once per session.
//!
//! # What the browser receives
//!
//! After the RFB handshake: `size` of the default layer 0 and `name`, then
//! one frame per server update (or per batch of coalesced updates), each
//! ending with `sync,<ms timestamp>,<updates>`. Within a frame:
//!
//! - `copy` for CopyRect (scrolling and moved windows) and `rect` + `cfill`
//!   for solid areas, replayed in server order; then `copy` for content the
//!   engine finds moved up or down inside a damaged area (scrolling the
//!   server sent as pixels), found by row hashes against a copy of what the
//!   browser shows (the "shadow", one `u32` per pixel: a session holds two
//!   screen-sized buffers, the RFB framebuffer and the shadow);
//! - `img` + `blob`s + `end` for the remaining damage, read from the newest
//!   framebuffer: **PNG** for text and user-interface content (indexed
//!   1/2/4/8-bit when it has at most 256 colours, else RGB; fast deflate),
//!   **JPEG** for photographic content and for content that changes many
//!   times per second (only if the browser listed `image/jpeg`). A large
//!   area is classified in 64 × 64 tiles and sent as a few regions: solid
//!   runs as fills, the rest as one image per kind;
//! - `cursor` after drawing the cursor image into buffer layer -1.
//!
//! Server clipboard text becomes a `clipboard` stream (`text/plain`, UTF-8).
//!
//! # Encodings asked of the server
//!
//! Hextile first, then ZRLE (zlib level 1), CopyRect, Raw and the
//! Cursor, (Extended)DesktopSize, LastRect and Extended Clipboard
//! pseudo-encodings. Hextile leads because the server's time is what the
//! user waits for: TigerVNC needs about 400 ms to ZRLE-encode a
//! full-screen photo and about 100 ms to Hextile-encode it, and the bytes
//! between the server and the engine (same node or LAN) cost less.
//! Images of more than 256 × 256 pixels per frame are encoded on a
//! blocking thread (`spawn_blocking`), not on the runtime's.
//!
//! # Flow control
//!
//! At most [`EngineConfig::max_frames_in_flight`] frames are unacknowledged
//! (the browser answers each `sync` with its timestamp once drawn). While
//! the browser is behind, the engine keeps reading server updates into its
//! framebuffer and only accumulates damage (a bounded list of rectangles
//! and of replayable operations); the next frame then carries the newest
//! pixels once. Memory therefore stays bounded by the framebuffer plus a
//! few frames whatever the browser's speed, and the browser never draws
//! stale frames. Timestamps strictly increase, so every frame is answered.
//!
//! # Input
//!
//! `mouse` → PointerEvent (the Guacamole button mask is RFB's), `key` →
//! KeyEvent (both use X11 keysyms), `size` → SetDesktopSize (debounced,
//! where the server supports ExtendedDesktopSize; also once at the start
//! to match the browser, as guacd 1.6 does), `clipboard` + `blob`s + `end`
//! (text types only) → the server's clipboard (UTF-8 through the Extended
//! Clipboard when the server has it, else Latin-1), each blob answered with
//! `ack`, `disconnect` → the session ends.
//!
//! # Failures
//!
//! [`run`] never panics; every size the server sends is checked by
//! `daas-rfb` and again here before use. Errors are [`EngineError`]s whose
//! [`EngineError::status`] is the Guacamole status the tunnel reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use daas_guacamole::{Instruction, Status};
use daas_rfb::RfbError;
use tokio::io::{AsyncRead, AsyncWrite};

mod display;
mod encode;
mod geom;
mod guac;
mod session;

pub use encode::EncodeError;

/// What the browser told the tunnel about its display (`GUAC_WIDTH`,
/// `GUAC_HEIGHT`, `GUAC_DPI`, `GUAC_TIMEZONE`, `GUAC_IMAGE`, `GUAC_AUDIO`,
/// `GUAC_VIDEO`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisplayParams {
    /// Browser display width in pixels (0: unknown).
    pub width: u32,
    /// Browser display height in pixels (0: unknown).
    pub height: u32,
    /// Browser display resolution.
    pub dpi: u32,
    /// The browser's time zone, if sent.
    pub timezone: Option<String>,
    /// Image mimetypes the browser accepts, e.g. `image/jpeg`.
    pub image: Vec<String>,
    /// Audio mimetypes the browser accepts (unused: VNC has no audio).
    pub audio: Vec<String>,
    /// Video mimetypes the browser accepts (unused).
    pub video: Vec<String>,
}

/// How the engine connects and encodes.
#[derive(Clone)]
pub struct EngineConfig {
    /// Password for VNC Authentication (only the first 8 bytes count).
    pub password: Option<String>,
    /// JPEG quality, 1–100. Default 80.
    pub jpeg_quality: u8,
    /// Most frames sent and not yet acknowledged by a `sync`. Default 3.
    pub max_frames_in_flight: u32,
    /// Bounds on what the VNC server may send.
    pub rfb_limits: daas_rfb::Limits,
    /// Time allowed for the RFB handshake. Default 15 s.
    pub connect_timeout: Duration,
    /// The desktop name shown in the browser; empty: the server's.
    pub name: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            password: None,
            jpeg_quality: 80,
            max_frames_in_flight: 3,
            rfb_limits: daas_rfb::Limits::default(),
            connect_timeout: Duration::from_secs(15),
            name: String::new(),
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("jpeg_quality", &self.jpeg_quality)
            .field("max_frames_in_flight", &self.max_frames_in_flight)
            .field("rfb_limits", &self.rfb_limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("name", &self.name)
            .finish()
    }
}

/// Why a session ended abnormally. [`EngineError::status`] gives the
/// Guacamole status for the `error` instruction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The server closed or reset the connection before the RFB handshake
    /// completed.
    #[error("the VNC server closed the connection during the handshake")]
    Unavailable(#[source] Option<std::io::Error>),
    /// The server refused the connection and said why.
    #[error("the VNC server refused the connection: {reason}")]
    Refused {
        /// The server's reason.
        reason: String,
    },
    /// The RFB handshake took longer than [`EngineConfig::connect_timeout`].
    #[error("the VNC server did not complete the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// VNC authentication failed, or the server wants a password and none
    /// is configured.
    #[error("VNC authentication failed")]
    AuthFailed(#[source] RfbError),
    /// The server sent something invalid or beyond the limits.
    #[error("the VNC server sent invalid data")]
    Protocol(#[source] RfbError),
    /// Reading from or writing to the server failed after the handshake.
    #[error("the connection to the VNC server failed")]
    ServerIo(#[source] std::io::Error),
    /// The server hung up after the handshake, between messages.
    #[error("the VNC server closed the session")]
    ServerClosed,
    /// Encoding an image failed (a bug).
    #[error("encoding an image failed")]
    Encode(#[source] EncodeError),
}

impl EngineError {
    /// The Guacamole status to report to the browser.
    pub fn status(&self) -> Status {
        match self {
            EngineError::Unavailable(_) | EngineError::Refused { .. } => {
                Status::UpstreamUnavailable
            }
            EngineError::HandshakeTimeout(_) => Status::UpstreamTimeout,
            EngineError::AuthFailed(_) | EngineError::Protocol(_) | EngineError::ServerIo(_) => {
                Status::UpstreamError
            }
            EngineError::ServerClosed => Status::SessionClosed,
            EngineError::Encode(_) => Status::ServerError,
        }
    }
}

/// Counters of one session, shared with the tunnel for metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Frames sent (each ends with a `sync`).
    pub frames: AtomicU64,
    /// Bytes of Guacamole instructions sent to the client.
    pub bytes_out: AtomicU64,
    /// Guacamole instructions sent to the client.
    pub instructions_out: AtomicU64,
    /// Time spent composing and encoding frames, in microseconds.
    pub encode_micros: AtomicU64,
    /// PNG images sent.
    pub png_count: AtomicU64,
    /// JPEG images sent.
    pub jpeg_count: AtomicU64,
    /// `copy` instructions sent.
    pub copy_count: AtomicU64,
    /// Solid rectangles sent (`rect` for a `cfill`).
    pub fill_count: AtomicU64,
    /// Round trip of the last acknowledged frame, from its `sync` being
    /// queued to the browser's answer, in microseconds.
    pub last_rtt_micros: AtomicU64,
    /// Bytes received from the VNC server.
    pub bytes_in: AtomicU64,
    /// Framebuffer updates received from the VNC server.
    pub server_updates: AtomicU64,
    /// Frames sent and not yet acknowledged, right now.
    pub frames_in_flight: AtomicU64,
    /// Most frames ever in flight at once.
    pub max_frames_in_flight_seen: AtomicU64,
}

impl EngineStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs one session. `server` is the established byte stream to the VNC
/// server (TCP or unix socket; the caller connects).
///
/// The engine writes whole Guacamole instructions, batched, as `Vec<u8>`
/// chunks into `to_client` (bounded: backpressure) and reads the client's
/// instructions (already parsed and validated by the tunnel; internal and
/// ping ones never arrive here) from `from_client`.
///
/// Returns `Ok(())` when the client side ends: `from_client` closes,
/// `to_client`'s receiver is dropped, or the client sends `disconnect`.
/// The server hanging up is [`EngineError::ServerClosed`] (status
/// SESSION_CLOSED), every other failure another [`EngineError`]. Never
/// panics.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    server: S,
    params: DisplayParams,
    cfg: EngineConfig,
    to_client: tokio::sync::mpsc::Sender<Vec<u8>>,
    from_client: tokio::sync::mpsc::Receiver<Instruction>,
    stats: Arc<EngineStats>,
) -> Result<(), EngineError> {
    use tracing::Instrument as _;
    session::run(server, params, cfg, to_client, from_client, stats)
        .instrument(tracing::debug_span!("vnc_engine"))
        .await
}
