//! One session: the IO pump around the RFB client, the browser's input,
//! flow control and frame timing.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use daas_guacamole::{Instruction, Status};
use daas_rfb::{Client, Config, DesktopSizeStatus, Encoding as RfbEncoding, Event, RfbError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::display::{encode_jobs, write_images, Cursor, Display, Encoding, Job};
use crate::encode::{EncodeError, Pixels};
use crate::guac::{Counts, Out};
use crate::{DisplayParams, EngineConfig, EngineError, EngineStats};

/// Bytes read from the server at once.
const READ_BUF: usize = 64 * 1024;
/// While this much input waits for the server, the client is not read.
const MAX_SERVER_BACKLOG: usize = 1024 * 1024;
/// Frames with more image pixels than this are encoded on a blocking
/// thread.
const OFFLOAD_PIXELS: u64 = 256 * 256;
/// While this many chunks wait for the tunnel, the client is not read.
const MAX_OUTBOX_CHUNKS: usize = 1024;
/// After a failed write, how long the read side may take to report how
/// the server ended before the write error is reported instead.
const WRITE_ERROR_GRACE: Duration = Duration::from_secs(2);
/// A client `size` takes effect after this quiet time.
const RESIZE_DEBOUNCE: Duration = Duration::from_millis(150);

/// What to do after handling something.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The client side ended the session.
    Done,
}

/// A clipboard stream arriving from the client.
struct ClipIn {
    stream: String,
    text: bool,
    data: Vec<u8>,
}

struct Session {
    rfb: Client,
    params: DisplayParams,
    cfg: EngineConfig,
    stats: Arc<EngineStats>,
    display: Option<Display>,
    /// Chunks for the client, in order.
    outbox: VecDeque<Vec<u8>>,
    /// Bytes for the server.
    server_out: Vec<u8>,
    /// Frames sent and not acknowledged: (timestamp, when queued).
    in_flight: VecDeque<(u64, Instant)>,
    last_ts: u64,
    clip_in: Option<ClipIn>,
    /// The size the browser wants, not yet asked of the server.
    want_size: Option<(u16, u16)>,
    resize_at: Option<Instant>,
    resize_in_progress: bool,
    handshake_deadline: Instant,
}

pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    server: S,
    params: DisplayParams,
    cfg: EngineConfig,
    to_client: mpsc::Sender<Vec<u8>>,
    mut from_client: mpsc::Receiver<Instruction>,
    stats: Arc<EngineStats>,
) -> Result<(), EngineError> {
    let (mut rd, mut wr) = tokio::io::split(server);
    let mut s = Session::new(params, cfg, stats);
    let mut rbuf = vec![0u8; READ_BUF];
    let mut write_error: Option<std::io::Error> = None;
    let mut write_error_at: Option<Instant> = None;
    loop {
        let deadline = s.next_deadline();
        // Input waits while the server or the tunnel is far behind (acks
        // and clipboard answers would otherwise pile up).
        let accept_input =
            s.server_out.len() < MAX_SERVER_BACKLOG && s.outbox.len() < MAX_OUTBOX_CHUNKS;
        tokio::select! {
            permit = to_client.reserve(), if !s.outbox.is_empty() => {
                let Ok(permit) = permit else { return Ok(()) };
                if let Some(chunk) = s.outbox.pop_front() {
                    permit.send(chunk);
                }
            }
            msg = from_client.recv(), if accept_input => {
                let Some(ins) = msg else { return Ok(()) };
                if s.on_client(ins)? == Flow::Done {
                    return Ok(());
                }
            }
            n = wr.write(&s.server_out), if !s.server_out.is_empty() && write_error.is_none() => {
                // A failed write usually means the server hung up: stop
                // writing and let the read side tell how it ended.
                match n {
                    Ok(0) => write_error = Some(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        s.server_out.drain(..n);
                        if s.server_out.is_empty() {
                            if let Err(e) = wr.flush().await {
                                write_error = Some(e);
                            }
                        }
                    }
                    Err(e) => write_error = Some(e),
                }
                if write_error.is_some() {
                    write_error_at = Some(Instant::now());
                }
            }
            n = rd.read(&mut rbuf) => {
                match n {
                    Ok(0) => return Err(s.on_eof()),
                    Ok(n) => s.on_server_bytes(rbuf.get(..n).unwrap_or_default())?,
                    Err(e) => return Err(s.io_error(e)),
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                s.on_timer(Instant::now())?;
            }
            () = tokio::time::sleep_until(write_error_at.unwrap_or_else(Instant::now) + WRITE_ERROR_GRACE), if write_error_at.is_some() => {
                if let Some(e) = write_error.take() {
                    return Err(s.io_error(e));
                }
            }
        }
        s.after_step().await?;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn parse<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    s.and_then(|s| s.trim().parse().ok())
}

impl Session {
    fn new(params: DisplayParams, cfg: EngineConfig, stats: Arc<EngineStats>) -> Session {
        // Hextile first: against TigerVNC a full-screen photo costs the
        // server about 400 ms of ZRLE (zlib) but about 100 ms of Hextile,
        // and the server's time, not the bytes between it and the engine
        // (same node or LAN), is what the user waits for. ZRLE stays as the
        // fallback, with fast zlib.
        let mut encodings = vec![RfbEncoding::Hextile, RfbEncoding::Zrle];
        encodings.extend(
            RfbEncoding::defaults()
                .into_iter()
                .filter(|e| !matches!(e, RfbEncoding::Hextile | RfbEncoding::Zrle)),
        );
        encodings.push(RfbEncoding::CompressLevel(1));
        let rfb = Client::new(Config {
            shared: true,
            password: cfg.password.clone(),
            encodings,
            limits: cfg.rfb_limits.clone(),
        });
        let handshake_deadline = Instant::now() + cfg.connect_timeout;
        Session {
            rfb,
            params,
            cfg,
            stats,
            display: None,
            outbox: VecDeque::new(),
            server_out: Vec::new(),
            in_flight: VecDeque::new(),
            last_ts: 0,
            clip_in: None,
            want_size: None,
            resize_at: None,
            resize_in_progress: false,
            handshake_deadline,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.display.is_none() {
            return Some(self.handshake_deadline);
        }
        self.resize_at
    }

    fn connected(&self) -> bool {
        self.display.is_some()
    }

    fn io_error(&self, e: std::io::Error) -> EngineError {
        if self.connected() {
            EngineError::ServerIo(e)
        } else {
            EngineError::Unavailable(Some(e))
        }
    }

    fn on_eof(&self) -> EngineError {
        if !self.connected() {
            return EngineError::Unavailable(None);
        }
        match self.rfb.end_of_stream() {
            Ok(()) => EngineError::ServerClosed,
            Err(e) => EngineError::Protocol(e),
        }
    }

    fn rfb_error(e: RfbError) -> EngineError {
        match e {
            RfbError::AuthFailed { .. } | RfbError::PasswordRequired => EngineError::AuthFailed(e),
            RfbError::ConnectionRefused { reason } => EngineError::Refused { reason },
            other => EngineError::Protocol(other),
        }
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), EngineError> {
        if !self.connected() {
            if now >= self.handshake_deadline {
                return Err(EngineError::HandshakeTimeout(self.cfg.connect_timeout));
            }
            return Ok(());
        }
        if self.resize_at.is_some_and(|t| now >= t) {
            self.resize_at = None;
            self.try_resize();
        }
        Ok(())
    }

    /// Queues a chunk list and counts it.
    fn queue(&mut self, chunks: Vec<Vec<u8>>, counts: Counts) {
        let st = &self.stats;
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        EngineStats::add(&st.bytes_out, bytes as u64);
        EngineStats::add(&st.instructions_out, counts.instructions);
        EngineStats::add(&st.png_count, counts.png);
        EngineStats::add(&st.jpeg_count, counts.jpeg);
        EngineStats::add(&st.copy_count, counts.copy);
        EngineStats::add(&st.fill_count, counts.fill);
        self.outbox.extend(chunks);
    }

    fn on_server_bytes(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        EngineStats::add(&self.stats.bytes_in, bytes.len() as u64);
        self.rfb.feed(bytes);
        loop {
            let event = match self.rfb.next_event() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(Self::rfb_error(e)),
            };
            self.on_event(event);
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Connected {
                width,
                height,
                name,
            } => {
                tracing::debug!(width, height, %name, version = ?self.rfb.version(), "VNC connected");
                let enc = Encoding {
                    jpeg: self.params.image.iter().any(|m| m == "image/jpeg"),
                    quality: self.cfg.jpeg_quality.clamp(1, 100),
                };
                let mut display = Display::new(width, height, enc, now.into_std());
                display.size_sent();
                self.display = Some(display);
                let mut out = Out::default();
                out.size(
                    crate::guac::LAYER_DEFAULT,
                    u32::from(width),
                    u32::from(height),
                );
                let shown = if self.cfg.name.is_empty() {
                    name
                } else {
                    self.cfg.name.clone()
                };
                if !shown.is_empty() {
                    out.name(&shown);
                }
                let (chunks, counts) = out.take();
                self.queue(chunks, counts);
                let _ = self.rfb.request_full_update(false);
                // Match the browser's size once the server shows it can.
                self.want_size = self.clamp_size(self.params.width, self.params.height);
            }
            Event::Copy { src_x, src_y, rect } => {
                if let Some(d) = &mut self.display {
                    d.copy(src_x, src_y, rect);
                }
            }
            Event::Fill { rect, color } => {
                if let Some(d) = &mut self.display {
                    d.fill(rect, color);
                }
            }
            Event::Pixels { rect } => {
                if let Some(d) = &mut self.display {
                    d.pixels(rect);
                }
            }
            Event::Resize { width, height } => {
                tracing::debug!(width, height, "VNC desktop resized");
                if let Some(d) = &mut self.display {
                    d.resize(width, height, now.into_std());
                }
            }
            Event::DesktopSizeResult(status) => {
                self.resize_in_progress = false;
                if status != DesktopSizeStatus::Ok && status != DesktopSizeStatus::Forwarded {
                    tracing::warn!(?status, "the VNC server refused to resize");
                    self.want_size = None;
                } else if self.want_size.is_some() {
                    self.resize_at.get_or_insert(now);
                }
            }
            Event::Cursor {
                hotspot_x,
                hotspot_y,
                width,
                height,
                rgba,
            } => {
                if let Some(d) = &mut self.display {
                    d.cursor(Cursor {
                        hotspot_x,
                        hotspot_y,
                        width,
                        height,
                        rgba,
                    });
                }
            }
            Event::UpdateEnd => {
                EngineStats::add(&self.stats.server_updates, 1);
                if let Some(d) = &mut self.display {
                    d.update_end();
                }
                let _ = self.rfb.request_full_update(true);
                if self.want_size.is_some()
                    && self.resize_at.is_none()
                    && !self.resize_in_progress
                    && self.rfb.can_resize()
                {
                    self.resize_at = Some(now);
                }
            }
            Event::Bell => {}
            Event::ClipboardText(text) => {
                let mut out = Out::default();
                out.clipboard(&text);
                let (chunks, counts) = out.take();
                self.queue(chunks, counts);
            }
        }
    }

    /// A size within the RFB limits, or `None` for an unusable one.
    fn clamp_size(&self, width: u32, height: u32) -> Option<(u16, u16)> {
        if width == 0 || height == 0 {
            return None;
        }
        let l = &self.cfg.rfb_limits;
        let w = u16::try_from(width.min(u32::from(l.max_width))).ok()?;
        let h = u16::try_from(height.min(u32::from(l.max_height))).ok()?;
        Some((w, h))
    }

    fn try_resize(&mut self) {
        let Some((w, h)) = self.want_size else { return };
        if !self.rfb.can_resize() || self.resize_in_progress {
            return;
        }
        self.want_size = None;
        if (w, h) == (self.rfb.width(), self.rfb.height()) {
            return;
        }
        match self.rfb.set_desktop_size(w, h) {
            Ok(()) => {
                tracing::debug!(w, h, "asking the VNC server to resize");
                self.resize_in_progress = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot resize"),
        }
    }

    fn on_client(&mut self, ins: Instruction) -> Result<Flow, EngineError> {
        let arg = |i: usize| ins.arg(i);
        match ins.opcode.as_str() {
            "disconnect" => return Ok(Flow::Done),
            "sync" => {
                if let Some(ts) = parse::<u64>(arg(0)) {
                    self.on_sync_ack(ts);
                }
            }
            "mouse" => {
                if let (Some(x), Some(y)) = (parse::<i64>(arg(0)), parse::<i64>(arg(1))) {
                    let mask = parse::<u32>(arg(2)).unwrap_or(0);
                    let clamp = |v: i64| i32::try_from(v.clamp(0, 65535)).unwrap_or(0);
                    let _ = self.rfb.pointer(
                        u8::try_from(mask & 0xff).unwrap_or(0),
                        clamp(x),
                        clamp(y),
                    );
                }
            }
            "key" => {
                if let Some(keysym) = parse::<u32>(arg(0)) {
                    let pressed = match arg(1).map(str::trim) {
                        Some("true") => true,
                        Some(s) => s.parse::<i64>().is_ok_and(|v| v != 0),
                        None => false,
                    };
                    let _ = self.rfb.key(pressed, keysym);
                }
            }
            "size" => {
                if let (Some(w), Some(h)) = (parse::<u32>(arg(0)), parse::<u32>(arg(1))) {
                    if let Some(size) = self.clamp_size(w, h) {
                        self.want_size = Some(size);
                        self.resize_at = Some(Instant::now() + RESIZE_DEBOUNCE);
                    }
                }
            }
            "clipboard" => {
                let stream = arg(0).unwrap_or("0").to_owned();
                let mimetype = arg(1).unwrap_or("");
                let text = mimetype.starts_with("text/");
                if !text {
                    self.ack(&stream, "Unsupported clipboard type", Status::ClientBadType);
                }
                self.clip_in = Some(ClipIn {
                    stream,
                    text,
                    data: Vec::new(),
                });
            }
            "blob" => self.on_blob(arg(0).unwrap_or(""), arg(1).unwrap_or("")),
            "end" => {
                let stream = arg(0).unwrap_or("");
                if self.clip_in.as_ref().is_some_and(|c| c.stream == stream) {
                    if let Some(c) = self.clip_in.take() {
                        if c.text {
                            let text = String::from_utf8_lossy(&c.data);
                            if let Err(e) = self.rfb.send_clipboard(&text) {
                                tracing::debug!(error = %e, "clipboard not sent");
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn ack(&mut self, stream: &str, message: &str, status: Status) {
        let mut out = Out::default();
        out.ack(stream, message, status.code());
        let (chunks, counts) = out.take();
        self.queue(chunks, counts);
    }

    fn on_blob(&mut self, stream: &str, data: &str) {
        let limit = self.cfg.rfb_limits.max_cut_text as usize;
        let Some(c) = self.clip_in.as_mut().filter(|c| c.stream == stream) else {
            return;
        };
        if !c.text {
            return;
        }
        let stream = stream.to_owned();
        let Ok(bytes) = STANDARD.decode(data) else {
            self.ack(&stream, "Invalid base64", Status::ClientBadRequest);
            return;
        };
        let room = limit.saturating_sub(c.data.len());
        if bytes.len() <= room {
            c.data.extend_from_slice(&bytes);
            self.ack(&stream, "OK", Status::Success);
            return;
        }
        // Too long: keep what fits, cut at a character boundary, and
        // ignore the rest of the stream.
        let mut cut = room;
        while cut > 0 && bytes.get(cut).is_some_and(|b| (b & 0xC0) == 0x80) {
            cut -= 1;
        }
        c.data
            .extend_from_slice(bytes.get(..cut).unwrap_or_default());
        c.text = false;
        let text = String::from_utf8_lossy(&c.data).into_owned();
        tracing::warn!(limit, "clipboard text from the browser truncated");
        if let Err(e) = self.rfb.send_clipboard(&text) {
            tracing::debug!(error = %e, "clipboard not sent");
        }
        self.ack(&stream, "Clipboard too large", Status::ClientOverrun);
    }

    fn on_sync_ack(&mut self, ts: u64) {
        let now = Instant::now();
        let mut rtt = None;
        while let Some(&(t, sent)) = self.in_flight.front() {
            if t > ts {
                break;
            }
            self.in_flight.pop_front();
            if t == ts {
                rtt = Some(now.saturating_duration_since(sent));
            }
        }
        if let Some(rtt) = rtt {
            self.stats.last_rtt_micros.store(
                u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        self.stats
            .frames_in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    /// After every step: send what the RFB client wrote, and a frame when
    /// one is due and the browser keeps up.
    async fn after_step(&mut self) -> Result<(), EngineError> {
        if self.rfb.has_output() {
            let out = self.rfb.take_output();
            self.server_out.extend_from_slice(&out);
        }
        let max = self.cfg.max_frames_in_flight.max(1) as usize;
        let due = self
            .display
            .as_ref()
            .is_some_and(|d| d.updates() > 0 && d.has_pending());
        if due && self.in_flight.len() < max {
            self.send_frame().await?;
        }
        Ok(())
    }

    async fn send_frame(&mut self) -> Result<(), EngineError> {
        let Some(display) = self.display.as_mut() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let fb = self.rfb.framebuffer();
        let px = Pixels::new(fb.pixels(), u32::from(fb.width()), u32::from(fb.height()));
        let updates = display.updates();
        let quality = display.quality();
        let mut out = Out::default();
        let jobs = display
            .compose(px, &mut out, started)
            .map_err(EngineError::Encode)?;
        // Large images are encoded on a blocking thread, not on the
        // runtime's; this session waits meanwhile (its frame is due).
        let pixels: u64 = jobs.iter().map(Job::area).sum();
        let images = if pixels > OFFLOAD_PIXELS {
            tokio::task::spawn_blocking(move || encode_jobs(jobs, quality))
                .await
                .map_err(|_| EngineError::Encode(EncodeError::Worker))?
        } else {
            encode_jobs(jobs, quality)
        }
        .map_err(EngineError::Encode)?;
        write_images(&mut out, &images);
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        out.sync(ts, updates);
        let elapsed = started.elapsed();
        let (chunks, counts) = out.take();
        self.queue(chunks, counts);
        EngineStats::add(
            &self.stats.encode_micros,
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        EngineStats::add(&self.stats.frames, 1);
        self.in_flight.push_back((ts, Instant::now()));
        let n = self.in_flight.len() as u64;
        self.stats.frames_in_flight.store(n, Ordering::Relaxed);
        self.stats
            .max_frames_in_flight_seen
            .fetch_max(n, Ordering::Relaxed);
        Ok(())
    }
}
