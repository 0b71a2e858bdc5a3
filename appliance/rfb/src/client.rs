//! The client state machine: [`Client`].

use std::collections::VecDeque;

use flate2::Decompress;

use crate::auth::vnc_auth_response;
use crate::clipboard::{self, ExtMessage};
use crate::config::{
    Config, Encoding, ENC_COPY_RECT, ENC_CURSOR, ENC_DESKTOP_SIZE, ENC_EXTENDED_DESKTOP_SIZE,
    ENC_HEXTILE, ENC_LAST_RECT, ENC_RAW, ENC_ZRLE,
};
use crate::event::{DesktopSizeStatus, Event, Rect, Screen};
use crate::framebuffer::Framebuffer;
use crate::hextile::HextileDecoder;
use crate::wire::{PutExt, Reader};
use crate::zrle::{self, ZrleDecoder};
use crate::{RequestError, RfbError};

/// The protocol version agreed with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// RFB 3.3: the server picks the security type.
    V3_3,
    /// RFB 3.7: the client picks; no failure reason after a failed login.
    V3_7,
    /// RFB 3.8: like 3.7, with a SecurityResult (and reason) after None too.
    V3_8,
}

impl ProtocolVersion {
    fn wire(self) -> &'static [u8; 12] {
        match self {
            ProtocolVersion::V3_3 => b"RFB 003.003\n",
            ProtocolVersion::V3_7 => b"RFB 003.007\n",
            ProtocolVersion::V3_8 => b"RFB 003.008\n",
        }
    }
}

const SECURITY_NONE: u32 = 1;
const SECURITY_VNC_AUTH: u32 = 2;

// Server → client message types.
const MSG_FRAMEBUFFER_UPDATE: u8 = 0;
const MSG_SET_COLOUR_MAP_ENTRIES: u8 = 1;
const MSG_BELL: u8 = 2;
const MSG_SERVER_CUT_TEXT: u8 = 3;

// Client → server message types.
const MSG_SET_PIXEL_FORMAT: u8 = 0;
const MSG_SET_ENCODINGS: u8 = 2;
const MSG_FRAMEBUFFER_UPDATE_REQUEST: u8 = 3;
const MSG_KEY_EVENT: u8 = 4;
const MSG_POINTER_EVENT: u8 = 5;
const MSG_SET_DESKTOP_SIZE: u8 = 251;

/// ExtendedDesktopSize reason: the change was requested by this client.
const REASON_THIS_CLIENT: u16 = 1;

/// Where the handshake or the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    SecurityTypes,
    SecurityType33,
    Challenge,
    SecurityResult,
    ServerInit,
    Normal,
    Failed,
}

/// The body of the rectangle being decoded.
#[derive(Debug)]
enum RectDecoder {
    Raw(RawDecoder),
    CopyRect(Rect),
    Hextile(HextileDecoder),
    ZrleLength(Rect),
    Zrle(ZrleDecoder),
    Cursor {
        hotspot_x: u16,
        hotspot_y: u16,
        width: u16,
        height: u16,
    },
    ExtendedDesktopSize {
        reason: u16,
        status: u16,
        width: u16,
        height: u16,
    },
}

/// Raw pixels, applied as they arrive; one event when the rectangle is
/// complete (a `Fill` if every pixel had the same colour).
#[derive(Debug)]
struct RawDecoder {
    rect: Rect,
    done: usize,
    first: Option<u32>,
    uniform: bool,
}

impl RawDecoder {
    fn step(&mut self, input: &[u8], fb: &mut Framebuffer) -> (usize, Option<Vec<Event>>) {
        let w = usize::from(self.rect.width);
        let total = self.rect.area();
        let mut used = 0;
        while self.done < total && input.len() - used >= 4 {
            let row = self.done / w;
            let col = self.done % w;
            let n = (w - col).min((input.len() - used) / 4);
            // row < height and col < width, both u16.
            let x = self.rect.x + u16::try_from(col).unwrap_or(0);
            let y = self.rect.y + u16::try_from(row).unwrap_or(0);
            // n <= width - col, a u16.
            let dst = fb.row_mut(x, y, u16::try_from(n).unwrap_or(0));
            let mut r = Reader::new(&input[used..used + n * 4]);
            for p in dst.iter_mut() {
                *p = r.pixel().unwrap_or(0);
                match self.first {
                    None => self.first = Some(*p),
                    Some(c) if self.uniform && c != *p => self.uniform = false,
                    Some(_) => {}
                }
            }
            used += n * 4;
            self.done += n;
        }
        if self.done < total {
            return (used, None);
        }
        let events = match self.first {
            None => Vec::new(),
            Some(color) if self.uniform => vec![Event::Fill {
                rect: self.rect,
                color,
            }],
            Some(_) => vec![Event::Pixels { rect: self.rect }],
        };
        (used, Some(events))
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes fed to the client.
    pub bytes_received: u64,
    /// FramebufferUpdates completed.
    pub updates: u64,
    /// Raw rectangles.
    pub raw_rects: u64,
    /// CopyRect rectangles.
    pub copy_rects: u64,
    /// Hextile rectangles.
    pub hextile_rects: u64,
    /// ZRLE rectangles.
    pub zrle_rects: u64,
}

/// Progress through one FramebufferUpdate.
#[derive(Debug, Clone, Copy)]
struct Update {
    remaining: u16,
    seen: u32,
}

/// Extended clipboard state.
#[derive(Debug, Default)]
struct Clip {
    /// The server sent its caps: extended messages are in use.
    enabled: bool,
    server_flags: u32,
    server_text_max: u32,
    /// Our clipboard text, kept to answer the server's requests.
    local: Option<String>,
}

/// An RFB client connection, without IO.
///
/// See the [crate documentation](crate) for how an IO pump drives it.
pub struct Client {
    config: Config,
    phase: Phase,
    version: Option<ProtocolVersion>,
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    events: VecDeque<Event>,
    fb: Framebuffer,
    name: String,
    zlib: Option<Decompress>,
    update: Option<Update>,
    rect: Option<RectDecoder>,
    screens: Vec<Screen>,
    can_resize: bool,
    clip: Clip,
    stats: Stats,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("phase", &self.phase)
            .field("version", &self.version)
            .field("width", &self.fb.width())
            .field("height", &self.fb.height())
            .field("buffered_input", &(self.input.len() - self.pos))
            .field("buffered_output", &self.output.len())
            .finish_non_exhaustive()
    }
}

/// `?` for "need more bytes": the step made no progress.
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(false),
        }
    };
}

impl Client {
    /// A client waiting for the server's ProtocolVersion. Nothing is sent
    /// until the server speaks first.
    pub fn new(config: Config) -> Self {
        Client {
            config,
            phase: Phase::Version,
            version: None,
            input: Vec::new(),
            pos: 0,
            output: Vec::new(),
            events: VecDeque::new(),
            fb: Framebuffer::default(),
            name: String::new(),
            zlib: None,
            update: None,
            rect: None,
            screens: Vec::new(),
            can_resize: false,
            clip: Clip::default(),
            stats: Stats::default(),
        }
    }

    // ---- driving -------------------------------------------------------

    /// Hands bytes read from the server to the client. Nothing is parsed
    /// until [`Client::next_event`] is called.
    pub fn feed(&mut self, data: &[u8]) {
        if self.phase == Phase::Failed {
            return;
        }
        // Drop consumed bytes once they outweigh what is left, so copying
        // stays linear overall.
        if self.pos > 0 && self.pos >= self.input.len() - self.pos {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(data);
        self.stats.bytes_received += u64::try_from(data.len()).unwrap_or(u64::MAX);
    }

    /// Parses buffered input until one event is ready and returns it, or
    /// `Ok(None)` when more input is needed. Decoding is lazy: the
    /// framebuffer reflects exactly the events returned so far (plus, at
    /// most, a prefix of a Raw rectangle still arriving), so handle each
    /// event before asking for the next one.
    ///
    /// May append to the output buffer (handshake replies, clipboard
    /// answers): drain it with [`Client::take_output`] afterwards.
    ///
    /// An error is final: every later call returns [`RfbError::Failed`].
    pub fn next_event(&mut self) -> Result<Option<Event>, RfbError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if self.phase == Phase::Failed {
                return Err(RfbError::Failed);
            }
            match self.step() {
                Ok(true) => continue,
                Ok(false) => return Ok(None),
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
        }
    }

    /// Call when the server closed the connection: an error if it stopped
    /// in the middle of a message (or before the handshake finished).
    pub fn end_of_stream(&self) -> Result<(), RfbError> {
        let idle = self.phase == Phase::Normal
            && self.pos == self.input.len()
            && self.update.is_none()
            && self.rect.is_none();
        if idle || self.phase == Phase::Failed {
            Ok(())
        } else {
            Err(RfbError::UnexpectedEof)
        }
    }

    /// Takes the bytes to send to the server (may be empty).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// True when [`Client::take_output`] would return bytes.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    // ---- state ---------------------------------------------------------

    /// True once ServerInit has been processed (after [`Event::Connected`]).
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Normal
    }

    /// The protocol version in use, once agreed.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The client's copy of the screen.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.fb
    }

    /// Framebuffer width (0 before ServerInit).
    pub fn width(&self) -> u16 {
        self.fb.width()
    }

    /// Framebuffer height (0 before ServerInit).
    pub fn height(&self) -> u16 {
        self.fb.height()
    }

    /// All framebuffer pixels, row by row, `0x00RRGGBB`.
    pub fn pixels(&self) -> &[u32] {
        self.fb.pixels()
    }

    /// The desktop name from ServerInit.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The screen layout from the last ExtendedDesktopSize (empty if the
    /// server never sent one).
    pub fn screens(&self) -> &[Screen] {
        &self.screens
    }

    /// True once the server has sent an ExtendedDesktopSize rectangle, which
    /// means it accepts SetDesktopSize.
    pub fn can_resize(&self) -> bool {
        self.can_resize
    }

    /// Counters: bytes received, updates and rectangles per encoding.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// True once the server has announced Extended Clipboard support:
    /// clipboard text then travels as UTF-8.
    pub fn has_extended_clipboard(&self) -> bool {
        self.clip.enabled
    }

    // ---- requests ------------------------------------------------------

    fn connected(&self) -> Result<(), RequestError> {
        if self.phase == Phase::Normal {
            Ok(())
        } else {
            Err(RequestError::NotConnected)
        }
    }

    /// FramebufferUpdateRequest for `rect` (clipped to the framebuffer).
    /// `incremental: false` asks for the full content of the area.
    pub fn request_update(&mut self, incremental: bool, rect: Rect) -> Result<(), RequestError> {
        self.connected()?;
        let r = self.fb.clip(rect);
        self.output.put_u8(MSG_FRAMEBUFFER_UPDATE_REQUEST);
        self.output.put_u8(u8::from(incremental));
        self.output.put_u16(r.x);
        self.output.put_u16(r.y);
        self.output.put_u16(r.width);
        self.output.put_u16(r.height);
        Ok(())
    }

    /// FramebufferUpdateRequest for the whole framebuffer.
    pub fn request_full_update(&mut self, incremental: bool) -> Result<(), RequestError> {
        let all = Rect::new(0, 0, self.fb.width(), self.fb.height());
        self.request_update(incremental, all)
    }

    /// PointerEvent: `buttons` bit 0 is the left button, 1 middle, 2 right,
    /// 3/4 wheel up/down, 5/6 wheel left/right. The position is clamped to
    /// the framebuffer.
    pub fn pointer(&mut self, buttons: u8, x: i32, y: i32) -> Result<(), RequestError> {
        self.connected()?;
        let clamp = |v: i32, size: u16| {
            let max = i32::from(size.saturating_sub(1));
            u16::try_from(v.clamp(0, max)).unwrap_or(0)
        };
        self.output.put_u8(MSG_POINTER_EVENT);
        self.output.put_u8(buttons);
        self.output.put_u16(clamp(x, self.fb.width()));
        self.output.put_u16(clamp(y, self.fb.height()));
        Ok(())
    }

    /// KeyEvent for an X11 keysym (`down`: pressed, else released).
    pub fn key(&mut self, down: bool, keysym: u32) -> Result<(), RequestError> {
        self.connected()?;
        self.output.put_u8(MSG_KEY_EVENT);
        self.output.put_u8(u8::from(down));
        self.output.put_u16(0);
        self.output.put_u32(keysym);
        Ok(())
    }

    /// Sets the server's clipboard to `text`.
    ///
    /// With the Extended Clipboard the text goes as UTF-8: provided at once
    /// if it fits the server's announced size, otherwise announced
    /// (notify) and provided when the server asks. Without it, the text
    /// goes as Latin-1 ClientCutText: characters outside Latin-1 become
    /// `?`, and line ends become `\n`.
    pub fn send_clipboard(&mut self, text: &str) -> Result<(), RequestError> {
        self.connected()?;
        let flags = self.clip.server_flags;
        if self.clip.enabled && flags & (clipboard::ACTION_PROVIDE | clipboard::ACTION_NOTIFY) != 0
        {
            let payload = clipboard::provide_payload(text).ok_or(RequestError::TextTooLong)?;
            // The size the server's limit applies to: text with CRLF and NUL.
            let wire_len = clipboard::wire_text(text).len();
            let fits =
                u64::try_from(wire_len).unwrap_or(u64::MAX) <= u64::from(self.clip.server_text_max);
            if flags & clipboard::ACTION_PROVIDE != 0
                && (fits || flags & clipboard::ACTION_NOTIFY == 0)
            {
                clipboard::put_provide(&mut self.output, &payload);
            } else {
                clipboard::put_action(
                    &mut self.output,
                    clipboard::ACTION_NOTIFY,
                    clipboard::FORMAT_TEXT,
                );
            }
            self.clip.local = Some(text.to_owned());
            return Ok(());
        }
        let bytes = clipboard::string_to_latin1(text);
        if u32::try_from(bytes.len()).is_err() {
            return Err(RequestError::TextTooLong);
        }
        clipboard::put_latin1(&mut self.output, &bytes);
        Ok(())
    }

    /// SetDesktopSize: asks the server for a `width` × `height` framebuffer
    /// with one screen covering it (keeping the id and flags of the current
    /// first screen). The answer arrives as [`Event::DesktopSizeResult`],
    /// preceded by [`Event::Resize`] on success.
    pub fn set_desktop_size(&mut self, width: u16, height: u16) -> Result<(), RequestError> {
        self.connected()?;
        if !self.can_resize {
            return Err(RequestError::ResizeUnsupported);
        }
        let limits = &self.config.limits;
        if width == 0 || height == 0 || width > limits.max_width || height > limits.max_height {
            return Err(RequestError::InvalidSize { width, height });
        }
        let (id, flags) = self.screens.first().map_or((0, 0), |s| (s.id, s.flags));
        self.output.put_u8(MSG_SET_DESKTOP_SIZE);
        self.output.put_u8(0);
        self.output.put_u16(width);
        self.output.put_u16(height);
        self.output.put_u8(1);
        self.output.put_u8(0);
        self.output.put_u32(id);
        self.output.put_u16(0);
        self.output.put_u16(0);
        self.output.put_u16(width);
        self.output.put_u16(height);
        self.output.put_u32(flags);
        Ok(())
    }

    // ---- parsing -------------------------------------------------------

    fn fail(&mut self) {
        self.phase = Phase::Failed;
        self.input = Vec::new();
        self.pos = 0;
        self.rect = None;
        self.update = None;
    }

    /// One unit of progress. `Ok(false)`: more input is needed.
    fn step(&mut self) -> Result<bool, RfbError> {
        match self.phase {
            Phase::Version => self.step_version(),
            Phase::SecurityTypes => self.step_security_types(),
            Phase::SecurityType33 => self.step_security_33(),
            Phase::Challenge => self.step_challenge(),
            Phase::SecurityResult => self.step_security_result(),
            Phase::ServerInit => self.step_server_init(),
            Phase::Normal => self.step_normal(),
            Phase::Failed => Err(RfbError::Failed),
        }
    }

    fn step_version(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let bytes = need!(r.array::<12>());
        self.pos += 12;
        let (major, minor) = parse_version(&bytes).ok_or_else(|| RfbError::NotRfb {
            got: String::from_utf8_lossy(&bytes).into_owned(),
        })?;
        let version = match (major, minor) {
            (0..=2, _) => return Err(RfbError::UnsupportedVersion { major, minor }),
            (3, 0..=6) => ProtocolVersion::V3_3,
            (3, 7) => ProtocolVersion::V3_7,
            // 3.8, Apple's 3.889, RealVNC's 4.x and 5.x all accept 3.8.
            _ => ProtocolVersion::V3_8,
        };
        self.version = Some(version);
        self.output.extend_from_slice(version.wire());
        self.phase = if version == ProtocolVersion::V3_3 {
            Phase::SecurityType33
        } else {
            Phase::SecurityTypes
        };
        Ok(true)
    }

    /// Reads a U32 length and that many bytes as a (lossy UTF-8) string,
    /// checking the length against `max_name_len` before waiting for it.
    fn read_string(
        &self,
        r: &mut Reader<'_>,
        what: &'static str,
    ) -> Result<Option<String>, RfbError> {
        let Some(len) = r.u32() else { return Ok(None) };
        let max = self.config.limits.max_name_len;
        if len > max {
            return Err(RfbError::TooLong {
                what,
                len: u64::from(len),
                max: u64::from(max),
            });
        }
        let Some(bytes) = r.bytes(usize::try_from(len).unwrap_or(usize::MAX)) else {
            return Ok(None);
        };
        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn step_security_types(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let count = need!(r.u8());
        if count == 0 {
            let reason = need!(self.read_string(&mut r, "refusal reason")?);
            return Err(RfbError::ConnectionRefused { reason });
        }
        let offered: Vec<u32> = need!(r.bytes(usize::from(count)))
            .iter()
            .map(|&t| u32::from(t))
            .collect();
        self.pos += r.consumed();
        let chosen = self.choose_security(offered)?;
        // Both types are below 256.
        self.output.put_u8(u8::try_from(chosen).unwrap_or(0));
        self.after_security_choice(chosen);
        Ok(true)
    }

    fn step_security_33(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let kind = need!(r.u32());
        if kind == 0 {
            let reason = need!(self.read_string(&mut r, "refusal reason")?);
            return Err(RfbError::ConnectionRefused { reason });
        }
        self.pos += r.consumed();
        let chosen = self.choose_security(vec![kind])?;
        self.after_security_choice(chosen);
        Ok(true)
    }

    fn choose_security(&self, offered: Vec<u32>) -> Result<u32, RfbError> {
        if offered.contains(&SECURITY_NONE) {
            Ok(SECURITY_NONE)
        } else if offered.contains(&SECURITY_VNC_AUTH) {
            if self.config.password.is_some() {
                Ok(SECURITY_VNC_AUTH)
            } else {
                Err(RfbError::PasswordRequired)
            }
        } else {
            Err(RfbError::NoCommonSecurityType { offered })
        }
    }

    fn after_security_choice(&mut self, chosen: u32) {
        if chosen == SECURITY_VNC_AUTH {
            self.phase = Phase::Challenge;
        } else if self.version == Some(ProtocolVersion::V3_8) {
            self.phase = Phase::SecurityResult;
        } else {
            self.send_client_init();
        }
    }

    fn send_client_init(&mut self) {
        self.output.put_u8(u8::from(self.config.shared));
        self.phase = Phase::ServerInit;
    }

    fn step_challenge(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let challenge = need!(r.array::<16>());
        self.pos += 16;
        let password = self.config.password.as_deref().unwrap_or_default();
        let response = vnc_auth_response(password, &challenge);
        self.output.extend_from_slice(&response);
        self.phase = Phase::SecurityResult;
        Ok(true)
    }

    fn step_security_result(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let status = need!(r.u32());
        if status == 0 {
            self.pos += 4;
            self.send_client_init();
            return Ok(true);
        }
        if self.version == Some(ProtocolVersion::V3_8) {
            let reason = need!(self.read_string(&mut r, "failure reason")?);
            return Err(RfbError::AuthFailed {
                reason: Some(reason),
            });
        }
        let reason = (status == 2).then(|| "too many attempts".to_owned());
        Err(RfbError::AuthFailed { reason })
    }

    fn check_size(&self, width: u16, height: u16) -> Result<(), RfbError> {
        let l = &self.config.limits;
        if width > l.max_width || height > l.max_height {
            return Err(RfbError::FramebufferTooLarge { width, height });
        }
        Ok(())
    }

    fn step_server_init(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let width = need!(r.u16());
        let height = need!(r.u16());
        self.check_size(width, height)?;
        // The server's pixel format does not matter: we set ours below.
        need!(r.bytes(16));
        let name = need!(self.read_string(&mut r, "desktop name")?);
        self.pos += r.consumed();
        self.fb = Framebuffer::new(width, height)?;
        self.name = name.clone();
        self.send_pixel_format();
        self.send_encodings();
        self.phase = Phase::Normal;
        self.events.push_back(Event::Connected {
            width,
            height,
            name,
        });
        Ok(true)
    }

    /// 32 bits per pixel, depth 24, little-endian, true colour, 8 bits per
    /// channel at shifts 16 (red), 8 (green), 0 (blue).
    fn send_pixel_format(&mut self) {
        self.output.put_u8(MSG_SET_PIXEL_FORMAT);
        self.output.extend_from_slice(&[0, 0, 0]);
        self.output.extend_from_slice(&[32, 24, 0, 1]);
        self.output.put_u16(255);
        self.output.put_u16(255);
        self.output.put_u16(255);
        self.output.extend_from_slice(&[16, 8, 0, 0, 0, 0]);
    }

    fn send_encodings(&mut self) {
        let list: Vec<i32> = self
            .config
            .encodings
            .iter()
            .take(usize::from(u16::MAX))
            .map(|e| e.code())
            .collect();
        self.output.put_u8(MSG_SET_ENCODINGS);
        self.output.put_u8(0);
        self.output
            .put_u16(u16::try_from(list.len()).unwrap_or(u16::MAX));
        for code in list {
            self.output.put_i32(code);
        }
    }

    fn step_normal(&mut self) -> Result<bool, RfbError> {
        if self.rect.is_some() {
            return self.step_rect();
        }
        if self.update.is_some() {
            return self.step_rect_header();
        }
        let mut r = Reader::new(&self.input[self.pos..]);
        let kind = need!(r.u8());
        match kind {
            MSG_FRAMEBUFFER_UPDATE => {
                need!(r.u8());
                let count = need!(r.u16());
                self.pos += r.consumed();
                if count == 0 {
                    self.end_update();
                } else {
                    self.update = Some(Update {
                        remaining: count,
                        seen: 0,
                    });
                }
                Ok(true)
            }
            MSG_SET_COLOUR_MAP_ENTRIES => {
                // Never expected with a true-colour format; skipped.
                need!(r.bytes(3));
                let count = need!(r.u16());
                need!(r.bytes(usize::from(count) * 6));
                self.pos += r.consumed();
                Ok(true)
            }
            MSG_BELL => {
                self.pos += 1;
                self.events.push_back(Event::Bell);
                Ok(true)
            }
            MSG_SERVER_CUT_TEXT => self.step_cut_text(),
            other => Err(RfbError::UnknownMessageType(other)),
        }
    }

    fn step_cut_text(&mut self) -> Result<bool, RfbError> {
        let max = self.config.limits.max_cut_text;
        let ext_requested = self.config.encodings.contains(&Encoding::ExtendedClipboard);
        let mut r = Reader::new(&self.input[self.pos..]);
        need!(r.bytes(4));
        let raw_len = need!(r.u32());
        let signed = i32::from_be_bytes(raw_len.to_be_bytes());
        if signed < 0 && ext_requested {
            let len = signed.unsigned_abs();
            if len > max {
                return Err(RfbError::TooLong {
                    what: "extended clipboard message",
                    len: u64::from(len),
                    max: u64::from(max),
                });
            }
            let payload = need!(r.bytes(usize::try_from(len).unwrap_or(usize::MAX)));
            let message = clipboard::parse_ext(payload, max)?;
            self.pos += r.consumed();
            self.handle_ext_clipboard(message);
            return Ok(true);
        }
        if raw_len > max {
            return Err(RfbError::TooLong {
                what: "clipboard text",
                len: u64::from(raw_len),
                max: u64::from(max),
            });
        }
        let bytes = need!(r.bytes(usize::try_from(raw_len).unwrap_or(usize::MAX)));
        let text = clipboard::latin1_to_string(bytes);
        self.pos += r.consumed();
        self.events.push_back(Event::ClipboardText(text));
        Ok(true)
    }

    fn handle_ext_clipboard(&mut self, message: ExtMessage) {
        use clipboard::{ACTION_NOTIFY, ACTION_PROVIDE, ACTION_REQUEST, FORMAT_TEXT};
        match message {
            ExtMessage::Caps { flags, text_max } => {
                self.clip.enabled = true;
                self.clip.server_flags = flags;
                self.clip.server_text_max = text_max;
                clipboard::put_caps(&mut self.output);
            }
            ExtMessage::Request { formats } => {
                if formats & FORMAT_TEXT != 0 && self.clip.server_flags & ACTION_PROVIDE != 0 {
                    if let Some(payload) = self
                        .clip
                        .local
                        .as_deref()
                        .and_then(clipboard::provide_payload)
                    {
                        clipboard::put_provide(&mut self.output, &payload);
                    }
                }
            }
            ExtMessage::Peek => {
                if self.clip.server_flags & ACTION_NOTIFY != 0 {
                    let formats = if self.clip.local.is_some() {
                        FORMAT_TEXT
                    } else {
                        0
                    };
                    clipboard::put_action(&mut self.output, ACTION_NOTIFY, formats);
                }
            }
            ExtMessage::Notify { formats } => {
                if formats & FORMAT_TEXT != 0 {
                    // The server's clipboard is newer than ours: fetch it.
                    self.clip.local = None;
                    if self.clip.server_flags & ACTION_REQUEST != 0 {
                        clipboard::put_action(&mut self.output, ACTION_REQUEST, FORMAT_TEXT);
                    }
                }
            }
            ExtMessage::Provide { text } => {
                if let Some(text) = text {
                    self.events.push_back(Event::ClipboardText(text));
                }
            }
        }
    }

    fn step_rect_header(&mut self) -> Result<bool, RfbError> {
        let mut r = Reader::new(&self.input[self.pos..]);
        let x = need!(r.u16());
        let y = need!(r.u16());
        let width = need!(r.u16());
        let height = need!(r.u16());
        let encoding = need!(r.i32());
        self.pos += r.consumed();
        let rect = Rect::new(x, y, width, height);
        let max = self.config.limits.max_rects_per_update;
        if let Some(u) = self.update.as_mut() {
            u.seen += 1;
            if u.seen > max {
                return Err(RfbError::TooManyRects { max });
            }
        }
        match encoding {
            ENC_LAST_RECT => {
                self.end_update();
                return Ok(true);
            }
            ENC_DESKTOP_SIZE => {
                self.resize_to(width, height)?;
                self.finish_rect();
                return Ok(true);
            }
            ENC_EXTENDED_DESKTOP_SIZE => {
                self.rect = Some(RectDecoder::ExtendedDesktopSize {
                    reason: x,
                    status: y,
                    width,
                    height,
                });
                return Ok(true);
            }
            ENC_CURSOR => {
                let max = self.config.limits.max_cursor_size;
                if width > max || height > max {
                    return Err(RfbError::CursorTooLarge { width, height });
                }
                self.rect = Some(RectDecoder::Cursor {
                    hotspot_x: x,
                    hotspot_y: y,
                    width,
                    height,
                });
                return Ok(true);
            }
            ENC_RAW | ENC_COPY_RECT | ENC_HEXTILE | ENC_ZRLE => {}
            other => return Err(RfbError::UnknownEncoding(other)),
        }
        if !rect.fits_in(self.fb.width(), self.fb.height()) {
            return Err(RfbError::RectOutsideFramebuffer {
                rect,
                encoding,
                fb_width: self.fb.width(),
                fb_height: self.fb.height(),
            });
        }
        let counter = match encoding {
            ENC_RAW => &mut self.stats.raw_rects,
            ENC_COPY_RECT => &mut self.stats.copy_rects,
            ENC_HEXTILE => &mut self.stats.hextile_rects,
            _ => &mut self.stats.zrle_rects,
        };
        *counter += 1;
        self.rect = Some(match encoding {
            ENC_RAW => RectDecoder::Raw(RawDecoder {
                rect,
                done: 0,
                first: None,
                uniform: true,
            }),
            ENC_COPY_RECT => RectDecoder::CopyRect(rect),
            ENC_HEXTILE => RectDecoder::Hextile(HextileDecoder::new(rect)),
            _ => RectDecoder::ZrleLength(rect),
        });
        Ok(true)
    }

    /// One rectangle done: count it, and end the update after the last.
    fn finish_rect(&mut self) {
        if let Some(u) = self.update.as_mut() {
            u.remaining -= 1;
            if u.remaining == 0 {
                self.end_update();
            }
        }
    }

    fn end_update(&mut self) {
        self.update = None;
        self.stats.updates += 1;
        self.events.push_back(Event::UpdateEnd);
    }

    fn complete_rect(&mut self, events: Vec<Event>) -> Result<bool, RfbError> {
        self.rect = None;
        self.events.extend(events);
        self.finish_rect();
        Ok(true)
    }

    fn step_rect(&mut self) -> Result<bool, RfbError> {
        let input = &self.input[self.pos..];
        let Some(decoder) = self.rect.as_mut() else {
            return Ok(false);
        };
        let (used, events) = match decoder {
            RectDecoder::Raw(d) => d.step(input, &mut self.fb),
            RectDecoder::Hextile(d) => d.step(input, &mut self.fb)?,
            RectDecoder::Zrle(d) => {
                let zlib = self.zlib.get_or_insert_with(|| Decompress::new(true));
                d.step(input, zlib, &mut self.fb)?
            }
            RectDecoder::ZrleLength(rect) => {
                let rect = *rect;
                let mut r = Reader::new(input);
                let len = need!(r.u32());
                let max = zrle::max_compressed_len(rect);
                if u64::from(len) > max {
                    return Err(RfbError::TooLong {
                        what: "ZRLE rectangle data",
                        len: u64::from(len),
                        max,
                    });
                }
                self.pos += 4;
                self.rect = Some(RectDecoder::Zrle(ZrleDecoder::new(rect, len)));
                return Ok(true);
            }
            RectDecoder::CopyRect(rect) => {
                let rect = *rect;
                let mut r = Reader::new(input);
                let src_x = need!(r.u16());
                let src_y = need!(r.u16());
                self.pos += 4;
                let src = Rect::new(src_x, src_y, rect.width, rect.height);
                if !src.fits_in(self.fb.width(), self.fb.height()) {
                    return Err(RfbError::CopySourceOutside { src_x, src_y, rect });
                }
                if rect.is_empty() {
                    return self.complete_rect(Vec::new());
                }
                self.fb.copy_within(src_x, src_y, rect);
                return self.complete_rect(vec![Event::Copy { src_x, src_y, rect }]);
            }
            RectDecoder::Cursor {
                hotspot_x,
                hotspot_y,
                width,
                height,
            } => {
                let (hotspot_x, hotspot_y, width, height) =
                    (*hotspot_x, *hotspot_y, *width, *height);
                let mut r = Reader::new(input);
                let pixels = usize::from(width) * usize::from(height);
                let colours = need!(r.bytes(pixels * 4));
                let mask_row = usize::from(width).div_ceil(8);
                let mask = need!(r.bytes(mask_row * usize::from(height)));
                let rgba = cursor_rgba(colours, mask, width);
                self.pos += r.consumed();
                return self.complete_rect(vec![Event::Cursor {
                    hotspot_x,
                    hotspot_y,
                    width,
                    height,
                    rgba,
                }]);
            }
            RectDecoder::ExtendedDesktopSize {
                reason,
                status,
                width,
                height,
            } => {
                let (reason, status, width, height) = (*reason, *status, *width, *height);
                let mut r = Reader::new(input);
                let count = need!(r.u8());
                need!(r.bytes(3));
                let mut screens = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let id = need!(r.u32());
                    let rect = Rect::new(
                        need!(r.u16()),
                        need!(r.u16()),
                        need!(r.u16()),
                        need!(r.u16()),
                    );
                    let flags = need!(r.u32());
                    screens.push(Screen { id, rect, flags });
                }
                self.pos += r.consumed();
                self.can_resize = true;
                if reason == REASON_THIS_CLIENT && status != 0 {
                    return self.complete_rect(vec![Event::DesktopSizeResult(
                        DesktopSizeStatus::from_code(status),
                    )]);
                }
                self.resize_to(width, height)?;
                self.screens = screens;
                let events = if reason == REASON_THIS_CLIENT {
                    vec![Event::DesktopSizeResult(DesktopSizeStatus::Ok)]
                } else {
                    Vec::new()
                };
                return self.complete_rect(events);
            }
        };
        self.pos += used;
        match events {
            Some(events) => self.complete_rect(events),
            None => Ok(used > 0),
        }
    }

    /// Applies a new framebuffer size (DesktopSize, ExtendedDesktopSize);
    /// queues `Resize` if it changed.
    fn resize_to(&mut self, width: u16, height: u16) -> Result<(), RfbError> {
        self.check_size(width, height)?;
        if (width, height) != (self.fb.width(), self.fb.height()) {
            self.fb.resize(width, height)?;
            self.events.push_back(Event::Resize { width, height });
        }
        Ok(())
    }
}

/// Parses "RFB xxx.yyy\n".
fn parse_version(b: &[u8; 12]) -> Option<(u16, u16)> {
    if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
        return None;
    }
    let num = |d: &[u8]| -> Option<u16> {
        d.iter().try_fold(0u16, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
        })
    };
    Some((num(&b[4..7])?, num(&b[8..11])?))
}

/// Cursor pixels (our pixel format) and bitmask to RGBA.
fn cursor_rgba(colours: &[u8], mask: &[u8], width: u16) -> Vec<u8> {
    let w = usize::from(width);
    let mask_row = w.div_ceil(8);
    let mut rgba = Vec::with_capacity(colours.len());
    for (i, px) in colours.chunks_exact(4).enumerate() {
        let (x, y) = (i % w, i / w);
        let bit = mask[y * mask_row + x / 8] & (0x80 >> (x % 8));
        rgba.extend_from_slice(&[px[2], px[1], px[0], if bit != 0 { 255 } else { 0 }]);
    }
    rgba
}
