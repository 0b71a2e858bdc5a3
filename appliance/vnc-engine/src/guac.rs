//! Writing Guacamole instructions as guacd does: argument order, layer
//! numbers and composite modes.
//!
//! Facts taken from guacamole-server (`src/libguac/protocol.c`,
//! `src/libguac/display-*.c`) and guacamole-common-js (`Client.js`):
//!
//! | instruction | arguments |
//! | --- | --- |
//! | `size` | layer, width, height |
//! | `rect` | layer, x, y, width, height (adds to the layer's path) |
//! | `cfill` | mask, layer, r, g, b, a (fills the path, then closes it) |
//! | `copy` | src layer, x, y, width, height, mask, dst layer, x, y |
//! | `img` | stream, mask, layer, mimetype, x, y |
//! | `blob` | stream, base64 data (each blob decodes on its own) |
//! | `end` | stream |
//! | `cursor` | hotspot x, hotspot y, src layer, x, y, width, height |
//! | `sync` | timestamp (ms), logical frames |
//! | `clipboard` | stream, mimetype |
//! | `ack` | stream, message, status |
//!
//! Masks: `GUAC_COMP_OVER` = 0xE (14) draws normally; `GUAC_COMP_ROUT` =
//! 0x2 clears where the source is opaque (guacd clears a buffer with
//! `cfill` ROUT black before drawing an image with alpha into it).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use daas_guacamole::write_instruction;

/// Draw normally (`GUAC_COMP_OVER`).
pub(crate) const MASK_OVER: u8 = 0xE;
/// Clear the destination where the source is opaque (`GUAC_COMP_ROUT`).
pub(crate) const MASK_ROUT: u8 = 0x2;
/// The visible default layer.
pub(crate) const LAYER_DEFAULT: i32 = 0;
/// The off-screen buffer holding the cursor image.
pub(crate) const LAYER_CURSOR: i32 = -1;
/// Raw bytes per `blob`: guacd's `GUAC_PROTOCOL_BLOB_MAX_LENGTH`, a
/// multiple of 3, so every blob but the last is unpadded base64 and the
/// 8064 characters stay under the 8192 code-point element limit.
pub(crate) const BLOB_BYTES: usize = 6048;

/// Chunks handed to the tunnel hold whole instructions and are cut once
/// they reach this size.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// Counters of what an [`Out`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) instructions: u64,
    pub(crate) png: u64,
    pub(crate) jpeg: u64,
    pub(crate) copy: u64,
    pub(crate) fill: u64,
}

/// An instruction buffer with counters. Stream indices rotate through a
/// small range: each image stream is ended before the next one starts.
#[derive(Debug, Default)]
pub(crate) struct Out {
    buf: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    pub(crate) counts: Counts,
    next_stream: u32,
    /// The colour of the `rect` path being built, if any.
    open_fill: Option<u32>,
    b64: String,
}

fn num(n: impl itoa_like::Int) -> itoa_like::Buf {
    itoa_like::Buf::new(n)
}

/// Small integer formatting without allocation.
mod itoa_like {
    pub(crate) trait Int: Copy {
        fn to_i64(self) -> i64;
    }
    macro_rules! int {
        ($($t:ty),*) => { $(impl Int for $t { fn to_i64(self) -> i64 { i64::from(self) } })* };
    }
    int!(u8, u16, u32, i32, i64);
    impl Int for u64 {
        fn to_i64(self) -> i64 {
            i64::try_from(self).unwrap_or(i64::MAX)
        }
    }

    pub(crate) struct Buf {
        bytes: [u8; 24],
        start: usize,
    }

    impl Buf {
        pub(crate) fn new(n: impl Int) -> Buf {
            let v = n.to_i64();
            let mut bytes = [0u8; 24];
            let mut i = bytes.len();
            let mut m = v.unsigned_abs();
            loop {
                i -= 1;
                bytes[i] = b'0' + (m % 10) as u8;
                m /= 10;
                if m == 0 {
                    break;
                }
            }
            if v < 0 {
                i -= 1;
                bytes[i] = b'-';
            }
            Buf { bytes, start: i }
        }
    }

    impl AsRef<str> for Buf {
        fn as_ref(&self) -> &str {
            std::str::from_utf8(&self.bytes[self.start..]).unwrap_or("0")
        }
    }
}

impl Out {
    /// Takes what was written so far, as chunks of whole instructions of
    /// about [`CHUNK_BYTES`] each, and the counters.
    pub(crate) fn take(&mut self) -> (Vec<Vec<u8>>, Counts) {
        self.close_fill();
        let mut chunks = std::mem::take(&mut self.chunks);
        if !self.buf.is_empty() {
            chunks.push(std::mem::take(&mut self.buf));
        }
        (chunks, std::mem::take(&mut self.counts))
    }

    fn stream(&mut self) -> u32 {
        // guacd allocates the lowest free index; each of our streams ends
        // before the next starts, so a short rotation is plenty.
        self.next_stream = (self.next_stream + 1) % 8;
        self.next_stream + 1
    }

    fn ins<const N: usize>(&mut self, opcode: &str, args: [&str; N]) {
        write_instruction(&mut self.buf, opcode, args);
        self.counts.instructions += 1;
        if self.buf.len() >= CHUNK_BYTES {
            let full = std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(CHUNK_BYTES + BLOB_BYTES * 2),
            );
            self.chunks.push(full);
        }
    }

    fn close_fill(&mut self) {
        if let Some(c) = self.open_fill.take() {
            let [_, r, g, b] = c.to_be_bytes();
            self.ins(
                "cfill",
                [
                    num(MASK_OVER).as_ref(),
                    num(LAYER_DEFAULT).as_ref(),
                    num(r).as_ref(),
                    num(g).as_ref(),
                    num(b).as_ref(),
                    "255",
                ],
            );
        }
    }

    /// `size,layer,w,h`.
    pub(crate) fn size(&mut self, layer: i32, w: u32, h: u32) {
        self.close_fill();
        self.ins(
            "size",
            [num(layer).as_ref(), num(w).as_ref(), num(h).as_ref()],
        );
    }

    /// `name,text`.
    pub(crate) fn name(&mut self, name: &str) {
        self.close_fill();
        self.ins("name", [name]);
    }

    /// A solid rectangle on the default layer. Consecutive fills of one
    /// colour share a single `cfill` (the `rect`s build one path).
    pub(crate) fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, color: u32) {
        if self.open_fill.is_some_and(|c| c != color) {
            self.close_fill();
        }
        self.ins(
            "rect",
            [
                num(LAYER_DEFAULT).as_ref(),
                num(x).as_ref(),
                num(y).as_ref(),
                num(w).as_ref(),
                num(h).as_ref(),
            ],
        );
        self.open_fill = Some(color);
        self.counts.fill += 1;
    }

    /// A copy within the default layer.
    pub(crate) fn copy(&mut self, sx: u32, sy: u32, w: u32, h: u32, dx: u32, dy: u32) {
        self.close_fill();
        self.ins(
            "copy",
            [
                num(LAYER_DEFAULT).as_ref(),
                num(sx).as_ref(),
                num(sy).as_ref(),
                num(w).as_ref(),
                num(h).as_ref(),
                num(MASK_OVER).as_ref(),
                num(LAYER_DEFAULT).as_ref(),
                num(dx).as_ref(),
                num(dy).as_ref(),
            ],
        );
        self.counts.copy += 1;
    }

    /// `img` + `blob`s + `end`: an encoded image drawn at (x, y).
    pub(crate) fn image(&mut self, layer: i32, mimetype: &str, x: u32, y: u32, data: &[u8]) {
        self.close_fill();
        let stream = self.stream();
        let s = num(stream);
        self.ins(
            "img",
            [
                s.as_ref(),
                num(MASK_OVER).as_ref(),
                num(layer).as_ref(),
                mimetype,
                num(x).as_ref(),
                num(y).as_ref(),
            ],
        );
        self.blobs(s.as_ref(), data);
        self.ins("end", [s.as_ref()]);
        match mimetype {
            "image/jpeg" => self.counts.jpeg += 1,
            _ => self.counts.png += 1,
        }
    }

    fn blobs(&mut self, stream: &str, data: &[u8]) {
        let mut b64 = std::mem::take(&mut self.b64);
        for chunk in data.chunks(BLOB_BYTES) {
            b64.clear();
            STANDARD.encode_string(chunk, &mut b64);
            self.ins("blob", [stream, b64.as_str()]);
        }
        self.b64 = b64;
    }

    /// Draws a cursor image into the cursor buffer and makes it the cursor.
    /// A 0 × 0 cursor hides the pointer.
    pub(crate) fn cursor(&mut self, hx: u32, hy: u32, w: u32, h: u32, png: Option<&[u8]>) {
        self.close_fill();
        if let Some(png) = png {
            let l = num(LAYER_CURSOR);
            self.ins("size", [l.as_ref(), num(w).as_ref(), num(h).as_ref()]);
            self.ins(
                "rect",
                [l.as_ref(), "0", "0", num(w).as_ref(), num(h).as_ref()],
            );
            self.ins(
                "cfill",
                [num(MASK_ROUT).as_ref(), l.as_ref(), "0", "0", "0", "255"],
            );
            self.image(LAYER_CURSOR, "image/png", 0, 0, png);
        }
        self.ins(
            "cursor",
            [
                num(hx).as_ref(),
                num(hy).as_ref(),
                num(LAYER_CURSOR).as_ref(),
                "0",
                "0",
                num(w).as_ref(),
                num(h).as_ref(),
            ],
        );
    }

    /// `sync,timestamp,frames`: the end of a frame.
    pub(crate) fn sync(&mut self, timestamp_ms: u64, frames: u32) {
        self.close_fill();
        self.ins("sync", [num(timestamp_ms).as_ref(), num(frames).as_ref()]);
    }

    /// A `clipboard` stream of UTF-8 text.
    pub(crate) fn clipboard(&mut self, text: &str) {
        self.close_fill();
        let stream = self.stream();
        let s = num(stream);
        self.ins("clipboard", [s.as_ref(), "text/plain"]);
        self.blobs(s.as_ref(), text.as_bytes());
        self.ins("end", [s.as_ref()]);
    }

    /// `ack,stream,message,status`.
    pub(crate) fn ack(&mut self, stream: &str, message: &str, status: u16) {
        self.close_fill();
        self.ins("ack", [stream, message, num(status).as_ref()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daas_guacamole::{Decoder, Instruction};

    /// Decodes chunks, checking that each holds whole instructions.
    fn decode(chunks: &[Vec<u8>]) -> Vec<Instruction> {
        let mut v = Vec::new();
        for c in chunks {
            assert!(c.len() < CHUNK_BYTES + 9000);
            let mut d = Decoder::new();
            d.push(c).unwrap();
            while let Some(i) = d.next_instruction().unwrap() {
                v.push(i);
            }
            assert_eq!(d.buffered_len(), 0);
        }
        v
    }

    fn text(i: &[Instruction]) -> Vec<String> {
        i.iter()
            .filter(|i| i.opcode != "blob")
            .map(|i| format!("{},{}", i.opcode, i.args.join(",")))
            .collect()
    }

    #[test]
    fn numbers() {
        for (n, s) in [
            (0i64, "0"),
            (-1, "-1"),
            (1_700_000_000_123, "1700000000123"),
            (i64::MIN + 1, "-9223372036854775807"),
        ] {
            assert_eq!(num(n).as_ref(), s);
        }
        assert_eq!(num(u64::MAX).as_ref(), "9223372036854775807");
    }

    #[test]
    fn fills_share_a_cfill_per_colour() {
        let mut o = Out::default();
        o.fill(0, 0, 10, 10, 0x00ff_0000);
        o.fill(10, 0, 10, 10, 0x00ff_0000);
        o.fill(0, 10, 5, 5, 0x0000_00ff);
        o.copy(0, 10, 20, 20, 0, 0);
        o.sync(42, 1);
        let (bytes, counts) = o.take();
        assert_eq!(
            text(&decode(&bytes)),
            [
                "rect,0,0,0,10,10",
                "rect,0,10,0,10,10",
                "cfill,14,0,255,0,0,255",
                "rect,0,0,10,5,5",
                "cfill,14,0,0,0,255,255",
                "copy,0,0,10,20,20,14,0,0,0",
                "sync,42,1",
            ]
        );
        assert_eq!(counts.instructions, 7);
        assert_eq!((counts.fill, counts.copy), (3, 1));
        // A pending fill is closed by take().
        o.fill(1, 1, 1, 1, 5);
        let (bytes, _) = o.take();
        assert_eq!(
            text(&decode(&bytes)),
            ["rect,0,1,1,1,1", "cfill,14,0,0,0,5,255"]
        );
    }

    #[test]
    fn images_are_split_into_independent_blobs() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut o = Out::default();
        o.image(0, "image/png", 5, 6, &data);
        let (bytes, counts) = o.take();
        let ins = decode(&bytes);
        assert_eq!(ins[0].opcode, "img");
        let stream = ins[0].args[0].clone();
        assert_eq!(ins[0].args[1..], ["14", "0", "image/png", "5", "6"]);
        let mut back = Vec::new();
        for b in &ins[1..ins.len() - 1] {
            assert_eq!(b.opcode, "blob");
            assert_eq!(b.args[0], stream);
            assert!(b.args[1].len() <= 8064);
            back.extend(STANDARD.decode(&b.args[1]).unwrap());
        }
        assert_eq!(back, data);
        assert_eq!(ins.last().unwrap().opcode, "end");
        assert_eq!(counts.png, 1);
        assert_eq!(counts.instructions, ins.len() as u64);
    }

    #[test]
    fn cursor_and_clipboard() {
        let mut o = Out::default();
        o.cursor(3, 4, 16, 16, Some(b"PNG"));
        o.clipboard("Grüße — 日本 😀");
        o.ack("7", "OK", 0);
        let (bytes, _) = o.take();
        let ins = decode(&bytes);
        let t = text(&ins);
        assert_eq!(t[0], "size,-1,16,16");
        assert_eq!(t[1], "rect,-1,0,0,16,16");
        assert_eq!(t[2], "cfill,2,-1,0,0,0,255");
        assert!(t[3].starts_with("img,") && t[3].ends_with(",14,-1,image/png,0,0"));
        assert!(t[4].starts_with("end,"));
        assert_eq!(t[5], "cursor,3,4,-1,0,0,16,16");
        assert!(t[6].starts_with("clipboard,") && t[6].ends_with(",text/plain"));
        let blob = ins.iter().filter(|i| i.opcode == "blob").nth(1).unwrap();
        assert_eq!(
            String::from_utf8(STANDARD.decode(&blob.args[1]).unwrap()).unwrap(),
            "Grüße — 日本 😀"
        );
        assert_eq!(t[8], "ack,7,OK,0");
    }
}
