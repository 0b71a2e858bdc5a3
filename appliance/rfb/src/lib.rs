//! A pure RFB (VNC) client: bytes in, events and bytes out. No sockets, no
//! async runtime, no threads. It is the protocol core of the appliance's
//! built-in VNC engine; an IO pump moves bytes and a translator turns
//! [`Event`]s into Guacamole drawing instructions.
//!
//! # The state machine
//!
//! A [`Client`] goes through the RFB phases in order:
//!
//! 1. **ProtocolVersion**: the server announces its version; the client
//!    answers 3.3, 3.7 or 3.8 (3.8 for anything newer, such as Apple's 3.889
//!    or RealVNC's 4.x).
//! 2. **Security**: None (1), or VNC Authentication (2) when
//!    [`Config::password`] is set (DES challenge-response), then the
//!    SecurityResult (with its reason string in 3.8).
//! 3. **Initialisation**: ClientInit (the shared flag), ServerInit (size,
//!    pixel format, name). The client then sends SetPixelFormat (32 bpp,
//!    depth 24, true colour, little-endian, red/green/blue at shifts
//!    16/8/0) and SetEncodings ([`Config::encodings`]) and reports
//!    [`Event::Connected`].
//! 4. **Normal**: FramebufferUpdates (Raw, CopyRect, Hextile, ZRLE and the
//!    DesktopSize, ExtendedDesktopSize, Cursor and LastRect
//!    pseudo-encodings), Bell, SetColourMapEntries (ignored) and
//!    ServerCutText (Latin-1, or the Extended Clipboard with UTF-8 text).
//!
//! The client keeps the framebuffer ([`Framebuffer`], `u32` pixels
//! `0x00RRGGBB`) and applies every rectangle to it. Each FramebufferUpdate
//! yields drawing events in stream order — [`Event::Copy`],
//! [`Event::Fill`] (a rectangle of one colour: uniform Raw rectangles,
//! solid ZRLE tiles and background-only Hextile tiles, merged), and
//! [`Event::Pixels`] (read the pixels from the framebuffer) — plus
//! [`Event::Resize`] and [`Event::Cursor`], then one [`Event::UpdateEnd`].
//!
//! # Driving it (the IO pump)
//!
//! ```no_run
//! # fn pump(sock: &mut std::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use daas_rfb::{Client, Config, Event};
//!
//! let mut client = Client::new(Config::default());
//! let mut buf = vec![0u8; 64 * 1024];
//! loop {
//!     let n = sock.read(&mut buf)?;
//!     if n == 0 {
//!         client.end_of_stream()?; // error if the server stopped mid-message
//!         return Ok(());
//!     }
//!     client.feed(&buf[..n]);
//!     while let Some(event) = client.next_event()? {
//!         match event {
//!             Event::Connected { .. } => client.request_full_update(false)?,
//!             Event::Pixels { rect } => {
//!                 let _rgb = client.framebuffer().copy_out_rgb(rect); // encode now
//!             }
//!             Event::UpdateEnd => client.request_full_update(true)?,
//!             _ => {}
//!         }
//!     }
//!     sock.write_all(&client.take_output())?;
//! }
//! # }
//! ```
//!
//! Rules for the pump and the translator:
//!
//! - Feed bytes in any chunks: an incomplete message is never an error, and
//!   any split of the same stream gives the same events.
//! - Decoding is lazy: [`Client::next_event`] decodes only until the next
//!   event. When an event is returned the framebuffer holds exactly the
//!   rectangles reported so far, so read a [`Event::Pixels`] area before
//!   asking for the next event (or at least before acting on a later
//!   [`Event::Copy`] or [`Event::Resize`]); reading later may show newer
//!   pixels that a later event reports anyway.
//! - After every round of events, send [`Client::take_output`]: the client
//!   writes handshake replies and clipboard answers there by itself, and
//!   the request methods ([`Client::request_update`], [`Client::pointer`],
//!   [`Client::key`], [`Client::send_clipboard`],
//!   [`Client::set_desktop_size`]) append to it too.
//! - The pump decides when to ask for updates: typically a non-incremental
//!   request after [`Event::Connected`] and an incremental one after each
//!   [`Event::UpdateEnd`].
//! - An [`RfbError`] is final: close the connection.
//!
//! # Clipboard
//!
//! With the Extended Clipboard (TigerVNC 1.10 and later) text travels as
//! UTF-8; the client fetches the server's clipboard as soon as the server
//! announces a change and reports it as [`Event::ClipboardText`]. Without
//! it, text travels as Latin-1: characters outside Latin-1 are sent as `?`.
//! Line ends are `\n` in both directions of the API.
//!
//! # Safety against a hostile server
//!
//! Every size and length the server sends is checked against [`Limits`]
//! with overflow-free arithmetic before it is used: framebuffer size,
//! rectangles (inside the framebuffer), rectangles per update, cut text,
//! desktop name and reason strings, cursor size, and ZRLE data (the
//! compressed length is bounded by the rectangle's area and inflation stops
//! where the rectangle's tiles end). A malformed stream yields an
//! [`RfbError`], never a panic, and memory stays bounded by the framebuffer
//! plus the largest single message the limits allow.
//!
//! # Password files
//!
//! [`vnc_password_file`] produces the 8 bytes `vncpasswd` writes, so a
//! server can be started with `Xvnc -SecurityTypes VncAuth -PasswordFile F`
//! without running `vncpasswd`.

#![warn(missing_docs)]

mod auth;
mod client;
mod clipboard;
mod config;
mod error;
mod event;
mod framebuffer;
mod hextile;
mod tiles;
mod wire;
mod zrle;

#[cfg(test)]
mod testenc;
#[cfg(test)]
mod tests;

pub use auth::vnc_password_file;
pub use client::{Client, ProtocolVersion, Stats};
pub use config::{Config, Encoding, Limits};
pub use error::{RequestError, RfbError};
pub use event::{DesktopSizeStatus, Event, Rect, Screen};
pub use framebuffer::Framebuffer;
