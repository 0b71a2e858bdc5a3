//! Errors: [`RfbError`] for what the server sent, [`RequestError`] for a
//! request the client cannot make.

use crate::event::Rect;

/// The server's stream cannot be accepted. After any of these the client
/// is finished: close the connection.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    /// The first 12 bytes are not an RFB ProtocolVersion message.
    #[error("the server did not send an RFB protocol version (got {got:?})")]
    NotRfb {
        /// What arrived, lossily decoded.
        got: String,
    },
    /// The server only speaks a version older than 3.3.
    #[error("the server speaks RFB {major}.{minor}, older than 3.3")]
    UnsupportedVersion {
        /// Major version announced.
        major: u16,
        /// Minor version announced.
        minor: u16,
    },
    /// The server refused the connection and said why.
    #[error("the server refused the connection: {reason}")]
    ConnectionRefused {
        /// The server's reason.
        reason: String,
    },
    /// None of the server's security types is one we can use.
    #[error("no usable security type: the server offers {offered:?}, we support None (1) and VNC Authentication (2) with a password")]
    NoCommonSecurityType {
        /// The server's types.
        offered: Vec<u32>,
    },
    /// The server requires VNC Authentication and no password is set.
    #[error("the server requires VNC authentication and no password is configured")]
    PasswordRequired,
    /// The SecurityResult was a failure.
    #[error("authentication failed: {}", reason.as_deref().unwrap_or("no reason given"))]
    AuthFailed {
        /// The server's reason (RFB 3.8 only).
        reason: Option<String>,
    },
    /// A length the server sent is beyond its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The framebuffer size is beyond the limits.
    #[error("framebuffer of {width}x{height} exceeds the limit")]
    FramebufferTooLarge {
        /// Width asked for.
        width: u16,
        /// Height asked for.
        height: u16,
    },
    /// A rectangle does not lie inside the framebuffer.
    #[error("rectangle {rect:?} (encoding {encoding}) is outside the {fb_width}x{fb_height} framebuffer")]
    RectOutsideFramebuffer {
        /// The rectangle.
        rect: Rect,
        /// Its encoding.
        encoding: i32,
        /// Framebuffer width.
        fb_width: u16,
        /// Framebuffer height.
        fb_height: u16,
    },
    /// A CopyRect source does not lie inside the framebuffer.
    #[error("CopyRect source ({src_x}, {src_y}) for {rect:?} is outside the framebuffer")]
    CopySourceOutside {
        /// Source left edge.
        src_x: u16,
        /// Source top edge.
        src_y: u16,
        /// Destination.
        rect: Rect,
    },
    /// An update holds more rectangles than allowed.
    #[error("more than {max} rectangles in one framebuffer update")]
    TooManyRects {
        /// The limit.
        max: u32,
    },
    /// A cursor is larger than allowed.
    #[error("cursor of {width}x{height} exceeds the limit")]
    CursorTooLarge {
        /// Cursor width.
        width: u16,
        /// Cursor height.
        height: u16,
    },
    /// A message type this client does not know (or did not enable).
    #[error("unknown server message type {0}")]
    UnknownMessageType(u8),
    /// A rectangle encoding this client cannot decode.
    #[error("unknown encoding {0} in a framebuffer update")]
    UnknownEncoding(i32),
    /// Hextile data is inconsistent.
    #[error("bad Hextile data: {0}")]
    BadHextile(&'static str),
    /// ZRLE data is inconsistent (truncated, trailing, out-of-range).
    #[error("bad ZRLE data: {0}")]
    BadZrle(&'static str),
    /// zlib refused the compressed data.
    #[error("corrupt zlib data")]
    Zlib(#[source] flate2::DecompressError),
    /// An extended clipboard message is malformed.
    #[error("bad extended clipboard message: {0}")]
    BadClipboard(&'static str),
    /// The stream ended in the middle of a message.
    #[error("the server closed the connection in the middle of a message")]
    UnexpectedEof,
    /// An earlier error already ended this client.
    #[error("the RFB client already failed")]
    Failed,
}

/// A request the client cannot send as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The handshake is not complete yet.
    #[error("the RFB handshake is not complete")]
    NotConnected,
    /// The server has not shown ExtendedDesktopSize support.
    #[error("the server does not support SetDesktopSize")]
    ResizeUnsupported,
    /// The size is zero or beyond the configured limits.
    #[error("invalid desktop size {width}x{height}")]
    InvalidSize {
        /// Width asked for.
        width: u16,
        /// Height asked for.
        height: u16,
    },
    /// The clipboard text does not fit one message.
    #[error("clipboard text too long to send")]
    TextTooLong,
}
