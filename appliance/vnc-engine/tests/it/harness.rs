//! Real servers and a model browser.
//!
//! [`Xvnc`] starts TigerVNC on a free display with its RFB socket in a
//! temp dir; [`Procs`] kills every process a test started when the test
//! ends, pass or fail. [`Browser`] runs the engine on a socket and plays
//! guacamole-common-js: it decodes the engine's instructions with
//! `daas_guacamole::Decoder`, draws `size`, `rect`/`cfill`, `copy` and
//! `img` (PNG and JPEG, decoded) onto a pixel buffer, answers `sync`s if
//! told to, and collects clipboard streams and acks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use daas_guacamole::{Decoder, Instruction};
use daas_vnc_engine::{run, DisplayParams, EngineConfig, EngineError, EngineStats};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Generous timeout for anything a real server does.
pub(crate) const T: Duration = Duration::from_secs(20);

/// True if `name` is on PATH; otherwise prints a loud SKIP line.
pub(crate) fn have(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("\n!!!!!!!! SKIP: `{name}` is not installed; this real-server test did not run !!!!!!!!\n");
    }
    found
}

/// Child processes, killed (SIGTERM, then SIGKILL) and reaped on drop.
#[derive(Default)]
pub(crate) struct Procs {
    children: Vec<Child>,
}

impl Procs {
    pub(crate) fn spawn(&mut self, cmd: &mut Command) -> Result<()> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        self.children.push(child);
        Ok(())
    }

    pub(crate) fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    fn any_exited(&mut self) -> bool {
        self.children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.children.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running Xvnc with its RFB unix socket.
pub(crate) struct Xvnc {
    pub(crate) display: u16,
    pub(crate) socket: PathBuf,
    // Dropped after the processes (fields drop in order).
    pub(crate) procs: Procs,
    _dir: tempfile::TempDir,
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// A display number in 140..240 with no live X server.
fn free_display() -> Result<u16> {
    for _ in 0..300 {
        let n = 140 + u16::try_from(random() % 100).unwrap_or(0);
        let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
        let live = match std::fs::read_to_string(&lock) {
            Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
            Err(_) => PathBuf::from(format!("/tmp/.X11-unix/X{n}")).exists(),
        };
        if !live {
            return Ok(n);
        }
    }
    bail!("no free X display in 140..240");
}

impl Xvnc {
    /// Starts `Xvnc :N -geometry WxH -depth 24 -rfbunixpath SOCK` plus
    /// `extra`, on a free display (retrying on collisions).
    pub(crate) fn start(geometry: &str, extra: &[&str]) -> Result<Xvnc> {
        let mut last = anyhow!("no attempt");
        for _ in 0..8 {
            let dir = tempfile::tempdir()?;
            let socket = dir.path().join("rfb.sock");
            let display = free_display()?;
            let mut procs = Procs::default();
            procs.spawn(
                Command::new("Xvnc")
                    .arg(format!(":{display}"))
                    .args(["-geometry", geometry, "-depth", "24", "-nolisten", "tcp"])
                    .args(["-rfbport", "-1", "-rfbunixpath"])
                    .arg(&socket)
                    .args(extra),
            )?;
            let x_socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
            let deadline = Instant::now() + T;
            loop {
                if procs.any_exited() {
                    last = anyhow!("Xvnc :{display} exited early");
                    break;
                }
                if socket.exists() && x_socket.exists() {
                    return Ok(Xvnc {
                        display,
                        socket,
                        procs,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    last = anyhow!("Xvnc :{display} did not start");
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        Err(last)
    }

    /// `DISPLAY=:N program args` to completion.
    pub(crate) async fn x(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(program)
            .args(args)
            .env("DISPLAY", format!(":{}", self.display))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Starts an X client kept until the server goes.
    pub(crate) fn x_spawn(&mut self, program: &str, args: &[&str]) -> Result<()> {
        let display = format!(":{}", self.display);
        self.procs
            .spawn(Command::new(program).args(args).env("DISPLAY", display))
    }

    /// The root window's pixels (`xwd -root`), `0x00RRGGBB`.
    pub(crate) async fn root_pixels(&self) -> Result<(u32, u32, Vec<u32>)> {
        let out = tokio::process::Command::new("xwd")
            .args(["-root", "-silent"])
            .env("DISPLAY", format!(":{}", self.display))
            .output()
            .await?;
        if !out.status.success() {
            bail!("xwd failed: {}", out.status);
        }
        parse_xwd(&out.stdout)
    }
}

/// Parses a 24/32-bit TrueColor ZPixmap XWD file.
fn parse_xwd(data: &[u8]) -> Result<(u32, u32, Vec<u32>)> {
    let word = |i: usize| -> Result<u32> {
        let b = data.get(i * 4..i * 4 + 4).context("short XWD header")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let header_size = word(0)? as usize;
    let (w, h) = (word(4)?, word(5)?);
    let byte_order = word(7)?;
    let bpp = word(11)?;
    let bytes_per_line = word(12)? as usize;
    let ncolors = word(19)? as usize;
    if bpp != 32 {
        bail!("XWD with {bpp} bits per pixel");
    }
    let start = header_size + ncolors * 12;
    let mut px = Vec::with_capacity((w * h) as usize);
    for y in 0..h as usize {
        let row = data
            .get(start + y * bytes_per_line..start + y * bytes_per_line + w as usize * 4)
            .context("short XWD data")?;
        for p in row.chunks_exact(4) {
            let v = if byte_order == 0 {
                u32::from_le_bytes([p[0], p[1], p[2], p[3]])
            } else {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            };
            px.push(v & 0x00ff_ffff);
        }
    }
    Ok((w, h, px))
}

enum StreamKind {
    Img {
        layer: i64,
        mime: String,
        x: i64,
        y: i64,
    },
    Clip,
}

struct Stream {
    kind: StreamKind,
    data: Vec<u8>,
}

/// The engine on one connection, and a browser model in front of it.
pub(crate) struct Browser {
    pub(crate) to_engine: mpsc::Sender<Instruction>,
    from_engine: mpsc::Receiver<Vec<u8>>,
    decoder: Decoder,
    pub(crate) engine: Option<JoinHandle<Result<(), EngineError>>>,
    pub(crate) result: Option<Result<(), EngineError>>,
    pub(crate) stats: Arc<EngineStats>,
    /// Every instruction but blobs, in order.
    pub(crate) log: Vec<Instruction>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) pixels: Vec<u32>,
    path: Vec<(i64, i64, i64, i64)>,
    streams: HashMap<String, Stream>,
    /// Answer every `sync` (as guacamole-common-js does after drawing).
    pub(crate) auto_ack: bool,
    /// `sync` timestamps received.
    pub(crate) syncs: Vec<u64>,
    /// Syncs not answered yet (when `auto_ack` is off).
    pub(crate) unanswered: Vec<u64>,
    pub(crate) clipboard: Vec<String>,
    pub(crate) images: HashMap<String, u64>,
    pub(crate) bytes: u64,
}

impl Browser {
    /// Runs the engine on `server` in a task.
    pub(crate) fn start<S>(server: S, params: DisplayParams, cfg: EngineConfig) -> Browser
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (to_client, from_engine) = mpsc::channel(32);
        let (to_engine, from_client) = mpsc::channel(64);
        let stats = Arc::new(EngineStats::default());
        let engine = tokio::spawn(run(
            server,
            params,
            cfg,
            to_client,
            from_client,
            stats.clone(),
        ));
        Browser {
            to_engine,
            from_engine,
            decoder: Decoder::new(),
            engine: Some(engine),
            result: None,
            stats,
            log: Vec::new(),
            width: 0,
            height: 0,
            pixels: Vec::new(),
            path: Vec::new(),
            streams: HashMap::new(),
            auto_ack: true,
            syncs: Vec::new(),
            unanswered: Vec::new(),
            clipboard: Vec::new(),
            images: HashMap::new(),
            bytes: 0,
        }
    }

    /// Connects to an Xvnc's socket and starts the engine.
    pub(crate) async fn connect(
        x: &Xvnc,
        params: DisplayParams,
        cfg: EngineConfig,
    ) -> Result<Browser> {
        let sock = tokio::net::UnixStream::connect(&x.socket).await?;
        Ok(Browser::start(sock, params, cfg))
    }

    pub(crate) async fn send(&self, opcode: &str, args: &[&str]) -> Result<()> {
        self.to_engine
            .send(Instruction::new(opcode, args.iter().copied()))
            .await
            .map_err(|_| anyhow!("the engine stopped"))
    }

    /// Waits for the engine's result (after it ended).
    pub(crate) async fn finish(&mut self, timeout: Duration) -> Result<Result<(), EngineError>> {
        if let Some(r) = self.result.take() {
            return Ok(r);
        }
        let h = self.engine.take().context("no engine")?;
        Ok(tokio::time::timeout(timeout, h).await??)
    }

    /// Processes one chunk from the engine. `Ok(false)`: the engine ended.
    async fn pump(&mut self, until: tokio::time::Instant) -> Result<bool> {
        let chunk = match tokio::time::timeout_at(until, self.from_engine.recv()).await {
            Err(_) => return Ok(true),
            Ok(None) => {
                if let Some(h) = self.engine.take() {
                    self.result = Some(h.await?);
                }
                return Ok(false);
            }
            Ok(Some(c)) => c,
        };
        self.bytes += chunk.len() as u64;
        self.decoder.push(&chunk)?;
        let mut list = Vec::new();
        while let Some(i) = self.decoder.next_instruction()? {
            list.push(i);
        }
        // Chunks hold whole instructions.
        assert_eq!(
            self.decoder.buffered_len(),
            0,
            "a chunk split an instruction"
        );
        for i in list {
            self.apply(i).await?;
        }
        Ok(true)
    }

    /// Pumps until `pred` holds.
    pub(crate) async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Browser) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out waiting for {what}; last: {:?}", self.tail());
            }
            let step = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            if !self.pump(step).await? {
                if pred(self) {
                    return Ok(());
                }
                bail!(
                    "the engine ended ({:?}) while waiting for {what}",
                    self.result
                );
            }
        }
    }

    /// Pumps for `d`.
    pub(crate) async fn pump_for(&mut self, d: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < deadline {
            if !self.pump(deadline).await? {
                break;
            }
        }
        Ok(())
    }

    /// Pumps until the engine ends; returns its result.
    pub(crate) async fn until_end(&mut self, timeout: Duration) -> Result<Result<(), EngineError>> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if !self.pump(deadline).await? {
                return self.finish(Duration::from_secs(1)).await;
            }
        }
        bail!("the engine did not end within {timeout:?}")
    }

    fn tail(&self) -> Vec<String> {
        self.log
            .iter()
            .rev()
            .take(6)
            .map(|i| format!("{} {:?}", i.opcode, i.args))
            .collect()
    }

    /// Answers every sync received so far.
    pub(crate) async fn ack_all(&mut self) -> Result<()> {
        for ts in std::mem::take(&mut self.unanswered) {
            self.send("sync", &[&ts.to_string()]).await?;
        }
        Ok(())
    }

    /// Saves the browser's picture as a PNG under the target directory
    /// (for failures) and returns its path.
    pub(crate) fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("vnc-engine-{name}.png"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut e = png::Encoder::new(file, self.width.max(1), self.height.max(1));
        e.set_color(png::ColorType::Rgb);
        let mut w = e.write_header()?;
        let mut rgb: Vec<u8> = self
            .pixels
            .iter()
            .flat_map(|p| {
                let [_, r, g, b] = p.to_be_bytes();
                [r, g, b]
            })
            .collect();
        rgb.resize((self.width.max(1) * self.height.max(1) * 3) as usize, 0);
        w.write_image_data(&rgb)?;
        w.finish()?;
        eprintln!("screenshot: {}", path.display());
        Ok(path)
    }

    pub(crate) fn count(&self, color: u32) -> usize {
        self.pixels.iter().filter(|&&p| p == color).count()
    }

    /// The browser's pixel at (x, y).
    pub(crate) fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        self.pixels.get((y * self.width + x) as usize).copied()
    }

    fn resize(&mut self, w: u32, h: u32) {
        let mut next = vec![0u32; (w * h) as usize];
        for y in 0..h.min(self.height) {
            for x in 0..w.min(self.width) {
                next[(y * w + x) as usize] = self.pixels[(y * self.width + x) as usize];
            }
        }
        self.pixels = next;
        self.width = w;
        self.height = h;
    }

    /// The index of (x, y) in `pixels`, if inside.
    fn index(&self, x: i64, y: i64) -> Option<usize> {
        let (x, y) = (u32::try_from(x).ok()?, u32::try_from(y).ok()?);
        (x < self.width && y < self.height).then(|| (y * self.width + x) as usize)
    }

    fn put(&mut self, x: i64, y: i64, c: u32) {
        if let Some(i) = self.index(x, y) {
            self.pixels[i] = c;
        }
    }

    async fn apply(&mut self, i: Instruction) -> Result<()> {
        let n = |k: usize| -> Result<i64> {
            i.arg(k)
                .context("missing argument")?
                .parse::<i64>()
                .with_context(|| format!("{} {:?}", i.opcode, i.args))
        };
        match i.opcode.as_str() {
            "size" => {
                let layer = n(0)?;
                if layer == 0 {
                    self.resize(u32::try_from(n(1)?)?, u32::try_from(n(2)?)?);
                }
            }
            "rect" => {
                let layer = n(0)?;
                if layer == 0 {
                    self.path.push((n(1)?, n(2)?, n(3)?, n(4)?));
                }
            }
            "cfill" => {
                let layer = n(1)?;
                if layer == 0 {
                    assert_eq!(n(0)?, 14, "cfill mask");
                    let c = (u32::try_from(n(2)?)? << 16)
                        | (u32::try_from(n(3)?)? << 8)
                        | u32::try_from(n(4)?)?;
                    for (x, y, w, h) in std::mem::take(&mut self.path) {
                        for yy in y..y + h {
                            for xx in x..x + w {
                                self.put(xx, yy, c);
                            }
                        }
                    }
                }
            }
            "copy" => {
                assert_eq!((n(0)?, n(5)?, n(6)?), (0, 14, 0), "copy layers/mask");
                let (sx, sy, w, h, dx, dy) = (n(1)?, n(2)?, n(3)?, n(4)?, n(7)?, n(8)?);
                let snapshot = self.pixels.clone();
                for yy in 0..h {
                    for xx in 0..w {
                        if let Some(from) = self.index(sx + xx, sy + yy) {
                            self.put(dx + xx, dy + yy, snapshot[from]);
                        }
                    }
                }
            }
            "img" => {
                assert_eq!(n(1)?, 14, "img mask");
                self.streams.insert(
                    i.args[0].clone(),
                    Stream {
                        kind: StreamKind::Img {
                            layer: n(2)?,
                            mime: i.args[3].clone(),
                            x: n(4)?,
                            y: n(5)?,
                        },
                        data: Vec::new(),
                    },
                );
            }
            "clipboard" => {
                self.streams.insert(
                    i.args[0].clone(),
                    Stream {
                        kind: StreamKind::Clip,
                        data: Vec::new(),
                    },
                );
            }
            "blob" => {
                let s = self
                    .streams
                    .get_mut(&i.args[0])
                    .context("blob for an unknown stream")?;
                s.data.extend(STANDARD.decode(&i.args[1])?);
                return Ok(());
            }
            "end" => {
                let s = self
                    .streams
                    .remove(&i.args[0])
                    .context("end of an unknown stream")?;
                match s.kind {
                    StreamKind::Clip => self.clipboard.push(String::from_utf8(s.data)?),
                    StreamKind::Img { layer, mime, x, y } => {
                        *self.images.entry(mime.clone()).or_default() += 1;
                        let (w, h, px) = decode_image(&mime, &s.data)?;
                        if layer == 0 {
                            for yy in 0..h {
                                for xx in 0..w {
                                    self.put(
                                        x + i64::from(xx),
                                        y + i64::from(yy),
                                        px[(yy * w + xx) as usize],
                                    );
                                }
                            }
                        }
                    }
                }
            }
            "sync" => {
                let ts: u64 = i.args[0].parse()?;
                if let Some(&last) = self.syncs.last() {
                    assert!(ts > last, "sync timestamps must increase");
                }
                self.syncs.push(ts);
                if self.auto_ack {
                    self.send("sync", &[&i.args[0]]).await?;
                } else {
                    self.unanswered.push(ts);
                }
            }
            _ => {}
        }
        self.log.push(i);
        Ok(())
    }
}

/// Decodes a PNG or JPEG to `0x00RRGGBB` pixels.
pub(crate) fn decode_image(mime: &str, data: &[u8]) -> Result<(u32, u32, Vec<u32>)> {
    match mime {
        "image/png" => {
            let mut d = png::Decoder::new(data);
            d.set_transformations(png::Transformations::EXPAND);
            let mut r = d.read_info()?;
            let mut buf = vec![0; r.output_buffer_size()];
            let info = r.next_frame(&mut buf)?;
            let step = match info.color_type {
                png::ColorType::Rgb => 3,
                png::ColorType::Rgba => 4,
                other => bail!("unexpected PNG colour type {other:?}"),
            };
            let px = buf[..info.buffer_size()]
                .chunks_exact(step)
                .map(|p| (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2]))
                .collect();
            Ok((info.width, info.height, px))
        }
        "image/jpeg" => {
            let mut d = jpeg_decoder::Decoder::new(data);
            let buf = d.decode()?;
            let info = d.info().context("JPEG info")?;
            let px = buf
                .chunks_exact(3)
                .map(|p| (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2]))
                .collect();
            Ok((u32::from(info.width), u32::from(info.height), px))
        }
        other => bail!("unexpected image type {other}"),
    }
}

/// Display parameters of a browser of `w` × `h` that takes PNG and JPEG.
pub(crate) fn params(w: u32, h: u32) -> DisplayParams {
    DisplayParams {
        width: w,
        height: h,
        dpi: 96,
        timezone: None,
        image: vec!["image/png".into(), "image/jpeg".into()],
        audio: vec![],
        video: vec![],
    }
}
