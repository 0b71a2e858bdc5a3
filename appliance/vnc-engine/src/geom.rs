//! Rectangles, the damage set and the per-tile change heat.
//!
//! All coordinates are `u32` with exclusive right and bottom edges, so no
//! arithmetic here can overflow for any framebuffer `daas-rfb` accepts
//! (at most 65535 × 65535).

use std::time::{Duration, Instant};

use daas_rfb::Rect;

/// A rectangle `[x0, x1) × [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Area {
    pub(crate) x0: u32,
    pub(crate) y0: u32,
    pub(crate) x1: u32,
    pub(crate) y1: u32,
}

impl Area {
    pub(crate) const fn new(x0: u32, y0: u32, x1: u32, y1: u32) -> Area {
        Area { x0, y0, x1, y1 }
    }

    /// The whole `width` × `height` screen.
    pub(crate) const fn screen(width: u32, height: u32) -> Area {
        Area::new(0, 0, width, height)
    }

    pub(crate) fn from_rect(r: Rect) -> Area {
        Area::new(u32::from(r.x), u32::from(r.y), r.right(), r.bottom())
    }

    pub(crate) fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }

    pub(crate) fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.x1 <= self.x0 || self.y1 <= self.y0
    }

    /// Pixels covered, as `u64` (never overflows).
    pub(crate) fn area(&self) -> u64 {
        u64::from(self.width()) * u64::from(self.height())
    }

    pub(crate) fn intersect(&self, o: &Area) -> Area {
        let a = Area::new(
            self.x0.max(o.x0),
            self.y0.max(o.y0),
            self.x1.min(o.x1),
            self.y1.min(o.y1),
        );
        if a.is_empty() {
            Area::default()
        } else {
            a
        }
    }

    pub(crate) fn union(&self, o: &Area) -> Area {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        Area::new(
            self.x0.min(o.x0),
            self.y0.min(o.y0),
            self.x1.max(o.x1),
            self.y1.max(o.y1),
        )
    }

    pub(crate) fn contains(&self, o: &Area) -> bool {
        o.is_empty() || (self.x0 <= o.x0 && self.y0 <= o.y0 && self.x1 >= o.x1 && self.y1 >= o.y1)
    }

    /// True when the two overlap or share an edge.
    pub(crate) fn touches(&self, o: &Area) -> bool {
        self.x0 <= o.x1 && o.x0 <= self.x1 && self.y0 <= o.y1 && o.y0 <= self.y1
    }

    /// Moves the area by (`dx`, `dy`), clipping at zero. Used to translate
    /// damage from a copy's source to its destination.
    pub(crate) fn translate(&self, dx: i64, dy: i64) -> Area {
        let shift = |v: u32, d: i64| -> u32 {
            u32::try_from((i64::from(v) + d).max(0)).unwrap_or(u32::MAX)
        };
        Area::new(
            shift(self.x0, dx),
            shift(self.y0, dy),
            shift(self.x1, dx),
            shift(self.y1, dy),
        )
    }
}

/// Most rectangles kept in a [`Damage`] set; beyond it the two whose union
/// wastes least are merged.
pub(crate) const MAX_DAMAGE_RECTS: usize = 24;

/// Slack, in pixels, a merge of two touching rectangles may add.
const MERGE_SLACK: u64 = 64 * 64;

/// Screen areas whose pixels the browser does not have yet: a small list of
/// rectangles, always a superset of the true damage.
#[derive(Debug, Clone, Default)]
pub(crate) struct Damage {
    rects: Vec<Area>,
}

impl Damage {
    pub(crate) fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    pub(crate) fn rects(&self) -> &[Area] {
        &self.rects
    }

    pub(crate) fn clear(&mut self) {
        self.rects.clear();
    }

    /// Adds `a`, merging it with rectangles it touches when that costs
    /// little, and keeping at most [`MAX_DAMAGE_RECTS`] rectangles.
    pub(crate) fn add(&mut self, a: Area) {
        if a.is_empty() {
            return;
        }
        let mut a = a;
        'again: loop {
            for i in 0..self.rects.len() {
                let r = self.rects[i];
                if r.contains(&a) {
                    return;
                }
                if a.contains(&r) {
                    self.rects.swap_remove(i);
                    continue 'again;
                }
                if r.touches(&a) {
                    let u = r.union(&a);
                    if u.area() <= r.area() + a.area() + MERGE_SLACK {
                        self.rects.swap_remove(i);
                        a = u;
                        continue 'again;
                    }
                }
            }
            break;
        }
        self.rects.push(a);
        while self.rects.len() > MAX_DAMAGE_RECTS {
            self.merge_cheapest_pair();
        }
    }

    fn merge_cheapest_pair(&mut self) {
        let mut best = (0, 1, u64::MAX);
        for i in 0..self.rects.len() {
            for j in i + 1..self.rects.len() {
                let (a, b) = (self.rects[i], self.rects[j]);
                let waste = a.union(&b).area().saturating_sub(a.area() + b.area());
                if waste < best.2 {
                    best = (i, j, waste);
                }
            }
        }
        let (i, j, _) = best;
        if j < self.rects.len() {
            let b = self.rects.swap_remove(j);
            let a = self.rects.swap_remove(i);
            self.add(a.union(&b));
        }
    }

    /// The parts of the damage inside `src`, moved by (`dx`, `dy`): what a
    /// copy from `src` carries over from not-yet-sent areas.
    pub(crate) fn translated_within(&self, src: &Area, dx: i64, dy: i64) -> Vec<Area> {
        self.rects
            .iter()
            .map(|r| r.intersect(src))
            .filter(|r| !r.is_empty())
            .map(|r| r.translate(dx, dy))
            .collect()
    }

    /// Clips every rectangle to a `width` × `height` screen.
    pub(crate) fn clip(&mut self, width: u32, height: u32) {
        let s = Area::screen(width, height);
        for r in &mut self.rects {
            *r = r.intersect(&s);
        }
        self.rects.retain(|r| !r.is_empty());
    }
}

/// Side of the square cells in which change frequency is tracked.
pub(crate) const HEAT_CELL: u32 = 64;

/// How often cell heat halves.
const HEAT_HALF_LIFE: Duration = Duration::from_millis(250);

/// How often each 64 × 64 cell of the screen changed recently: each frame
/// that damages a cell adds one; the count halves every 250 ms, so a cell
/// updated at `f` frames per second settles near `f / 2`.
#[derive(Debug, Clone)]
pub(crate) struct Heat {
    cols: u32,
    rows: u32,
    cells: Vec<u8>,
    last_decay: Instant,
}

impl Heat {
    pub(crate) fn new(width: u32, height: u32, now: Instant) -> Heat {
        let cols = width.div_ceil(HEAT_CELL);
        let rows = height.div_ceil(HEAT_CELL);
        // At most 1024 × 1024 cells for a 65535 × 65535 screen.
        let len = usize::try_from(u64::from(cols) * u64::from(rows)).unwrap_or(0);
        Heat {
            cols,
            rows,
            cells: vec![0; len],
            last_decay: now,
        }
    }

    fn decay(&mut self, now: Instant) {
        let mut elapsed = now.saturating_duration_since(self.last_decay);
        while elapsed >= HEAT_HALF_LIFE {
            let mut any = false;
            for c in &mut self.cells {
                *c /= 2;
                any |= *c != 0;
            }
            elapsed -= HEAT_HALF_LIFE;
            self.last_decay += HEAT_HALF_LIFE;
            if !any {
                self.last_decay = now;
                break;
            }
        }
    }

    fn cells_of(&self, a: &Area) -> (u32, u32, u32, u32) {
        let c0 = (a.x0 / HEAT_CELL).min(self.cols);
        let r0 = (a.y0 / HEAT_CELL).min(self.rows);
        let c1 = a.x1.div_ceil(HEAT_CELL).min(self.cols);
        let r1 = a.y1.div_ceil(HEAT_CELL).min(self.rows);
        (c0, r0, c1, r1)
    }

    /// Records one frame's damage.
    pub(crate) fn record(&mut self, damage: &[Area], now: Instant) {
        self.decay(now);
        // A cell touched by several rectangles of one frame counts once.
        let mut seen = vec![false; self.cells.len()];
        for a in damage {
            let (c0, r0, c1, r1) = self.cells_of(a);
            for r in r0..r1 {
                for c in c0..c1 {
                    let i = (r * self.cols + c) as usize;
                    if let (Some(s), Some(cell)) = (seen.get_mut(i), self.cells.get_mut(i)) {
                        if !*s {
                            *s = true;
                            *cell = cell.saturating_add(1);
                        }
                    }
                }
            }
        }
    }

    /// The hottest cell under `a`.
    pub(crate) fn max_in(&self, a: &Area) -> u8 {
        let (c0, r0, c1, r1) = self.cells_of(a);
        let mut m = 0;
        for r in r0..r1 {
            for c in c0..c1 {
                m = m.max(
                    self.cells
                        .get((r * self.cols + c) as usize)
                        .copied()
                        .unwrap_or(0),
                );
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(x0: u32, y0: u32, x1: u32, y1: u32) -> Area {
        Area::new(x0, y0, x1, y1)
    }

    #[test]
    fn area_math() {
        let r = a(10, 10, 20, 30);
        assert_eq!((r.width(), r.height(), r.area()), (10, 20, 200));
        assert_eq!(r.intersect(&a(15, 0, 100, 12)), a(15, 10, 20, 12));
        assert!(r.intersect(&a(20, 10, 30, 30)).is_empty());
        assert!(r.touches(&a(20, 10, 30, 30)));
        assert!(!r.touches(&a(21, 10, 30, 30)));
        assert_eq!(r.union(&a(0, 0, 1, 1)), a(0, 0, 20, 30));
        assert_eq!(r.translate(-15, 5), a(0, 15, 5, 35));
        assert!(a(0, 0, 0, 5).is_empty());
        let big = Area::screen(65535, 65535);
        assert_eq!(big.area(), 65535 * 65535);
    }

    #[test]
    fn damage_merges_neighbours_and_stays_small() {
        let mut d = Damage::default();
        d.add(a(0, 0, 8, 16));
        d.add(a(8, 0, 16, 16));
        assert_eq!(d.rects(), &[a(0, 0, 16, 16)]);
        d.add(a(2, 2, 4, 4));
        assert_eq!(d.rects().len(), 1);
        // Far apart: kept separate.
        d.add(a(1000, 1000, 1010, 1010));
        assert_eq!(d.rects().len(), 2);
        // Many scattered rectangles: bounded.
        for i in 0..200 {
            d.add(a(
                i * 37 % 1900,
                i * 53 % 1000,
                i * 37 % 1900 + 5,
                i * 53 % 1000 + 5,
            ));
        }
        assert!(d.rects().len() <= MAX_DAMAGE_RECTS);
        // Still a superset of everything added.
        for i in 0..200 {
            let r = a(
                i * 37 % 1900,
                i * 53 % 1000,
                i * 37 % 1900 + 5,
                i * 53 % 1000 + 5,
            );
            assert!(d.rects().iter().any(|x| x.contains(&r)), "{r:?} lost");
        }
        d.clip(100, 100);
        assert!(d.rects().iter().all(|r| r.x1 <= 100 && r.y1 <= 100));
        d.add(a(5, 5, 5, 50));
        assert!(d.rects().iter().all(|r| !r.is_empty()));
    }

    #[test]
    fn translated_damage_follows_a_copy() {
        let mut d = Damage::default();
        d.add(a(0, 100, 50, 110));
        // Scroll up by 20: source rows 20.., destination rows 0..
        let moved = d.translated_within(&a(0, 20, 640, 480), 0, -20);
        assert_eq!(moved, vec![a(0, 80, 50, 90)]);
        assert!(d.translated_within(&a(0, 200, 640, 480), 0, -20).is_empty());
    }

    #[test]
    fn heat_counts_and_decays() {
        let t0 = Instant::now();
        let mut h = Heat::new(200, 100, t0);
        for i in 0..8 {
            h.record(
                &[a(0, 0, 10, 10), a(5, 5, 20, 20)],
                t0 + Duration::from_millis(i * 10),
            );
        }
        assert_eq!(h.max_in(&a(0, 0, 64, 64)), 8);
        assert_eq!(h.max_in(&a(64, 0, 200, 100)), 0);
        h.record(&[], t0 + Duration::from_millis(80 + 500));
        assert_eq!(h.max_in(&a(0, 0, 1, 1)), 2);
        h.record(&[], t0 + Duration::from_secs(60));
        assert_eq!(h.max_in(&a(0, 0, 1, 1)), 0);
        // Out of range areas are harmless.
        assert_eq!(h.max_in(&a(5000, 5000, 6000, 6000)), 0);
        h.record(&[a(5000, 5000, 6000, 6000)], t0);
    }
}
