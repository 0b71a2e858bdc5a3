//! A guacd stand-in: a real TCP server that performs guacd 1.6's handshake
//! exactly, then plays what the test (or benchmark) asks for and records what
//! it receives. Shared by the integration tests and the examples
//! (`#[path]`-included, so it is not part of the library).
//!
//! The handshake, as guacd 1.6 performs it:
//!
//! ```text
//! ← select,<protocol>;                 vnc | rdp | ssh
//! → args,VERSION_1_5_0,<name>,...;     the stand-in's argument names
//! ← size,<w>,<h>,<dpi>; audio,...; video,...; image,...; timezone,<tz>; name,<n>;
//! ← connect,VERSION_1_5_0,<value>,...; one value per name, in the order of `args`
//! → ready,$<uuid>;
//! ```
//!
//! The stand-in insists on that order (`timezone` may be absent, as when the
//! browser gave none) and records every deviation in [`Session::faults`],
//! closing the connection as guacd does on a failed handshake.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daas_guacamole::{Decoder, Instruction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// guacd 1.6's `args` for VNC start like this (abridged).
pub const VNC_ARGS: &[&str] = &[
    "hostname",
    "port",
    "read-only",
    "encodings",
    "username",
    "password",
    "swap-red-blue",
    "color-depth",
    "cursor",
    "autoretry",
    "clipboard-encoding",
];

/// What the stand-in does once `ready` is sent.
#[derive(Clone)]
pub enum Behavior {
    /// Play these steps, then keep reading until the peer closes.
    Script(Vec<Step>),
    /// Send this instead of `args` (guacd refusing at `select`).
    RefuseSelect(Vec<u8>),
    /// Send this instead of `ready`.
    RefuseConnect(Vec<u8>),
    /// Never answer `select`.
    Silent,
    /// Send `payload` `repeat` times as fast as the peer reads, then
    /// `disconnect` and close (benchmarks).
    Blast {
        payload: Arc<Vec<u8>>,
        repeat: usize,
    },
    /// Answer each instruction received (but `sync` and `nop`) with `reply`
    /// (round-trip benchmarks).
    Echo { reply: Vec<u8> },
}

/// One step of a script.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes in one write.
    Write(Vec<u8>),
    /// Write these bytes in pieces of these sizes (the rest at the end),
    /// pausing between pieces so that the reader sees them apart.
    Split {
        bytes: Vec<u8>,
        pieces: Vec<usize>,
        pause: Duration,
    },
    /// Wait.
    Sleep(Duration),
    /// Write `chunk` over and over, up to `max_bytes`, until one write has
    /// been blocked for `block` (the peer stopped reading): records
    /// [`Session::blocked`] and [`Session::blocked_at`], finishes that write
    /// and goes on with the next step.
    Flood {
        chunk: Vec<u8>,
        max_bytes: usize,
        block: Duration,
    },
    /// From now on, send `nop` whenever nothing else was sent for this
    /// long, as guacd's keep-alive does (every 5 s); never ends.
    KeepAlive(Duration),
    /// Close the connection.
    Close,
}

/// What one connection did.
#[derive(Debug, Default, Clone)]
pub struct Session {
    /// The protocol `select` asked for.
    pub protocol: String,
    /// The handshake instructions received after `select`, in order.
    pub handshake: Vec<Instruction>,
    /// `connect`'s values by the names of `args`.
    pub connect: HashMap<String, String>,
    /// The version element of `connect`.
    pub version: String,
    /// Bytes received after `ready`, exactly.
    pub received: Vec<u8>,
    /// Bytes written after `ready`.
    pub written: u64,
    /// Whether a flood write blocked.
    pub blocked: bool,
    /// [`Session::written`] when it blocked.
    pub blocked_at: u64,
    /// Handshake deviations (empty when the gateway behaved).
    pub faults: Vec<String>,
    /// The connection ended.
    pub closed: bool,
}

/// Chooses the behaviour of a connection from `connect`'s values by name.
pub type Chooser = Arc<dyn Fn(&HashMap<String, String>) -> Behavior + Send + Sync>;

/// A running stand-in.
pub struct StandIn {
    pub addr: SocketAddr,
    sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts on 127.0.0.1 with an ephemeral port; every connection behaves
    /// as `behavior` says.
    pub async fn start(behavior: Behavior) -> StandIn {
        StandIn::start_with(
            VNC_ARGS,
            Arc::new(move |_: &HashMap<String, String>| behavior.clone()),
        )
        .await
    }

    /// Starts with these argument names and a behaviour chosen per connection.
    pub async fn start_with(arg_names: &[&str], choose: Chooser) -> StandIn {
        StandIn::start_on("127.0.0.1:0", arg_names, choose).await
    }

    /// Starts on `addr`, insisting on the handshake exactly as the gateway
    /// must perform it (see the module docs).
    pub async fn start_on(addr: &str, arg_names: &[&str], choose: Chooser) -> StandIn {
        StandIn::start_mode(addr, arg_names, choose, true).await
    }

    /// Starts on `addr`, accepting any handshake guacd 1.6 accepts: older
    /// versions (`VERSION_1_1_0`), `timezone` and `name` absent or empty.
    /// For other clients (guacamole-lite) in the benchmarks.
    pub async fn start_lenient(addr: &str, arg_names: &[&str], choose: Chooser) -> StandIn {
        StandIn::start_mode(addr, arg_names, choose, false).await
    }

    async fn start_mode(addr: &str, arg_names: &[&str], choose: Chooser, strict: bool) -> StandIn {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the guacd stand-in");
        let addr = listener.local_addr().unwrap();
        let sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let names: Arc<Vec<String>> = Arc::new(arg_names.iter().map(|s| (*s).to_owned()).collect());
        let task = {
            let sessions = sessions.clone();
            let changed = changed.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let session = Arc::new(Mutex::new(Session::default()));
                    sessions.lock().unwrap().push(session.clone());
                    let (names, choose, changed) = (names.clone(), choose.clone(), changed.clone());
                    tokio::spawn(async move {
                        serve(socket, &names, &choose, &session, &changed, strict).await;
                        session.lock().unwrap().closed = true;
                        changed.notify_waiters();
                    });
                }
            })
        };
        StandIn {
            addr,
            sessions,
            changed,
            task,
        }
    }

    /// `HOST:PORT` for [`daas_gateway::Upstream::Guacd::addr`].
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// A copy of every session so far.
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }

    /// Waits (up to `within`) until some session satisfies `pred`, and
    /// returns a copy of it.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&Session) -> bool,
    ) -> Option<Session> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if let Some(s) = self.sessions().into_iter().find(|s| pred(s)) {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            // Woken by a change, or every 20 ms for the fields that change
            // without a notification.
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }
}

struct Conn<'a> {
    socket: TcpStream,
    decoder: Decoder,
    session: &'a Mutex<Session>,
    changed: &'a Notify,
}

impl Conn<'_> {
    async fn next(&mut self) -> Option<Instruction> {
        let mut buf = [0u8; 4096];
        loop {
            match self.decoder.next_instruction() {
                Ok(Some(i)) => return Some(i),
                Ok(None) => {}
                Err(e) => {
                    self.fault(format!("invalid protocol from the gateway: {e}"));
                    return None;
                }
            }
            let n = self.socket.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if self.decoder.push(&buf[..n]).is_err() {
                continue;
            }
        }
    }

    fn fault(&self, what: String) {
        self.session.lock().unwrap().faults.push(what);
        self.changed.notify_waiters();
    }

    async fn write(&mut self, bytes: &[u8]) -> bool {
        let ok = self.socket.write_all(bytes).await.is_ok();
        if ok {
            self.session.lock().unwrap().written += bytes.len() as u64;
        }
        ok
    }
}

async fn serve(
    socket: TcpStream,
    names: &[String],
    choose: &Chooser,
    session: &Mutex<Session>,
    changed: &Notify,
    strict: bool,
) {
    let mut c = Conn {
        socket,
        decoder: Decoder::new(),
        session,
        changed,
    };
    // select
    let Some(select) = c.next().await else { return };
    if select.opcode != "select" || select.args.len() != 1 {
        return c.fault(format!("expected select, got {:?}", select.opcode));
    }
    let protocol = select.args[0].clone();
    session.lock().unwrap().protocol = protocol.clone();
    if !["vnc", "rdp", "ssh"].contains(&protocol.as_str()) {
        return c.fault(format!("unknown protocol {protocol:?}"));
    }
    // We need the behaviour before `args` only to refuse there: choose from
    // an empty map, then again with the real values.
    if let Behavior::RefuseSelect(bytes) = choose(&HashMap::new()) {
        c.write(&bytes).await;
        return;
    }
    if matches!(choose(&HashMap::new()), Behavior::Silent) {
        let mut sink = [0u8; 1024];
        while matches!(c.socket.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    let mut args = vec!["VERSION_1_5_0".to_owned()];
    args.extend(names.iter().cloned());
    let mut out = Vec::new();
    Instruction::new("args", args).write_to(&mut out);
    if !c.write(&out).await {
        return;
    }
    // size, audio, video, image, [timezone], name, connect — in this order.
    let order = [
        "size", "audio", "video", "image", "timezone", "name", "connect",
    ];
    let mut at = 0;
    let connect = loop {
        let Some(i) = c.next().await else {
            return c.fault("closed during the handshake".into());
        };
        session.lock().unwrap().handshake.push(i.clone());
        let Some(pos) = order.iter().position(|o| *o == i.opcode) else {
            return c.fault(format!("unexpected {:?} in the handshake", i.opcode));
        };
        // `timezone` (4) and `name` (5) may be absent.
        let skips_only_optional = (at..pos).all(|p| p == 4 || p == 5);
        if strict && (pos < at || (pos > at && !(at == 4 && pos == 5))) {
            return c.fault(format!("{:?} out of order", i.opcode));
        }
        if !strict && (pos < at || !skips_only_optional) {
            return c.fault(format!("{:?} out of order", i.opcode));
        }
        at = pos + 1;
        let ok = match i.opcode.as_str() {
            "size" => {
                (2..=3).contains(&i.args.len())
                    && i.args.iter().all(|a| a.parse::<u32>().is_ok())
                    && (!strict || i.args.iter().all(|a| a.parse::<u32>().is_ok_and(|n| n > 0)))
            }
            "timezone" | "name" => i.args.len() == 1 || (!strict && i.args.is_empty()),
            _ => true,
        };
        if !ok {
            return c.fault(format!("malformed {:?}", i.opcode));
        }
        if i.opcode == "connect" {
            break i;
        }
    };
    if connect.args.len() != names.len() + 1 {
        return c.fault(format!(
            "connect has {} values for {} names",
            connect.args.len(),
            names.len() + 1
        ));
    }
    let values: HashMap<String, String> = names
        .iter()
        .cloned()
        .zip(connect.args[1..].iter().cloned())
        .collect();
    {
        let mut s = session.lock().unwrap();
        s.version = connect.args[0].clone();
        s.connect = values.clone();
    }
    if strict && connect.args[0] != "VERSION_1_5_0" {
        return c.fault(format!("answered version {:?}", connect.args[0]));
    }
    let behavior = choose(&values);
    if let Behavior::RefuseConnect(bytes) = &behavior {
        c.write(bytes).await;
        return;
    }
    let id = format!("${}", uuid::Uuid::new_v4());
    out.clear();
    Instruction::new("ready", [id]).write_to(&mut out);
    if !c.write(&out).await {
        return;
    }
    changed.notify_waiters();
    session.lock().unwrap().written = 0;
    let pipelined = c.decoder.buffered_len();
    let (mut rd, mut wr) = c.socket.into_split();
    let mut reader = Reader {
        decoder: Decoder::new(),
        session,
        changed,
    };
    if pipelined > 0 {
        // The gateway must wait for `ready` before it forwards anything the
        // browser sent: bytes right behind `connect` are a fault.
        reader
            .session
            .lock()
            .unwrap()
            .faults
            .push("bytes pipelined behind connect".into());
    }
    match behavior {
        Behavior::Echo { reply } => {
            let mut buf = vec![0u8; 16 * 1024];
            while let Some(n) = reader.read(&mut rd, &mut buf).await {
                let mut answers = Vec::new();
                let _ = reader.decoder.push(&buf[..n]);
                while let Ok(Some(raw)) = reader.decoder.next_raw() {
                    if !matches!(raw.opcode(), "sync" | "nop") {
                        answers.extend_from_slice(&reply);
                    }
                }
                if !answers.is_empty() && wr.write_all(&answers).await.is_err() {
                    return;
                }
            }
        }
        Behavior::Script(steps) => {
            let read_all = async {
                let mut buf = vec![0u8; 16 * 1024];
                while reader.read(&mut rd, &mut buf).await.is_some() {}
            };
            let play = async {
                for step in steps {
                    if !play(step, &mut wr, session).await {
                        let _ = wr.shutdown().await;
                        return;
                    }
                }
                // Keep the connection open until the peer closes it.
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = read_all => {}
                () = play => {}
            }
        }
        Behavior::Blast { payload, repeat } => {
            let read_all = async {
                let mut buf = vec![0u8; 16 * 1024];
                while reader.read(&mut rd, &mut buf).await.is_some() {}
                std::future::pending::<()>().await;
            };
            let write = async {
                for _ in 0..repeat {
                    if wr.write_all(&payload).await.is_err() {
                        return;
                    }
                }
                let _ = wr
                    .write_all(&Instruction::disconnect().encode().into_bytes())
                    .await;
                let _ = wr.shutdown().await;
                // Give the peer time to read everything before closing.
                tokio::time::sleep(Duration::from_secs(5)).await;
            };
            tokio::select! {
                () = read_all => {}
                () = write => {}
            }
        }
        Behavior::RefuseSelect(_) | Behavior::RefuseConnect(_) | Behavior::Silent => {}
    }
}

struct Reader<'a> {
    decoder: Decoder,
    session: &'a Mutex<Session>,
    changed: &'a Notify,
}

impl Reader<'_> {
    /// Reads and records; `None` at the end of the stream.
    async fn read(
        &mut self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        buf: &mut [u8],
    ) -> Option<usize> {
        match rd.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.session
                    .lock()
                    .unwrap()
                    .received
                    .extend_from_slice(&buf[..n]);
                self.changed.notify_waiters();
                Some(n)
            }
        }
    }
}

/// Plays one step; false when the connection is done.
async fn play(
    step: Step,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    session: &Mutex<Session>,
) -> bool {
    let written = |n: usize| session.lock().unwrap().written += n as u64;
    match step {
        Step::Write(bytes) => {
            if wr.write_all(&bytes).await.is_err() {
                return false;
            }
            written(bytes.len());
        }
        Step::Split {
            bytes,
            pieces,
            pause,
        } => {
            let mut rest = &bytes[..];
            for size in pieces.into_iter().chain(std::iter::once(usize::MAX)) {
                let (piece, tail) = rest.split_at(size.min(rest.len()));
                if !piece.is_empty() {
                    if wr.write_all(piece).await.is_err() {
                        return false;
                    }
                    written(piece.len());
                    tokio::time::sleep(pause).await;
                }
                rest = tail;
            }
        }
        Step::Sleep(d) => tokio::time::sleep(d).await,
        Step::Flood {
            chunk,
            max_bytes,
            block,
        } => {
            let mut total = 0;
            while total < max_bytes {
                let mut write = std::pin::pin!(wr.write_all(&chunk));
                let done = match tokio::time::timeout(block, &mut write).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The peer stopped reading: note how much it took,
                        // then finish this write (never tear an instruction)
                        // and stop flooding.
                        {
                            let mut s = session.lock().unwrap();
                            s.blocked = true;
                            s.blocked_at = s.written;
                        }
                        if write.await.is_err() {
                            return false;
                        }
                        written(chunk.len());
                        break;
                    }
                };
                if done.is_err() {
                    return false;
                }
                total += chunk.len();
                written(chunk.len());
            }
        }
        Step::KeepAlive(every) => loop {
            tokio::time::sleep(every).await;
            let nop = Instruction::nop().encode();
            if wr.write_all(nop.as_bytes()).await.is_err() {
                return false;
            }
            written(nop.len());
        },
        Step::Close => return false,
    }
    true
}
