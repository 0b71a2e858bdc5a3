//! Clipboard text: the Latin-1 ServerCutText/ClientCutText of classic RFB
//! and the Extended Clipboard pseudo-encoding (UTF-8, zlib-compressed).

use std::io::Write;

use flate2::{Decompress, FlushDecompress};

use crate::wire::{PutExt, Reader};
use crate::RfbError;

/// Format bit: UTF-8 plain text.
pub(crate) const FORMAT_TEXT: u32 = 1;
/// Mask of the 16 format bits.
pub(crate) const FORMAT_MASK: u32 = 0xffff;
pub(crate) const ACTION_CAPS: u32 = 1 << 24;
pub(crate) const ACTION_REQUEST: u32 = 1 << 25;
pub(crate) const ACTION_PEEK: u32 = 1 << 26;
pub(crate) const ACTION_NOTIFY: u32 = 1 << 27;
pub(crate) const ACTION_PROVIDE: u32 = 1 << 28;
pub(crate) const ACTION_MASK: u32 = 0xff00_0000;

/// ClientCutText message type.
const CLIENT_CUT_TEXT: u8 = 6;

/// Latin-1 bytes to a string, `\r\n` folded to `\n`.
pub(crate) fn latin1_to_string(bytes: &[u8]) -> String {
    let s: String = bytes.iter().map(|&b| char::from(b)).collect();
    s.replace("\r\n", "\n")
}

/// A string to Latin-1 bytes with `\n` line ends. Characters outside
/// Latin-1 (above U+00FF) become `?`.
pub(crate) fn string_to_latin1(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// Received extended-clipboard text to a string: up to the first NUL,
/// invalid UTF-8 replaced, `\r\n` folded to `\n`.
pub(crate) fn utf8_to_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).replace("\r\n", "\n")
}

/// A parsed extended clipboard message (the payload of a ServerCutText
/// with a negative length).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExtMessage {
    /// The server's capabilities: flags and the size limit for text (0 if
    /// text is not among its formats).
    Caps {
        flags: u32,
        text_max: u32,
    },
    Request {
        formats: u32,
    },
    Peek,
    Notify {
        formats: u32,
    },
    /// Data; `text` is present if the message carried UTF-8 text.
    Provide {
        text: Option<String>,
    },
}

/// Parses an extended clipboard payload; `max` bounds every declared size
/// and their total.
pub(crate) fn parse_ext(payload: &[u8], max: u32) -> Result<ExtMessage, RfbError> {
    let mut r = Reader::new(payload);
    let flags = r
        .u32()
        .ok_or(RfbError::BadClipboard("message shorter than its flags"))?;
    let formats = flags & FORMAT_MASK;
    if flags & ACTION_CAPS != 0 {
        let mut text_max = 0;
        for bit in 0..16 {
            if formats & (1 << bit) != 0 {
                let size = r
                    .u32()
                    .ok_or(RfbError::BadClipboard("caps message lacks a size"))?;
                if bit == 0 {
                    text_max = size;
                }
            }
        }
        return Ok(ExtMessage::Caps { flags, text_max });
    }
    match flags & ACTION_MASK {
        ACTION_REQUEST => Ok(ExtMessage::Request { formats }),
        ACTION_PEEK => Ok(ExtMessage::Peek),
        ACTION_NOTIFY => Ok(ExtMessage::Notify { formats }),
        ACTION_PROVIDE => {
            let rest = r.bytes(r.remaining()).unwrap_or_default();
            parse_provide(formats, rest, max)
        }
        _ => Err(RfbError::BadClipboard("unknown or combined action")),
    }
}

/// Inflates a provide payload: for each format bit, a U32 size and that
/// many bytes. Keeps the text, skips other formats, never inflates more
/// than the declared sizes (bounded by `max` in total).
fn parse_provide(formats: u32, compressed: &[u8], max: u32) -> Result<ExtMessage, RfbError> {
    let mut z = Inflater::new(compressed);
    let mut text = None;
    let mut total: u64 = 0;
    for bit in 0..16 {
        if formats & (1 << bit) == 0 {
            continue;
        }
        let mut size_bytes = [0u8; 4];
        z.read_exact(4, |chunk, at| {
            size_bytes[at..at + chunk.len()].copy_from_slice(chunk)
        })?;
        let size = u32::from_be_bytes(size_bytes);
        total += u64::from(size);
        if total > u64::from(max) {
            return Err(RfbError::TooLong {
                what: "extended clipboard data",
                len: total,
                max: u64::from(max),
            });
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if bit == 0 {
            let mut data = Vec::with_capacity(size.min(64 * 1024));
            z.read_exact(size, |chunk, _| data.extend_from_slice(chunk))?;
            text = Some(utf8_to_string(&data));
        } else {
            z.read_exact(size, |_, _| ())?;
        }
    }
    Ok(ExtMessage::Provide { text })
}

/// A pull inflater over one complete compressed buffer.
struct Inflater<'a> {
    z: Decompress,
    input: &'a [u8],
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> Inflater<'a> {
    fn new(input: &'a [u8]) -> Self {
        Inflater {
            z: Decompress::new(true),
            input,
            buf: Vec::with_capacity(32 * 1024),
            pos: 0,
        }
    }

    /// Hands exactly `n` inflated bytes to `sink` (in chunks, with their
    /// offset), inflating 32 KiB at a time.
    fn read_exact(
        &mut self,
        mut n: usize,
        mut sink: impl FnMut(&[u8], usize),
    ) -> Result<(), RfbError> {
        let mut at = 0;
        while n > 0 {
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
                let before = self.z.total_in();
                self.z
                    .decompress_vec(self.input, &mut self.buf, FlushDecompress::None)
                    .map_err(RfbError::Zlib)?;
                let used = usize::try_from(self.z.total_in() - before).unwrap_or(usize::MAX);
                self.input = self.input.get(used..).unwrap_or_default();
                if self.buf.is_empty() {
                    return Err(RfbError::BadClipboard("compressed data ends early"));
                }
            }
            let take = n.min(self.buf.len() - self.pos);
            sink(&self.buf[self.pos..self.pos + take], at);
            self.pos += take;
            at += take;
            n -= take;
        }
        Ok(())
    }
}

/// Appends a ClientCutText with an extended clipboard payload.
fn put_ext(out: &mut Vec<u8>, payload: &[u8]) {
    // Callers keep payloads far below i32::MAX (see `provide`).
    let len = i32::try_from(payload.len()).unwrap_or(i32::MAX);
    out.put_u8(CLIENT_CUT_TEXT);
    out.extend_from_slice(&[0, 0, 0]);
    out.put_i32(-len);
    out.extend_from_slice(payload);
}

/// Our capabilities: UTF-8 text, every action, and a 0 size limit so the
/// server announces changes (notify) instead of pushing data.
pub(crate) fn put_caps(out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(8);
    payload.put_u32(
        FORMAT_TEXT | ACTION_CAPS | ACTION_REQUEST | ACTION_PEEK | ACTION_NOTIFY | ACTION_PROVIDE,
    );
    payload.put_u32(0);
    put_ext(out, &payload);
}

/// A bare action (request, peek, notify) for `formats`.
pub(crate) fn put_action(out: &mut Vec<u8>, action: u32, formats: u32) {
    let mut payload = Vec::with_capacity(4);
    payload.put_u32(action | formats);
    put_ext(out, &payload);
}

/// The text as the extension carries it: `\r\n` line ends and a
/// terminating NUL.
pub(crate) fn wire_text(text: &str) -> Vec<u8> {
    let mut data = text
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes();
    data.push(0);
    data
}

/// The payload of a provide message for `text` (see [`wire_text`]). `None`
/// if it would not fit the message's 31-bit length.
pub(crate) fn provide_payload(text: &str) -> Option<Vec<u8>> {
    let data = wire_text(text);
    let size = u32::try_from(data.len()).ok()?;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&size.to_be_bytes()).ok()?;
    enc.write_all(&data).ok()?;
    let compressed = enc.finish().ok()?;
    let mut payload = Vec::with_capacity(compressed.len() + 4);
    payload.put_u32(ACTION_PROVIDE | FORMAT_TEXT);
    payload.extend_from_slice(&compressed);
    i32::try_from(payload.len()).ok()?;
    Some(payload)
}

/// Appends a provide message built by [`provide_payload`].
pub(crate) fn put_provide(out: &mut Vec<u8>, payload: &[u8]) {
    put_ext(out, payload);
}

/// Appends a classic ClientCutText with Latin-1 text.
pub(crate) fn put_latin1(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u8(CLIENT_CUT_TEXT);
    out.extend_from_slice(&[0, 0, 0]);
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn provide(formats: u32, body: &[u8]) -> Vec<u8> {
        let mut p = (ACTION_PROVIDE | formats).to_be_bytes().to_vec();
        p.extend_from_slice(&zlib(body));
        p
    }

    #[test]
    fn latin1_round_trip_and_replacement() {
        assert_eq!(latin1_to_string(b"caf\xe9\r\nok"), "café\nok");
        assert_eq!(
            string_to_latin1("Grüße — 日本 😀\r\n"),
            b"Gr\xfc\xdfe ? ?? ?\n"
        );
    }

    #[test]
    fn parse_table() {
        let mut caps = (ACTION_CAPS | ACTION_NOTIFY | FORMAT_TEXT | 4)
            .to_be_bytes()
            .to_vec();
        caps.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 5]);
        let text = "Grüße\r\n日本 😀\0";
        let mut body = u32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        body.extend_from_slice(text.as_bytes());
        // An HTML part after the text is skipped.
        let mut body_html = body.clone();
        body_html.extend_from_slice(&[0, 0, 0, 3, b'<', b'b', b'>']);
        let table: Vec<(Vec<u8>, ExtMessage)> = vec![
            (
                caps,
                ExtMessage::Caps {
                    flags: ACTION_CAPS | ACTION_NOTIFY | FORMAT_TEXT | 4,
                    text_max: 4096,
                },
            ),
            (
                (ACTION_REQUEST | 1).to_be_bytes().to_vec(),
                ExtMessage::Request { formats: 1 },
            ),
            (ACTION_PEEK.to_be_bytes().to_vec(), ExtMessage::Peek),
            (
                (ACTION_NOTIFY | 3).to_be_bytes().to_vec(),
                ExtMessage::Notify { formats: 3 },
            ),
            (
                provide(1, &body),
                ExtMessage::Provide {
                    text: Some("Grüße\n日本 😀".into()),
                },
            ),
            (
                provide(1 | 4, &body_html),
                ExtMessage::Provide {
                    text: Some("Grüße\n日本 😀".into()),
                },
            ),
            (
                provide(4, &[0, 0, 0, 1, b'x']),
                ExtMessage::Provide { text: None },
            ),
            // Invalid UTF-8 is replaced, not fatal.
            (
                provide(1, &[0, 0, 0, 3, b'a', 0xff, 0]),
                ExtMessage::Provide {
                    text: Some("a\u{fffd}".into()),
                },
            ),
        ];
        for (payload, expect) in table {
            assert_eq!(parse_ext(&payload, 1 << 20).unwrap(), expect, "{payload:?}");
        }
    }

    #[test]
    fn malformed_table() {
        let table: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0], "short flags"),
            (
                (ACTION_CAPS | 3).to_be_bytes().to_vec(),
                "caps without sizes",
            ),
            (
                (ACTION_PEEK | ACTION_NOTIFY).to_be_bytes().to_vec(),
                "two actions",
            ),
            (0u32.to_be_bytes().to_vec(), "no action"),
            (provide(1, &[0, 0, 0, 10, b'a']), "truncated data"),
            (provide(1, &[0, 0]), "truncated size"),
            (
                {
                    let mut p = provide(1, &[0, 0, 0, 5, 1, 2, 3, 4, 5]);
                    let n = p.len();
                    p.truncate(n - 6);
                    p
                },
                "truncated zlib",
            ),
            (
                [&(ACTION_PROVIDE | 1).to_be_bytes()[..], b"not zlib at all"].concat(),
                "not zlib",
            ),
        ];
        for (payload, what) in table {
            let got = parse_ext(&payload, 1 << 20);
            assert!(
                matches!(got, Err(RfbError::BadClipboard(_)) | Err(RfbError::Zlib(_))),
                "{what}: {got:?}"
            );
        }
        // Declared size beyond the limit, before any allocation.
        let got = parse_ext(&provide(1, &[0xff, 0xff, 0xff, 0xff]), 1 << 20);
        assert!(matches!(got, Err(RfbError::TooLong { .. })), "{got:?}");
    }

    #[test]
    fn provide_payload_round_trips() {
        let payload = provide_payload("a\nb — 😀").unwrap();
        let got = parse_ext(&payload, 1 << 20).unwrap();
        assert_eq!(
            got,
            ExtMessage::Provide {
                text: Some("a\nb — 😀".into())
            }
        );
        // On the wire the text has CRLF and a NUL.
        let mut z = Inflater::new(&payload[4..]);
        let mut all = Vec::new();
        z.read_exact(4 + 14, |c, _| all.extend_from_slice(c))
            .unwrap();
        assert_eq!(&all[4..], "a\r\nb — 😀\0".as_bytes());
    }
}
