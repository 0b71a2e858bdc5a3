//! Client configuration: credentials, encodings and limits.

use std::fmt;

/// An encoding or pseudo-encoding the client can announce in SetEncodings.
///
/// Only what this crate can decode is listed, so a configuration can never
/// invite the server to send something the client would reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Raw (0). Servers may always send it, listed or not.
    Raw,
    /// CopyRect (1).
    CopyRect,
    /// Hextile (5).
    Hextile,
    /// ZRLE (16).
    Zrle,
    /// Cursor pseudo-encoding (-239): the server sends the cursor shape.
    Cursor,
    /// DesktopSize pseudo-encoding (-223).
    DesktopSize,
    /// ExtendedDesktopSize pseudo-encoding (-308): screen layout and
    /// client-initiated resizing.
    ExtendedDesktopSize,
    /// LastRect pseudo-encoding (-224).
    LastRect,
    /// Extended Clipboard pseudo-encoding (0xC0A1E5CE): UTF-8 clipboard.
    ExtendedClipboard,
    /// Compression level pseudo-encoding (-256 + level, level 0..=9): the
    /// zlib level a server uses for ZRLE. Levels above 9 are sent as 9.
    CompressLevel(u8),
}

impl Encoding {
    /// The wire number (an `S32`).
    pub fn code(self) -> i32 {
        match self {
            Encoding::Raw => ENC_RAW,
            Encoding::CopyRect => ENC_COPY_RECT,
            Encoding::Hextile => ENC_HEXTILE,
            Encoding::Zrle => ENC_ZRLE,
            Encoding::Cursor => ENC_CURSOR,
            Encoding::DesktopSize => ENC_DESKTOP_SIZE,
            Encoding::ExtendedDesktopSize => ENC_EXTENDED_DESKTOP_SIZE,
            Encoding::LastRect => ENC_LAST_RECT,
            Encoding::ExtendedClipboard => ENC_EXTENDED_CLIPBOARD,
            Encoding::CompressLevel(level) => -256 + i32::from(level.min(9)),
        }
    }

    /// The default preference list: ZRLE, Hextile, CopyRect, Raw, then the
    /// pseudo-encodings this crate understands.
    pub fn defaults() -> Vec<Encoding> {
        vec![
            Encoding::Zrle,
            Encoding::Hextile,
            Encoding::CopyRect,
            Encoding::Raw,
            Encoding::Cursor,
            Encoding::ExtendedDesktopSize,
            Encoding::DesktopSize,
            Encoding::LastRect,
            Encoding::ExtendedClipboard,
        ]
    }
}

pub(crate) const ENC_RAW: i32 = 0;
pub(crate) const ENC_COPY_RECT: i32 = 1;
pub(crate) const ENC_HEXTILE: i32 = 5;
pub(crate) const ENC_ZRLE: i32 = 16;
pub(crate) const ENC_CURSOR: i32 = -239;
pub(crate) const ENC_DESKTOP_SIZE: i32 = -223;
pub(crate) const ENC_LAST_RECT: i32 = -224;
pub(crate) const ENC_EXTENDED_DESKTOP_SIZE: i32 = -308;
/// 0xC0A1E5CE read as an `S32`.
pub(crate) const ENC_EXTENDED_CLIPBOARD: i32 = i32::from_be_bytes([0xC0, 0xA1, 0xE5, 0xCE]);

/// Bounds on everything a server can make the client allocate or compute.
///
/// A server that exceeds one gets a typed [`crate::RfbError`]; nothing it
/// sends can make the client allocate more than the framebuffer, one cut
/// text and a few small buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest framebuffer width accepted (ServerInit, DesktopSize,
    /// ExtendedDesktopSize). Default 8192.
    pub max_width: u16,
    /// Largest framebuffer height accepted. Default 8192.
    pub max_height: u16,
    /// Most rectangles processed in one FramebufferUpdate (LastRect
    /// included). Default 65535, the wire maximum; lower it to bound the
    /// work one update may cost.
    pub max_rects_per_update: u32,
    /// Longest clipboard text, in bytes, for ServerCutText and for the
    /// extended clipboard (compressed message and decompressed text alike).
    /// Default 8 MiB.
    pub max_cut_text: u32,
    /// Longest desktop name and failure reason string. Default 4096.
    pub max_name_len: u32,
    /// Largest cursor width and height. Default 256.
    pub max_cursor_size: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_width: 8192,
            max_height: 8192,
            max_rects_per_update: 65535,
            max_cut_text: 8 * 1024 * 1024,
            max_name_len: 4096,
            max_cursor_size: 256,
        }
    }
}

/// How the client connects.
#[derive(Clone)]
pub struct Config {
    /// ClientInit shared flag: `true` leaves other viewers connected.
    /// Default `true`.
    pub shared: bool,
    /// Password for VNC Authentication; `None` allows only security type
    /// None. Only the first 8 bytes count (RFB truncates).
    pub password: Option<String>,
    /// SetEncodings list, most preferred first. Default
    /// [`Encoding::defaults`].
    pub encodings: Vec<Encoding>,
    /// Bounds on what the server may send.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shared: true,
            password: None,
            encodings: Encoding::defaults(),
            limits: Limits::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("shared", &self.shared)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("encodings", &self.encodings)
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_registry() {
        let table = [
            (Encoding::Raw, 0),
            (Encoding::CopyRect, 1),
            (Encoding::Hextile, 5),
            (Encoding::Zrle, 16),
            (Encoding::Cursor, -239),
            (Encoding::DesktopSize, -223),
            (Encoding::ExtendedDesktopSize, -308),
            (Encoding::LastRect, -224),
            (Encoding::ExtendedClipboard, 0xC0A1_E5CEu32 as i32),
            (Encoding::CompressLevel(0), -256),
            (Encoding::CompressLevel(9), -247),
            (Encoding::CompressLevel(200), -247),
        ];
        for (enc, code) in table {
            assert_eq!(enc.code(), code, "{enc:?}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Config {
            password: Some("hunter2".into()),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
