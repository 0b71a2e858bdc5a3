//! ZRLE (encoding 16): zlib-compressed 64×64 tiles with palettes and
//! run-length encoding. One zlib stream lives for the whole connection.
//!
//! Compressed bytes are inflated as they arrive, a bounded chunk at a time,
//! and whole tiles are decoded from the inflated bytes; a rectangle never
//! inflates more than its tiles need (extra output is an error), so a zlib
//! bomb cannot make the client work or allocate beyond the rectangle.

use flate2::{Decompress, FlushDecompress};

use crate::event::{Event, Rect};
use crate::framebuffer::Framebuffer;
use crate::tiles::{TileGrid, TileKind, TileMerger};
use crate::wire::Reader;
use crate::RfbError;

const TILE: u16 = 64;
/// Inflate at most this much per call.
const CHUNK: usize = 32 * 1024;
/// Hand zlib this many compressed bytes per call.
const FEED: usize = 16 * 1024;
/// Worst-case inflated size of one 64×64 tile: subencoding byte, a
/// 127-entry palette of 3-byte CPIXELs, then plain RLE of single-pixel runs
/// (3 + 1 bytes per pixel).
const MAX_TILE_BYTES: usize = 1 + 127 * 3 + 64 * 64 * 4;

/// The largest compressed length accepted for `rect`: twice the worst
/// inflated size of its tiles plus room for zlib framing.
pub(crate) fn max_compressed_len(rect: Rect) -> u64 {
    let grid_tiles = u64::from(rect.width.div_ceil(TILE)) * u64::from(rect.height.div_ceil(TILE));
    let area = u64::from(rect.width) * u64::from(rect.height);
    let inflated = grid_tiles * (1 + 127 * 3) + area * 4;
    2 * inflated + 4096
}

/// `?` for "need more bytes".
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

/// Progress through one ZRLE rectangle (after its length field).
#[derive(Debug)]
pub(crate) struct ZrleDecoder {
    grid: TileGrid,
    merger: TileMerger,
    /// Compressed bytes of this rectangle not yet handed to zlib.
    compressed_left: u32,
    /// Inflated bytes not yet decoded.
    inflated: Vec<u8>,
    inflated_pos: usize,
    tile: Vec<u32>,
}

impl ZrleDecoder {
    pub(crate) fn new(rect: Rect, compressed_len: u32) -> Self {
        ZrleDecoder {
            grid: TileGrid::new(rect, TILE),
            merger: TileMerger::new(rect),
            compressed_left: compressed_len,
            inflated: Vec::new(),
            inflated_pos: 0,
            tile: vec![0; usize::from(TILE) * usize::from(TILE)],
        }
    }

    /// Consumes compressed bytes from `input` and decodes whole tiles.
    /// Returns the bytes used and, when the rectangle is complete, its
    /// events.
    ///
    /// zlib is always handed the same slices, `FEED` bytes (or what is left
    /// of the rectangle) at a time, whatever chunks the input arrived in, so
    /// results, errors included, never depend on how the stream was split.
    pub(crate) fn step(
        &mut self,
        input: &[u8],
        zlib: &mut Decompress,
        fb: &mut Framebuffer,
    ) -> Result<(usize, Option<Vec<Event>>), RfbError> {
        let mut used = 0usize;
        loop {
            while let Some(tile) = self.grid.current() {
                let data = &self.inflated[self.inflated_pos..];
                match decode_tile(data, tile.width, tile.height, &mut self.tile)? {
                    Some((n, kind)) => {
                        self.inflated_pos += n;
                        fb.put(tile, &self.tile[..tile.area()]);
                        self.merger.push(tile, kind);
                        self.grid.advance();
                    }
                    None => break,
                }
            }
            if self.grid.is_done() {
                if self.inflated_pos != self.inflated.len() {
                    return Err(RfbError::BadZrle("more data than the rectangle's tiles"));
                }
                return self.drain(input, used, zlib);
            }
            // Need more inflated bytes for the current tile.
            self.inflated.drain(..self.inflated_pos);
            self.inflated_pos = 0;
            if self.inflated.len() >= MAX_TILE_BYTES {
                // Cannot happen for a well-formed tile: every tile is
                // shorter than MAX_TILE_BYTES.
                return Err(RfbError::BadZrle("tile larger than possible"));
            }
            let Some((consumed, produced)) = self.inflate_step(input, &mut used, zlib)? else {
                return Ok((used, None));
            };
            if consumed == 0 && produced == 0 {
                return Err(if self.compressed_left == 0 {
                    RfbError::BadZrle("zlib data ends inside a tile")
                } else {
                    RfbError::BadZrle("zlib stream makes no progress")
                });
            }
        }
    }

    /// Hands zlib the next `FEED` bytes of the rectangle (fewer at its end,
    /// none once all are given, to collect pending output) and appends up
    /// to `CHUNK` inflated bytes. `None` if those bytes have not arrived.
    /// Returns (compressed consumed, inflated produced).
    fn inflate_step(
        &mut self,
        input: &[u8],
        used: &mut usize,
        zlib: &mut Decompress,
    ) -> Result<Option<(usize, usize)>, RfbError> {
        let left = usize::try_from(self.compressed_left).unwrap_or(usize::MAX);
        let want = left.min(FEED);
        if input.len() - *used < want {
            return Ok(None);
        }
        let src = &input[*used..*used + want];
        let start = self.inflated.len();
        self.inflated.resize(start + CHUNK, 0);
        let before_in = zlib.total_in();
        let before_out = zlib.total_out();
        let status = zlib.decompress(src, &mut self.inflated[start..], FlushDecompress::None);
        let consumed = usize::try_from(zlib.total_in() - before_in).unwrap_or(usize::MAX);
        let produced = usize::try_from(zlib.total_out() - before_out).unwrap_or(usize::MAX);
        self.inflated.truncate(start + produced.min(CHUNK));
        status.map_err(RfbError::Zlib)?;
        let consumed_u32 =
            u32::try_from(consumed).map_err(|_| RfbError::BadZrle("zlib overrun"))?;
        self.compressed_left = self
            .compressed_left
            .checked_sub(consumed_u32)
            .ok_or(RfbError::BadZrle("zlib overrun"))?;
        *used += consumed;
        Ok(Some((consumed, produced)))
    }

    /// After the last tile: the rest of the rectangle's compressed bytes
    /// (typically a sync-flush marker) must inflate to nothing.
    fn drain(
        &mut self,
        input: &[u8],
        mut used: usize,
        zlib: &mut Decompress,
    ) -> Result<(usize, Option<Vec<Event>>), RfbError> {
        while self.compressed_left > 0 {
            let Some((consumed, produced)) = self.inflate_step(input, &mut used, zlib)? else {
                return Ok((used, None));
            };
            if produced > 0 {
                return Err(RfbError::BadZrle("more data than the rectangle's tiles"));
            }
            if consumed == 0 {
                return Err(RfbError::BadZrle("zlib stream makes no progress"));
            }
        }
        let merger = std::mem::take(&mut self.merger);
        Ok((used, Some(merger.finish())))
    }
}

/// Reads a run length: one plus the sum of bytes up to and including the
/// first byte that is not 255. Fails as soon as it exceeds `max`.
fn run_length(r: &mut Reader<'_>, max: usize) -> Result<Option<usize>, RfbError> {
    let mut len = 1usize;
    loop {
        let b = need!(r.u8());
        len += usize::from(b);
        if len > max {
            return Err(RfbError::BadZrle("run longer than the rest of the tile"));
        }
        if b != 255 {
            return Ok(Some(len));
        }
    }
}

/// Decodes one tile from inflated bytes into `out` (row-major, `w * h`).
/// Returns `Ok(None)` if `input` does not hold the whole tile.
///
/// Subencodings 17..=127 (unused by the spec) are read as packed palettes
/// of 8-bit indices and 129 as a solid tile, as TigerVNC's decoder does.
fn decode_tile(
    input: &[u8],
    w: u16,
    h: u16,
    out: &mut [u32],
) -> Result<Option<(usize, TileKind)>, RfbError> {
    let mut r = Reader::new(input);
    let n = usize::from(w) * usize::from(h);
    let out = &mut out[..n];
    let mode = need!(r.u8());
    let rle = mode & 128 != 0;
    let palette_size = usize::from(mode & 127);
    let mut palette = [0u32; 127];
    for p in palette.iter_mut().take(palette_size) {
        *p = need!(r.cpixel());
    }
    let palette = &palette[..palette_size];
    if palette_size == 1 {
        out.fill(palette[0]);
        return Ok(Some((r.consumed(), TileKind::Solid(palette[0]))));
    }
    match (rle, palette_size) {
        (false, 0) => {
            for p in out.iter_mut() {
                *p = need!(r.cpixel());
            }
        }
        (false, _) => {
            let bits: usize = match palette_size {
                2 => 1,
                3..=4 => 2,
                5..=16 => 4,
                _ => 8,
            };
            let row_bytes = (usize::from(w) * bits).div_ceil(8);
            let mask = (1u16 << bits) - 1;
            for row in out.chunks_exact_mut(usize::from(w)) {
                let packed = need!(r.bytes(row_bytes));
                for (x, p) in row.iter_mut().enumerate() {
                    let bit = x * bits;
                    let shift = 8 - bits - bit % 8;
                    let index = usize::from((u16::from(packed[bit / 8]) >> shift) & mask);
                    *p = *palette
                        .get(index)
                        .ok_or(RfbError::BadZrle("palette index out of range"))?;
                }
            }
        }
        (true, 0) => {
            let mut filled = 0;
            while filled < n {
                let color = need!(r.cpixel());
                let len = need!(run_length(&mut r, n - filled)?);
                out[filled..filled + len].fill(color);
                filled += len;
            }
        }
        (true, _) => {
            let mut filled = 0;
            while filled < n {
                let index = need!(r.u8());
                let color = *palette
                    .get(usize::from(index & 127))
                    .ok_or(RfbError::BadZrle("palette index out of range"))?;
                let len = if index & 128 != 0 {
                    need!(run_length(&mut r, n - filled)?)
                } else {
                    1
                };
                out[filled..filled + len].fill(color);
                filled += len;
            }
        }
    }
    Ok(Some((r.consumed(), TileKind::Mixed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(input: &[u8], w: u16, h: u16) -> Result<Option<(usize, TileKind, Vec<u32>)>, RfbError> {
        let mut out = vec![0; 4096];
        Ok(decode_tile(input, w, h, &mut out)?.map(|(n, k)| {
            out.truncate(usize::from(w) * usize::from(h));
            (n, k, out)
        }))
    }

    const R: [u8; 3] = [0, 0, 0xff];
    const G: [u8; 3] = [0, 0xff, 0];
    const RED: u32 = 0xff0000;
    const GREEN: u32 = 0x00ff00;

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn subencodings_table() {
        type Case = (Vec<u8>, u16, u16, TileKind, Vec<u32>);
        let table: Vec<Case> = vec![
            // raw
            (
                cat(&[&[0], &R, &G]),
                2,
                1,
                TileKind::Mixed,
                vec![RED, GREEN],
            ),
            // solid
            (
                cat(&[&[1], &G]),
                2,
                2,
                TileKind::Solid(GREEN),
                vec![GREEN; 4],
            ),
            // 129: solid too (TigerVNC reading)
            (cat(&[&[129], &R]), 1, 2, TileKind::Solid(RED), vec![RED; 2]),
            // packed palette, 1 bit, rows padded to a byte
            (
                cat(&[&[2], &R, &G, &[0b0100_0000, 0b1000_0000]]),
                3,
                2,
                TileKind::Mixed,
                vec![RED, GREEN, RED, GREEN, RED, RED],
            ),
            // packed palette, 2 bits
            (
                cat(&[&[3], &R, &G, &[0, 0, 0], &[0b0001_1000]]),
                3,
                1,
                TileKind::Mixed,
                vec![RED, GREEN, 0],
            ),
            // packed palette, 4 bits
            (
                cat(&[&[5], &R, &G, &R, &G, &R, &[0x14, 0x00]]),
                3,
                1,
                TileKind::Mixed,
                vec![GREEN, RED, RED],
            ),
            // plain RLE: run of 3 then 1
            (
                cat(&[&[128], &R, &[2], &G, &[0]]),
                2,
                2,
                TileKind::Mixed,
                vec![RED, RED, RED, GREEN],
            ),
            // plain RLE with a 255-continued length: 300 = 1 + 255 + 44
            (
                cat(&[&[128], &G, &[255, 44]]),
                20,
                15,
                TileKind::Mixed,
                vec![GREEN; 300],
            ),
            // palette RLE: single pixel index, then a run
            (
                cat(&[&[130], &R, &G, &[1, 0x80, 1]]),
                3,
                1,
                TileKind::Mixed,
                vec![GREEN, RED, RED],
            ),
        ];
        for (input, w, h, kind, pixels) in table {
            let (n, k, out) = tile(&input, w, h).unwrap().expect("complete");
            assert_eq!((n, k, out), (input.len(), kind, pixels), "{input:?}");
            // Every strict prefix asks for more.
            for cut in 0..input.len() {
                assert!(
                    tile(&input[..cut], w, h).unwrap().is_none(),
                    "{input:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn malformed_tiles_table() {
        let table: Vec<(Vec<u8>, u16, u16)> = vec![
            // packed palette index 2 of 2 entries... with 2 bits (size 3) index 3
            (cat(&[&[3], &R, &G, &R, &[0b1100_0000]]), 1, 1),
            // plain RLE run longer than the tile
            (cat(&[&[128], &R, &[4]]), 2, 2),
            // 255-continued run overflowing
            (cat(&[&[128], &R, &[255, 255, 255]]), 64, 2),
            // palette RLE index beyond the palette
            (cat(&[&[130], &R, &G, &[2]]), 1, 1),
            // palette RLE run too long
            (cat(&[&[130], &R, &G, &[0x81, 5]]), 2, 2),
        ];
        for (input, w, h) in table {
            assert!(
                matches!(tile(&input, w, h), Err(RfbError::BadZrle(_))),
                "{input:?} -> {:?}",
                tile(&input, w, h)
            );
        }
    }

    #[test]
    fn compressed_bound_scales_with_area() {
        assert_eq!(max_compressed_len(Rect::new(0, 0, 0, 0)), 4096);
        let one = max_compressed_len(Rect::new(0, 0, 64, 64));
        assert_eq!(one, 2 * (382 + 4096 * 4) + 4096);
        assert!(max_compressed_len(Rect::new(0, 0, 8192, 8192)) < u64::from(u32::MAX));
    }
}
