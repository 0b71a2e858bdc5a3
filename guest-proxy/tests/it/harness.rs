//! A blocking client for the guest-proxy protocol over a child process's
//! pipes: the proxy itself, or an `ssh` client whose remote end is the
//! proxy. Shared by the integration tests and the benchmark example.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use daas_guest_proxy_wire::client::{ClientCodec, Incoming};
use daas_guest_proxy_wire::message::{GetFile, GetFileResult, PutFile, PutFileResult};
use daas_guest_proxy_wire::{
    decode_result, ClientMessage, Event, Frame, Hello, Op, Operation, Request, Stream, WireError,
    BULK_CHUNK,
};
use sha2::{Digest, Sha256};

/// How long a test waits for any one message before failing.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What the reader thread passes on.
#[derive(Debug)]
pub enum Msg {
    In(Incoming),
    /// The stream broke (decode error from the proxy's side).
    Broken(String),
    /// The proxy's stdout closed.
    Eof,
}

/// Everything that came for one request.
#[derive(Debug, Default)]
pub struct Reply {
    pub events: Vec<Event>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub file: Vec<u8>,
    pub outcome: Option<Result<serde_json::Value, WireError>>,
}

impl Reply {
    pub fn result<O: Op>(&self) -> Result<O::Output, WireError> {
        match self.outcome.clone().expect("request finished") {
            Ok(v) => Ok(decode_result::<O>(v).expect("result decodes")),
            Err(e) => Err(e),
        }
    }
}

/// A session with a proxy.
pub struct Proxy {
    pub child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Msg>,
    next_id: u64,
    pub hello: Hello,
    /// Messages read while waiting for another request.
    stash: Vec<Incoming>,
}

impl Proxy {
    /// Starts `cmd` (stdin/stdout are taken over) and reads the hello.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the proxy");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut codec = ClientCodec::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Msg::Eof);
                        return;
                    }
                    Ok(n) => n,
                };
                codec.feed(&buf[..n]);
                loop {
                    match codec.next_incoming() {
                        Ok(Some(i)) => {
                            if tx.send(Msg::In(i)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Msg::Broken(e.to_string()));
                            return;
                        }
                    }
                }
            }
        });
        let mut p = Self {
            child,
            stdin,
            rx,
            next_id: 1000,
            hello: Hello {
                protocol: 0,
                program: String::new(),
                version: String::new(),
                capabilities: vec![],
                limits: daas_guest_proxy_wire::Limits {
                    max_payload: 0,
                    max_in_flight: 0,
                    max_stdin_buffer: 0,
                },
            },
            stash: Vec::new(),
        };
        match p.next(TIMEOUT) {
            Msg::In(Incoming::Hello(h)) => p.hello = h,
            other => panic!("expected hello, got {other:?}"),
        }
        p
    }

    pub fn next(&mut self, timeout: Duration) -> Msg {
        if !self.stash.is_empty() {
            return Msg::In(self.stash.remove(0));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no message from the proxy within {timeout:?}")
            }
            Err(RecvTimeoutError::Disconnected) => Msg::Eof,
        }
    }

    /// The next message without failing on timeout.
    pub fn try_next(&mut self, timeout: Duration) -> Option<Msg> {
        if !self.stash.is_empty() {
            return Some(Msg::In(self.stash.remove(0)));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Msg::Eof),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to the proxy");
        stdin.flush().expect("flush");
    }

    /// Sends raw bytes, tolerating a proxy that has gone away.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(s) => s.write_all(bytes).and_then(|_| s.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn send_with_id(&mut self, id: u64, op: impl Into<Operation>) {
        let bytes = ClientMessage::Request(Request { id, op: op.into() })
            .encode()
            .expect("encode");
        self.send_raw(&bytes);
    }

    pub fn send(&mut self, op: impl Into<Operation>) -> u64 {
        let id = self.fresh_id();
        self.send_with_id(id, op);
        id
    }

    pub fn cancel(&mut self, id: u64) {
        let bytes = ClientMessage::Cancel { id }.encode().expect("encode");
        self.send_raw(&bytes);
    }

    /// Sends data frames (one empty frame for empty data).
    pub fn data(&mut self, id: u64, stream: Stream, data: &[u8]) {
        let mut bytes = Vec::new();
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(BULK_CHUNK).collect()
        };
        for chunk in chunks {
            Frame::Data {
                id,
                stream,
                data: chunk.to_vec(),
            }
            .encode_into(&mut bytes)
            .expect("encode");
        }
        self.send_raw(&bytes);
    }

    /// Collects everything for `id` until its result or error.
    pub fn wait(&mut self, id: u64) -> Reply {
        let mut reply = Reply::default();
        let mut other = Vec::new();
        let deadline = Instant::now() + TIMEOUT * 4;
        while reply.outcome.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = if let Some(pos) = self.stash.iter().position(|i| incoming_id(i) == Some(id))
            {
                Msg::In(self.stash.remove(pos))
            } else {
                match self.rx.recv_timeout(left) {
                    Ok(m) => m,
                    Err(_) => panic!("request {id} got no answer; so far {reply:?}"),
                }
            };
            match msg {
                Msg::In(i) if incoming_id(&i) == Some(id) => match i {
                    Incoming::Event { event, .. } => reply.events.push(event),
                    Incoming::Data { stream, data, .. } => match stream {
                        Stream::Stdout => reply.stdout.extend_from_slice(&data),
                        Stream::Stderr => reply.stderr.extend_from_slice(&data),
                        _ => reply.file.extend_from_slice(&data),
                    },
                    Incoming::Result { result, .. } => reply.outcome = Some(Ok(result)),
                    Incoming::Error { error, .. } => reply.outcome = Some(Err(error)),
                    Incoming::Hello(_) => panic!("second hello"),
                },
                Msg::In(i) => other.push(i),
                m => panic!("request {id}: stream ended ({m:?}); so far {reply:?}"),
            }
        }
        self.stash.extend(other);
        reply
    }

    /// Sends an operation and waits for its reply.
    pub fn call<O: Op>(&mut self, op: O) -> Result<O::Output, WireError> {
        let id = self.send(op);
        self.wait(id).result::<O>()
    }

    pub fn call_reply(&mut self, op: impl Into<Operation>) -> Reply {
        let id = self.send(op);
        self.wait(id)
    }

    /// Uploads `data` to `path` in bulk frames.
    pub fn put_file(&mut self, args: PutFile, data: &[u8]) -> Result<PutFileResult, WireError> {
        let id = self.start_put(args, data);
        self.wait(id).result::<PutFile>()
    }

    /// Sends the request and all data, without waiting.
    pub fn start_put(&mut self, args: PutFile, data: &[u8]) -> u64 {
        let id = self.send(args);
        let mut buf = Vec::with_capacity(BULK_CHUNK + 64);
        for chunk in data.chunks(BULK_CHUNK) {
            buf.clear();
            Frame::Data {
                id,
                stream: Stream::File,
                data: chunk.to_vec(),
            }
            .encode_into(&mut buf)
            .expect("encode");
            if self.try_send_raw(&buf).is_err() {
                break;
            }
        }
        id
    }

    pub fn get_file(&mut self, path: &str) -> Result<(Vec<u8>, GetFileResult), WireError> {
        let id = self.send(GetFile {
            path: path.into(),
            max_size: None,
        });
        let reply = self.wait(id);
        let r = reply.result::<GetFile>()?;
        Ok((reply.file, r))
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.close_stdin();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn incoming_id(i: &Incoming) -> Option<u64> {
    match i {
        Incoming::Hello(_) => None,
        Incoming::Event { id, .. } | Incoming::Data { id, .. } | Incoming::Result { id, .. } => {
            Some(*id)
        }
        Incoming::Error { id, .. } => *id,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A `put_file` request for `data`.
pub fn put_args(path: &str, data: &[u8]) -> PutFile {
    PutFile {
        path: path.into(),
        size: data.len() as u64,
        sha256: sha256_hex(data),
        ..Default::default()
    }
}
