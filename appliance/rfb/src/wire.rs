//! Byte-level reading helpers: a cursor over a slice that answers `None`
//! when the input ends before the value does (meaning "wait for more").

/// A forward-only reader over buffered input.
///
/// Every getter returns `None` when the slice is too short; the caller then
/// leaves the input untouched and waits for more bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Some(out)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let [b] = self.array::<1>()?;
        Some(b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array::<2>().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.array::<4>().map(i32::from_be_bytes)
    }

    /// A 32-bit little-endian pixel in the client's pixel format (XRGB,
    /// padding byte cleared).
    pub(crate) fn pixel(&mut self) -> Option<u32> {
        let b = self.array::<4>()?;
        Some(pixel_from_le(b[0], b[1], b[2]))
    }

    /// A 3-byte ZRLE `CPIXEL` (the three least significant bytes of the
    /// little-endian pixel).
    pub(crate) fn cpixel(&mut self) -> Option<u32> {
        let b = self.array::<3>()?;
        Some(pixel_from_le(b[0], b[1], b[2]))
    }
}

/// Builds an XRGB pixel from the blue, green and red bytes as they appear
/// on the wire in our little-endian pixel format.
pub(crate) fn pixel_from_le(b: u8, g: u8, r: u8) -> u32 {
    (u32::from(r) << 16) | (u32::from(g) << 8) | u32::from(b)
}

/// Big-endian writers for the output buffer.
pub(crate) trait PutExt {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_i32(&mut self, v: i32);
}

impl PutExt for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_short_input() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.u16(), Some(1));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(2));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.bytes(usize::MAX), None);
    }

    #[test]
    fn pixels_are_little_endian_xrgb() {
        let mut r = Reader::new(&[0x11, 0x22, 0x33, 0xff, 0x44, 0x55, 0x66]);
        assert_eq!(r.pixel(), Some(0x0033_2211));
        assert_eq!(r.cpixel(), Some(0x0066_5544));
    }
}
