//! Starting servers, and a blocking std-socket pump around the client.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use daas_rfb::{Client, Config, Event};

/// True if `name` is an executable on PATH; otherwise prints a SKIP line.
pub(crate) fn have(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("\n!!!!!!!! SKIP: `{name}` is not installed; this real-server test did not run !!!!!!!!\n");
    }
    found
}

/// A random number from the OS-seeded hasher (no extra dependency).
pub(crate) fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// A display number in 40..90 with no live X server. A lock file whose
/// process is gone is stale (the X server replaces it).
pub(crate) fn free_display() -> Result<u16> {
    for _ in 0..200 {
        let n = 40 + u16::try_from(random() % 50).unwrap_or(0);
        let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
        let live = match std::fs::read_to_string(&lock) {
            Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
            Err(_) => PathBuf::from(format!("/tmp/.X11-unix/X{n}")).exists(),
        };
        if !live {
            return Ok(n);
        }
    }
    bail!("no free X display in 40..90");
}

/// Child processes killed (and reaped) on drop, whatever happened.
#[derive(Default)]
pub(crate) struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    pub(crate) fn spawn(&mut self, what: &str, cmd: &mut Command) -> Result<&mut Child> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(self.adopt(what, child))
    }

    /// Takes charge of a child started elsewhere.
    pub(crate) fn adopt(&mut self, what: &str, child: Child) -> &mut Child {
        self.children.push((what.to_owned(), child));
        &mut self.children.last_mut().expect("just pushed").1
    }

    /// Fails if any child has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited early: {status}");
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    /// SIGTERM first, so X servers remove their lock files and sockets,
    /// then SIGKILL whatever is still running after a grace period. Later
    /// children (clients) go first.
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, child) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `port` accepts connections, while the processes live.
pub(crate) fn wait_port(procs: &mut Procs, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        procs.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {timeout:?}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// A running Xvnc.
pub(crate) struct Xvnc {
    pub(crate) display: u16,
    pub(crate) port: u16,
}

/// Starts `Xvnc :N -geometry 800x600 -rfbport P` plus `extra` arguments on
/// a free display and port (retrying on collisions).
pub(crate) fn start_xvnc(procs: &mut Procs, extra: &[&str]) -> Result<Xvnc> {
    let mut last = anyhow!("no attempt");
    for _ in 0..8 {
        let display = free_display()?;
        let port = free_port()?;
        let mut one = Procs::default();
        let started = one.spawn(
            "Xvnc",
            Command::new("Xvnc")
                .arg(format!(":{display}"))
                .args([
                    "-geometry",
                    "800x600",
                    "-depth",
                    "24",
                    "-localhost",
                    "-nolisten",
                    "tcp",
                ])
                .args(["-rfbport", &port.to_string()])
                .args(extra),
        );
        if let Err(e) = started {
            last = e;
            continue;
        }
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
        match wait_port(&mut one, port, Duration::from_secs(15)).and_then(|()| wait_path(&socket)) {
            Ok(()) => {
                procs.children.append(&mut one.children);
                return Ok(Xvnc { display, port });
            }
            Err(e) => last = e,
        }
    }
    Err(last.context("starting Xvnc"))
}

fn wait_path(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs an X client to completion on `display` (e.g. `xsetroot`).
pub(crate) fn x_run(display: u16, program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .env("DISPLAY", format!(":{display}"))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {args:?} failed: {status}");
    }
    Ok(())
}

/// A client connected over a std socket, pumped by hand.
pub(crate) struct Conn {
    pub(crate) client: Client,
    sock: TcpStream,
    /// Every event seen so far.
    pub(crate) log: Vec<Event>,
    /// After each UpdateEnd, ask for the next incremental update.
    pub(crate) auto_update: bool,
}

impl Conn {
    pub(crate) fn connect(port: u16, config: Config) -> Result<Conn> {
        let sock = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            client: Client::new(config),
            sock,
            log: Vec::new(),
            auto_update: true,
        })
    }

    /// Sends whatever the client has queued.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let out = self.client.take_output();
        if !out.is_empty() {
            self.sock.write_all(&out)?;
        }
        Ok(())
    }

    /// Reads and processes for at most one read timeout; returns new events.
    fn pump_once(&mut self) -> Result<Vec<Event>> {
        let mut buf = [0u8; 65536];
        let mut new = Vec::new();
        match self.sock.read(&mut buf) {
            Ok(0) => {
                self.client.end_of_stream()?;
                bail!("the server closed the connection");
            }
            Ok(n) => self.client.feed(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
        while let Some(event) = self.client.next_event()? {
            match &event {
                Event::Connected { .. } => self.client.request_full_update(false)?,
                Event::UpdateEnd if self.auto_update => self.client.request_full_update(true)?,
                _ => {}
            }
            new.push(event.clone());
            self.log.push(event);
        }
        self.flush()?;
        Ok(new)
    }

    /// Pumps until an event satisfies `pred`; returns it.
    pub(crate) fn until_event(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Client, &Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            for e in self.pump_once()? {
                if pred(&self.client, &e) {
                    return Ok(e);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; last events: {:?}",
                    tail(&self.log)
                );
            }
        }
    }

    /// Pumps until `pred` holds for the client state (checked after each
    /// batch of events).
    pub(crate) fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Client) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump_once()?;
            if pred(&self.client) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; last events: {:?}",
                    tail(&self.log)
                );
            }
        }
    }

    /// Pumps for `d` regardless.
    pub(crate) fn pump_for(&mut self, d: Duration) -> Result<()> {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.pump_once()?;
        }
        Ok(())
    }

    /// Pumps until the connection closes or an error ends the client;
    /// returns that error.
    pub(crate) fn until_failure(&mut self, timeout: Duration) -> anyhow::Error {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(e) = self.pump_once() {
                return e;
            }
            if Instant::now() > deadline {
                return anyhow!("no failure within {timeout:?}");
            }
        }
    }

    /// Pumps while `child` runs (so the client can answer the server), then
    /// returns the child's stdout.
    pub(crate) fn pump_while(&mut self, mut child: Child, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                let mut out = Vec::new();
                if let Some(mut s) = child.stdout.take() {
                    s.read_to_end(&mut out)?;
                }
                if !status.success() {
                    bail!("child failed: {status}");
                }
                return Ok(out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "child still running after {timeout:?}; last events: {:?}",
                    tail(&self.log)
                );
            }
            self.pump_once()?;
        }
    }
}

fn tail(log: &[Event]) -> Vec<String> {
    log.iter()
        .rev()
        .take(8)
        .rev()
        .map(|e| match e {
            Event::Cursor { width, height, .. } => format!("Cursor {width}x{height}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Counts framebuffer pixels equal to `color`.
pub(crate) fn count(client: &Client, color: u32) -> usize {
    client.pixels().iter().filter(|&&p| p == color).count()
}
