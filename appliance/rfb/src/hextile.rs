//! Hextile (encoding 5): 16×16 tiles, each raw or background plus
//! subrectangles. Decoded tile by tile as bytes arrive.

use crate::event::{Event, Rect};
use crate::framebuffer::Framebuffer;
use crate::tiles::{TileGrid, TileKind, TileMerger};
use crate::wire::Reader;
use crate::RfbError;

const RAW: u8 = 1;
const BACKGROUND: u8 = 2;
const FOREGROUND: u8 = 4;
const ANY_SUBRECTS: u8 = 8;
const SUBRECTS_COLOURED: u8 = 16;

/// Progress through one Hextile rectangle.
#[derive(Debug, Clone)]
pub(crate) struct HextileDecoder {
    grid: TileGrid,
    merger: TileMerger,
    // Like TigerVNC, background and foreground start black and carry over
    // from tile to tile, whatever the previous tile was.
    bg: u32,
    fg: u32,
    tile: Vec<u32>,
}

/// `?` for "need more bytes": returns `Ok(None)` from the enclosing function.
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl HextileDecoder {
    pub(crate) fn new(rect: Rect) -> Self {
        HextileDecoder {
            grid: TileGrid::new(rect, 16),
            merger: TileMerger::new(rect),
            bg: 0,
            fg: 0,
            tile: vec![0; 256],
        }
    }

    /// Decodes as many whole tiles as `input` holds. Returns the bytes used
    /// and, once the last tile is done, the rectangle's events.
    pub(crate) fn step(
        &mut self,
        input: &[u8],
        fb: &mut Framebuffer,
    ) -> Result<(usize, Option<Vec<Event>>), RfbError> {
        let mut used = 0;
        while let Some(tile) = self.grid.current() {
            match self.decode_tile(&input[used..], tile)? {
                Some((n, kind)) => {
                    used += n;
                    fb.put(tile, &self.tile[..tile.area()]);
                    self.merger.push(tile, kind);
                    self.grid.advance();
                }
                None => return Ok((used, None)),
            }
        }
        let merger = std::mem::take(&mut self.merger);
        Ok((used, Some(merger.finish())))
    }

    /// Decodes one tile into `self.tile` if `input` holds all of it; state
    /// (background, foreground) changes only when the tile is complete.
    fn decode_tile(
        &mut self,
        input: &[u8],
        tile: Rect,
    ) -> Result<Option<(usize, TileKind)>, RfbError> {
        let mut r = Reader::new(input);
        let mask = need!(r.u8());
        let n = tile.area();
        let out = &mut self.tile[..n];
        if mask & RAW != 0 {
            for p in out.iter_mut() {
                *p = need!(r.pixel());
            }
            return Ok(Some((r.consumed(), TileKind::Mixed)));
        }
        let mut bg = self.bg;
        let mut fg = self.fg;
        if mask & BACKGROUND != 0 {
            bg = need!(r.pixel());
        }
        if mask & FOREGROUND != 0 {
            fg = need!(r.pixel());
        }
        out.fill(bg);
        let mut kind = TileKind::Solid(bg);
        if mask & ANY_SUBRECTS != 0 {
            let count = need!(r.u8());
            for _ in 0..count {
                let color = if mask & SUBRECTS_COLOURED != 0 {
                    need!(r.pixel())
                } else {
                    fg
                };
                let xy = need!(r.u8());
                let wh = need!(r.u8());
                let (sx, sy) = (u16::from(xy >> 4), u16::from(xy & 15));
                let (sw, sh) = (u16::from(wh >> 4) + 1, u16::from(wh & 15) + 1);
                if sx + sw > tile.width || sy + sh > tile.height {
                    return Err(RfbError::BadHextile("subrectangle outside its tile"));
                }
                let tw = usize::from(tile.width);
                for y in sy..sy + sh {
                    let start = usize::from(y) * tw + usize::from(sx);
                    out[start..start + usize::from(sw)].fill(color);
                }
                if color != bg {
                    kind = TileKind::Mixed;
                }
            }
        }
        self.bg = bg;
        self.fg = fg;
        Ok(Some((r.consumed(), kind)))
    }
}
