//! Test-only server side: builds RFB byte streams as a server would send
//! them, so tests can be written from data.

use flate2::{Compress, Compression, FlushCompress};

use crate::event::Rect;

/// Little-endian bytes of an XRGB pixel in the client's format.
pub(crate) fn px(p: u32) -> [u8; 4] {
    let [_, r, g, b] = p.to_be_bytes();
    [b, g, r, 0]
}

/// ZRLE CPIXEL of an XRGB pixel.
pub(crate) fn cpx(p: u32) -> [u8; 3] {
    let [_, r, g, b] = p.to_be_bytes();
    [b, g, r]
}

pub(crate) fn u16be(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

pub(crate) fn u32be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// A server's byte stream under construction.
pub(crate) struct Server {
    pub(crate) bytes: Vec<u8>,
    zlib: Compress,
}

impl Server {
    pub(crate) fn new() -> Self {
        Server {
            bytes: Vec::new(),
            zlib: Compress::new(Compression::new(6), true),
        }
    }

    /// RFB 3.8, security None, OK, ServerInit `w`×`h` named "test".
    pub(crate) fn connected(w: u16, h: u16) -> Self {
        let mut s = Server::new();
        s.raw_bytes(b"RFB 003.008\n");
        s.raw_bytes(&[1, 1]);
        s.raw_bytes(&u32be(0));
        s.server_init(w, h, b"test");
        s
    }

    pub(crate) fn raw_bytes(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    pub(crate) fn server_init(&mut self, w: u16, h: u16, name: &[u8]) -> &mut Self {
        self.raw_bytes(&u16be(w));
        self.raw_bytes(&u16be(h));
        // 32bpp depth 24 LE true colour 255/255/255 16/8/0
        self.raw_bytes(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        self.raw_bytes(&u32be(u32::try_from(name.len()).unwrap()));
        self.raw_bytes(name)
    }

    pub(crate) fn update(&mut self, rects: u16) -> &mut Self {
        self.raw_bytes(&[0, 0]);
        self.raw_bytes(&u16be(rects))
    }

    pub(crate) fn rect(&mut self, r: Rect, encoding: i32) -> &mut Self {
        for v in [r.x, r.y, r.width, r.height] {
            self.raw_bytes(&u16be(v));
        }
        self.raw_bytes(&encoding.to_be_bytes())
    }

    pub(crate) fn raw(&mut self, r: Rect, pixels: &[u32]) -> &mut Self {
        assert_eq!(pixels.len(), r.area());
        self.rect(r, 0);
        for &p in pixels {
            self.raw_bytes(&px(p));
        }
        self
    }

    pub(crate) fn copy(&mut self, r: Rect, sx: u16, sy: u16) -> &mut Self {
        self.rect(r, 1);
        self.raw_bytes(&u16be(sx));
        self.raw_bytes(&u16be(sy))
    }

    /// A ZRLE rectangle from already-built tile bytes (inflated form),
    /// compressed on the connection's stream with a sync flush.
    pub(crate) fn zrle_tiles(&mut self, r: Rect, tiles: &[u8]) -> &mut Self {
        let data = self.compress(tiles);
        self.rect(r, 16);
        self.raw_bytes(&u32be(u32::try_from(data.len()).unwrap()));
        self.raw_bytes(&data)
    }

    /// A ZRLE rectangle for `pixels`: solid tiles where a tile is uniform,
    /// raw tiles otherwise.
    pub(crate) fn zrle(&mut self, r: Rect, pixels: &[u32]) -> &mut Self {
        let tiles = zrle_encode(r.width, r.height, pixels);
        self.zrle_tiles(r, &tiles)
    }

    pub(crate) fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 2 + 64);
        let start_in = self.zlib.total_in();
        loop {
            let consumed = usize::try_from(self.zlib.total_in() - start_in).unwrap();
            out.reserve(4096);
            self.zlib
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
                .unwrap();
            let consumed = usize::try_from(self.zlib.total_in() - start_in).unwrap();
            if consumed == data.len() && out.capacity() > out.len() {
                break;
            }
        }
        out
    }

    pub(crate) fn bell(&mut self) -> &mut Self {
        self.raw_bytes(&[2])
    }

    pub(crate) fn cut_text(&mut self, latin1: &[u8]) -> &mut Self {
        self.raw_bytes(&[3, 0, 0, 0]);
        self.raw_bytes(&u32be(u32::try_from(latin1.len()).unwrap()));
        self.raw_bytes(latin1)
    }

    /// ServerCutText with an extended clipboard payload.
    pub(crate) fn ext_clip(&mut self, payload: &[u8]) -> &mut Self {
        self.raw_bytes(&[3, 0, 0, 0]);
        let len = -i32::try_from(payload.len()).unwrap();
        self.raw_bytes(&len.to_be_bytes());
        self.raw_bytes(payload)
    }
}

/// ZRLE tiles (inflated) for a `w`×`h` area: solid where uniform, else raw.
pub(crate) fn zrle_encode(w: u16, h: u16, pixels: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    let (w, h) = (usize::from(w), usize::from(h));
    for ty in (0..h).step_by(64) {
        for tx in (0..w).step_by(64) {
            let tw = (w - tx).min(64);
            let th = (h - ty).min(64);
            let tile: Vec<u32> = (ty..ty + th)
                .flat_map(|y| (tx..tx + tw).map(move |x| (x, y)))
                .map(|(x, y)| pixels[y * w + x])
                .collect();
            if tile.iter().all(|&p| p == tile[0]) {
                out.push(1);
                out.extend_from_slice(&cpx(tile[0]));
            } else {
                out.push(0);
                for p in tile {
                    out.extend_from_slice(&cpx(p));
                }
            }
        }
    }
    out
}
