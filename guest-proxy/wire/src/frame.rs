//! Framing: the byte layer under the messages.
//!
//! Every frame is a 5-byte header followed by its payload:
//!
//! ```text
//! +----------------+------+-----------------------+
//! | length: u32 BE | type | payload (length bytes)|
//! +----------------+------+-----------------------+
//! ```
//!
//! `length` counts the payload only (not the header) and is at most
//! [`MAX_PAYLOAD`]. Two frame types exist:
//!
//! * [`FrameType::Control`] (`0x01`): the payload is one JSON message
//!   (see [`crate::message`]).
//! * [`FrameType::Data`] (`0x02`): raw bytes of one stream of one request; the
//!   payload starts with the request id (`u64` BE) and the stream
//!   ([`Stream`], one byte), then the data.
//!
//! [`Decoder`] is incremental: feed it whatever arrived, in any split, and
//! take whole frames out; a partial frame is simply kept until the rest comes.

use thiserror::Error;

/// Size of the frame header: length (4) and type (1).
pub const HEADER_LEN: usize = 5;

/// Hard limit on a frame's payload, in bytes (1 MiB). Neither side sends
/// more; a decoder refuses a larger length prefix before reading the payload.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size of the data-frame sub-header: request id (8) and stream (1).
pub const DATA_HEADER_LEN: usize = 9;

/// Most data bytes one data frame can carry.
pub const MAX_DATA_CHUNK: usize = MAX_PAYLOAD - DATA_HEADER_LEN;

/// Data-frame size that both sides use for bulk transfers (256 KiB): large
/// enough to keep per-frame overhead negligible, small enough to interleave.
pub const BULK_CHUNK: usize = 256 * 1024;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// A JSON message.
    Control = 0x01,
    /// Raw bytes of a request's stream.
    Data = 0x02,
}

impl FrameType {
    /// The frame type of a type byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::Control),
            0x02 => Some(Self::Data),
            _ => None,
        }
    }
}

/// Which stream of a request a data frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stream {
    /// Standard input of an `exec` (appliance to proxy). An empty data frame
    /// closes it.
    Stdin = 0,
    /// Standard output of an `exec` (proxy to appliance).
    Stdout = 1,
    /// Standard error of an `exec` (proxy to appliance).
    Stderr = 2,
    /// File contents: `put_file` (appliance to proxy), `get_file` (proxy to
    /// appliance).
    File = 3,
}

impl Stream {
    /// The stream of a stream byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Stdin),
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            3 => Some(Self::File),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control frame: the bytes of one JSON message (not yet parsed).
    Control(Vec<u8>),
    /// A data frame.
    Data {
        /// The request this data belongs to.
        id: u64,
        /// Which of the request's streams.
        stream: Stream,
        /// The bytes; empty means end of stream where the stream has one
        /// (stdin).
        data: Vec<u8>,
    },
}

/// What can be wrong with a frame.
///
/// A *fatal* error ([`FrameError::is_fatal`]) means the byte stream can no
/// longer be split into frames: the decoder stays in that error and the
/// connection should be closed after reporting it. The others concern one
/// frame only; the decoder has skipped that frame and can go on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The length prefix exceeds the limit (fatal).
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// The length the prefix announced.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The type byte is not a known frame type (frame skipped).
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A data frame shorter than its 9-byte sub-header (frame skipped).
    #[error("data frame payload of {len} bytes is shorter than its {DATA_HEADER_LEN}-byte header")]
    ShortData {
        /// The payload length.
        len: usize,
    },
    /// A data frame names an unknown stream (frame skipped).
    #[error("data frame for request {id} names unknown stream {stream}")]
    UnknownStream {
        /// The request id in the frame.
        id: u64,
        /// The stream byte.
        stream: u8,
    },
}

impl FrameError {
    /// Whether the stream is broken for good (see the type's docs).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Oversize { .. })
    }
}

/// The 5-byte header of a frame with `payload_len` bytes of payload.
///
/// Fails with [`FrameError::Oversize`] past [`MAX_PAYLOAD`].
pub fn frame_header(kind: FrameType, payload_len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::Oversize {
            len: payload_len as u64,
            max: MAX_PAYLOAD,
        });
    }
    let len = u32::try_from(payload_len).map_err(|_| FrameError::Oversize {
        len: payload_len as u64,
        max: MAX_PAYLOAD,
    })?;
    let l = len.to_be_bytes();
    Ok([l[0], l[1], l[2], l[3], kind as u8])
}

/// Length of the combined frame header and data sub-header.
pub const DATA_FRAME_PREFIX_LEN: usize = HEADER_LEN + DATA_HEADER_LEN;

/// Everything of a data frame that precedes its data: write this, then the
/// `data_len` bytes, and the frame is complete. Lets a sender write file or
/// pipe buffers without copying them into a frame first.
pub fn data_frame_prefix(
    id: u64,
    stream: Stream,
    data_len: usize,
) -> Result<[u8; DATA_FRAME_PREFIX_LEN], FrameError> {
    let payload_len = data_len
        .checked_add(DATA_HEADER_LEN)
        .ok_or(FrameError::Oversize {
            len: u64::MAX,
            max: MAX_PAYLOAD,
        })?;
    let header = frame_header(FrameType::Data, payload_len)?;
    let mut out = [0u8; DATA_FRAME_PREFIX_LEN];
    out[..HEADER_LEN].copy_from_slice(&header);
    out[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&id.to_be_bytes());
    out[HEADER_LEN + 8] = stream as u8;
    Ok(out)
}

impl Frame {
    /// Appends the encoded frame to `out`. Fails (appending nothing) if the
    /// payload would exceed [`MAX_PAYLOAD`].
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            Frame::Control(json) => {
                let header = frame_header(FrameType::Control, json.len())?;
                out.reserve(HEADER_LEN + json.len());
                out.extend_from_slice(&header);
                out.extend_from_slice(json);
            }
            Frame::Data { id, stream, data } => {
                let prefix = data_frame_prefix(*id, *stream, data.len())?;
                out.reserve(prefix.len() + data.len());
                out.extend_from_slice(&prefix);
                out.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// The encoded frame.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Incremental frame decoder.
///
/// ```
/// use daas_guest_proxy_wire::frame::{Decoder, Frame};
/// let bytes = Frame::Control(b"{}".to_vec()).encode().unwrap();
/// let mut d = Decoder::new();
/// d.feed(&bytes[..3]);
/// assert_eq!(d.next_frame(), Ok(None)); // incomplete is not an error
/// d.feed(&bytes[3..]);
/// assert_eq!(d.next_frame(), Ok(Some(Frame::Control(b"{}".to_vec()))));
/// ```
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the undecoded bytes in `buf`.
    pos: usize,
    max_payload: usize,
    /// Set once a fatal error occurred; returned from then on.
    broken: Option<FrameError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the protocol's limit, [`MAX_PAYLOAD`].
    pub fn new() -> Self {
        Self::with_max_payload(MAX_PAYLOAD)
    }

    /// A decoder with a lower payload limit (a higher one is clamped to
    /// [`MAX_PAYLOAD`]).
    pub fn with_max_payload(max_payload: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max_payload: max_payload.min(MAX_PAYLOAD),
            broken: None,
        }
    }

    /// Adds received bytes. After a fatal error, input is discarded.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        // Drop consumed bytes before growing, so the buffer stays around one
        // frame plus one read.
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= self.buf.len() / 2) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames (a partial frame).
    /// Non-zero at end of input means the peer stopped mid-frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a fatal error has occurred.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The next whole frame, `Ok(None)` if more input is needed.
    ///
    /// On a non-fatal error the offending frame has been consumed and the
    /// next call continues after it; after a fatal one every call returns it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = header[4];
        let len = len as usize;
        if len > self.max_payload {
            let e = FrameError::Oversize {
                len: len as u64,
                max: self.max_payload,
            };
            self.broken = Some(e.clone());
            self.buf = Vec::new();
            self.pos = 0;
            return Err(e);
        }
        let Some(payload) = avail.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let result = decode_payload(kind, payload);
        self.pos += HEADER_LEN + len;
        result.map(Some)
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame, FrameError> {
    match FrameType::from_byte(kind) {
        None => Err(FrameError::UnknownType(kind)),
        Some(FrameType::Control) => Ok(Frame::Control(payload.to_vec())),
        Some(FrameType::Data) => {
            let (Some(id), Some(&stream)) = (payload.get(..8), payload.get(8)) else {
                return Err(FrameError::ShortData { len: payload.len() });
            };
            let mut idb = [0u8; 8];
            idb.copy_from_slice(id);
            let id = u64::from_be_bytes(idb);
            let stream =
                Stream::from_byte(stream).ok_or(FrameError::UnknownStream { id, stream })?;
            Ok(Frame::Data {
                id,
                stream,
                data: payload[DATA_HEADER_LEN..].to_vec(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What decoding yields, written compactly: `C:<json>`, `D:<id>:<stream>:<data>`,
    /// `E:<error>`, `...` for "needs more input".
    fn render(input: &[u8]) -> Vec<String> {
        let mut d = Decoder::new();
        d.feed(input);
        let mut out = Vec::new();
        loop {
            match d.next_frame() {
                Ok(Some(Frame::Control(j))) => {
                    out.push(format!("C:{}", String::from_utf8_lossy(&j)))
                }
                Ok(Some(Frame::Data { id, stream, data })) => out.push(format!(
                    "D:{id}:{stream:?}:{}",
                    String::from_utf8_lossy(&data)
                )),
                Ok(None) => {
                    if d.pending() > 0 {
                        out.push(format!("...{}", d.pending()));
                    }
                    break;
                }
                Err(e) => {
                    out.push(format!("E:{e}"));
                    if e.is_fatal() {
                        break;
                    }
                }
            }
        }
        out
    }

    fn check(input: &[u8], expect: &[&str]) {
        assert_eq!(render(input), expect, "input {input:?}");
    }

    #[test]
    fn decodes_from_data() {
        check(b"", &[]);
        check(b"\0\0\0\x02\x01{}", &["C:{}"]);
        check(b"\0\0\0\x00\x01", &["C:"]);
        check(
            b"\0\0\0\x0c\x02\0\0\0\0\0\0\0\x07\x01abc",
            &["D:7:Stdout:abc"],
        );
        check(b"\0\0\0\x09\x02\0\0\0\0\0\0\0\x07\x00", &["D:7:Stdin:"]);
        // two frames back to back
        check(b"\0\0\0\x02\x01{}\0\0\0\x01\x01x", &["C:{}", "C:x"]);
        // incomplete header, incomplete payload
        check(b"\0\0\0", &["...3"]);
        check(b"\0\0\0\x05\x01{}", &["...7"]);
        // unknown type: skipped, decoding goes on
        check(
            b"\0\0\0\x01\x7fz\0\0\0\x02\x01{}",
            &["E:unknown frame type 0x7f", "C:{}"],
        );
        // short data frame, unknown stream: skipped
        check(
            b"\0\0\0\x03\x02abc\0\0\0\x02\x01{}",
            &[
                "E:data frame payload of 3 bytes is shorter than its 9-byte header",
                "C:{}",
            ],
        );
        check(
            b"\0\0\0\x09\x02\0\0\0\0\0\0\0\x01\x09",
            &["E:data frame for request 1 names unknown stream 9"],
        );
        // oversize: fatal, before the payload arrives
        check(
            b"\xff\xff\xff\xff\x01",
            &["E:frame payload of 4294967295 bytes exceeds the limit of 1048576 bytes"],
        );
        check(
            b"\x00\x10\x00\x01\x02",
            &["E:frame payload of 1048577 bytes exceeds the limit of 1048576 bytes"],
        );
    }

    #[test]
    fn max_payload_is_accepted() {
        let f = Frame::Data {
            id: u64::MAX,
            stream: Stream::File,
            data: vec![0xab; MAX_DATA_CHUNK],
        };
        let bytes = f.encode().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + MAX_PAYLOAD);
        let mut d = Decoder::new();
        d.feed(&bytes);
        assert_eq!(d.next_frame(), Ok(Some(f)));
        let too_big = Frame::Control(vec![b' '; MAX_PAYLOAD + 1]);
        assert!(matches!(too_big.encode(), Err(FrameError::Oversize { .. })));
        assert!(data_frame_prefix(1, Stream::File, MAX_DATA_CHUNK + 1).is_err());
        assert!(data_frame_prefix(1, Stream::File, usize::MAX).is_err());
    }

    #[test]
    fn broken_decoder_stays_broken() {
        let mut d = Decoder::with_max_payload(4);
        d.feed(b"\0\0\0\x05\x01hello");
        assert!(d.next_frame().unwrap_err().is_fatal());
        d.feed(b"\0\0\0\x02\x01{}");
        assert!(d.is_broken());
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn buffer_is_compacted() {
        let one = Frame::Control(vec![b'x'; 1000]).encode().unwrap();
        let mut d = Decoder::new();
        for _ in 0..10_000 {
            d.feed(&one);
            assert!(d.next_frame().unwrap().is_some());
        }
        assert!(
            d.buf.capacity() < 16 * 1024,
            "capacity {}",
            d.buf.capacity()
        );
    }
}
