//! engine_bench: the built-in VNC engine against a real 1920×1080 TigerVNC
//! Xvnc, one change at a time, with a client that answers every `sync`
//! at once (as guacamole-common-js does after drawing).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-vnc cargo run --release -p daas-vnc-engine --example engine_bench
//! ```
//!
//! Needs `Xvnc`, `xsetroot` and `xterm` (Debian: tigervnc-standalone-server,
//! x11-xserver-utils, xterm). Optional argument: repetitions per workload
//! (default 7).
//!
//! Workloads, each repeated and reported as the median:
//!
//! 1. **keystroke**: a `key` instruction typed into an xterm, until the
//!    frame showing the echoed character;
//! 2. **fill**: the whole 1920×1080 root filled with one colour, two
//!    colours in turn: by a small X11 client built in here (background
//!    pixel + ClearArea), and again by `xsetroot -solid` (whose process
//!    start-up, about 20 ms, then counts too);
//! 3. **photo**: a full-screen photo-like image (a generated landscape with
//!    clouds, ridges, a textured meadow and sensor noise; two variants in
//!    turn) put on the root window with PutImage by the same X11 client;
//! 4. **scroll**: an xterm covering most of the screen scrolling `seq`
//!    output for three seconds, first with smooth scrolling (`+j`: Xvnc
//!    sends CopyRect), then with xterm's default jump scrolling (redraws:
//!    the engine's scroll detection makes the copies): frames per second.
//!
//! For each change: time from the change (the `key` instruction sent, the
//! first X request written, or `xsetroot` started) to the `sync` of the last frame of the change, bytes and
//! instructions sent, image types, and the engine's CPU time (schedstat
//! of its runtime thread and of the blocking threads it encodes large
//! images on: the RFB decoding and all encoding). The
//! reference is guacd 1.6.0 measured on this machine class (figures from
//! the gateway issue); guacd cannot be installed here, so it is not re-run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use daas_guacamole::{Decoder, Instruction};
use daas_vnc_engine::{run, DisplayParams, EngineConfig, EngineStats};
use tokio::sync::mpsc;

const W: u32 = 1920;
const H: u32 = 1080;

/// Child processes killed on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, display: u16, program: &str, args: &[&str]) -> Result<()> {
        let child = Command::new(program)
            .args(args)
            .env("DISPLAY", format!(":{display}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        self.0.push(child);
        Ok(())
    }
}

impl Procs {
    fn kill_last(&mut self) {
        if let Some(mut c) = self.0.pop() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn x_run(display: u16, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("DISPLAY", format!(":{display}"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A deterministic photo-like 1920×1080 image: sky, sun, two mountain
/// ridges, a textured meadow, and sensor noise.
// Float to integer casts of clamped colour values and grid coordinates.
#[allow(clippy::cast_possible_truncation)]
fn photo(seed: u32) -> Vec<u32> {
    fn hash(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^ (x >> 16)
    }
    let noise2 = |x: f32, y: f32, s: u32| -> f32 {
        let (xi, yi) = (x.floor(), y.floor());
        let (fx, fy) = (x - xi, y - yi);
        let at = |dx: f32, dy: f32| {
            let h = hash((xi + dx) as i32 as u32 ^ hash(((yi + dy) as i32 as u32) ^ s));
            (h & 0xffff) as f32 / 65535.0
        };
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let top = at(0.0, 0.0) + (at(1.0, 0.0) - at(0.0, 0.0)) * sx;
        let bottom = at(0.0, 1.0) + (at(1.0, 1.0) - at(0.0, 1.0)) * sx;
        top + (bottom - top) * sy
    };
    let fbm = |x: f32, y: f32, s: u32| -> f32 {
        let (mut v, mut a, mut f) = (0.0, 0.5, 1.0);
        for o in 0..5 {
            v += a * noise2(x * f, y * f, s.wrapping_add(o));
            a *= 0.5;
            f *= 2.0;
        }
        v
    };
    let mut px = Vec::with_capacity((W * H) as usize);
    let sun = (300.0 + (seed % 7) as f32 * 150.0, 220.0);
    for y in 0..H {
        for x in 0..W {
            let (xf, yf) = (x as f32, y as f32);
            let ridge1 = 520.0 + 160.0 * fbm(xf / 400.0, 0.5, seed) - 80.0;
            let ridge2 = 640.0 + 120.0 * fbm(xf / 250.0, 3.5, seed + 9) - 60.0;
            let (mut r, mut g, mut b);
            if yf < ridge1 {
                let t = yf / ridge1;
                r = 70.0 + 120.0 * t;
                g = 120.0 + 90.0 * t;
                b = 200.0 + 40.0 * t;
                let d = ((xf - sun.0).powi(2) + (yf - sun.1).powi(2)).sqrt();
                let glow = (1.0 - d / 420.0).max(0.0).powi(2) * 120.0;
                r += glow;
                g += glow * 0.9;
                b += glow * 0.5;
                if d < 60.0 {
                    (r, g, b) = (255.0, 245.0, 210.0);
                }
                let cloud = fbm(xf / 300.0, yf / 90.0, seed + 3);
                let c = ((cloud - 0.55) * 3.0).clamp(0.0, 1.0) * 90.0;
                r += c;
                g += c;
                b += c * 0.8;
            } else if yf < ridge2 {
                let n = fbm(xf / 60.0, yf / 60.0, seed + 5);
                r = 80.0 + 60.0 * n;
                g = 90.0 + 50.0 * n;
                b = 110.0 + 40.0 * n;
            } else {
                let n = fbm(xf / 35.0, yf / 12.0, seed + 7);
                let depth = (yf - ridge2) / (H as f32 - ridge2 + 1.0);
                r = 40.0 + 70.0 * n + 20.0 * depth;
                g = 100.0 + 90.0 * n + 30.0 * depth;
                b = 30.0 + 30.0 * n;
            }
            let grain = (hash(x ^ hash(y ^ seed.wrapping_mul(31))) & 7) as f32 - 3.5;
            let c = |v: f32| (v + grain).clamp(0.0, 255.0) as u32;
            px.push((c(r) << 16) | (c(g) << 8) | c(b));
        }
    }
    px
}

/// A minimal X11 client on the display's unix socket, so that a change
/// starts at a known instant (no process start-up in the measurement):
/// set the root's background and clear it (a full-screen fill), or put an
/// image on the root window (the photo).
struct X11 {
    sock: std::os::unix::net::UnixStream,
    root: u32,
    gc: u32,
    max_request_bytes: usize,
}

impl X11 {
    fn connect(display: u16) -> Result<X11> {
        use std::io::{Read, Write};
        let mut sock =
            std::os::unix::net::UnixStream::connect(format!("/tmp/.X11-unix/X{display}"))?;
        // Little-endian, protocol 11.0, no authorisation.
        sock.write_all(&[b'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
        let mut head = [0u8; 8];
        sock.read_exact(&mut head)?;
        if head[0] != 1 {
            bail!("X11 connection refused");
        }
        let extra = usize::from(u16::from_le_bytes([head[6], head[7]])) * 4;
        let mut data = vec![0u8; extra];
        sock.read_exact(&mut data)?;
        let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let id_base = u32_at(4);
        let vendor_len = usize::from(u16_at(16));
        let max_request_bytes = usize::from(u16_at(18)) * 4;
        let formats = usize::from(data[21]);
        let screen = 32 + vendor_len.div_ceil(4) * 4 + formats * 8;
        let root = u32_at(screen);
        let gc = id_base | 1;
        let mut x = X11 {
            sock,
            root,
            gc,
            max_request_bytes,
        };
        // CreateGC on the root, no values.
        let mut req = vec![55, 0];
        req.extend(4u16.to_le_bytes());
        req.extend(gc.to_le_bytes());
        req.extend(root.to_le_bytes());
        req.extend(0u32.to_le_bytes());
        x.sock.write_all(&req)?;
        x.sync()?;
        Ok(x)
    }

    /// GetInputFocus round trip: everything before it was processed.
    fn sync(&mut self) -> Result<()> {
        use std::io::{Read, Write};
        self.sock.write_all(&[43, 0, 1, 0])?;
        loop {
            let mut msg = [0u8; 32];
            self.sock.read_exact(&mut msg)?;
            match msg[0] {
                0 => bail!("X11 error {} for request {}", msg[1], msg[10]),
                1 => {
                    let more = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]) as usize * 4;
                    let mut rest = vec![0u8; more];
                    self.sock.read_exact(&mut rest)?;
                    return Ok(());
                }
                _ => {} // an event
            }
        }
    }

    /// Sets the root background to `rgb` and clears the whole root.
    fn fill_root(&mut self, rgb: u32) -> Result<()> {
        use std::io::Write;
        let mut req = vec![2, 0];
        req.extend(4u16.to_le_bytes());
        req.extend(self.root.to_le_bytes());
        req.extend(2u32.to_le_bytes()); // CWBackPixel
        req.extend(rgb.to_le_bytes());
        req.extend([61, 0]);
        req.extend(4u16.to_le_bytes());
        req.extend(self.root.to_le_bytes());
        req.extend([0u8; 8]); // x, y, width 0, height 0: the whole window
        self.sock.write_all(&req)?;
        self.sync()
    }

    /// Puts a W×H image on the root window, in strips that fit a request.
    fn put_root(&mut self, px: &[u32]) -> Result<()> {
        use std::io::Write;
        let row = W as usize * 4;
        let rows = ((self.max_request_bytes - 24) / row).max(1);
        for (i, strip) in px.chunks(W as usize * rows).enumerate() {
            let h = strip.len() / W as usize;
            let len = u16::try_from((24 + h * row) / 4)?;
            let mut req = Vec::with_capacity(24 + h * row);
            req.extend([72, 2]); // PutImage, ZPixmap
            req.extend(len.to_le_bytes());
            req.extend(self.root.to_le_bytes());
            req.extend(self.gc.to_le_bytes());
            req.extend(u16::try_from(W)?.to_le_bytes());
            req.extend(u16::try_from(h)?.to_le_bytes());
            req.extend(0i16.to_le_bytes());
            req.extend(i16::try_from(i * rows)?.to_le_bytes());
            req.extend([0, 24, 0, 0]);
            for p in strip {
                req.extend(p.to_le_bytes());
            }
            self.sock.write_all(&req)?;
        }
        self.sync()
    }
}

/// Threads not counted as the engine's: the client (main) thread and
/// the byte-arrival probe.
static NOT_ENGINE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// This thread's id.
fn own_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time of the engine so far, per thread: every thread of this
/// process (the engine's runtime thread and the blocking threads it
/// encodes on) but the client and probe threads, from their schedstat.
#[derive(Clone, Default)]
struct Cpu(std::collections::HashMap<u32, u64>);

impl Cpu {
    /// CPU used since `self` was taken. Threads that appeared meanwhile
    /// count from zero; a blocking thread leaves only after 10 s idle, so
    /// none with work in a measurement is lost.
    fn since(&self) -> Duration {
        let now = engine_cpu();
        let ns: u64 = now
            .0
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.0.get(tid).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(ns)
    }
}

fn engine_cpu() -> Cpu {
    let skip = NOT_ENGINE.lock().map(|v| v.clone()).unwrap_or_default();
    let mut map = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if skip.contains(&tid) {
                continue;
            }
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            map.insert(tid, ns);
        }
    }
    Cpu(map)
}

/// What arrived for one frame.
#[derive(Debug, Default, Clone)]
struct Frame {
    at: Option<Instant>,
    bytes: u64,
    instructions: u64,
    png: u64,
    jpeg: u64,
    copy: u64,
    fill: u64,
}

impl Frame {
    fn drew(&self) -> bool {
        self.png + self.jpeg + self.copy + self.fill > 0
    }
    fn add(&mut self, o: &Frame) {
        self.bytes += o.bytes;
        self.instructions += o.instructions;
        self.png += o.png;
        self.jpeg += o.jpeg;
        self.copy += o.copy;
        self.fill += o.fill;
    }
}

struct Client {
    rx: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Instruction>,
    dec: Decoder,
    current: Frame,
}

/// One measured change.
#[derive(Debug, Clone, Default)]
struct Change {
    latency: Duration,
    first: Duration,
    total: Frame,
    frames: u64,
    cpu: Duration,
}

impl Client {
    /// Receives until one frame (its `sync`) is complete, answering it.
    async fn frame(&mut self, deadline: tokio::time::Instant) -> Result<Option<Frame>> {
        loop {
            while let Some(i) = self.dec.next_instruction()? {
                let f = &mut self.current;
                f.instructions += 1;
                match i.opcode.as_str() {
                    "img" if i.arg(2) == Some("0") => match i.arg(3) {
                        Some("image/jpeg") => f.jpeg += 1,
                        _ => f.png += 1,
                    },
                    "copy" => f.copy += 1,
                    "rect" if i.arg(0) == Some("0") => f.fill += 1,
                    "sync" => {
                        let ts = i.arg(0).unwrap_or("0").to_owned();
                        self.tx.send(Instruction::new("sync", [ts])).await?;
                        let mut done = std::mem::take(&mut self.current);
                        done.at = Some(Instant::now());
                        return Ok(Some(done));
                    }
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("the engine ended"),
                Ok(Some(chunk)) => {
                    self.current.bytes += chunk.len() as u64;
                    self.dec.push(&chunk)?;
                }
            }
        }
    }

    /// Drains until nothing arrives for `quiet`.
    async fn settle(&mut self, quiet: Duration) -> Result<()> {
        while self
            .frame(tokio::time::Instant::now() + quiet)
            .await?
            .is_some()
        {}
        Ok(())
    }

    /// Measures one change started at `start`: frames until `quiet`.
    async fn measure(&mut self, start: Instant, cpu0: Cpu, quiet: Duration) -> Result<Change> {
        let mut c = Change::default();
        let mut last_draw = None;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let deadline = if last_draw.is_some() {
                tokio::time::Instant::now() + quiet
            } else {
                give_up
            };
            let Some(f) = self.frame(deadline).await? else {
                break;
            };
            c.total.add(&f);
            c.frames += 1;
            if f.drew() {
                let at = f.at.unwrap_or_else(Instant::now);
                if last_draw.is_none() {
                    c.first = at - start;
                }
                last_draw = Some(at);
            }
        }
        let Some(last) = last_draw else {
            bail!("the change never showed")
        };
        c.latency = last - start;
        c.cpu = cpu0.since();
        Ok(c)
    }
}

fn median<T: Clone + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2].clone()
}

fn summarize(name: &str, changes: &[Change]) -> Change {
    let pick = |f: fn(&Change) -> Duration| median(changes.iter().map(f).collect::<Vec<_>>());
    let latency = pick(|c| c.latency);
    let first = pick(|c| c.first);
    let cpu = pick(|c| c.cpu);
    let bytes = median(changes.iter().map(|c| c.total.bytes).collect());
    let ins = median(changes.iter().map(|c| c.total.instructions).collect());
    let png = median(changes.iter().map(|c| c.total.png).collect());
    let jpeg = median(changes.iter().map(|c| c.total.jpeg).collect());
    let copy = median(changes.iter().map(|c| c.total.copy).collect());
    let fill = median(changes.iter().map(|c| c.total.fill).collect());
    let frames = median(changes.iter().map(|c| c.frames).collect());
    eprintln!(
        "{name:<10} n={} latency {:?} (first frame {:?}), {} B, {} instr, {} frames, png {png} jpeg {jpeg} copy {copy} fill {fill}, cpu {:?}",
        changes.len(), latency, first, bytes, ins, frames, cpu
    );
    Change {
        latency,
        first,
        total: Frame {
            at: None,
            bytes,
            instructions: ins,
            png,
            jpeg,
            copy,
            fill,
        },
        frames,
        cpu,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7)
        .max(1);
    for tool in ["Xvnc", "xsetroot", "xterm"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("`{tool}` is not installed");
        }
    }
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("rfb.sock");
    let display = (150..250)
        .find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
        .context("no free display")?;
    let mut procs = Procs::default();
    let geometry = format!("{W}x{H}");
    let sock_s = sock.to_str().context("path")?.to_owned();
    procs.spawn(
        display,
        "Xvnc",
        &[
            &format!(":{display}"),
            "-geometry",
            &geometry,
            "-depth",
            "24",
            "-SecurityTypes",
            "None",
            "-nolisten",
            "tcp",
            "-rfbport",
            "-1",
            "-rfbunixpath",
            &sock_s,
        ],
    )?;
    let t0 = Instant::now();
    while !(sock.exists() && Path::new(&format!("/tmp/.X11-unix/X{display}")).exists()) {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("Xvnc did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    x_run(display, "xsetroot", &["-solid", "#204060"])?;

    eprintln!("generating photos…");
    let pictures = [photo(1), photo(4)];

    // The engine, on its own thread and runtime.
    let (to_client, from_engine) = mpsc::channel::<Vec<u8>>(64);
    let (to_engine, from_client) = mpsc::channel::<Instruction>(256);
    let stats = Arc::new(EngineStats::default());
    let engine_stats = stats.clone();
    let engine_sock = sock.clone();
    let engine = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let server = tokio::net::UnixStream::connect(&engine_sock).await?;
            let params = DisplayParams {
                width: W,
                height: H,
                dpi: 96,
                timezone: None,
                image: vec!["image/png".into(), "image/jpeg".into(), "image/webp".into()],
                audio: vec![],
                video: vec![],
            };
            run(
                server,
                params,
                EngineConfig::default(),
                to_client,
                from_client,
                engine_stats,
            )
            .await?;
            Ok(())
        })
    });
    if let Ok(mut v) = NOT_ENGINE.lock() {
        v.extend(own_tid());
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(async {
        let mut c = Client {
            rx: from_engine,
            tx: to_engine,
            dec: Decoder::new(),
            current: Frame::default(),
        };
        c.settle(Duration::from_millis(500)).await?;

        let mut x11 = X11::connect(display)?;

        // 2. Full-screen fill: the root's background set and cleared.
        let mut fills = Vec::new();
        for i in 0..reps {
            let color = if i % 2 == 0 { 0x00ff_8000 } else { 0x0000_80ff };
            let cpu0 = engine_cpu();
            let start = Instant::now();
            x11.fill_root(color)?;
            fills.push(c.measure(start, cpu0, Duration::from_millis(200)).await?);
        }
        // The same with `xsetroot` (its process start-up included).
        let mut xsetroots = Vec::new();
        for i in 0..reps {
            let color = if i % 2 == 0 { "#ff8000" } else { "#0080ff" };
            let cpu0 = engine_cpu();
            let start = Instant::now();
            x_run(display, "xsetroot", &["-solid", color])?;
            xsetroots.push(c.measure(start, cpu0, Duration::from_millis(200)).await?);
        }

        // 3. Photographic change: a full-screen photo put on the root.
        // A probe notes when the server's bytes stop arriving.
        let mut photos = Vec::new();
        let mut server_times = Vec::new();
        for i in 0..reps {
            let cpu0 = engine_cpu();
            let start = Instant::now();
            let st = stats.clone();
            let probe = std::thread::spawn(move || {
                if let Ok(mut v) = NOT_ENGINE.lock() {
                    v.extend(own_tid());
                }
                let b0 = st.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
                let (mut first, mut last, mut lastb) = (None, None, b0);
                while start.elapsed() < Duration::from_millis(1500) {
                    let b = st.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
                    if b != lastb {
                        first.get_or_insert(start.elapsed());
                        last = Some(start.elapsed());
                        lastb = b;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                (first, last, lastb - b0)
            });
            x11.put_root(&pictures[i % 2])?;
            let put_done = start.elapsed();
            photos.push(c.measure(start, cpu0, Duration::from_millis(400)).await?);
            if let Ok((_, Some(last), bytes)) = probe.join() {
                server_times.push((put_done, last, bytes));
            }
        }
        x11.fill_root(0x0020_4060)?;
        c.settle(Duration::from_millis(300)).await?;

        // 1. Keystroke echoed by an xterm.
        procs.spawn(
            display,
            "xterm",
            &[
                "-geometry",
                "80x24+0+0",
                "-bg",
                "white",
                "-fg",
                "black",
                "-e",
                "sh",
            ],
        )?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.settle(Duration::from_millis(300)).await?;
        c.tx.send(Instruction::new("mouse", ["100", "100", "0"]))
            .await?;
        c.settle(Duration::from_millis(200)).await?;
        let mut keys = Vec::new();
        for i in 0..reps.max(10) {
            let keysym = if i % 2 == 0 { "120" } else { "121" }; // x, y
            let cpu0 = engine_cpu();
            let start = Instant::now();
            c.tx.send(Instruction::new("key", [keysym, "1"])).await?;
            c.tx.send(Instruction::new("key", [keysym, "0"])).await?;
            keys.push(c.measure(start, cpu0, Duration::from_millis(150)).await?);
        }

        // 4. Scrolling xterm: smooth (+j, one XCopyArea per line: Xvnc
        // sends CopyRect) and jump scrolling (xterm's default: redraws,
        // which the engine's own scroll detection turns into copies).
        let mut scrolls = Vec::new();
        for jump in [false, true] {
            let mut args = vec!["-geometry", "200x60+0+0", "-e", "sh", "-c"];
            args.push("while :; do seq 1 1000000; done");
            if !jump {
                args.insert(0, "+j");
            }
            procs.spawn(display, "xterm", &args)?;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            c.settle(Duration::from_millis(1)).await.ok();
            let cpu0 = engine_cpu();
            let start = Instant::now();
            let mut scroll = Frame::default();
            let mut frames = 0u64;
            while start.elapsed() < Duration::from_secs(3) {
                if let Some(f) = c
                    .frame(tokio::time::Instant::now() + Duration::from_millis(200))
                    .await?
                {
                    scroll.add(&f);
                    frames += 1;
                }
            }
            let elapsed = start.elapsed();
            let cpu = cpu0.since();
            procs.kill_last();
            c.settle(Duration::from_millis(300)).await.ok();
            scrolls.push((scroll, frames, elapsed, cpu));
        }
        anyhow::Ok((fills, xsetroots, photos, server_times, keys, scrolls))
    })?;
    let (fills, xsetroots, photos, server_times, keys, scrolls) = results;
    drop(rt);
    drop(procs);
    let _ = engine.join();

    let key = summarize("keystroke", &keys);
    let fill = summarize("fill", &fills);
    let xsetroot = summarize("xsetroot", &xsetroots);
    let photo = summarize("photo", &photos);

    let kib = |b: u64| b as f64 / 1024.0;
    let types = |c: &Change| {
        let f = &c.total;
        let mut v = Vec::new();
        if f.png > 0 {
            v.push(format!("{} png", f.png));
        }
        if f.jpeg > 0 {
            v.push(format!("{} jpeg", f.jpeg));
        }
        if f.fill > 0 {
            v.push(format!("{} fill", f.fill));
        }
        if f.copy > 0 {
            v.push(format!("{} copy", f.copy));
        }
        v.join(" + ")
    };
    println!();
    println!("Built-in VNC engine vs guacd 1.6.0 (reference figures), Xvnc {W}x{H}, median of {reps} (keystroke: {})", keys.len());
    println!();
    println!("| workload | ours: time | guacd | ratio | ours: bytes | guacd | ours: CPU | guacd CPU | ratio | instructions | images | goal |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let row = |name: &str, c: &Change, ref_ms: f64, ref_bytes: &str, ref_cpu: f64, goal: &str| {
        println!(
            "| {name} | {:.1} ms | {ref_ms} ms | {:.2} | {:.1} KiB | {ref_bytes} | {:.1} ms | {ref_cpu} ms | {:.2} | {} | {} | {goal} |",
            ms(c.latency),
            ms(c.latency) / ref_ms,
            kib(c.total.bytes),
            ms(c.cpu),
            ms(c.cpu) / ref_cpu,
            c.total.instructions,
            types(c),
        );
    };
    row("keystroke", &key, 21.5, "0.3 KiB", 2.8, "≤ 15 ms");
    row("full-screen fill", &fill, 57.0, "–", 44.0, "≤ 20 ms");
    row(
        "fill by xsetroot",
        &xsetroot,
        57.0,
        "–",
        44.0,
        "(process start-up included)",
    );
    row(
        "photographic",
        &photo,
        1670.0,
        "3891 KiB (PNG)",
        2100.0,
        "≤ 300 ms, ≤ 600 KiB",
    );
    for (i, (scroll, frames, elapsed, cpu)) in scrolls.iter().enumerate() {
        let fps = *frames as f64 / elapsed.as_secs_f64();
        let n = (*frames).max(1) as f64;
        println!(
            "| scrolling xterm ({}) | {fps:.1} frames/s | ~60 frames/s | {:.2} | {:.1} KiB/frame | – | {:.2} ms/frame | – | – | {:.0}/frame | {} copy, {} png, {} jpeg, {} fill in {frames} frames | ≥ 60 frames/s using copy |",
            if i == 0 { "smooth, +j" } else { "jump scroll" },
            fps / 60.0,
            kib(scroll.bytes) / n,
            ms(*cpu) / n,
            scroll.instructions as f64 / n,
            scroll.copy,
            scroll.png,
            scroll.jpeg,
            scroll.fill,
        );
    }
    if !server_times.is_empty() {
        let put = median(server_times.iter().map(|t| t.0).collect());
        let last = median(server_times.iter().map(|t| t.1).collect());
        let bytes = median(server_times.iter().map(|t| t.2).collect());
        println!();
        println!(
            "photo: the X client's PutImage took {:.1} ms; Xvnc's last byte of the update arrived after {:.1} ms ({:.1} MiB from the server); the rest is the engine.",
            ms(put),
            ms(last),
            bytes as f64 / 1048576.0
        );
    }
    println!();
    println!(
        "time = from the change (key sent; first X request written by a connected X client; xsetroot started) to the sync of its last frame; first frame: keystroke {:.1} ms, fill {:.1} ms, photo {:.1} ms. CPU = the engine's threads (RFB decoding + encoding). Engine totals: {} frames, {} KiB out, encode {:.0} ms.",
        ms(key.first),
        ms(fill.first),
        ms(photo.first),
        stats.frames.load(std::sync::atomic::Ordering::Relaxed),
        stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        stats.encode_micros.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0,
    );
    Ok(())
}
