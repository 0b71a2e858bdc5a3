//! What the client reports: [`Event`]s and the small types they carry.

/// A rectangle in framebuffer coordinates, as RFB sends it (16-bit fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
}

impl Rect {
    /// Builds a rectangle.
    pub const fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    /// Number of pixels covered.
    pub fn area(&self) -> usize {
        usize::from(self.width) * usize::from(self.height)
    }

    /// True when the rectangle covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// One past the right edge, without overflow.
    pub fn right(&self) -> u32 {
        u32::from(self.x) + u32::from(self.width)
    }

    /// One past the bottom edge, without overflow.
    pub fn bottom(&self) -> u32 {
        u32::from(self.y) + u32::from(self.height)
    }

    /// True when the rectangle lies inside a `width` × `height` area.
    pub fn fits_in(&self, width: u16, height: u16) -> bool {
        self.right() <= u32::from(width) && self.bottom() <= u32::from(height)
    }
}

/// One screen (monitor) of the server's layout, from ExtendedDesktopSize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    /// The server's id for this screen; preserved when we ask for a resize.
    pub id: u32,
    /// Position and size within the framebuffer.
    pub rect: Rect,
    /// Flags, unused by the protocol today but preserved.
    pub flags: u32,
}

/// The server's answer to our `SetDesktopSize` (ExtendedDesktopSize with
/// reason "requested by this client").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesktopSizeStatus {
    /// The new size is in effect.
    Ok,
    /// 1: resizing is administratively prohibited.
    Prohibited,
    /// 2: the server is out of resources.
    OutOfResources,
    /// 3: the requested layout is invalid.
    InvalidLayout,
    /// 4: the request was forwarded (QEMU: to the guest) and may complete
    /// later with another resize.
    Forwarded,
    /// Any other code: an unknown failure.
    Unknown(u16),
}

impl DesktopSizeStatus {
    /// Maps the wire status code.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => DesktopSizeStatus::Ok,
            1 => DesktopSizeStatus::Prohibited,
            2 => DesktopSizeStatus::OutOfResources,
            3 => DesktopSizeStatus::InvalidLayout,
            4 => DesktopSizeStatus::Forwarded,
            other => DesktopSizeStatus::Unknown(other),
        }
    }
}

/// Something the server told us, in stream order.
///
/// Drawing events (`Copy`, `Fill`, `Pixels`) are reported after the client
/// has applied them to its framebuffer. A `FramebufferUpdate` yields its
/// drawing events followed by exactly one `UpdateEnd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake is complete (after ServerInit); the framebuffer is
    /// `width` × `height`, all black until the first update.
    Connected {
        /// Framebuffer width.
        width: u16,
        /// Framebuffer height.
        height: u16,
        /// The desktop name (UTF-8, invalid sequences replaced).
        name: String,
    },
    /// CopyRect: `rect` now holds what was at (`src_x`, `src_y`) before.
    Copy {
        /// Source left edge.
        src_x: u16,
        /// Source top edge.
        src_y: u16,
        /// Destination rectangle.
        rect: Rect,
    },
    /// The whole of `rect` is one colour (XRGB, `0x00RRGGBB`).
    Fill {
        /// Area filled.
        rect: Rect,
        /// Colour, `0x00RRGGBB`.
        color: u32,
    },
    /// `rect` changed: read its pixels from the framebuffer.
    Pixels {
        /// Damaged area.
        rect: Rect,
    },
    /// The framebuffer changed size. Content inside both the old and the new
    /// size is kept; new area is black.
    Resize {
        /// New width.
        width: u16,
        /// New height.
        height: u16,
    },
    /// The server answered our `SetDesktopSize`. On `Ok` a `Resize`
    /// precedes this event if the size actually changed.
    DesktopSizeResult(DesktopSizeStatus),
    /// A new cursor image. `rgba` holds `width * height * 4` bytes, row by
    /// row, non-premultiplied; fully transparent where the server's mask is
    /// clear. A 0×0 cursor means "no cursor".
    Cursor {
        /// Hotspot column.
        hotspot_x: u16,
        /// Hotspot row.
        hotspot_y: u16,
        /// Cursor width.
        width: u16,
        /// Cursor height.
        height: u16,
        /// RGBA bytes.
        rgba: Vec<u8>,
    },
    /// End of one FramebufferUpdate: a good moment to flush (`sync`) and to
    /// send the next incremental FramebufferUpdateRequest.
    UpdateEnd,
    /// The server rang the bell.
    Bell,
    /// The server's clipboard text (line ends are `\n`).
    ClipboardText(String),
}
