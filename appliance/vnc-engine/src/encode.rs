//! Choosing and making images: the content analysis that picks a solid
//! fill, PNG or JPEG for an area, and the PNG and JPEG encoders.
//!
//! Everything works on the framebuffer's `u32` pixels (`0x00RRGGBB`, row
//! by row) through [`Pixels`], which clips every access, so a wrong area
//! yields a smaller image, never a panic.

use crate::geom::Area;

/// A view of the screen's pixels.
#[derive(Clone, Copy)]
pub(crate) struct Pixels<'a> {
    data: &'a [u32],
    width: u32,
    height: u32,
}

impl<'a> Pixels<'a> {
    /// `data` holds `width * height` pixels; a shorter slice is treated as
    /// fewer rows.
    pub(crate) fn new(data: &'a [u32], width: u32, height: u32) -> Pixels<'a> {
        let rows = if width == 0 {
            0
        } else {
            u32::try_from(data.len() / width as usize).unwrap_or(u32::MAX)
        };
        Pixels {
            data,
            width,
            height: height.min(rows),
        }
    }

    pub(crate) fn width(&self) -> u32 {
        self.width
    }

    pub(crate) fn height(&self) -> u32 {
        self.height
    }

    /// `a` clipped to the screen.
    pub(crate) fn clip(&self, a: &Area) -> Area {
        a.intersect(&Area::screen(self.width, self.height))
    }

    /// The rows of `a` (clipped), top to bottom.
    pub(crate) fn rows(&self, a: &Area) -> impl Iterator<Item = &'a [u32]> + 'a {
        let a = self.clip(a);
        let (data, stride) = (self.data, self.width as usize);
        (a.y0..a.y1).filter_map(move |y| {
            let start = y as usize * stride + a.x0 as usize;
            data.get(start..start + a.width() as usize)
        })
    }
}

/// What to send for an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One colour: `rect` + `cfill`.
    Solid(u32),
    /// Text, UI, few colours: PNG.
    Lossless,
    /// Photographic or fast-changing: JPEG (when the browser takes it).
    Lossy,
}

/// A cell hotter than this (see [`crate::geom::Heat`]) counts as
/// frequently changing: about 8 frames per second or more.
pub(crate) const HOT: u8 = 4;

/// Smallest area worth a JPEG (guacd uses the same bound).
pub(crate) const JPEG_MIN_AREA: u64 = 64 * 64;

/// Colour statistics of an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// The colour when every pixel has it.
    pub(crate) solid: Option<u32>,
    /// Distinct colours, counted up to [`DISTINCT_CAP`].
    pub(crate) distinct: usize,
    /// Pixels equal to their left neighbour.
    pub(crate) same: u64,
    /// Pixels different from their left neighbour.
    pub(crate) different: u64,
}

/// Distinct colours are counted up to this many.
pub(crate) const DISTINCT_CAP: usize = 96;

/// Scans an area (clipped): solidity, distinct colours, neighbour runs.
/// Rows are sampled with `row_step` (1 = every row).
pub(crate) fn analyse(px: Pixels<'_>, a: &Area, row_step: usize) -> Stats {
    let mut set = ColorSet::new();
    let mut first = None;
    let mut solid = true;
    let (mut same, mut different) = (0u64, 0u64);
    for row in px.rows(a).step_by(row_step.max(1)) {
        let Some(&c0) = row.first() else { continue };
        let f = *first.get_or_insert(c0);
        let mut last = c0;
        if set.len() < DISTINCT_CAP {
            set.insert(c0);
        }
        solid &= c0 == f;
        for &c in &row[1..] {
            if c == last {
                same += 1;
            } else {
                different += 1;
                solid = false;
                if set.len() < DISTINCT_CAP {
                    set.insert(c);
                }
                last = c;
            }
        }
    }
    Stats {
        solid: if solid { first } else { None },
        distinct: set.len(),
        same,
        different,
    }
}

/// Picks how to send an area, given its content and how hot (frequently
/// changing) it is. `jpeg` says whether the browser accepts JPEG.
pub(crate) fn classify(s: &Stats, area: u64, heat: u8, jpeg: bool) -> Kind {
    if let Some(c) = s.solid {
        return Kind::Solid(c);
    }
    if !jpeg || area < JPEG_MIN_AREA || s.distinct <= 16 {
        return Kind::Lossless;
    }
    // guacd's measure: PNG pays when runs of equal pixels are long.
    let runs = s.same / s.different.max(1);
    let photographic = s.distinct >= DISTINCT_CAP && runs < 2;
    let busy = heat >= HOT && s.distinct >= 48 && runs < 8;
    if photographic || busy {
        Kind::Lossy
    } else {
        Kind::Lossless
    }
}

/// Image encoding failed (a bug: the inputs are always consistent).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The PNG encoder refused the image.
    #[error("PNG encoding failed")]
    Png(#[source] png::EncodingError),
    /// The JPEG encoder refused the image.
    #[error("JPEG encoding failed")]
    Jpeg(#[source] jpeg_encoder::EncodingError),
    /// The thread encoding the images failed.
    #[error("the image encoding thread failed")]
    Worker,
    /// The area is too large for the format.
    #[error("image of {0}x{1} is too large to encode")]
    TooLarge(u32, u32),
}

/// A small open-addressing set / palette of up to 256 colours.
struct ColorSet {
    keys: [u32; 1024],
    index: [u8; 1024],
    colors: Vec<u32>,
}

/// Never a pixel: pixels have a zero top byte.
const EMPTY: u32 = u32::MAX;

impl ColorSet {
    fn new() -> ColorSet {
        ColorSet {
            keys: [EMPTY; 1024],
            index: [0; 1024],
            colors: Vec::with_capacity(256),
        }
    }

    fn len(&self) -> usize {
        self.colors.len()
    }

    /// The palette index of `c`, adding it; `None` once 256 are taken.
    fn insert(&mut self, c: u32) -> Option<u8> {
        let mut slot = (c.wrapping_mul(0x9E37_79B1) >> 22) as usize;
        loop {
            let k = self.keys[slot];
            if k == c {
                return Some(self.index[slot]);
            }
            if k == EMPTY {
                let i = u8::try_from(self.colors.len()).ok()?;
                self.keys[slot] = c;
                self.index[slot] = i;
                self.colors.push(c);
                return Some(i);
            }
            slot = (slot + 1) & 1023;
        }
    }
}

/// Pixels of a clipped area, for capacities (saturating: a hint only).
fn pixel_count(a: &Area) -> usize {
    usize::try_from(a.area()).unwrap_or(usize::MAX / 4)
}

fn dims(a: &Area) -> Result<(u32, u32), EncodeError> {
    let (w, h) = (a.width(), a.height());
    if w == 0 || h == 0 || w > 65535 || h > 65535 {
        return Err(EncodeError::TooLarge(w, h));
    }
    Ok((w, h))
}

fn png_encoder(out: &mut Vec<u8>, w: u32, h: u32) -> png::Encoder<'_, &mut Vec<u8>> {
    let mut e = png::Encoder::new(out, w, h);
    e.set_compression(png::Compression::Fast);
    e
}

/// Encodes an area (clipped) as PNG: indexed with 1, 2, 4 or 8 bits per
/// pixel when it has at most 256 colours, else 8-bit RGB.
pub(crate) fn png(px: Pixels<'_>, a: &Area, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let a = px.clip(a);
    let (w, h) = dims(&a)?;
    if let Some((palette, indices)) = palettize(px, &a) {
        let bits: u32 = match palette.len() {
            0..=2 => 1,
            3..=4 => 2,
            5..=16 => 4,
            _ => 8,
        };
        let packed = pack(&indices, w as usize, bits);
        let mut plte = Vec::with_capacity(palette.len() * 3);
        for c in &palette {
            let [_, r, g, b] = c.to_be_bytes();
            plte.extend_from_slice(&[r, g, b]);
        }
        let mut e = png_encoder(out, w, h);
        e.set_color(png::ColorType::Indexed);
        e.set_depth(match bits {
            1 => png::BitDepth::One,
            2 => png::BitDepth::Two,
            4 => png::BitDepth::Four,
            _ => png::BitDepth::Eight,
        });
        e.set_palette(plte);
        e.set_filter(png::FilterType::NoFilter);
        let mut wr = e.write_header().map_err(EncodeError::Png)?;
        wr.write_image_data(&packed).map_err(EncodeError::Png)?;
        wr.finish().map_err(EncodeError::Png)?;
        return Ok(());
    }
    let mut rgb = Vec::with_capacity(pixel_count(&a) * 3);
    for row in px.rows(&a) {
        for &p in row {
            let [_, r, g, b] = p.to_be_bytes();
            rgb.extend_from_slice(&[r, g, b]);
        }
    }
    let mut e = png_encoder(out, w, h);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    e.set_filter(png::FilterType::Sub);
    let mut wr = e.write_header().map_err(EncodeError::Png)?;
    wr.write_image_data(&rgb).map_err(EncodeError::Png)?;
    wr.finish().map_err(EncodeError::Png)?;
    Ok(())
}

/// The palette and one index per pixel, or `None` beyond 256 colours.
fn palettize(px: Pixels<'_>, a: &Area) -> Option<(Vec<u32>, Vec<u8>)> {
    let mut set = ColorSet::new();
    let mut indices = Vec::with_capacity(pixel_count(a));
    let mut last = EMPTY;
    let mut last_index = 0u8;
    for row in px.rows(a) {
        for &c in row {
            if c != last {
                last_index = set.insert(c)?;
                last = c;
            }
            indices.push(last_index);
        }
    }
    Some((set.colors, indices))
}

/// Packs one index per pixel into rows of `bits`-bit samples, MSB first.
fn pack(indices: &[u8], w: usize, bits: u32) -> Vec<u8> {
    if bits == 8 || w == 0 {
        return indices.to_vec();
    }
    let per_byte = 8 / bits as usize;
    let row_bytes = w.div_ceil(per_byte);
    let mut out = Vec::with_capacity(row_bytes * (indices.len() / w));
    for row in indices.chunks(w) {
        for group in row.chunks(per_byte) {
            let mut byte = 0u8;
            for (i, &v) in group.iter().enumerate() {
                let shift = 8 - bits as usize * (i + 1);
                byte |= v << shift;
            }
            out.push(byte);
        }
    }
    out
}

/// Encodes an area (clipped) as a baseline JPEG at `quality` (1–100).
pub(crate) fn jpeg(
    px: Pixels<'_>,
    a: &Area,
    quality: u8,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let a = px.clip(a);
    let (w, h) = dims(&a)?;
    let mut bgrx = Vec::with_capacity(pixel_count(&a) * 4);
    for row in px.rows(&a) {
        for &p in row {
            bgrx.extend_from_slice(&p.to_le_bytes());
        }
    }
    let e = jpeg_encoder::Encoder::new(out, quality.clamp(1, 100));
    let (w, h) = (
        u16::try_from(w).map_err(|_| EncodeError::TooLarge(w, h))?,
        u16::try_from(h).map_err(|_| EncodeError::TooLarge(w, h))?,
    );
    e.encode(&bgrx, w, h, jpeg_encoder::ColorType::Bgra)
        .map_err(EncodeError::Jpeg)
}

/// Encodes non-premultiplied RGBA bytes (a cursor) as an RGBA PNG.
pub(crate) fn png_rgba(rgba: &[u8], w: u32, h: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let need = u64::from(w) * u64::from(h) * 4;
    if w == 0 || h == 0 || rgba.len() as u64 != need {
        return Err(EncodeError::TooLarge(w, h));
    }
    let mut e = png_encoder(out, w, h);
    e.set_color(png::ColorType::Rgba);
    e.set_depth(png::BitDepth::Eight);
    let mut wr = e.write_header().map_err(EncodeError::Png)?;
    wr.write_image_data(rgba).map_err(EncodeError::Png)?;
    wr.finish().map_err(EncodeError::Png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_png(data: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut d = png::Decoder::new(data);
        d.set_transformations(png::Transformations::EXPAND);
        let mut r = d.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    fn rgb_of(px: Pixels<'_>, a: &Area) -> Vec<u8> {
        px.rows(a)
            .flatten()
            .flat_map(|p| {
                let [_, r, g, b] = p.to_be_bytes();
                [r, g, b]
            })
            .collect()
    }

    fn noise(w: u32, h: u32, seed: u32) -> Vec<u32> {
        let mut x = seed | 1;
        (0..w * h)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x & 0x00ff_ffff
            })
            .collect()
    }

    #[test]
    fn png_round_trips_every_palette_depth_and_rgb() {
        let (w, h) = (37u32, 11u32);
        for colors in [1u32, 2, 3, 4, 5, 16, 17, 256, 100_000] {
            let data: Vec<u32> = (0..w * h)
                .map(|i| {
                    (i.wrapping_mul(2_654_435_761) % colors).wrapping_mul(0x0001_0203) & 0x00ff_ffff
                })
                .collect();
            let px = Pixels::new(&data, w, h);
            let a = Area::new(3, 2, 30, 11);
            let mut out = Vec::new();
            png(px, &a, &mut out).unwrap();
            let (info, buf) = decode_png(&out);
            assert_eq!((info.width, info.height), (27, 9));
            let rgb: Vec<u8> = match info.color_type {
                png::ColorType::Rgb => buf,
                other => panic!("{other:?}"),
            };
            assert_eq!(rgb, rgb_of(px, &a), "{colors} colours");
        }
    }

    #[test]
    fn png_of_text_like_content_is_small_and_indexed() {
        let (w, h) = (640u32, 32u32);
        let data: Vec<u32> = (0..w * h)
            .map(|i| {
                if (i * 7 + i / 13) % 5 == 0 {
                    0
                } else {
                    0x00ff_ffff
                }
            })
            .collect();
        let mut out = Vec::new();
        png(Pixels::new(&data, w, h), &Area::screen(w, h), &mut out).unwrap();
        let d = png::Decoder::new(&out[..]);
        let r = d.read_info().unwrap();
        assert_eq!(r.info().color_type, png::ColorType::Indexed);
        assert_eq!(r.info().bit_depth, png::BitDepth::One);
    }

    #[test]
    fn jpeg_decodes_to_the_same_size_and_close_colours() {
        let (w, h) = (130u32, 70u32);
        let data: Vec<u32> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                ((x * 255 / w) << 16) | ((y * 255 / h) << 8) | 0x40
            })
            .collect();
        let mut out = Vec::new();
        jpeg(Pixels::new(&data, w, h), &Area::screen(w, h), 85, &mut out).unwrap();
        let mut d = jpeg_decoder::Decoder::new(&out[..]);
        let pixels = d.decode().unwrap();
        let info = d.info().unwrap();
        assert_eq!((u32::from(info.width), u32::from(info.height)), (w, h));
        let want = rgb_of(Pixels::new(&data, w, h), &Area::screen(w, h));
        let err: u64 = pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum();
        assert!(
            err / (want.len() as u64) < 4,
            "mean error {}",
            err / want.len() as u64
        );
    }

    #[test]
    fn classification() {
        let (w, h) = (128u32, 128u32);
        let solid = vec![0x0012_3456; (w * h) as usize];
        let text: Vec<u32> = (0..w * h)
            .map(|i| if i % 9 < 2 { 0 } else { 0x00ff_ffff })
            .collect();
        let photo = noise(w, h, 7);
        let all = Area::screen(w, h);
        let s = analyse(Pixels::new(&solid, w, h), &all, 1);
        assert_eq!(s.solid, Some(0x0012_3456));
        assert_eq!(classify(&s, all.area(), 0, true), Kind::Solid(0x0012_3456));
        let s = analyse(Pixels::new(&text, w, h), &all, 1);
        assert_eq!(s.distinct, 2);
        assert_eq!(classify(&s, all.area(), 200, true), Kind::Lossless);
        let s = analyse(Pixels::new(&photo, w, h), &all, 2);
        assert_eq!(classify(&s, all.area(), 0, true), Kind::Lossy);
        assert_eq!(classify(&s, all.area(), 0, false), Kind::Lossless);
        assert_eq!(classify(&s, 100, 0, true), Kind::Lossless);
    }

    #[test]
    fn bad_areas_never_panic() {
        let data = vec![0u32; 10];
        let px = Pixels::new(&data, 4, 5); // only 2 full rows
        assert_eq!(px.height(), 2);
        let mut out = Vec::new();
        assert!(png(px, &Area::new(10, 10, 20, 20), &mut out).is_err());
        assert!(jpeg(px, &Area::new(0, 0, 0, 9), 80, &mut out).is_err());
        png(px, &Area::new(0, 0, 100, 100), &mut out).unwrap();
        assert!(png_rgba(&[0; 7], 1, 2, &mut out).is_err());
        let s = analyse(px, &Area::new(50, 50, 60, 60), 1);
        assert_eq!(s.solid, None);
        let px = Pixels::new(&data, 0, 5);
        assert_eq!(px.rows(&Area::screen(4, 4)).count(), 0);
    }

    #[test]
    fn pack_bits() {
        assert_eq!(
            pack(&[1, 0, 1, 1, 0, 0, 0, 1, 1], 9, 1),
            vec![0b1011_0001, 0b1000_0000]
        );
        assert_eq!(pack(&[3, 2, 1, 0, 3], 5, 2), vec![0b1110_0100, 0b1100_0000]);
        assert_eq!(pack(&[15, 1, 2], 3, 4), vec![0xf1, 0x20]);
    }
}
