//! The browser's picture as the engine tracks it: what still has to be
//! drawn, and how a frame is composed from it.
//!
//! Between two frames the engine collects, in server order, the operations
//! it can replay exactly in the browser (solid fills and copies) and the
//! damaged areas whose pixels it must send. A frame replays the operations
//! in order, then draws the damaged areas from the *current* framebuffer,
//! so however many server updates were coalesced the browser ends with
//! the newest pixels and nothing stale.
//!
//! The invariant: after a frame's operations, every pixel where the
//! browser could differ from the framebuffer lies in the damage. A copy
//! whose source overlaps not-yet-sent damage carries that damage to its
//! destination; anything that cannot be replayed (too many operations, a
//! resize) becomes damage.

use std::time::Instant;

use daas_rfb::Rect;

use crate::encode::{self, Kind, Pixels};
use crate::geom::{Area, Damage, Heat};
use crate::guac::{Out, LAYER_DEFAULT};

/// Operations kept between frames before they collapse into damage.
const MAX_OPS: usize = 256;

/// Damage rectangles up to this area are classified as one piece.
const SMALL_AREA: u64 = 128 * 128;

/// Side of the tiles a large area is classified in.
const TILE: u32 = 64;

/// More regions than this after tiling: send the area as one image.
const MAX_REGIONS: usize = 48;

/// Scroll detection looks at damaged areas at least this wide…
const SCROLL_MIN_WIDTH: u32 = 64;
/// …and copies bands of at least this many rows.
const SCROLL_MIN_ROWS: u32 = 32;

/// A row's hash, and whether all its pixels are equal (such rows match
/// anywhere and do not vote for a shift).
fn row_hash(row: &[u32]) -> (u64, bool) {
    let first = row.first().copied().unwrap_or(0);
    let mut uniform = true;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &p in row {
        uniform &= p == first;
        h = (h.rotate_left(5) ^ u64::from(p)).wrapping_mul(0x0100_0000_01b3);
    }
    (h, uniform)
}

/// A solid run shorter than this many tiles joins its neighbour's image.
const MIN_SOLID_RUN: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Fill { area: Area, color: u32 },
    Copy { sx: u32, sy: u32, dst: Area },
}

/// A cursor image waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) hotspot_x: u16,
    pub(crate) hotspot_y: u16,
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) rgba: Vec<u8>,
}

/// How to encode images.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoding {
    /// The browser accepts `image/jpeg`.
    pub(crate) jpeg: bool,
    /// JPEG quality, 1–100.
    pub(crate) quality: u8,
}

/// Pending drawing for the next frame.
#[derive(Debug)]
pub(crate) struct Display {
    width: u32,
    height: u32,
    ops: Vec<Op>,
    damage: Damage,
    heat: Heat,
    size_pending: bool,
    cursor: Option<Cursor>,
    /// Server updates completed since the last frame.
    updates: u32,
    enc: Encoding,
    /// What the browser shows (exact values where it got JPEG), row by
    /// row: the source for scroll detection.
    shadow: Vec<u32>,
}

impl Display {
    pub(crate) fn new(width: u16, height: u16, enc: Encoding, now: Instant) -> Display {
        let (w, h) = (u32::from(width), u32::from(height));
        Display {
            width: w,
            height: h,
            ops: Vec::new(),
            damage: Damage::default(),
            heat: Heat::new(w, h, now),
            size_pending: true,
            cursor: None,
            updates: 0,
            enc,
            shadow: vec![0; (w * h) as usize],
        }
    }

    /// The framebuffer changed size: the next frame resizes the layer and
    /// redraws everything.
    pub(crate) fn resize(&mut self, width: u16, height: u16, now: Instant) {
        let (w, h) = (u32::from(width), u32::from(height));
        self.width = w;
        self.height = h;
        self.ops.clear();
        self.damage.clear();
        self.damage.add(Area::screen(w, h));
        self.heat = Heat::new(w, h, now);
        self.size_pending = true;
        self.shadow = vec![0; (w * h) as usize];
    }

    /// The caller sent the initial `size` itself.
    pub(crate) fn size_sent(&mut self) {
        self.size_pending = false;
    }

    fn screen(&self) -> Area {
        Area::screen(self.width, self.height)
    }

    fn push_op(&mut self, op: Op) {
        if self.ops.len() >= MAX_OPS {
            for op in std::mem::take(&mut self.ops) {
                match op {
                    Op::Fill { area, .. } => self.damage.add(area),
                    Op::Copy { dst, .. } => self.damage.add(dst),
                }
            }
            self.damage.add(op_area(&op));
            return;
        }
        self.ops.push(op);
    }

    /// Drops damage rectangles that `a` will overwrite.
    fn forget_damage_inside(&mut self, a: &Area) {
        if self.damage.rects().iter().any(|r| a.contains(r)) {
            let keep: Vec<Area> = self
                .damage
                .rects()
                .iter()
                .copied()
                .filter(|r| !a.contains(r))
                .collect();
            self.damage.clear();
            for r in keep {
                self.damage.add(r);
            }
        }
    }

    pub(crate) fn fill(&mut self, rect: Rect, color: u32) {
        let area = Area::from_rect(rect).intersect(&self.screen());
        if area.is_empty() {
            return;
        }
        self.forget_damage_inside(&area);
        self.push_op(Op::Fill { area, color });
    }

    pub(crate) fn copy(&mut self, src_x: u16, src_y: u16, rect: Rect) {
        let dst = Area::from_rect(rect).intersect(&self.screen());
        if dst.is_empty() {
            return;
        }
        let (sx, sy) = (u32::from(src_x), u32::from(src_y));
        let src = Area::new(sx, sy, sx + dst.width(), sy + dst.height());
        if src.intersect(&self.screen()) != src {
            // daas-rfb has checked it; stay safe anyway.
            self.damage.add(dst);
            return;
        }
        let (dx, dy) = (
            i64::from(dst.x0) - i64::from(sx),
            i64::from(dst.y0) - i64::from(sy),
        );
        let carried = self.damage.translated_within(&src, dx, dy);
        self.forget_damage_inside(&dst);
        self.push_op(Op::Copy { sx, sy, dst });
        for a in carried {
            self.damage.add(a.intersect(&dst));
        }
    }

    pub(crate) fn pixels(&mut self, rect: Rect) {
        let area = Area::from_rect(rect).intersect(&self.screen());
        self.damage.add(area);
    }

    pub(crate) fn cursor(&mut self, cursor: Cursor) {
        self.cursor = Some(cursor);
    }

    pub(crate) fn update_end(&mut self) {
        self.updates = self.updates.saturating_add(1);
    }

    /// True when a frame would draw something.
    pub(crate) fn has_pending(&self) -> bool {
        self.size_pending
            || !self.ops.is_empty()
            || !self.damage.is_empty()
            || self.cursor.is_some()
    }

    /// Server updates merged into the next frame.
    pub(crate) fn updates(&self) -> u32 {
        self.updates
    }

    /// Writes everything pending but the images (not the `sync`) and
    /// clears it; returns the images to encode, with their pixels copied
    /// out, so that encoding can run elsewhere ([`encode_jobs`]).
    pub(crate) fn compose(
        &mut self,
        px: Pixels<'_>,
        out: &mut Out,
        now: Instant,
    ) -> Result<Vec<Job>, encode::EncodeError> {
        self.updates = 0;
        if self.size_pending {
            out.size(LAYER_DEFAULT, self.width, self.height);
            self.size_pending = false;
        }
        for op in std::mem::take(&mut self.ops) {
            match op {
                Op::Fill { area, color } => {
                    out.fill(area.x0, area.y0, area.width(), area.height(), color);
                    self.shadow_fill(&area, color);
                }
                Op::Copy { sx, sy, dst } => {
                    out.copy(sx, sy, dst.width(), dst.height(), dst.x0, dst.y0);
                    self.shadow_copy(sx, sy, &dst);
                }
            }
        }
        self.damage
            .clip(px.width().min(self.width), px.height().min(self.height));
        let damaged = self.damage.rects().to_vec();
        self.damage.clear();
        // Content that moved up or down within a damaged area (scrolling
        // the server did not send as CopyRect) becomes a copy.
        let mut rects = Vec::with_capacity(damaged.len());
        for r in damaged {
            match self.detect_scroll(px, &r) {
                Some((band, dy)) => {
                    let sy = i64::from(band.y0) - dy;
                    let sy = u32::try_from(sy).unwrap_or(0);
                    out.copy(band.x0, sy, band.width(), band.height(), band.x0, band.y0);
                    self.shadow_copy(band.x0, sy, &band);
                    if band.y0 > r.y0 {
                        rects.push(Area::new(r.x0, r.y0, r.x1, band.y0));
                    }
                    if band.y1 < r.y1 {
                        rects.push(Area::new(r.x0, band.y1, r.x1, r.y1));
                    }
                }
                None => rects.push(r),
            }
        }
        self.heat.record(&rects, now);
        let mut jobs = Vec::new();
        for a in &rects {
            self.draw_area(px, a, out, &mut jobs);
            self.shadow_update(px, a);
        }
        if let Some(c) = self.cursor.take() {
            let (w, h) = (u32::from(c.width), u32::from(c.height));
            if w == 0 || h == 0 {
                out.cursor(u32::from(c.hotspot_x), u32::from(c.hotspot_y), 0, 0, None);
            } else {
                let mut buf = Vec::new();
                encode::png_rgba(&c.rgba, w, h, &mut buf)?;
                out.cursor(
                    u32::from(c.hotspot_x),
                    u32::from(c.hotspot_y),
                    w,
                    h,
                    Some(&buf),
                );
            }
        }
        Ok(jobs)
    }

    fn shadow_row(&self, y: u32, x0: u32, x1: u32) -> Option<&[u32]> {
        let start = y as usize * self.width as usize + x0 as usize;
        self.shadow.get(start..start + (x1 - x0) as usize)
    }

    fn shadow_fill(&mut self, a: &Area, color: u32) {
        let a = a.intersect(&self.screen());
        let w = self.width as usize;
        for y in a.y0..a.y1 {
            let start = y as usize * w + a.x0 as usize;
            if let Some(row) = self.shadow.get_mut(start..start + a.width() as usize) {
                row.fill(color);
            }
        }
    }

    /// Replays a copy on the shadow (source and destination may overlap).
    fn shadow_copy(&mut self, sx: u32, sy: u32, dst: &Area) {
        let w = self.width as usize;
        let len = dst.width() as usize;
        let rows: Vec<u32> = if sy < dst.y0 {
            (0..dst.height()).rev().collect()
        } else {
            (0..dst.height()).collect()
        };
        for dy in rows {
            let from = (sy + dy) as usize * w + sx as usize;
            let to = (dst.y0 + dy) as usize * w + dst.x0 as usize;
            if from + len <= self.shadow.len() && to + len <= self.shadow.len() {
                self.shadow.copy_within(from..from + len, to);
            }
        }
    }

    /// The browser now shows the framebuffer's pixels in `a`.
    fn shadow_update(&mut self, px: Pixels<'_>, a: &Area) {
        let a = px.clip(&a.intersect(&self.screen()));
        let w = self.width as usize;
        for (i, row) in px.rows(&a).enumerate() {
            let start = (a.y0 as usize + i) * w + a.x0 as usize;
            if let Some(dst) = self.shadow.get_mut(start..start + row.len()) {
                dst.copy_from_slice(row);
            }
        }
    }

    /// Looks for content of the browser's picture (the shadow) that moved
    /// vertically within `r` in the framebuffer. Returns the band of rows
    /// (the copy's destination) and the shift (`dy`: destination row minus
    /// source row), when the band is worth a copy.
    fn detect_scroll(&self, px: Pixels<'_>, r: &Area) -> Option<(Area, i64)> {
        if r.width() < SCROLL_MIN_WIDTH || r.height() < SCROLL_MIN_ROWS * 2 {
            return None;
        }
        let fb: Vec<&[u32]> = px.rows(r).collect();
        if fb.len() != r.height() as usize {
            return None;
        }
        let mut old = Vec::with_capacity(fb.len());
        for y in r.y0..r.y1 {
            old.push(row_hash(self.shadow_row(y, r.x0, r.x1)?));
        }
        let new: Vec<(u64, bool)> = fb.iter().map(|row| row_hash(row)).collect();
        // Where each distinctive old row was (ambiguous ones dropped).
        let mut at: std::collections::HashMap<u64, Option<usize>> =
            std::collections::HashMap::with_capacity(old.len());
        for (i, &(h, uniform)) in old.iter().enumerate() {
            if !uniform {
                at.entry(h).and_modify(|e| *e = None).or_insert(Some(i));
            }
        }
        let mut votes: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
        let mut changed = 0u32;
        for (i, &(h, uniform)) in new.iter().enumerate() {
            if uniform || h == old[i].0 {
                continue;
            }
            changed += 1;
            if let Some(Some(j)) = at.get(&h) {
                *votes.entry(i as i64 - *j as i64).or_default() += 1;
            }
        }
        let (dy, count) = votes.into_iter().max_by_key(|&(dy, n)| (n, -dy.abs()))?;
        if dy == 0 || count < 8 || count * 4 < changed {
            return None;
        }
        // The longest run of rows that the shift reproduces exactly.
        let n = fb.len();
        let shift = usize::try_from(dy.unsigned_abs()).ok()?;
        let source = |i: usize| -> Option<usize> {
            if dy > 0 {
                i.checked_sub(shift)
            } else {
                i.checked_add(shift).filter(|&j| j < n)
            }
        };
        let (mut best, mut run_start) = ((0usize, 0usize), None);
        for i in 0..=n {
            let ok = i < n
                && source(i).is_some_and(|j| {
                    new[i].0 == old[j].0
                        && u32::try_from(j)
                            .ok()
                            .and_then(|j| self.shadow_row(r.y0 + j, r.x0, r.x1))
                            .is_some_and(|row| row == fb[i])
                });
            match (ok, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(s0)) => {
                    if i - s0 > best.1 - best.0 {
                        best = (s0, i);
                    }
                    run_start = None;
                }
                _ => {}
            }
        }
        let (b0, b1) = best;
        if b1 - b0 < SCROLL_MIN_ROWS as usize {
            return None;
        }
        let (b0, b1) = (u32::try_from(b0).ok()?, u32::try_from(b1).ok()?);
        let band = Area::new(r.x0, r.y0 + b0, r.x1, r.y0 + b1);
        Some((band, dy))
    }

    fn draw_area(&self, px: Pixels<'_>, a: &Area, out: &mut Out, jobs: &mut Vec<Job>) {
        if a.area() <= SMALL_AREA {
            let stats = encode::analyse(px, a, 1);
            let kind = encode::classify(&stats, a.area(), self.heat.max_in(a), self.enc.jpeg);
            self.emit(px, a, kind, out, jobs);
            return;
        }
        for (region, kind) in self.regions(px, a) {
            self.emit(px, &region, kind, out, jobs);
        }
    }

    /// Splits a large area into regions of one kind: tiles are classified,
    /// joined into runs along each tile row, and runs with the same extent
    /// and kind are joined down the rows.
    fn regions(&self, px: Pixels<'_>, a: &Area) -> Vec<(Area, Kind)> {
        let mut done: Vec<(Area, Kind)> = Vec::new();
        let mut open: Vec<(Area, Kind)> = Vec::new();
        let mut y = a.y0;
        while y < a.y1 {
            let y1 = (y + TILE).min(a.y1);
            let mut runs: Vec<(u32, u32, Kind)> = Vec::new();
            let mut x = a.x0;
            while x < a.x1 {
                let x1 = (x + TILE).min(a.x1);
                let t = Area::new(x, y, x1, y1);
                let stats = encode::analyse(px, &t, 1);
                let kind = encode::classify(&stats, t.area(), self.heat.max_in(&t), self.enc.jpeg);
                match runs.last_mut() {
                    Some(last) if last.2 == kind => last.1 = x1,
                    _ => runs.push((x, x1, kind)),
                }
                x = x1;
            }
            let runs = absorb_short_solid_runs(runs);
            let mut next_open = Vec::with_capacity(runs.len());
            for (x0, x1, kind) in runs {
                if let Some(i) = open
                    .iter()
                    .position(|(r, k)| r.x0 == x0 && r.x1 == x1 && *k == kind)
                {
                    let (mut r, k) = open.swap_remove(i);
                    r.y1 = y1;
                    next_open.push((r, k));
                } else {
                    next_open.push((Area::new(x0, y, x1, y1), kind));
                }
            }
            done.append(&mut open);
            open = next_open;
            y = y1;
        }
        done.append(&mut open);
        if done.len() > MAX_REGIONS {
            let lossy: u64 = done
                .iter()
                .filter(|(_, k)| *k == Kind::Lossy)
                .map(|(r, _)| r.area())
                .sum();
            let kind = if lossy * 2 > a.area() {
                Kind::Lossy
            } else {
                Kind::Lossless
            };
            return vec![(*a, kind)];
        }
        done
    }

    fn emit(&self, px: Pixels<'_>, a: &Area, kind: Kind, out: &mut Out, jobs: &mut Vec<Job>) {
        let a = px.clip(a);
        if a.is_empty() {
            return;
        }
        if let Kind::Solid(color) = kind {
            out.fill(a.x0, a.y0, a.width(), a.height(), color);
            return;
        }
        let mut pixels = Vec::with_capacity(usize::try_from(a.area()).unwrap_or(0));
        for row in px.rows(&a) {
            pixels.extend_from_slice(row);
        }
        jobs.push(Job {
            x: a.x0,
            y: a.y0,
            width: a.width(),
            height: a.height(),
            pixels,
            jpeg: kind == Kind::Lossy && self.enc.jpeg,
        });
    }

    /// JPEG quality for [`encode_jobs`].
    pub(crate) fn quality(&self) -> u8 {
        self.enc.quality
    }
}

/// An image to encode: its place and its pixels.
#[derive(Debug)]
pub(crate) struct Job {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    pixels: Vec<u32>,
    jpeg: bool,
}

impl Job {
    /// Pixels covered.
    pub(crate) fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// An encoded image, ready for `img`.
#[derive(Debug)]
pub(crate) struct Encoded {
    mimetype: &'static str,
    x: u32,
    y: u32,
    data: Vec<u8>,
}

/// Encodes images (pure CPU work: may run on a blocking thread).
pub(crate) fn encode_jobs(
    jobs: Vec<Job>,
    quality: u8,
) -> Result<Vec<Encoded>, encode::EncodeError> {
    jobs.into_iter()
        .map(|j| {
            let px = Pixels::new(&j.pixels, j.width, j.height);
            let all = Area::screen(j.width, j.height);
            let mut data = Vec::new();
            let mimetype = if j.jpeg {
                encode::jpeg(px, &all, quality, &mut data)?;
                "image/jpeg"
            } else {
                encode::png(px, &all, &mut data)?;
                "image/png"
            };
            Ok(Encoded {
                mimetype,
                x: j.x,
                y: j.y,
                data,
            })
        })
        .collect()
}

/// Writes encoded images as `img` + `blob`s + `end`.
pub(crate) fn write_images(out: &mut Out, images: &[Encoded]) {
    for i in images {
        out.image(LAYER_DEFAULT, i.mimetype, i.x, i.y, &i.data);
    }
}

fn op_area(op: &Op) -> Area {
    match op {
        Op::Fill { area, .. } => *area,
        Op::Copy { dst, .. } => *dst,
    }
}

/// Short solid runs between images are sent as part of a neighbouring
/// image (one image is cheaper than image + fill + image); adjacent runs
/// of one kind are then joined.
fn absorb_short_solid_runs(runs: Vec<(u32, u32, Kind)>) -> Vec<(u32, u32, Kind)> {
    if runs.len() < 2 {
        return runs;
    }
    let n = runs.len();
    let mut kinds: Vec<Kind> = runs.iter().map(|r| r.2).collect();
    for i in 0..n {
        let (x0, x1, k) = runs[i];
        if matches!(k, Kind::Solid(_)) && (x1 - x0) < MIN_SOLID_RUN * TILE {
            let left = i.checked_sub(1).map(|j| kinds[j]);
            let right = runs.get(i + 1).map(|r| r.2);
            let pick = [left, right]
                .into_iter()
                .flatten()
                .filter(|k| !matches!(k, Kind::Solid(_)))
                .min_by_key(|k| matches!(k, Kind::Lossy));
            if let Some(p) = pick {
                kinds[i] = p;
            }
        }
    }
    let mut out: Vec<(u32, u32, Kind)> = Vec::with_capacity(n);
    for (i, (x0, x1, _)) in runs.into_iter().enumerate() {
        let k = kinds[i];
        match out.last_mut() {
            Some(last) if last.2 == k && last.1 == x0 => last.1 = x1,
            _ => out.push((x0, x1, k)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use daas_guacamole::{Decoder, Instruction};

    fn frame(d: &mut Display, px: Pixels<'_>) -> Vec<Instruction> {
        let mut out = Out::default();
        let jobs = d.compose(px, &mut out, Instant::now()).unwrap();
        write_images(&mut out, &encode_jobs(jobs, d.quality()).unwrap());
        let (chunks, _) = out.take();
        let mut dec = Decoder::new();
        let mut v = Vec::new();
        for c in chunks {
            dec.push(&c).unwrap();
            while let Some(i) = dec.next_instruction().unwrap() {
                v.push(i);
            }
        }
        v
    }

    fn ops(v: &[Instruction]) -> Vec<String> {
        v.iter()
            .filter(|i| i.opcode != "blob" && i.opcode != "end")
            .map(|i| format!("{},{}", i.opcode, i.args.join(",")))
            .collect()
    }

    const ENC: Encoding = Encoding {
        jpeg: true,
        quality: 80,
    };

    #[test]
    fn first_frame_sizes_and_replays_ops_in_order() {
        let (w, h) = (256u16, 128u16);
        let fb = vec![0x00ff_0000u32; 256 * 128];
        let mut d = Display::new(w, h, ENC, Instant::now());
        d.fill(Rect::new(0, 0, 256, 128), 0x00ff_0000);
        d.copy(0, 0, Rect::new(10, 10, 20, 20));
        d.update_end();
        assert!(d.has_pending());
        assert_eq!(d.updates(), 1);
        let v = frame(&mut d, Pixels::new(&fb, 256, 128));
        assert_eq!(
            ops(&v),
            [
                "size,0,256,128",
                "rect,0,0,0,256,128",
                "cfill,14,0,255,0,0,255",
                "copy,0,0,0,20,20,14,0,10,10"
            ]
        );
        assert!(!d.has_pending());
        assert!(frame(&mut d, Pixels::new(&fb, 256, 128)).is_empty());
    }

    #[test]
    fn a_copy_carries_unsent_damage_to_its_destination() {
        let fb = vec![0x0000_00ffu32; 100 * 100];
        let mut d = Display::new(100, 100, ENC, Instant::now());
        let _ = frame(&mut d, Pixels::new(&fb, 100, 100));
        d.pixels(Rect::new(0, 90, 10, 10));
        // Scroll everything up by 10 rows.
        d.copy(0, 10, Rect::new(0, 0, 100, 90));
        let v = frame(&mut d, Pixels::new(&fb, 100, 100));
        let o = ops(&v);
        assert_eq!(o[0], "copy,0,0,10,100,90,14,0,0,0");
        // The unsent rows 90..100 are drawn, and so is their copy at 80..90
        // (merged into one area; all blue: a fill).
        assert!(
            o[1..].iter().any(|s| s.starts_with("rect,0,0,80,10,20")),
            "{o:?}"
        );
    }

    #[test]
    fn a_fill_over_damage_replaces_it() {
        let fb = vec![7u32; 64 * 64];
        let mut d = Display::new(64, 64, ENC, Instant::now());
        let _ = frame(&mut d, Pixels::new(&fb, 64, 64));
        d.pixels(Rect::new(1, 1, 5, 5));
        d.fill(Rect::new(0, 0, 64, 64), 7);
        let v = frame(&mut d, Pixels::new(&fb, 64, 64));
        assert_eq!(ops(&v), ["rect,0,0,0,64,64", "cfill,14,0,0,0,7,255"]);
    }

    #[test]
    fn many_ops_collapse_into_damage() {
        let fb = vec![1u32; 300 * 300];
        let mut d = Display::new(300, 300, ENC, Instant::now());
        let _ = frame(&mut d, Pixels::new(&fb, 300, 300));
        for i in 0..1000u16 {
            d.fill(Rect::new(i % 290, i % 290, 5, 5), u32::from(i));
        }
        assert!(d.ops.len() <= MAX_OPS);
        let v = frame(&mut d, Pixels::new(&fb, 300, 300));
        assert!(v.len() <= 2 * MAX_OPS + 100, "{}", v.len());
    }

    #[test]
    fn large_areas_split_into_fills_pngs_and_jpegs() {
        let (w, h) = (512u32, 256u32);
        let mut x = 12345u32;
        let fb: Vec<u32> = (0..w * h)
            .map(|i| {
                let (px, py) = (i % w, i / w);
                if px < 256 {
                    // Left: photo-like noise.
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x & 0x00ff_ffff
                } else if py < 128 {
                    // Top right: text-like.
                    if (px * 3 + py * 5) % 7 == 0 {
                        0
                    } else {
                        0x00ff_ffff
                    }
                } else {
                    0x0000_8000
                }
            })
            .collect();
        let mut d = Display::new(512, 256, ENC, Instant::now());
        let _ = frame(&mut d, Pixels::new(&fb, w, h));
        d.pixels(Rect::new(0, 0, 512, 256));
        let v = frame(&mut d, Pixels::new(&fb, w, h));
        let o = ops(&v);
        assert!(o.iter().any(|s| s.contains("image/jpeg,0,0")), "{o:?}");
        assert!(o.iter().any(|s| s.contains("image/png,256,0")), "{o:?}");
        assert!(o.iter().any(|s| s == "rect,0,256,128,256,128"), "{o:?}");
        assert!(o.len() <= 6, "{o:?}");
        // Without JPEG support: PNG only.
        let mut d = Display::new(
            512,
            256,
            Encoding {
                jpeg: false,
                quality: 80,
            },
            Instant::now(),
        );
        let v = frame(&mut d, Pixels::new(&fb, w, h));
        assert!(!ops(&v).iter().any(|s| s.contains("jpeg")));
    }

    #[test]
    fn resize_redraws_everything_and_cursor_goes_last() {
        let fb = vec![3u32; 50 * 40];
        let mut d = Display::new(100, 100, ENC, Instant::now());
        let _ = frame(&mut d, Pixels::new(&[0; 100 * 100], 100, 100));
        d.fill(Rect::new(0, 0, 10, 10), 9);
        d.resize(50, 40, Instant::now());
        d.cursor(Cursor {
            hotspot_x: 1,
            hotspot_y: 2,
            width: 2,
            height: 1,
            rgba: vec![255; 8],
        });
        let o = ops(&frame(&mut d, Pixels::new(&fb, 50, 40)));
        assert_eq!(o[0], "size,0,50,40");
        assert_eq!(o[1], "rect,0,0,0,50,40");
        assert_eq!(o[2], "cfill,14,0,0,0,3,255");
        assert_eq!(o.last().unwrap(), "cursor,1,2,-1,0,0,2,1");
        // Pixels beyond a too-short framebuffer are clipped, not read.
        d.pixels(Rect::new(0, 0, 50, 40));
        let _ = frame(&mut d, Pixels::new(&fb[..50 * 10], 50, 40));
    }

    /// Text-like rows: every row distinct, few colours.
    fn text_rows(w: u32, h: u32, first_line: u32) -> Vec<u32> {
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w + first_line);
                let mut v = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA6B);
                v ^= v >> 15;
                v = v.wrapping_mul(0x2C1B_3C6D);
                v ^= v >> 12;
                if v % 5 == 0 {
                    0
                } else {
                    0x00ff_ffff
                }
            })
            .collect()
    }

    #[test]
    fn scrolling_without_copyrect_becomes_a_copy() {
        let (w, h) = (320u32, 240u32);
        let before = text_rows(w, h, 0);
        let mut d = Display::new(320, 240, ENC, Instant::now());
        d.pixels(Rect::new(0, 0, 320, 240));
        let _ = frame(&mut d, Pixels::new(&before, w, h));
        // The server scrolled up by 13 rows and sent it all as pixels.
        let after = text_rows(w, h, 13);
        d.pixels(Rect::new(0, 0, 320, 240));
        let v = frame(&mut d, Pixels::new(&after, w, h));
        let o = ops(&v);
        assert_eq!(o[0], "copy,0,0,13,320,227,14,0,0,0", "{o:?}");
        // Only the new bottom rows are drawn.
        assert!(
            o[1..]
                .iter()
                .all(|s| !s.starts_with("img") || s.ends_with(",0,227")),
            "{o:?}"
        );
        // The replayed picture is the new one: copy within the old picture,
        // then the bottom rows from the new one.
        let mut canvas = before.clone();
        canvas.copy_within((13 * w) as usize.., 0);
        canvas[(227 * w) as usize..].copy_from_slice(&after[(227 * w) as usize..]);
        assert_eq!(canvas, after);
        // A change that is not a shift is not mistaken for one.
        let other: Vec<u32> = text_rows(w, h, 1000);
        d.pixels(Rect::new(0, 0, 320, 240));
        let o = ops(&frame(&mut d, Pixels::new(&other, w, h)));
        assert!(!o.iter().any(|s| s.starts_with("copy")), "{o:?}");
    }

    /// Replays a frame's instructions on a canvas, as the browser would.
    // Test geometry is small and in range.
    #[allow(clippy::cast_possible_truncation)]
    fn replay(canvas: &mut [u32], w: u32, chunks: &[Vec<u8>]) {
        use base64::Engine as _;
        let mut dec = Decoder::new();
        let mut path = Vec::new();
        let mut img: Option<(i64, i64, Vec<u8>)> = None;
        for c in chunks {
            dec.push(c).unwrap();
            while let Some(i) = dec.next_instruction().unwrap() {
                let n = |k: usize| i.args[k].parse::<i64>().unwrap();
                let h = canvas.len() as i64 / i64::from(w);
                let put = |canvas: &mut [u32], x: i64, y: i64, c: u32| {
                    if x >= 0 && y >= 0 && x < i64::from(w) && y < h {
                        canvas[(y * i64::from(w) + x) as usize] = c;
                    }
                };
                match i.opcode.as_str() {
                    "rect" if n(0) == 0 => path.push((n(1), n(2), n(3), n(4))),
                    "cfill" if n(1) == 0 => {
                        let c = ((n(2) as u32) << 16) | ((n(3) as u32) << 8) | n(4) as u32;
                        for (x, y, rw, rh) in path.drain(..) {
                            for yy in y..y + rh {
                                for xx in x..x + rw {
                                    put(canvas, xx, yy, c);
                                }
                            }
                        }
                    }
                    "copy" => {
                        let snap = canvas.to_vec();
                        for yy in 0..n(4) {
                            for xx in 0..n(3) {
                                let c = snap[((n(2) + yy) * i64::from(w) + n(1) + xx) as usize];
                                put(canvas, n(7) + xx, n(8) + yy, c);
                            }
                        }
                    }
                    "img" if n(2) == 0 => img = Some((n(4), n(5), Vec::new())),
                    "blob" => {
                        if let Some((_, _, data)) = img.as_mut() {
                            data.extend(
                                base64::engine::general_purpose::STANDARD
                                    .decode(&i.args[1])
                                    .unwrap(),
                            );
                        }
                    }
                    "end" => {
                        if let Some((x, y, data)) = img.take() {
                            let mut d = png::Decoder::new(&data[..]);
                            d.set_transformations(png::Transformations::EXPAND);
                            let mut r = d.read_info().unwrap();
                            let mut buf = vec![0; r.output_buffer_size()];
                            let info = r.next_frame(&mut buf).unwrap();
                            for (k, p) in buf[..info.buffer_size()].chunks_exact(3).enumerate() {
                                let k = k as i64;
                                let c = (u32::from(p[0]) << 16)
                                    | (u32::from(p[1]) << 8)
                                    | u32::from(p[2]);
                                put(
                                    canvas,
                                    x + k % i64::from(info.width),
                                    y + k / i64::from(info.width),
                                    c,
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Random fills, copies, pixel changes and scrolls sent as pixels,
    /// with frames at random moments: the replayed picture always equals
    /// the framebuffer.
    #[test]
    // Test geometry is small and in range.
    #[allow(clippy::cast_possible_truncation)]
    fn coalesced_frames_always_reproduce_the_framebuffer() {
        let (w, h) = (160u32, 128u32);
        let mut seed = 0x1234_5678u32;
        let mut rnd = |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % n.max(1)
        };
        let enc = Encoding {
            jpeg: false,
            quality: 80,
        };
        for _round in 0..12 {
            let mut fb = vec![0u32; (w * h) as usize];
            let mut canvas = vec![0u32; (w * h) as usize];
            let mut d = Display::new(160, 128, enc, Instant::now());
            for step in 0..150 {
                let (x, y) = (rnd(w), rnd(h));
                let (rw, rh) = (1 + rnd(w - x), 1 + rnd(h - y));
                let rect = Rect::new(x as u16, y as u16, rw as u16, rh as u16);
                match rnd(5) {
                    0 => {
                        let c = rnd(4) * 0x0040_4040;
                        for yy in y..y + rh {
                            for xx in x..x + rw {
                                fb[(yy * w + xx) as usize] = c;
                            }
                        }
                        d.fill(rect, c);
                    }
                    1 => {
                        let (sx, sy) = (rnd(w - rw + 1), rnd(h - rh + 1));
                        let snap = fb.clone();
                        for yy in 0..rh {
                            for xx in 0..rw {
                                fb[((y + yy) * w + x + xx) as usize] =
                                    snap[((sy + yy) * w + sx + xx) as usize];
                            }
                        }
                        d.copy(sx as u16, sy as u16, rect);
                    }
                    2 | 3 => {
                        // Text-like pixels.
                        let salt = rnd(1 << 20);
                        for yy in y..y + rh {
                            for xx in x..x + rw {
                                let v = (xx * 31 + yy * 17 + salt) % 7;
                                fb[(yy * w + xx) as usize] =
                                    if v < 2 { 0 } else { 0x00ff_ffff - v };
                            }
                        }
                        d.pixels(rect);
                    }
                    _ => {
                        // A scroll of the whole screen sent as pixels.
                        let dy = 1 + rnd(40) as usize;
                        let row = w as usize;
                        fb.copy_within(dy * row.., 0);
                        d.pixels(Rect::new(0, 0, w as u16, h as u16));
                    }
                }
                if step % 7 == 0 || rnd(3) == 0 {
                    d.update_end();
                    let mut out = Out::default();
                    let jobs = d
                        .compose(Pixels::new(&fb, w, h), &mut out, Instant::now())
                        .unwrap();
                    write_images(&mut out, &encode_jobs(jobs, 80).unwrap());
                    let (chunks, _) = out.take();
                    replay(&mut canvas, w, &chunks);
                    assert!(canvas == fb, "round {_round} step {step}: picture differs");
                }
            }
        }
    }

    #[test]
    fn short_solid_runs_join_images() {
        let t = TILE;
        let runs = vec![
            (0, t, Kind::Lossless),
            (t, 2 * t, Kind::Solid(1)),
            (2 * t, 3 * t, Kind::Lossless),
            (3 * t, 10 * t, Kind::Solid(1)),
            (10 * t, 11 * t, Kind::Lossy),
        ];
        assert_eq!(
            absorb_short_solid_runs(runs),
            vec![
                (0, 3 * t, Kind::Lossless),
                (3 * t, 10 * t, Kind::Solid(1)),
                (10 * t, 11 * t, Kind::Lossy)
            ]
        );
    }
}
