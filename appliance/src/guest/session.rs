//! One multiplexed guest-proxy session over any byte stream.
//!
//! [`Session::start`] takes the two halves of a transport (an SSH channel,
//! the stdio of `docker exec -i CTR daas-guest-proxy serve`, a pipe to a
//! local proxy), waits for the proxy's hello and then carries any number of
//! requests at once: a reader task decodes frames with the wire crate's
//! [`ClientCodec`] and routes each to its request; a writer task owns the
//! write half, so frames are always written whole, whatever the callers do
//! (a caller that gives up mid-call cannot cut a frame in two).
//!
//! A [`Call`] is one request in flight. Dropping it before its answer sends
//! a `cancel`, so a timed-out or cancelled caller stops the work in the
//! guest too. When the transport ends, every call in flight fails with
//! [`GuestError::Disconnected`] and the session reports [`Session::is_closed`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daas_guest_proxy_wire::frame::data_frame_prefix;
use daas_guest_proxy_wire::message::Exec;
use daas_guest_proxy_wire::{
    decode_result, ClientCodec, ClientMessage, Event, Hello, Incoming, Op, Operation, Request,
    Stream, WireError, BULK_CHUNK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::GuestError;

/// What arrives for one request.
#[derive(Debug)]
pub enum Reply {
    /// Interim news (`started`, `file`).
    Event(Event),
    /// Output (`exec`) or file content (`get_file`).
    Data(Stream, Vec<u8>),
    /// The end: the result value, or the proxy's error.
    Done(Result<serde_json::Value, WireError>),
}

struct Shared {
    out: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    permits: Arc<Semaphore>,
}

impl Shared {
    fn close(&self, reason: String) {
        let mut r = self.close_reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            debug!(%reason, "guest session closed");
            *r = Some(reason);
        }
        drop(r);
        self.closed.cancel();
        // Wake every waiting call: their senders go, their receivers end.
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the session ended".to_owned())
    }
}

struct Owned {
    _guard: DropGuard,
    _transport: Option<Box<dyn Any + Send + Sync>>,
}

/// An open session. Cheap to clone; the transport closes when the last
/// clone (and every [`Call`]) is gone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    hello: Arc<Hello>,
    _owned: Arc<Owned>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("proxy", &self.hello.version)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Frames queued for the writer task; a bulk upload waits here when the
/// transport is slower than the reader of the file.
const OUT_QUEUE: usize = 16;
/// Items queued per call before the reader waits for its consumer.
const CALL_QUEUE: usize = 64;

impl Session {
    /// Starts a session over a transport and waits up to `hello_timeout`
    /// for the proxy's hello. `transport` is kept alive as long as the
    /// session (an SSH connection handle, a child process).
    pub async fn start<R, W>(
        reader: R,
        writer: W,
        transport: Option<Box<dyn Any + Send + Sync>>,
        hello_timeout: Duration,
    ) -> Result<Session, GuestError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let closed = CancellationToken::new();
        let shared = Arc::new(Shared {
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: closed.clone(),
            close_reason: Mutex::new(None),
            permits: Arc::new(Semaphore::new(0)),
        });
        let (hello_tx, hello_rx) = oneshot::channel();
        tokio::spawn(write_loop(writer, out_rx, shared.clone()));
        tokio::spawn(read_loop(reader, shared.clone(), hello_tx));
        let owned = Arc::new(Owned {
            _guard: closed.clone().drop_guard(),
            _transport: transport,
        });
        let hello = match tokio::time::timeout(hello_timeout, hello_rx).await {
            Ok(Ok(Ok(h))) => h,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(GuestError::Disconnected(shared.reason())),
            Err(_) => {
                shared.close("no hello".into());
                return Err(GuestError::Timeout {
                    what: "the guest-proxy's hello".into(),
                    after: hello_timeout,
                });
            }
        };
        let n = usize::try_from(hello.limits.max_in_flight)
            .unwrap_or(usize::MAX)
            .clamp(1, 4096);
        shared.permits.add_permits(n);
        Ok(Session {
            shared,
            hello: Arc::new(hello),
            _owned: owned,
        })
    }

    /// The proxy's hello (version, capabilities, limits).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Whether the transport has ended (a new session is needed).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Why the session ended, if it did.
    pub fn close_reason(&self) -> Option<String> {
        self.is_closed().then(|| self.shared.reason())
    }

    /// Sends a request; the [`Call`] yields what comes back. Waits for a
    /// free slot when the proxy's `max_in_flight` requests are running.
    pub async fn start_call(&self, op: impl Into<Operation>) -> Result<Call, GuestError> {
        let op = op.into();
        let name = op.name();
        let permit = tokio::select! {
            p = self.shared.permits.clone().acquire_owned() => p.map_err(|_| self.disconnected())?,
            _ = self.shared.closed.cancelled() => return Err(self.disconnected()),
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = ClientMessage::Request(Request { id, op })
            .encode()
            .map_err(|e| GuestError::Encode(e.to_string()))?;
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self.shared.closed.is_cancelled() {
                return Err(self.disconnected());
            }
            p.insert(id, tx);
        }
        let call = Call {
            id,
            op: name,
            rx,
            session: self.clone(),
            done: false,
            _permit: permit,
        };
        self.send(bytes).await?;
        Ok(call)
    }

    /// A request and its result, ignoring events and data.
    pub async fn call<O: Op>(&self, op: O) -> Result<O::Output, GuestError> {
        let mut c = self.start_call(op).await?;
        let v = c.finish().await?;
        decode_result::<O>(v).map_err(|e| GuestError::BadResult {
            op: O::NAME,
            message: e.to_string(),
        })
    }

    /// Runs `exec`, handing each piece of output to `on_output` as it comes.
    pub async fn exec_with(
        &self,
        exec: Exec,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<<Exec as Op>::Output, GuestError> {
        let mut c = self.start_call(exec).await?;
        loop {
            match c.next().await? {
                Reply::Data(s, d) => on_output(s, &d),
                Reply::Event(_) => {}
                Reply::Done(r) => {
                    c.done = true;
                    let v = r.map_err(|error| GuestError::Remote { op: "exec", error })?;
                    return decode_result::<Exec>(v).map_err(|e| GuestError::BadResult {
                        op: "exec",
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    /// `put_file`: the request, then `content` as file data frames. An
    /// early answer (a refused path) stops the upload at once.
    pub async fn put_file(
        &self,
        args: daas_guest_proxy_wire::message::PutFile,
        content: &[u8],
    ) -> Result<daas_guest_proxy_wire::message::PutFileResult, GuestError> {
        use daas_guest_proxy_wire::message::PutFile;
        let mut c = self.start_call(args).await?;
        for chunk in content.chunks(BULK_CHUNK) {
            // An answer before all data is sent is an error (or a bug).
            match c.rx.try_recv() {
                Ok(Reply::Done(r)) => {
                    c.done = true;
                    return match r {
                        Err(error) => Err(GuestError::Remote {
                            op: "put_file",
                            error,
                        }),
                        Ok(_) => Err(GuestError::BadResult {
                            op: "put_file",
                            message: "answered before all data was sent".into(),
                        }),
                    };
                }
                Ok(_) | Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(self.disconnected()),
            }
            let prefix = data_frame_prefix(c.id, Stream::File, chunk.len())
                .map_err(|e| GuestError::Encode(e.to_string()))?;
            let mut frame = Vec::with_capacity(prefix.len() + chunk.len());
            frame.extend_from_slice(&prefix);
            frame.extend_from_slice(chunk);
            self.send(frame).await?;
        }
        let v = c.finish().await?;
        decode_result::<PutFile>(v).map_err(|e| GuestError::BadResult {
            op: "put_file",
            message: e.to_string(),
        })
    }

    async fn send(&self, bytes: Vec<u8>) -> Result<(), GuestError> {
        tokio::select! {
            r = self.shared.out.send(bytes) => r.map_err(|_| self.disconnected()),
            _ = self.shared.closed.cancelled() => Err(self.disconnected()),
        }
    }

    fn disconnected(&self) -> GuestError {
        GuestError::Disconnected(self.shared.reason())
    }
}

/// One request in flight.
pub struct Call {
    id: u64,
    op: &'static str,
    rx: mpsc::Receiver<Reply>,
    session: Session,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Call {
    /// The request id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next item for this request. After [`Reply::Done`] the call is
    /// over.
    pub async fn next(&mut self) -> Result<Reply, GuestError> {
        match self.rx.recv().await {
            Some(r) => {
                if matches!(r, Reply::Done(_)) {
                    self.done = true;
                }
                Ok(r)
            }
            None => {
                self.done = true;
                Err(self.session.disconnected())
            }
        }
    }

    /// Sends a data frame for this request (`exec` stdin; empty closes it).
    pub async fn send_data(&self, stream: Stream, data: &[u8]) -> Result<(), GuestError> {
        let prefix = data_frame_prefix(self.id, stream, data.len())
            .map_err(|e| GuestError::Encode(e.to_string()))?;
        let mut frame = Vec::with_capacity(prefix.len() + data.len());
        frame.extend_from_slice(&prefix);
        frame.extend_from_slice(data);
        self.session.send(frame).await
    }

    /// Waits for the result, dropping events and data.
    pub async fn finish(&mut self) -> Result<serde_json::Value, GuestError> {
        loop {
            if let Reply::Done(r) = self.next().await? {
                return r.map_err(|error| GuestError::Remote { op: self.op, error });
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Given up before the answer: stop the work in the guest.
        self.session
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Ok(bytes) = (ClientMessage::Cancel { id: self.id }).encode() {
            let out = self.session.shared.out.clone();
            match out.try_send(bytes) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(bytes)) => {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let _ = out.send(bytes).await;
                        });
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    loop {
        let next = tokio::select! {
            b = rx.recv() => b,
            _ = shared.closed.cancelled() => None,
        };
        let Some(bytes) = next else { break };
        if let Err(e) = w.write_all(&bytes).await {
            shared.close(format!("cannot write to the guest: {e}"));
            return;
        }
        if rx.is_empty() {
            if let Err(e) = w.flush().await {
                shared.close(format!("cannot write to the guest: {e}"));
                return;
            }
        }
    }
    // The session was dropped: end of input tells the proxy to wind down.
    let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
    shared.close("closed by the appliance".into());
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    shared: Arc<Shared>,
    hello_tx: oneshot::Sender<Result<Hello, GuestError>>,
) {
    let mut hello_tx = Some(hello_tx);
    let mut codec = ClientCodec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let reason = 'outer: loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = shared.closed.cancelled() => break 'outer "closed by the appliance".to_owned(),
        };
        let n = match n {
            Ok(0) => break "the guest closed the session".to_owned(),
            Ok(n) => n,
            Err(e) => break format!("cannot read from the guest: {e}"),
        };
        codec.feed(&buf[..n]);
        loop {
            let item = match codec.next_incoming() {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(daas_guest_proxy_wire::SessionError::Frame(e)) if !e.is_fatal() => {
                    warn!(error = %e, "skipped a bad frame from the guest-proxy");
                    continue;
                }
                Err(e) => {
                    let err = GuestError::Protocol(e);
                    let text = super::chain(&err);
                    if let Some(tx) = hello_tx.take() {
                        let _ = tx.send(Err(err));
                    }
                    break 'outer text;
                }
            };
            let (id, reply) = match item {
                Incoming::Hello(h) => {
                    if let Some(tx) = hello_tx.take() {
                        let _ = tx.send(Ok(h));
                    }
                    continue;
                }
                Incoming::Event { id, event } => (id, Reply::Event(event)),
                Incoming::Data { id, stream, data } => (id, Reply::Data(stream, data)),
                Incoming::Result { id, result } => (id, Reply::Done(Ok(result))),
                Incoming::Error {
                    id: Some(id),
                    error,
                } => (id, Reply::Done(Err(error))),
                Incoming::Error { id: None, error } => {
                    warn!(code = ?error.code, message = %error.message, "the guest-proxy reported a connection error");
                    continue;
                }
            };
            let tx = {
                let mut p = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(reply, Reply::Done(_)) {
                    p.remove(&id)
                } else {
                    p.get(&id).cloned()
                }
            };
            if let Some(tx) = tx {
                // A consumer that went away is no reason to stop.
                let _ = tx.send(reply).await;
            }
        }
    };
    shared.close(reason);
}
