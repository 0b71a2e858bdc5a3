//! `serve`: one multiplexed session on stdin/stdout.
//!
//! The main thread reads and decodes frames. `ping` is answered inline,
//! `put_file` data is written by the main thread as it arrives (no copy to
//! another thread, backpressure through the pipe), and every other request
//! runs on a thread of its own, so requests overlap. All output goes through
//! [`Output`], which writes one whole frame at a time.
//!
//! When the connection ends (EOF, a broken stream, SIGTERM/SIGHUP), running
//! commands' process groups are killed and unfinished uploads' temporary
//! files are removed before the proxy exits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use daas_guest_proxy_wire::frame::data_frame_prefix;
use daas_guest_proxy_wire::message::{Empty, Limits, Ping};
use daas_guest_proxy_wire::{
    ClientMessage, Decoder, ErrorCode, Event, Frame, Hello, Op, Operation, Request, ServerMessage,
    Stream, WireError, MAX_DATA_CHUNK, MAX_PAYLOAD, OPERATIONS, PROGRAM_NAME, PROTOCOL_VERSION,
};

use crate::error::OpError;
use crate::ops::exec::{ExecCtl, StdinFeed};
use crate::ops::files::Upload;
use crate::safepath::AllowedTree;

/// Most requests in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// Most stdin bytes queued for one exec.
pub(crate) const MAX_STDIN_BUFFER: u64 = 16 << 20;
/// How long the end of a session waits for running requests to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `serve` was started with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) tree: AllowedTree,
}

/// The proxy's stdout: whole frames, one writer at a time.
pub(crate) struct Output {
    w: Mutex<BufWriter<File>>,
    broken: AtomicBool,
}

impl Output {
    fn new(f: File) -> Self {
        Self {
            w: Mutex::new(BufWriter::with_capacity(64 * 1024, f)),
            broken: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<File>> {
        // A panicking writer cannot leave a half frame we care about: the
        // process aborts on panic (release) and tests do not panic here.
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_frame(&self, parts: &[&[u8]]) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        let mut w = self.lock();
        let ok = parts.iter().all(|p| w.write_all(p).is_ok()) && w.flush().is_ok();
        if !ok {
            self.broken.store(true, Ordering::Relaxed);
        }
        ok
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Sends a message; one too large for a frame is replaced by an error.
    pub(crate) fn send(&self, msg: &ServerMessage) -> bool {
        match msg.encode() {
            Ok(bytes) => self.write_frame(&[&bytes]),
            Err(e) => {
                let id = match msg {
                    ServerMessage::Event { id, .. } | ServerMessage::Result { id, .. } => Some(*id),
                    ServerMessage::Error { id, .. } => *id,
                    ServerMessage::Hello(_) => None,
                };
                let err = ServerMessage::error(
                    id,
                    WireError::new(ErrorCode::TooLarge, format!("reply cannot be sent: {e}")),
                );
                match err.encode() {
                    Ok(bytes) => self.write_frame(&[&bytes]),
                    Err(_) => false,
                }
            }
        }
    }

    /// Sends data in frames of at most [`MAX_DATA_CHUNK`] bytes.
    pub(crate) fn send_data(&self, id: u64, stream: Stream, data: &[u8]) -> bool {
        data.chunks(MAX_DATA_CHUNK)
            .all(|chunk| match data_frame_prefix(id, stream, chunk.len()) {
                Ok(prefix) => self.write_frame(&[&prefix, chunk]),
                Err(_) => false,
            })
    }

    pub(crate) fn send_error(&self, id: Option<u64>, e: &OpError) -> bool {
        self.send(&ServerMessage::error(id, e.to_wire()))
    }
}

/// A request in flight.
pub(crate) enum Entry {
    /// A `put_file` receiving data (the upload itself lives with the reader)
    /// or being finished.
    Upload,
    /// An `exec`: its control channel and, while open, its stdin.
    Exec {
        ctl: Sender<ExecCtl>,
        stdin: Option<StdinFeed>,
    },
    /// Anything else: a cancel flag it checks where it can stop.
    Task(Arc<AtomicBool>),
}

/// What must be undone if the process is told to stop.
#[derive(Default)]
pub(crate) struct Cleanup {
    temps: HashMap<u64, (Arc<OwnedFd>, OsString)>,
    groups: HashMap<u64, u32>,
}

/// State shared by the reader and the request threads.
pub(crate) struct Shared {
    pub(crate) out: Output,
    pub(crate) config: Config,
    inflight: Mutex<HashMap<u64, Entry>>,
    cleanup: Mutex<Cleanup>,
}

impl Shared {
    pub(crate) fn inflight(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cleanup(&self) -> MutexGuard<'_, Cleanup> {
        self.cleanup.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_temp(&self, id: u64, dir: Arc<OwnedFd>, name: OsString) {
        self.cleanup().temps.insert(id, (dir, name));
    }

    pub(crate) fn unregister_temp(&self, id: u64) {
        self.cleanup().temps.remove(&id);
    }

    pub(crate) fn register_group(&self, id: u64, pid: u32) {
        self.cleanup().groups.insert(id, pid);
    }

    pub(crate) fn unregister_group(&self, id: u64) {
        self.cleanup().groups.remove(&id);
    }

    /// Ends request `id`: forgets it, then sends its final message (in that
    /// order, so the appliance may reuse the id once it has the answer).
    pub(crate) fn finish(&self, id: u64, outcome: Result<serde_json::Value, OpError>) {
        self.inflight().remove(&id);
        match outcome {
            Ok(result) => self.out.send(&ServerMessage::Result { id, result }),
            Err(e) => self.out.send_error(Some(id), &e),
        };
    }

    /// Removes temporary files and kills process groups still registered.
    fn emergency_cleanup(&self) {
        let mut c = self.cleanup();
        for (_, (dir, name)) in c.temps.drain() {
            let _ = rustix::fs::unlinkat(&*dir, &*name, rustix::fs::AtFlags::empty());
        }
        for (_, pid) in c.groups.drain() {
            crate::tools::kill_group(pid);
        }
    }
}

/// What a request thread gets.
pub(crate) struct Ctx {
    pub(crate) id: u64,
    pub(crate) shared: Arc<Shared>,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl Ctx {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub(crate) fn event(&self, event: Event) -> bool {
        self.shared
            .out
            .send(&ServerMessage::Event { id: self.id, event })
    }

    pub(crate) fn data(&self, stream: Stream, data: &[u8]) -> bool {
        self.shared.out.send_data(self.id, stream, data)
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }
}

/// Serializes an operation's output, checked against the operation's type.
pub(crate) fn reply<O: Op>(r: Result<O::Output, OpError>) -> Result<serde_json::Value, OpError> {
    r.and_then(|out| {
        serde_json::to_value(out)
            .map_err(|e| OpError::new(ErrorCode::Internal, format!("cannot encode result: {e}")))
    })
}

pub(crate) fn hello() -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        program: PROGRAM_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: OPERATIONS.iter().map(|s| s.to_string()).collect(),
        limits: Limits {
            max_payload: MAX_PAYLOAD as u64,
            max_in_flight: MAX_IN_FLIGHT as u64,
            max_stdin_buffer: MAX_STDIN_BUFFER,
        },
    }
}

fn dup_stdio(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

/// Runs a session on stdin/stdout until the appliance hangs up.
pub(crate) fn serve(config: Config) -> ExitCode {
    use nix::sys::signal::{SigSet, Signal};

    // Termination signals are taken by a thread of ours, so that cleanup
    // runs. Blocked here, before any thread starts, so every thread inherits
    // the mask; children get a clean mask from std's spawn.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("daas-guest-proxy: cannot block signals: {e}");
    }

    let (stdin, stdout) = match (
        dup_stdio(std::io::stdin().as_fd()),
        dup_stdio(std::io::stdout().as_fd()),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("daas-guest-proxy: no stdin/stdout: {e}");
            return ExitCode::from(1);
        }
    };
    let shared = Arc::new(Shared {
        out: Output::new(stdout),
        config,
        inflight: Mutex::new(HashMap::new()),
        cleanup: Mutex::new(Cleanup::default()),
    });
    {
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(sig) = signals.wait() {
                    shared.emergency_cleanup();
                    std::process::exit(128 + sig as i32);
                }
            });
        if let Err(e) = spawned {
            eprintln!("daas-guest-proxy: cannot start signal thread: {e}");
        }
    }

    if !shared.out.send(&ServerMessage::Hello(hello())) {
        return ExitCode::from(1);
    }
    Reader {
        shared: Arc::clone(&shared),
        uploads: HashMap::new(),
    }
    .run(stdin)
}

struct Reader {
    shared: Arc<Shared>,
    uploads: HashMap<u64, Upload>,
}

impl Reader {
    fn run(mut self, mut stdin: File) -> ExitCode {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 256 * 1024];
        let code = 'session: loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => {
                    if decoder.pending() > 0 {
                        eprintln!(
                            "daas-guest-proxy: connection closed in the middle of a frame ({} bytes)",
                            decoder.pending()
                        );
                    }
                    break 0;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("daas-guest-proxy: reading stdin: {e}");
                    break 1;
                }
            };
            decoder.feed(&buf[..n]);
            loop {
                match decoder.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Control(json))) => self.control(&json),
                    Ok(Some(Frame::Data { id, stream, data })) => self.data(id, stream, data),
                    Err(e) => {
                        self.shared.out.send(&ServerMessage::error(
                            None,
                            WireError::new(ErrorCode::BadFrame, e.to_string()),
                        ));
                        if e.is_fatal() {
                            eprintln!("daas-guest-proxy: {e}; closing the session");
                            break 'session 2;
                        }
                    }
                }
            }
            if self.shared.out.is_broken() {
                break 1;
            }
        };
        self.end();
        ExitCode::from(code)
    }

    fn control(&mut self, json: &[u8]) {
        match ClientMessage::parse(json) {
            Err(e) => {
                self.shared
                    .out
                    .send(&ServerMessage::error(e.id, e.to_wire()));
            }
            Ok(ClientMessage::Cancel { id }) => self.cancel(id),
            Ok(ClientMessage::Request(req)) => self.request(req),
        }
    }

    fn request(&mut self, req: Request) {
        let id = req.id;
        {
            let inflight = self.shared.inflight();
            if inflight.contains_key(&id) {
                drop(inflight);
                self.shared.out.send_error(
                    Some(id),
                    &OpError::new(
                        ErrorCode::DuplicateId,
                        format!("request {id} is still in flight"),
                    ),
                );
                return;
            }
            if inflight.len() >= MAX_IN_FLIGHT {
                drop(inflight);
                self.shared.out.send_error(
                    Some(id),
                    &OpError::new(
                        ErrorCode::TooManyRequests,
                        format!("{MAX_IN_FLIGHT} requests are already in flight"),
                    ),
                );
                return;
            }
        }
        match req.op {
            Operation::Ping(_) => {
                let r = reply::<Ping>(Ok(Empty {}));
                self.shared.finish(id, r);
            }
            Operation::PutFile(args) => match Upload::start(&self.shared, id, args) {
                Ok(upload) => {
                    self.shared.inflight().insert(id, Entry::Upload);
                    if upload.is_complete() {
                        upload.finish_in_thread(Arc::clone(&self.shared));
                    } else {
                        self.uploads.insert(id, upload);
                    }
                }
                Err(e) => {
                    self.shared.out.send_error(Some(id), &e);
                }
            },
            Operation::Exec(args) => crate::ops::exec::start(&self.shared, id, args),
            op => {
                let cancel = Arc::new(AtomicBool::new(false));
                self.shared
                    .inflight()
                    .insert(id, Entry::Task(Arc::clone(&cancel)));
                let ctx = Ctx {
                    id,
                    shared: Arc::clone(&self.shared),
                    cancel,
                };
                let spawned = thread::Builder::new()
                    .name(format!("req-{id}"))
                    .spawn(move || {
                        let r = crate::ops::run(&ctx, op);
                        ctx.shared.finish(ctx.id, r);
                    });
                if let Err(e) = spawned {
                    self.shared.finish(
                        id,
                        Err(OpError::new(
                            ErrorCode::Internal,
                            format!("cannot start a thread: {e}"),
                        )),
                    );
                }
            }
        }
    }

    fn data(&mut self, id: u64, stream: Stream, data: Vec<u8>) {
        if let Some(upload) = self.uploads.get_mut(&id) {
            let outcome = if stream == Stream::File {
                upload.write(&data)
            } else {
                Err(OpError::invalid(format!(
                    "put_file takes data on the file stream, not {stream:?}"
                )))
            };
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    if let Some(upload) = self.uploads.remove(&id) {
                        upload.finish_in_thread(Arc::clone(&self.shared));
                    }
                }
                Err(e) => {
                    if let Some(upload) = self.uploads.remove(&id) {
                        upload.abort(&self.shared);
                    }
                    self.shared.finish(id, Err(e));
                }
            }
            return;
        }
        let mut inflight = self.shared.inflight();
        if let Some(Entry::Exec { ctl, stdin }) = inflight.get_mut(&id) {
            if stream != Stream::Stdin {
                return;
            }
            let Some(feed) = stdin else { return };
            let closing = data.is_empty();
            if !feed.push(data) {
                let _ = ctl.send(ExecCtl::StdinOverflow);
                *stdin = None;
            } else if closing {
                *stdin = None;
            }
        }
        // Data for a request that is not (or no longer) in flight, such as
        // the tail of a cancelled upload, is dropped.
    }

    fn cancel(&mut self, id: u64) {
        if let Some(upload) = self.uploads.remove(&id) {
            upload.abort(&self.shared);
            self.shared.finish(id, Err(OpError::cancelled()));
            return;
        }
        match self.shared.inflight().get(&id) {
            Some(Entry::Exec { ctl, .. }) => {
                let _ = ctl.send(ExecCtl::Cancel);
            }
            Some(Entry::Task(flag)) => flag.store(true, Ordering::Relaxed),
            Some(Entry::Upload) | None => {}
        }
    }

    /// The session is over: undo what is unfinished, let running requests
    /// wind down for a bounded time.
    fn end(&mut self) {
        for (id, upload) in self.uploads.drain() {
            upload.abort(&self.shared);
            self.shared.inflight().remove(&id);
        }
        for entry in self.shared.inflight().values() {
            match entry {
                Entry::Exec { ctl, .. } => {
                    let _ = ctl.send(ExecCtl::Cancel);
                }
                Entry::Task(flag) => flag.store(true, Ordering::Relaxed),
                Entry::Upload => {}
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline && !self.shared.inflight().is_empty() {
            thread::sleep(Duration::from_millis(5));
        }
        self.shared.emergency_cleanup();
    }
}
