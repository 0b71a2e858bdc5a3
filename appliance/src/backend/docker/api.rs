//! A small client of the Docker Engine API (v1.41, Debian 12's
//! `docker.io`) over its unix socket, on hyper's HTTP/1 connection API.
//!
//! One connection per request: on a unix socket a connect costs tens of
//! microseconds, and streaming calls (exec output, events) hold their own
//! connection for as long as they stream. Only what the backend uses is
//! here; see docs/docker.md for why not bollard.

use std::path::PathBuf;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The Engine API version we speak (Docker 20.10).
const API: &str = "/v1.41";
/// Largest JSON answer we read (container lists of a busy engine fit).
const MAX_BODY: usize = 64 << 20;

/// A failed Engine API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket cannot be reached: the engine is down or restarting.
    #[error("the Docker engine is unreachable at {path}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or spoke nonsense.
    #[error("the connection to the Docker engine broke")]
    Protocol(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The engine answered with an error status.
    #[error("the Docker engine answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// An answer that is not the JSON we expect.
    #[error("unexpected answer from the Docker engine")]
    Json(#[source] serde_json::Error),
}

impl ApiError {
    /// The HTTP status, for errors the engine answered.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the engine could not be reached or the connection broke.
    pub(crate) fn transient(&self) -> bool {
        matches!(self, ApiError::Unreachable { .. } | ApiError::Protocol(_))
    }
}

/// The Engine API at a unix socket.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    socket: PathBuf,
}

/// Percent-encodes a query value.
pub(crate) fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// `filters={"label":[...]}` for list calls, encoded.
pub(crate) fn label_filter(labels: &[String], extra: &[(&str, &str)]) -> String {
    let mut m = serde_json::Map::new();
    m.insert("label".into(), serde_json::json!(labels));
    for (k, v) in extra {
        m.insert((*k).into(), serde_json::json!([v]));
    }
    enc(&Value::Object(m).to_string())
}

impl Api {
    /// The API at `socket`.
    pub(crate) fn new(socket: PathBuf) -> Api {
        Api { socket }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, ApiError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ApiError::Unreachable {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ApiError::Protocol(Box::new(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = match body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{API}{path}"))
            .header("Host", "docker")
            .header("Content-Type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| ApiError::Protocol(Box::new(e)))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ApiError::Protocol(Box::new(e)))
    }

    /// A call answered with a whole body; error statuses become errors.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, ApiError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let body = read_all(resp.into_body()).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        Ok(body)
    }

    /// A call answered with JSON (or nothing: `null`).
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let b = self.call(method, path, body).await?;
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&b).map_err(ApiError::Json)
    }

    /// GET a JSON document.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.json(Method::GET, path, None).await
    }

    /// POST with an optional JSON body.
    pub(crate) async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        self.json(Method::POST, path, body).await
    }

    /// DELETE.
    pub(crate) async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.json(Method::DELETE, path, None).await
    }

    /// A streaming call: the response body, once the status is a success.
    pub(crate) async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Incoming, ApiError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_all(resp.into_body()).await?;
            return Err(status_error(status, &body));
        }
        Ok(resp.into_body())
    }
}

fn status_error(status: StatusCode, body: &[u8]) -> ApiError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    ApiError::Status {
        status: status.as_u16(),
        message,
    }
}

async fn read_all(mut body: Incoming) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| ApiError::Protocol(Box::new(e)))?;
        if let Ok(d) = f.into_data() {
            if buf.len() + d.len() > MAX_BODY {
                return Err(ApiError::Protocol("answer too large".into()));
            }
            buf.extend_from_slice(&d);
        }
    }
    Ok(buf.freeze())
}

/// Which stream a multiplexed chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Splits Docker's multiplexed stdout/stderr framing (8-byte headers:
/// stream, 3 zero bytes, big-endian length) into chunks. Pure.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    buf: BytesMut,
}

impl Demux {
    /// Adds bytes from the wire.
    pub(crate) fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// The next whole chunk, if any.
    pub(crate) fn next_chunk(&mut self) -> Option<(Stream, Bytes)> {
        if self.buf.len() < 8 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let len = usize::try_from(len).ok()?;
        if self.buf.len() < 8 + len {
            return None;
        }
        let kind = if self.buf[0] == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        self.buf.advance(8);
        Some((kind, self.buf.split_to(len).freeze()))
    }
}

/// Reads a multiplexed body and calls `f` with each whole line (at most
/// 4 KiB each; longer lines are cut).
pub(crate) async fn for_each_line(
    mut body: Incoming,
    mut f: impl FnMut(Stream, &str),
) -> Result<(), ApiError> {
    let mut demux = Demux::default();
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let emit = |s: Stream, partial: &mut Vec<u8>, flush: bool, f: &mut dyn FnMut(Stream, &str)| {
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            f(s, String::from_utf8_lossy(&line).trim_end());
        }
        if partial.len() > 4096 || (flush && !partial.is_empty()) {
            f(s, String::from_utf8_lossy(partial).trim_end());
            partial.clear();
        }
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Protocol(Box::new(e)))?;
        let Ok(d) = frame.into_data() else { continue };
        demux.push(&d);
        while let Some((s, chunk)) = demux.next_chunk() {
            let i = usize::from(s == Stream::Stderr);
            partial[i].extend_from_slice(&chunk);
            emit(s, &mut partial[i], false, &mut f);
        }
    }
    emit(Stream::Stdout, &mut partial[0], true, &mut f);
    emit(Stream::Stderr, &mut partial[1], true, &mut f);
    Ok(())
}

/// Reads newline-separated JSON documents (the events stream) and calls
/// `f` with each; returns when the stream ends.
pub(crate) async fn for_each_json(
    mut body: Incoming,
    mut f: impl FnMut(Value),
) -> Result<(), ApiError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Protocol(Box::new(e)))?;
        let Ok(d) = frame.into_data() else { continue };
        buf.extend_from_slice(&d);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_slice(&line) {
                f(v);
            }
        }
        if buf.len() > 1 << 20 {
            buf.clear(); // a runaway line: drop it rather than grow
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_splits_frames_across_pushes() {
        let mut d = Demux::default();
        let mut wire = vec![1, 0, 0, 0, 0, 0, 0, 3];
        wire.extend_from_slice(b"ab\n");
        wire.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 2]);
        wire.extend_from_slice(b"e\n");
        d.push(&wire[..5]);
        assert!(d.next_chunk().is_none());
        d.push(&wire[5..10]);
        assert!(d.next_chunk().is_none(), "a partial payload waits");
        d.push(&wire[10..]);
        assert_eq!(
            d.next_chunk(),
            Some((Stream::Stdout, Bytes::from_static(b"ab\n")))
        );
        assert_eq!(
            d.next_chunk(),
            Some((Stream::Stderr, Bytes::from_static(b"e\n")))
        );
        assert!(d.next_chunk().is_none());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("a b/{\"x\"}"), "a%20b%2F%7B%22x%22%7D");
        let f = label_filter(&["org.daas.appliance=s1".into()], &[("dangling", "true")]);
        assert!(f.contains("org.daas.appliance%3Ds1"), "{f}");
        assert!(f.contains("dangling"), "{f}");
    }
}
