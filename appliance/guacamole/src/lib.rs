//! The Guacamole protocol, as guacd and guacamole-common-js speak it: a
//! streaming decoder, an encoder and the status codes. Pure code: no IO, no
//! async runtime. The appliance's WebSocket tunnel uses it on its hot path.
//!
//! # The format
//!
//! An instruction is a list of elements, the first being the opcode:
//!
//! ```text
//! 4.sync,13.1700000000000;      opcode "sync", one argument
//! 0.,4.ping,13.1700000000000;   opcode "" (tunnel-internal), two arguments
//! 4.name,3.日本😀;              lengths count code points, not bytes
//! ```
//!
//! Each element is `LENGTH.VALUE`; a `,` follows every element but the last,
//! which a `;` follows. `LENGTH` is decimal and counts the Unicode code points
//! of `VALUE`: not bytes, and not UTF-16 units (`😀` counts once, although
//! JavaScript's `length` says 2). The bytes are UTF-8. Values may contain any
//! character, `,` `;` and `.` included: only the lengths delimit them. So the
//! decoder insists that exactly `,` or `;` follows each value; a wrong length
//! (CVE-2023-30575 in guacd) is an error, never a way to inject or alter an
//! instruction.
//!
//! # Limits
//!
//! [`Limits`] bounds what one instruction may hold; the defaults are guacd's:
//!
//! | limit | default | error |
//! | --- | --- | --- |
//! | code points per element | 8192 ([`DEFAULT_MAX_ELEMENT_CHARS`]) | [`DecodeError::ElementTooLong`] |
//! | elements per instruction, opcode included | 128 ([`DEFAULT_MAX_ELEMENTS`]) | [`DecodeError::TooManyElements`] |
//! | digits per length prefix | 5, or as many as the element limit needs | [`DecodeError::LengthTooLarge`] |
//! | bytes per instruction (the buffer) | 65 536 ([`DEFAULT_MAX_BUFFER_BYTES`]) | [`DecodeError::BufferOverflow`] |
//!
//! guacd 1.6 buffers 32 KiB of an instruction; 64 KiB holds the largest
//! element (8192 four-byte code points) with room for the rest of its
//! instruction. Bytes that are not UTF-8 (including encoded surrogates,
//! overlong forms and code points above U+10FFFF) are
//! [`DecodeError::InvalidUtf8`], and any other separator is
//! [`DecodeError::UnexpectedSeparator`].
//!
//! # Decoding
//!
//! [`Decoder::push`] takes bytes as they come, split anywhere (inside a
//! length prefix or a UTF-8 character too): every split of a stream yields the
//! same instructions, at the same offsets, and the same error if any. Then:
//!
//! - [`Decoder::next_raw`] returns a [`RawInstruction`] borrowed from the
//!   decoder: its exact bytes, its opcode and its stream offset, without
//!   allocating. A tunnel forwards those bytes, batching several whole
//!   instructions into one WebSocket message, and handles the internal ones
//!   (empty opcode) itself.
//! - [`Decoder::next_instruction`] returns an owned [`Instruction`], for the
//!   few the tunnel interprets (handshake, `sync`, `error`, `ping`).
//!
//! Both return `Ok(None)` when they need more bytes: an incomplete
//! instruction is not an error. After an error the decoder stays failed.
//!
//! Speed: `push` validates UTF-8 with `std::str::from_utf8` and notes how far
//! the pushed bytes are ASCII (a word-at-a-time check). A value inside that
//! ASCII run, such as base64 `blob` data, has as many code points as bytes,
//! so the parser jumps over it with two comparisons; only values with other
//! characters are walked character by character.
//!
//! ```
//! use daas_guacamole::{Decoder, Instruction};
//!
//! // What the browser sends, as the WebSocket delivers it.
//! let messages = [&b"4.size,4.1024,3.76"[..], b"8;0.,4.ping,1.7;3.key,5.65307,1.1;"];
//! let mut from_browser = Decoder::new();
//! let (mut to_guacd, mut to_browser) = (Vec::new(), Vec::new());
//! for message in messages {
//!     from_browser.push(message)?;
//!     while let Some(raw) = from_browser.next_raw()? {
//!         if let Some(ts) = raw.ping_timestamp() {
//!             Instruction::ping(ts).write_to(&mut to_browser);
//!         } else if !raw.is_internal() {
//!             to_guacd.extend_from_slice(raw.as_bytes());
//!         }
//!     }
//! }
//! assert_eq!(to_guacd, b"4.size,4.1024,3.768;3.key,5.65307,1.1;");
//! assert_eq!(to_browser, b"0.,4.ping,1.7;");
//! # Ok::<(), daas_guacamole::DecodeError>(())
//! ```
//!
//! # Encoding
//!
//! [`write_instruction`] appends an instruction to a `Vec<u8>` without other
//! allocation; [`Instruction`] has constructors for what a tunnel sends:
//! [`Instruction::error`], [`Instruction::sync`], [`Instruction::tunnel_id`]
//! and [`Instruction::ping`].
//!
//! # Status codes
//!
//! [`Status`] is guacamole-client's `GuacamoleStatus`: the Guacamole code, the
//! HTTP status and the WebSocket close code, and the close reason
//! guacamole-common-js parses back into the code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod encode;
mod status;

pub use decode::{
    Args, DecodeError, Decoder, Limits, RawInstruction, DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_ELEMENT_CHARS,
};
pub use encode::{write_instruction, Instruction};
pub use status::Status;

/// The opcode of tunnel-internal instructions: the empty string.
pub const INTERNAL_OPCODE: &str = "";

/// The first argument of an internal ping, `0.,4.ping,<timestamp>;`.
pub const PING: &str = "ping";
