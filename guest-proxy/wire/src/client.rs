//! The appliance's side of a session, without IO.
//!
//! ```
//! use daas_guest_proxy_wire::client::{ClientCodec, Incoming};
//! use daas_guest_proxy_wire::message::{Exec, ExecResult};
//!
//! let mut c = ClientCodec::new();
//! // bytes to write to the proxy's stdin (the ssh client's stdin)
//! let (id, bytes) = c.request(Exec { argv: vec!["true".into()], ..Default::default() }).unwrap();
//! # let _ = (id, bytes);
//! // later, for each read from the proxy's stdout:
//! // c.feed(&buf[..n]);
//! // while let Some(incoming) = c.next_incoming()? { match incoming { ... } }
//! ```

use thiserror::Error;

use crate::frame::{Decoder, Frame, FrameError, Stream};
use crate::message::{
    ClientMessage, EncodeError, Event, Hello, MessageError, Operation, Request, ServerMessage,
    WireError, PROTOCOL_VERSION,
};

/// Something the proxy sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The proxy's hello (always first; checked for the protocol version).
    Hello(Hello),
    /// Interim news about request `id`.
    Event { id: u64, event: Event },
    /// Output or file data of request `id`.
    Data {
        id: u64,
        stream: Stream,
        data: Vec<u8>,
    },
    /// Request `id` succeeded; read `result` with
    /// [`crate::message::decode_result`].
    Result { id: u64, result: serde_json::Value },
    /// Request `id` (or the connection, when `id` is `None`) failed.
    Error { id: Option<u64>, error: WireError },
}

/// Why the session cannot go on (or, for the non-fatal frame errors, why
/// one frame was skipped: see [`FrameError::is_fatal`]).
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("bad frame from the proxy")]
    Frame(#[from] FrameError),
    #[error("bad message from the proxy")]
    Message(#[from] MessageError),
    #[error("the proxy speaks protocol {theirs}, we speak {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("the proxy did not start with a hello")]
    NoHello,
}

/// Encodes requests and decodes what comes back. Feed it the bytes read from
/// the transport and take [`Incoming`] items out.
#[derive(Debug, Default)]
pub struct ClientCodec {
    decoder: Decoder,
    next_id: u64,
    hello: Option<Hello>,
}

impl ClientCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// The proxy's hello, once received.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// A new request with the next id: the id and the frame to send.
    pub fn request(&mut self, op: impl Into<Operation>) -> Result<(u64, Vec<u8>), EncodeError> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = ClientMessage::Request(Request { id, op: op.into() }).encode()?;
        Ok((id, bytes))
    }

    /// A cancel frame for request `id`.
    pub fn cancel(&self, id: u64) -> Result<Vec<u8>, EncodeError> {
        ClientMessage::Cancel { id }.encode()
    }

    /// A data frame (`put_file` contents, exec stdin; empty closes stdin).
    pub fn data(&self, id: u64, stream: Stream, data: &[u8]) -> Result<Vec<u8>, EncodeError> {
        Ok(Frame::Data {
            id,
            stream,
            data: data.to_vec(),
        }
        .encode()?)
    }

    /// Adds bytes read from the proxy.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.feed(bytes);
    }

    /// Bytes of a partial frame still buffered.
    pub fn pending(&self) -> usize {
        self.decoder.pending()
    }

    /// The next complete item, `Ok(None)` if more bytes are needed.
    pub fn next_incoming(&mut self) -> Result<Option<Incoming>, SessionError> {
        let Some(frame) = self.decoder.next_frame()? else {
            return Ok(None);
        };
        let incoming = match frame {
            Frame::Data { id, stream, data } => Incoming::Data { id, stream, data },
            Frame::Control(json) => match ServerMessage::parse(&json)? {
                ServerMessage::Hello(h) => Incoming::Hello(h),
                ServerMessage::Event { id, event } => Incoming::Event { id, event },
                ServerMessage::Result { id, result } => Incoming::Result { id, result },
                ServerMessage::Error { id, error } => Incoming::Error { id, error },
            },
        };
        match (&incoming, &self.hello) {
            (Incoming::Hello(h), None) => {
                if h.protocol != PROTOCOL_VERSION {
                    return Err(SessionError::Version {
                        ours: PROTOCOL_VERSION,
                        theirs: h.protocol,
                    });
                }
                self.hello = Some(h.clone());
            }
            (_, None) => return Err(SessionError::NoHello),
            _ => {}
        }
        Ok(Some(incoming))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Limits, Ping, PROGRAM_NAME};

    fn hello(protocol: u32) -> Vec<u8> {
        ServerMessage::Hello(Hello {
            protocol,
            program: PROGRAM_NAME.into(),
            version: "9".into(),
            capabilities: vec!["ping".into()],
            limits: Limits {
                max_payload: 1,
                max_in_flight: 1,
                max_stdin_buffer: 1,
            },
        })
        .encode()
        .unwrap()
    }

    #[test]
    fn drives_a_session() {
        let mut c = ClientCodec::new();
        let (id, bytes) = c.request(Ping {}).unwrap();
        assert_eq!(id, 1);
        assert!(matches!(
            ClientMessage::parse(&bytes[5..]).unwrap(),
            ClientMessage::Request(Request { id: 1, .. })
        ));
        c.feed(&hello(PROTOCOL_VERSION));
        let reply = ServerMessage::result::<Ping>(1, &Default::default())
            .unwrap()
            .encode()
            .unwrap();
        c.feed(&reply[..4]);
        assert!(matches!(
            c.next_incoming().unwrap(),
            Some(Incoming::Hello(_))
        ));
        assert_eq!(c.next_incoming().unwrap(), None);
        c.feed(&reply[4..]);
        assert!(matches!(
            c.next_incoming().unwrap(),
            Some(Incoming::Result { id: 1, .. })
        ));
        assert!(c
            .hello()
            .unwrap()
            .capabilities
            .contains(&"ping".to_string()));
    }

    #[test]
    fn refuses_other_versions_and_missing_hello() {
        let mut c = ClientCodec::new();
        c.feed(&hello(PROTOCOL_VERSION + 1));
        assert!(matches!(
            c.next_incoming(),
            Err(SessionError::Version { .. })
        ));
        let mut c = ClientCodec::new();
        c.feed(
            &ServerMessage::error(None, WireError::new(crate::ErrorCode::BadFrame, "x"))
                .encode()
                .unwrap(),
        );
        assert!(matches!(c.next_incoming(), Err(SessionError::NoHello)));
    }
}
