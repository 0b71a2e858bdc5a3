//! Turns per-tile results of a tiled encoding (Hextile, ZRLE) into a few
//! drawing events: horizontal runs of tiles of the same kind become one
//! event, and full-width rows of the same kind stack into one.

use crate::event::{Event, Rect};

/// What one decoded tile turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TileKind {
    /// One colour over the whole tile.
    Solid(u32),
    /// Anything else: the translator must read the pixels.
    Mixed,
}

/// Iterates the tiles of a rectangle, left to right, top to bottom.
#[derive(Debug, Clone)]
pub(crate) struct TileGrid {
    rect: Rect,
    size: u16,
    next: u32,
    total: u32,
    across: u32,
}

impl TileGrid {
    pub(crate) fn new(rect: Rect, size: u16) -> Self {
        let across = u32::from(rect.width).div_ceil(u32::from(size));
        let down = u32::from(rect.height).div_ceil(u32::from(size));
        TileGrid {
            rect,
            size,
            next: 0,
            total: across * down,
            across,
        }
    }

    /// The tile to decode next, or `None` when all are done.
    pub(crate) fn current(&self) -> Option<Rect> {
        if self.next >= self.total {
            return None;
        }
        let size = u32::from(self.size);
        let col = self.next % self.across;
        let row = self.next / self.across;
        let dx = col * size;
        let dy = row * size;
        let w = (u32::from(self.rect.width) - dx).min(size);
        let h = (u32::from(self.rect.height) - dy).min(size);
        // Every value is bounded by the rectangle, itself inside the u16
        // framebuffer, so the conversions cannot fail.
        let conv = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        Some(Rect::new(
            conv(u32::from(self.rect.x) + dx),
            conv(u32::from(self.rect.y) + dy),
            conv(w),
            conv(h),
        ))
    }

    pub(crate) fn advance(&mut self) {
        self.next += 1;
    }

    pub(crate) fn is_done(&self) -> bool {
        self.next >= self.total
    }
}

/// Collects tiles into merged events.
#[derive(Debug, Clone, Default)]
pub(crate) struct TileMerger {
    rect: Rect,
    row: Vec<(Rect, TileKind)>,
    events: Vec<(Rect, TileKind)>,
}

impl TileMerger {
    pub(crate) fn new(rect: Rect) -> Self {
        TileMerger {
            rect,
            row: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Records one tile; tiles arrive in grid order.
    pub(crate) fn push(&mut self, tile: Rect, kind: TileKind) {
        match self.row.last_mut() {
            Some((span, k)) if *k == kind && span.right() == u32::from(tile.x) => {
                span.width += tile.width;
            }
            _ => self.row.push((tile, kind)),
        }
        if tile.right() == self.rect.right() {
            self.end_row();
        }
    }

    fn end_row(&mut self) {
        let full_row = self.row.len() == 1 && self.row[0].0.width == self.rect.width;
        if full_row {
            let (span, kind) = self.row[0];
            if let Some((prev, prev_kind)) = self.events.last_mut() {
                if *prev_kind == kind
                    && prev.x == span.x
                    && prev.width == span.width
                    && prev.bottom() == u32::from(span.y)
                {
                    prev.height += span.height;
                    self.row.clear();
                    return;
                }
            }
        }
        self.events.append(&mut self.row);
    }

    /// The merged events, in order.
    pub(crate) fn finish(self) -> Vec<Event> {
        let mut out = Vec::with_capacity(self.events.len() + self.row.len());
        for (rect, kind) in self.events.into_iter().chain(self.row) {
            out.push(match kind {
                TileKind::Solid(color) => Event::Fill { rect, color },
                TileKind::Mixed => Event::Pixels { rect },
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rect: Rect, size: u16, kinds: &[TileKind]) -> Vec<Event> {
        let mut grid = TileGrid::new(rect, size);
        let mut m = TileMerger::new(rect);
        for &k in kinds {
            let tile = grid.current().expect("more kinds than tiles");
            m.push(tile, k);
            grid.advance();
        }
        assert!(grid.is_done(), "fewer kinds than tiles");
        m.finish()
    }

    #[test]
    fn grid_covers_the_rectangle_with_partial_edges() {
        let mut grid = TileGrid::new(Rect::new(10, 20, 40, 17), 16);
        let mut tiles = Vec::new();
        while let Some(t) = grid.current() {
            tiles.push(t);
            grid.advance();
        }
        assert_eq!(
            tiles,
            vec![
                Rect::new(10, 20, 16, 16),
                Rect::new(26, 20, 16, 16),
                Rect::new(42, 20, 8, 16),
                Rect::new(10, 36, 16, 1),
                Rect::new(26, 36, 16, 1),
                Rect::new(42, 36, 8, 1),
            ]
        );
        assert!(TileGrid::new(Rect::new(0, 0, 0, 5), 16).is_done());
    }

    #[test]
    fn merging_table() {
        use TileKind::*;
        let r = Rect::new(0, 0, 32, 32);
        let table: Vec<(&[TileKind], Vec<Event>)> = vec![
            (
                &[Solid(1), Solid(1), Solid(1), Solid(1)],
                vec![Event::Fill { rect: r, color: 1 }],
            ),
            (
                &[Mixed, Mixed, Mixed, Mixed],
                vec![Event::Pixels { rect: r }],
            ),
            (
                &[Solid(1), Mixed, Mixed, Mixed],
                vec![
                    Event::Fill {
                        rect: Rect::new(0, 0, 16, 16),
                        color: 1,
                    },
                    Event::Pixels {
                        rect: Rect::new(16, 0, 16, 16),
                    },
                    Event::Pixels {
                        rect: Rect::new(0, 16, 32, 16),
                    },
                ],
            ),
            (
                &[Solid(1), Solid(2), Solid(2), Solid(2)],
                vec![
                    Event::Fill {
                        rect: Rect::new(0, 0, 16, 16),
                        color: 1,
                    },
                    Event::Fill {
                        rect: Rect::new(16, 0, 16, 16),
                        color: 2,
                    },
                    Event::Fill {
                        rect: Rect::new(0, 16, 32, 16),
                        color: 2,
                    },
                ],
            ),
        ];
        for (kinds, expect) in table {
            assert_eq!(run(r, 16, kinds), expect, "{kinds:?}");
        }
    }
}
