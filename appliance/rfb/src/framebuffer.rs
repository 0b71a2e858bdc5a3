//! The client-side copy of the remote screen.

use crate::event::Rect;
use crate::RfbError;

/// The remote screen as the client knows it.
///
/// Pixels are `u32` in XRGB order: `0x00RRGGBB` (the top byte is always
/// zero), stored row by row, `width` pixels per row with no padding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Framebuffer {
    width: u16,
    height: u16,
    pixels: Vec<u32>,
}

impl Framebuffer {
    /// A black framebuffer. The caller has checked the size against limits;
    /// 65535 × 65535 still fits `usize` on every platform we build for.
    pub(crate) fn new(width: u16, height: u16) -> Result<Self, RfbError> {
        let len = usize::from(width)
            .checked_mul(usize::from(height))
            .ok_or(RfbError::FramebufferTooLarge { width, height })?;
        Ok(Framebuffer {
            width,
            height,
            pixels: vec![0; len],
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// All pixels, row by row (`width * height` values, `0x00RRGGBB`).
    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// The pixel at (`x`, `y`), or `None` outside the framebuffer.
    pub fn pixel(&self, x: u16, y: u16) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        self.pixels.get(self.index(x, y)).copied()
    }

    /// The part of `rect` inside the framebuffer.
    pub fn clip(&self, rect: Rect) -> Rect {
        let x = rect.x.min(self.width);
        let y = rect.y.min(self.height);
        let right = rect.right().min(u32::from(self.width));
        let bottom = rect.bottom().min(u32::from(self.height));
        // Both differences fit u16: right <= width and bottom <= height.
        let width = u16::try_from(right - u32::from(x)).unwrap_or(0);
        let height = u16::try_from(bottom - u32::from(y)).unwrap_or(0);
        Rect::new(x, y, width, height)
    }

    /// The rows of `rect` (clipped to the framebuffer), top to bottom, each
    /// a slice of `width` pixels.
    pub fn rows(&self, rect: Rect) -> impl Iterator<Item = &[u32]> + '_ {
        let r = self.clip(rect);
        let w = usize::from(r.width);
        (r.y..r.y.saturating_add(r.height)).map(move |y| {
            let start = self.index(r.x, y);
            &self.pixels[start..start + w]
        })
    }

    /// Copies the pixels of `rect` (clipped) into a new row-major vector.
    pub fn copy_out(&self, rect: Rect) -> Vec<u32> {
        let r = self.clip(rect);
        let mut out = Vec::with_capacity(r.area());
        for row in self.rows(r) {
            out.extend_from_slice(row);
        }
        out
    }

    /// Copies the pixels of `rect` (clipped) as packed RGB bytes, 3 per
    /// pixel, ready for a PNG or JPEG encoder.
    pub fn copy_out_rgb(&self, rect: Rect) -> Vec<u8> {
        let r = self.clip(rect);
        let mut out = Vec::with_capacity(r.area() * 3);
        for row in self.rows(r) {
            for &p in row {
                let [_, red, green, blue] = p.to_be_bytes();
                out.extend_from_slice(&[red, green, blue]);
            }
        }
        out
    }

    fn index(&self, x: u16, y: u16) -> usize {
        usize::from(y) * usize::from(self.width) + usize::from(x)
    }

    /// Mutable row slice `[x, x + w)` of row `y`. The caller has checked
    /// the rectangle against the framebuffer.
    pub(crate) fn row_mut(&mut self, x: u16, y: u16, w: u16) -> &mut [u32] {
        let start = self.index(x, y);
        &mut self.pixels[start..start + usize::from(w)]
    }

    /// Fills a checked rectangle with one colour.
    #[cfg(test)]
    pub(crate) fn fill(&mut self, rect: Rect, color: u32) {
        for y in rect.y..rect.y + rect.height {
            self.row_mut(rect.x, y, rect.width).fill(color);
        }
    }

    /// Writes a checked rectangle from a row-major tile buffer.
    pub(crate) fn put(&mut self, rect: Rect, data: &[u32]) {
        let w = usize::from(rect.width);
        if w == 0 {
            return;
        }
        for (i, src) in data
            .chunks_exact(w)
            .take(usize::from(rect.height))
            .enumerate()
        {
            // i < rect.height <= u16::MAX
            let y = rect.y + u16::try_from(i).unwrap_or(0);
            self.row_mut(rect.x, y, rect.width).copy_from_slice(src);
        }
    }

    /// CopyRect within the framebuffer; source and destination are checked
    /// and may overlap.
    pub(crate) fn copy_within(&mut self, src_x: u16, src_y: u16, dst: Rect) {
        let w = usize::from(dst.width);
        let rows: Vec<u16> = if src_y < dst.y {
            (0..dst.height).rev().collect()
        } else {
            (0..dst.height).collect()
        };
        for dy in rows {
            let from = self.index(src_x, src_y + dy);
            let to = self.index(dst.x, dst.y + dy);
            self.pixels.copy_within(from..from + w, to);
        }
    }

    /// Changes the size, keeping the overlapping content.
    pub(crate) fn resize(&mut self, width: u16, height: u16) -> Result<(), RfbError> {
        let mut next = Framebuffer::new(width, height)?;
        let keep_w = self.width.min(width);
        let keep_h = self.height.min(height);
        for y in 0..keep_h {
            let src = self.index(0, y);
            next.row_mut(0, y, keep_w)
                .copy_from_slice(&self.pixels[src..src + usize::from(keep_w)]);
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(w: u16, h: u16) -> Framebuffer {
        let mut fb = Framebuffer::new(w, h).unwrap();
        for (i, p) in fb.pixels.iter_mut().enumerate() {
            *p = u32::try_from(i).unwrap();
        }
        fb
    }

    #[test]
    fn rows_and_copy_out_clip_to_the_framebuffer() {
        let fb = numbered(4, 3);
        let rows: Vec<&[u32]> = fb.rows(Rect::new(2, 1, 10, 10)).collect();
        assert_eq!(rows, vec![&[6u32, 7][..], &[10, 11][..]]);
        assert_eq!(fb.copy_out(Rect::new(1, 0, 2, 2)), vec![1, 2, 5, 6]);
        assert!(fb.copy_out(Rect::new(9, 9, 1, 1)).is_empty());
        assert_eq!(fb.pixel(3, 2), Some(11));
        assert_eq!(fb.pixel(4, 0), None);
    }

    #[test]
    fn rgb_copy_out_is_packed() {
        let mut fb = Framebuffer::new(2, 1).unwrap();
        fb.fill(Rect::new(0, 0, 2, 1), 0x00ff_8001);
        assert_eq!(
            fb.copy_out_rgb(Rect::new(0, 0, 2, 1)),
            vec![0xff, 0x80, 1, 0xff, 0x80, 1]
        );
    }

    #[test]
    fn overlapping_copies_behave_like_a_snapshot() {
        for (sx, sy, dst) in [
            (0, 0, Rect::new(1, 1, 3, 2)),
            (1, 1, Rect::new(0, 0, 3, 2)),
            (0, 1, Rect::new(0, 0, 4, 2)),
            (0, 0, Rect::new(0, 1, 4, 2)),
        ] {
            let mut fb = numbered(4, 3);
            let snapshot = fb.clone();
            fb.copy_within(sx, sy, dst);
            for dy in 0..dst.height {
                for dx in 0..dst.width {
                    assert_eq!(
                        fb.pixel(dst.x + dx, dst.y + dy),
                        snapshot.pixel(sx + dx, sy + dy)
                    );
                }
            }
        }
    }

    #[test]
    fn resize_keeps_the_overlap() {
        let mut fb = numbered(3, 2);
        fb.resize(2, 3).unwrap();
        assert_eq!(fb.pixels(), &[0, 1, 3, 4, 0, 0]);
    }
}
