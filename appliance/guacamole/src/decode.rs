//! The streaming decoder: bytes in, whole instructions out.

use crate::{Instruction, INTERNAL_OPCODE};

/// Default for [`Limits::max_element_chars`]: guacd's and guacamole-common's
/// `INSTRUCTION_MAX_LENGTH`.
pub const DEFAULT_MAX_ELEMENT_CHARS: usize = 8192;

/// Default for [`Limits::max_elements`]: guacd's and guacamole-common's
/// `INSTRUCTION_MAX_ELEMENTS` (the opcode counts as one).
pub const DEFAULT_MAX_ELEMENTS: usize = 128;

/// Default for [`Limits::max_buffer_bytes`]: 64 KiB.
///
/// guacd 1.6 buffers 32 768 bytes of an instruction. The largest element
/// [`DEFAULT_MAX_ELEMENT_CHARS`] allows is 8192 four-byte code points, which
/// is 32 774 bytes with its length prefix and separator; 64 KiB holds such an
/// element plus 32 KiB for the opcode and the other arguments. (An instruction
/// of 128 such elements, 4 MiB, is allowed by the other two limits alone; no
/// Guacamole peer sends one, and accepting it would let a peer pin 4 MiB per
/// connection.)
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 64 * 1024;

/// The fewest digits a length prefix may have before it is
/// [`DecodeError::LengthTooLarge`]: guacd's `GUAC_INSTRUCTION_MAX_DIGITS`.
const MIN_LENGTH_DIGITS: usize = 5;

/// The most digits a length prefix may ever have: any number of 19 digits
/// fits a `u64`, and no element that long fits in memory.
const MAX_LENGTH_DIGITS: usize = 19;

/// How much one instruction may hold. See [the crate docs](crate#limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The most code points in one element (opcode or argument).
    pub max_element_chars: usize,
    /// The most elements in one instruction, opcode included (at least 1).
    pub max_elements: usize,
    /// The most bytes of one instruction, from the first digit of its opcode's
    /// length through its `;`. The decoder never buffers more than this of an
    /// instruction it has not yet returned.
    pub max_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_element_chars: DEFAULT_MAX_ELEMENT_CHARS,
            max_elements: DEFAULT_MAX_ELEMENTS,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
        }
    }
}

impl Limits {
    /// These limits with `max_element_chars` set.
    pub const fn with_max_element_chars(mut self, n: usize) -> Self {
        self.max_element_chars = n;
        self
    }

    /// These limits with `max_elements` set.
    pub const fn with_max_elements(mut self, n: usize) -> Self {
        self.max_elements = n;
        self
    }

    /// These limits with `max_buffer_bytes` set.
    pub const fn with_max_buffer_bytes(mut self, n: usize) -> Self {
        self.max_buffer_bytes = n;
        self
    }

    /// The most digits a length prefix may have: 5, as in guacd, or as many
    /// as `max_element_chars` needs, up to 19.
    pub fn max_length_digits(&self) -> usize {
        let mut digits = 1;
        let mut n = self.max_element_chars;
        while n >= 10 {
            n /= 10;
            digits += 1;
        }
        digits.clamp(MIN_LENGTH_DIGITS, MAX_LENGTH_DIGITS)
    }
}

/// Why a stream is not valid Guacamole protocol.
///
/// `offset` is the position in the stream (bytes since the decoder was made)
/// of the byte at which the error was found. The same stream gives the same
/// error, at the same offset, however it is split into pushes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length prefix holds something other than decimal digits, or no digit.
    #[error("invalid element length: expected a digit or '.', found {found:?} at byte {offset}")]
    InvalidLength {
        /// Stream offset of the offending character.
        offset: u64,
        /// The offending character (`'.'` for an empty length).
        found: char,
    },
    /// A length prefix has more digits than [`Limits::max_length_digits`].
    #[error("element length at byte {offset} has more than {max_digits} digits")]
    LengthTooLarge {
        /// Stream offset of the first digit too many.
        offset: u64,
        /// The most digits allowed.
        max_digits: usize,
    },
    /// An element declares more code points than [`Limits::max_element_chars`].
    #[error("element of {len} code points at byte {offset} exceeds the limit of {limit}")]
    ElementTooLong {
        /// Stream offset of the `.` ending the length prefix.
        offset: u64,
        /// The declared length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// An instruction has more elements than [`Limits::max_elements`].
    #[error("instruction has more than {limit} elements (at byte {offset})")]
    TooManyElements {
        /// Stream offset of the `,` that would start one element too many.
        offset: u64,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not UTF-8: an invalid byte, an overlong form, an encoded
    /// surrogate (`ED A0 80`) or a code point above U+10FFFF.
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Stream offset of the first byte of the invalid sequence.
        offset: u64,
    },
    /// After an element's declared number of code points comes something other
    /// than `,` or `;`: the declared length is wrong. This is how a length
    /// that would run into (and swallow or alter) the next instruction is
    /// caught (guacd CVE-2023-30575).
    #[error("expected ',' or ';' after an element, found {found:?} at byte {offset}")]
    UnexpectedSeparator {
        /// Stream offset of the offending character.
        offset: u64,
        /// The offending character.
        found: char,
    },
    /// An instruction does not end within [`Limits::max_buffer_bytes`] bytes.
    #[error("instruction longer than the buffer limit of {limit} bytes (at byte {offset})")]
    BufferOverflow {
        /// Stream offset of the first byte beyond the limit.
        offset: u64,
        /// The limit.
        limit: usize,
    },
}

impl DecodeError {
    /// The stream offset at which the error was found.
    pub fn offset(&self) -> u64 {
        match *self {
            DecodeError::InvalidLength { offset, .. }
            | DecodeError::LengthTooLarge { offset, .. }
            | DecodeError::ElementTooLong { offset, .. }
            | DecodeError::TooManyElements { offset, .. }
            | DecodeError::InvalidUtf8 { offset }
            | DecodeError::UnexpectedSeparator { offset, .. }
            | DecodeError::BufferOverflow { offset, .. } => offset,
        }
    }
}

/// Where the parser is inside the current instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a length prefix: its value and digit count so far.
    Length { value: u64, digits: usize },
    /// Inside an element's value, with this many code points to go.
    Content { remaining: usize },
    /// Right after an element's value: expecting `,` or `;`.
    Separator,
}

const START: Phase = Phase::Length {
    value: 0,
    digits: 0,
};

/// A streaming decoder of the Guacamole protocol.
///
/// [`push`](Decoder::push) bytes as they arrive, in chunks of any size split
/// anywhere, then take the whole instructions out with
/// [`next_raw`](Decoder::next_raw) (borrowed, no allocation: for relaying) or
/// [`next_instruction`](Decoder::next_instruction) (owned) until they return
/// `Ok(None)`. An incomplete instruction at the end of the buffered bytes is
/// not an error: it waits for more bytes.
///
/// After any error the decoder is failed: every later call returns the same
/// error. Instructions that ended before the error was found are returned
/// first, whatever the chunking.
///
/// Memory: the bytes of one push, plus the incomplete instruction carried
/// over, which [`Limits::max_buffer_bytes`] bounds. Drain the decoder after
/// each push.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    max_digits: usize,
    /// Validated UTF-8. `text[..head]` has been returned already.
    text: String,
    /// Stream offset of `text[0]`.
    base: u64,
    /// Start of the first instruction not yet returned.
    head: usize,
    /// How far the parser has read.
    pos: usize,
    phase: Phase,
    /// Elements of the current instruction whose length has been read.
    elements: usize,
    /// `text[ascii_start..ascii_end]` is all ASCII, so a value inside it
    /// has as many code points as bytes. Kept up by `push` while the run
    /// reaches the end of `text`, and re-anchored by the parser after it
    /// passes a non-ASCII character.
    ascii_start: usize,
    ascii_end: usize,
    /// The first bytes of a UTF-8 sequence cut off by the end of a push.
    tail: [u8; 4],
    tail_len: usize,
    /// Invalid UTF-8 follows `text`; nothing after it is kept.
    utf8_error: bool,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::with_limits(Limits::default())
    }
}

impl Decoder {
    /// A decoder with the default [`Limits`].
    pub fn new() -> Self {
        Decoder::default()
    }

    /// A decoder with these limits (`max_elements` is raised to at least 1).
    pub fn with_limits(mut limits: Limits) -> Self {
        limits.max_elements = limits.max_elements.max(1);
        Decoder {
            max_digits: limits.max_length_digits(),
            limits,
            text: String::new(),
            base: 0,
            head: 0,
            pos: 0,
            phase: START,
            elements: 0,
            ascii_start: 0,
            ascii_end: 0,
            tail: [0; 4],
            tail_len: 0,
            utf8_error: false,
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The error the decoder failed with, if it has.
    pub fn error(&self) -> Option<&DecodeError> {
        self.failed.as_ref()
    }

    /// Bytes pushed but not yet returned in an instruction. After draining,
    /// this is the incomplete instruction waiting for more bytes: 0 means the
    /// stream stands at an instruction boundary.
    pub fn buffered_len(&self) -> usize {
        self.text.len() - self.head + self.tail_len
    }

    /// Stream offset of the first byte not yet returned in an instruction.
    pub fn stream_offset(&self) -> u64 {
        self.base + to_u64(self.head)
    }

    /// Appends bytes. Only checks UTF-8 here; the parsing, and any other
    /// error, happens in [`next_raw`](Decoder::next_raw). Fails only if the
    /// decoder already has.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.compact();
        if self.utf8_error || bytes.is_empty() {
            return Ok(());
        }
        if self.tail_len > 0 {
            // Complete the character cut off by the previous push.
            let have = self.tail_len;
            let want = utf8_width(self.tail[0]).max(have);
            let take = (want - have).min(bytes.len());
            self.tail[have..have + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.tail_len = have + take;
            match std::str::from_utf8(&self.tail[..self.tail_len]) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.tail_len = 0;
                }
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => {
                    self.tail_len = 0;
                    self.utf8_error = true;
                    return Ok(());
                }
            }
        }
        let (body, rest) = bytes.split_at(incomplete_suffix_start(bytes));
        match std::str::from_utf8(body) {
            Ok(s) => {
                if self.ascii_end == self.text.len() {
                    self.ascii_end += ascii_prefix_len(body);
                }
                self.text.push_str(s);
            }
            Err(e) => {
                if let Ok(valid) = std::str::from_utf8(&body[..e.valid_up_to()]) {
                    self.text.push_str(valid);
                }
                self.utf8_error = true;
                return Ok(());
            }
        }
        if !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Err(e) if e.error_len().is_none() => {
                    self.tail[..rest.len()].copy_from_slice(rest);
                    self.tail_len = rest.len();
                }
                // `rest` is a cut-off sequence, so never whole; but if it
                // were, or is already invalid, let the error stand here.
                _ => self.utf8_error = true,
            }
        }
        Ok(())
    }

    /// The next whole instruction, borrowed from the decoder's buffer:
    /// `Ok(None)` when more bytes are needed.
    pub fn next_raw(&mut self) -> Result<Option<RawInstruction<'_>>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.advance() {
            Ok(Some(end)) => {
                let start = self.head;
                self.head = end;
                let elements = self.elements;
                self.elements = 0;
                Ok(Some(RawInstruction {
                    text: &self.text[start..end],
                    offset: self.base + to_u64(start),
                    opcode: element_at(&self.text.as_bytes()[start..end], 0),
                    elements,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The next whole instruction, owned: `Ok(None)` when more bytes are
    /// needed.
    pub fn next_instruction(&mut self) -> Result<Option<Instruction>, DecodeError> {
        Ok(self.next_raw()?.map(|raw| raw.to_instruction()))
    }

    /// Drops the bytes already returned, moving the incomplete instruction
    /// (at most `max_buffer_bytes`) to the front.
    fn compact(&mut self) {
        let head = self.head;
        if head == 0 {
            return;
        }
        if head == self.text.len() {
            self.text.clear();
        } else {
            self.text.drain(..head);
        }
        self.base += to_u64(head);
        self.head = 0;
        self.pos -= head;
        self.ascii_start = self.ascii_start.saturating_sub(head);
        self.ascii_end = self.ascii_end.saturating_sub(head);
    }

    /// Runs the parser from where it stopped. `Ok(Some(end))` when an
    /// instruction ends (its `;` is at `end - 1`).
    fn advance(&mut self) -> Result<Option<usize>, DecodeError> {
        let limit_end = self.head.saturating_add(self.limits.max_buffer_bytes);
        // The parser never looks beyond the buffer limit of this instruction,
        // so whatever lies past it cannot change the outcome.
        let avail = self.text.len().min(limit_end);
        let bytes = &self.text.as_bytes()[..avail];
        let max_digits = self.max_digits;
        let max_chars = self.limits.max_element_chars;
        let max_elements = self.limits.max_elements;
        let mut pos = self.pos;
        let mut phase = self.phase;
        let mut elements = self.elements;
        let mut ascii_start = self.ascii_start;
        let mut ascii_end = self.ascii_end;

        // Straight through length, value and separator of each element,
        // entering at the phase where the previous call stopped.
        let step = 'parse: loop {
            let remaining = match phase {
                Phase::Length {
                    mut value,
                    mut digits,
                } => loop {
                    let Some(&b) = bytes.get(pos) else {
                        phase = Phase::Length { value, digits };
                        break 'parse Step::Stall;
                    };
                    let digit = b.wrapping_sub(b'0');
                    if digit < 10 {
                        digits += 1;
                        if digits > max_digits {
                            break 'parse Step::Fail(Fault::LengthTooLarge, pos);
                        }
                        // At most 19 digits: below 10^19, no overflow.
                        value = value * 10 + u64::from(digit);
                        pos += 1;
                    } else if b == b'.' && digits > 0 {
                        match usize::try_from(value) {
                            Ok(len) if len <= max_chars => {
                                pos += 1;
                                elements += 1;
                                break len;
                            }
                            _ => break 'parse Step::Fail(Fault::ElementTooLong(value), pos),
                        }
                    } else {
                        break 'parse Step::Fail(Fault::InvalidLength, pos);
                    }
                },
                Phase::Content { remaining } => remaining,
                Phase::Separator => 0,
            };
            if remaining > 0 {
                match pos.checked_add(remaining) {
                    // Inside the known ASCII run: code points are bytes.
                    Some(end) if pos >= ascii_start && end <= ascii_end.min(avail) => pos = end,
                    _ => {
                        let (end, left) = skip_chars(bytes, pos, remaining);
                        pos = end;
                        // Re-anchor the ASCII run here, past whatever
                        // non-ASCII character stopped the old one.
                        ascii_start = pos;
                        ascii_end = pos + ascii_prefix_len(&self.text.as_bytes()[pos..]);
                        if left > 0 {
                            phase = Phase::Content { remaining: left };
                            break 'parse Step::Stall;
                        }
                    }
                }
            }
            match bytes.get(pos) {
                Some(b',') => {
                    if elements >= max_elements {
                        break 'parse Step::Fail(Fault::TooManyElements, pos);
                    }
                    pos += 1;
                    phase = START;
                }
                Some(b';') => {
                    pos += 1;
                    phase = START;
                    break 'parse Step::Done;
                }
                Some(_) => break 'parse Step::Fail(Fault::UnexpectedSeparator, pos),
                None => {
                    phase = Phase::Separator;
                    break 'parse Step::Stall;
                }
            }
        };
        self.pos = pos;
        self.phase = phase;
        self.elements = elements;
        self.ascii_start = ascii_start;
        self.ascii_end = ascii_end;
        match step {
            Step::Done => Ok(Some(pos)),
            Step::Stall => self.stalled(limit_end),
            Step::Fail(fault, at) => Err(self.fault(fault, at)),
        }
    }

    /// The parser needs the byte at `min(text.len(), limit_end)` (or a
    /// character crossing it). Past the limit that is an overflow as soon as
    /// any byte is there; before it, invalid UTF-8 there is the error.
    fn stalled(&self, limit_end: usize) -> Result<Option<usize>, DecodeError> {
        let len = self.text.len();
        let beyond =
            len > limit_end || (len == limit_end && (self.tail_len > 0 || self.utf8_error));
        if beyond {
            Err(DecodeError::BufferOverflow {
                offset: self.base + to_u64(limit_end),
                limit: self.limits.max_buffer_bytes,
            })
        } else if self.utf8_error {
            Err(DecodeError::InvalidUtf8 {
                offset: self.base + to_u64(len),
            })
        } else {
            Ok(None)
        }
    }

    #[cold]
    fn fault(&self, fault: Fault, pos: usize) -> DecodeError {
        let offset = self.base + to_u64(pos);
        match fault {
            Fault::InvalidLength => DecodeError::InvalidLength {
                offset,
                found: char_at(&self.text, pos),
            },
            Fault::LengthTooLarge => DecodeError::LengthTooLarge {
                offset,
                max_digits: self.max_digits,
            },
            Fault::ElementTooLong(len) => DecodeError::ElementTooLong {
                offset,
                len,
                limit: self.limits.max_element_chars,
            },
            Fault::TooManyElements => DecodeError::TooManyElements {
                offset,
                limit: self.limits.max_elements,
            },
            Fault::UnexpectedSeparator => DecodeError::UnexpectedSeparator {
                offset,
                found: char_at(&self.text, pos),
            },
        }
    }
}

/// How a run of the parser ended.
enum Step {
    /// An instruction ended; the parser stands after its `;`.
    Done,
    /// More bytes are needed.
    Stall,
    /// This fault, at this position in `text`.
    Fail(Fault, usize),
}

/// A [`DecodeError`] before it knows its offset and details.
enum Fault {
    InvalidLength,
    LengthTooLarge,
    ElementTooLong(u64),
    TooManyElements,
    UnexpectedSeparator,
}

/// A whole instruction in the decoder's buffer: its exact bytes as received
/// (valid UTF-8) and its parsed opcode, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawInstruction<'a> {
    text: &'a str,
    offset: u64,
    /// The opcode's range in `text`.
    opcode: (usize, usize),
    elements: usize,
}

impl<'a> RawInstruction<'a> {
    /// The instruction exactly as received, `;` included.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The instruction exactly as received, `;` included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Stream offset of its first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The opcode (the first element).
    pub fn opcode(&self) -> &'a str {
        self.text
            .get(self.opcode.0..self.opcode.1)
            .unwrap_or_default()
    }

    /// Whether this is a tunnel-internal instruction (empty opcode), which a
    /// tunnel handles itself and never forwards.
    pub fn is_internal(&self) -> bool {
        self.opcode() == INTERNAL_OPCODE
    }

    /// How many arguments follow the opcode.
    pub fn arg_count(&self) -> usize {
        self.elements.saturating_sub(1)
    }

    /// The arguments, borrowed.
    pub fn args(&self) -> Args<'a> {
        Args {
            text: self.text,
            // Past the opcode and its separator.
            pos: self.opcode.1 + 1,
            left: self.arg_count(),
        }
    }

    /// The timestamp of an internal ping (`0.,4.ping,<ts>;`), which the
    /// tunnel answers with the same instruction.
    pub fn ping_timestamp(&self) -> Option<&'a str> {
        if !self.is_internal() {
            return None;
        }
        let mut args = self.args();
        match (args.next(), args.next()) {
            (Some(crate::PING), Some(ts)) => Some(ts),
            _ => None,
        }
    }

    /// An owned copy.
    pub fn to_instruction(&self) -> Instruction {
        Instruction {
            opcode: self.opcode().to_owned(),
            args: self.args().map(str::to_owned).collect(),
        }
    }
}

/// The arguments of a [`RawInstruction`], in order.
#[derive(Debug, Clone)]
pub struct Args<'a> {
    text: &'a str,
    pos: usize,
    left: usize,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (start, end) = element_at(self.text.as_bytes(), self.pos);
        self.pos = end + 1;
        self.text.get(start..end)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Args<'_> {}

/// The value of the element whose length prefix starts at `pos`, in an
/// instruction the decoder has validated: `(start, end)` of the value.
fn element_at(bytes: &[u8], mut pos: usize) -> (usize, usize) {
    let mut len = 0usize;
    while let Some(&b) = bytes.get(pos) {
        pos += 1;
        if b == b'.' {
            break;
        }
        len = len
            .saturating_mul(10)
            .saturating_add(usize::from(b.wrapping_sub(b'0')));
    }
    let end = match pos.checked_add(len) {
        Some(end) if end <= bytes.len() && is_ascii(&bytes[pos..end]) => end,
        _ => skip_chars(bytes, pos, len).0,
    };
    (pos, end)
}

fn to_u64(n: usize) -> u64 {
    // usize is at most 64 bits on every target Rust supports.
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The character starting at `pos` (a character boundary), for error reports.
fn char_at(text: &str, pos: usize) -> char {
    text.get(pos..)
        .and_then(|s| s.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The length of the UTF-8 sequence a lead byte announces (1 for anything
/// that is not a multi-byte lead byte).
#[inline]
fn utf8_width(b: u8) -> usize {
    match b {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Where a UTF-8 sequence cut off by the end of `bytes` starts, or
/// `bytes.len()` if none is.
fn incomplete_suffix_start(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for i in (len.saturating_sub(3)..len).rev() {
        let b = bytes[i];
        if b & 0xC0 != 0x80 {
            return if utf8_width(b) > len - i { i } else { len };
        }
    }
    len
}

/// Length of the ASCII prefix of `s`, in blocks for speed.
#[inline]
fn ascii_prefix_len(s: &[u8]) -> usize {
    let mut n = 0;
    for block in s.chunks(64) {
        if block.is_ascii() {
            n += block.len();
        } else {
            return n + block.iter().take_while(|b| b.is_ascii()).count();
        }
    }
    n
}

/// Whether `s` is all ASCII: a plain loop for the short values of drawing
/// instructions, std's word-at-a-time check for long ones (`blob` data).
#[inline]
fn is_ascii(s: &[u8]) -> bool {
    if s.len() <= 16 {
        s.iter().all(u8::is_ascii)
    } else {
        s.is_ascii()
    }
}

/// Skips up to `remaining` code points of valid UTF-8 from `pos`, never
/// splitting a character at the end of `bytes`. Returns the new position and
/// the code points still to skip.
fn skip_chars(bytes: &[u8], mut pos: usize, mut remaining: usize) -> (usize, usize) {
    let avail = bytes.len();
    while remaining > 0 && pos < avail {
        let b = bytes[pos];
        if b.is_ascii() {
            let end = avail.min(pos.saturating_add(remaining));
            let n = ascii_prefix_len(&bytes[pos..end]);
            pos += n;
            remaining -= n;
        } else {
            let width = utf8_width(b);
            if pos + width > avail {
                break;
            }
            pos += width;
            remaining -= 1;
        }
    }
    (pos, remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stream decodes to: its instructions, then how it ends.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        instructions: Vec<(String, Vec<String>)>,
        end: End,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum End {
        /// All bytes consumed at an instruction boundary.
        Clean,
        /// An incomplete instruction of this many bytes waits for more.
        Incomplete(usize),
        Error(DecodeError),
    }

    fn decode_with(limits: Limits, input: &[u8]) -> Outcome {
        let mut decoder = Decoder::with_limits(limits);
        let mut instructions = Vec::new();
        decoder.push(input).expect("push into a fresh decoder");
        let end = loop {
            match decoder.next_instruction() {
                Ok(Some(owned)) => instructions.push((owned.opcode, owned.args)),
                Ok(None) if decoder.buffered_len() == 0 => break End::Clean,
                Ok(None) => break End::Incomplete(decoder.buffered_len()),
                Err(e) => break End::Error(e),
            }
        };
        Outcome { instructions, end }
    }

    fn ins(opcode: &str, args: &[&str]) -> (String, Vec<String>) {
        (
            opcode.to_owned(),
            args.iter().map(|a| (*a).to_owned()).collect(),
        )
    }

    fn check(input: &[u8], instructions: &[(String, Vec<String>)], end: End) {
        check_with(Limits::default(), input, instructions, end);
    }

    fn check_with(limits: Limits, input: &[u8], instructions: &[(String, Vec<String>)], end: End) {
        let expect = Outcome {
            instructions: instructions.to_vec(),
            end,
        };
        assert_eq!(
            decode_with(limits, input),
            expect,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        // The same, byte by byte.
        let mut decoder = Decoder::with_limits(limits);
        let mut got = Vec::new();
        let mut error = None;
        'bytes: for b in input {
            if decoder.push(std::slice::from_ref(b)).is_err() {
                break;
            }
            loop {
                match decoder.next_raw() {
                    Ok(Some(raw)) => {
                        let owned = raw.to_instruction();
                        got.push((owned.opcode, owned.args));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'bytes;
                    }
                }
            }
        }
        assert_eq!(got, expect.instructions, "byte by byte: {input:?}");
        match expect.end {
            End::Error(e) => assert_eq!(error, Some(e), "byte by byte: {input:?}"),
            _ => assert_eq!(error, None, "byte by byte: {input:?}"),
        }
    }

    #[test]
    fn valid_instructions() {
        check(b"", &[], End::Clean);
        check(
            b"4.sync,13.1700000000000;",
            &[ins("sync", &["1700000000000"])],
            End::Clean,
        );
        check(b"3.nop;", &[ins("nop", &[])], End::Clean);
        check(
            b"4.rect,1.0,2.10,2.20,3.100,3.200;5.cfill,2.14,1.0,3.255,3.128,1.0,3.255;",
            &[
                ins("rect", &["0", "10", "20", "100", "200"]),
                ins("cfill", &["14", "0", "255", "128", "0", "255"]),
            ],
            End::Clean,
        );
        // Zero-length elements, including the internal (empty) opcode.
        check(
            b"0.,4.ping,13.1700000000000;",
            &[ins("", &["ping", "1700000000000"])],
            End::Clean,
        );
        check(b"0.;", &[ins("", &[])], End::Clean);
        check(b"4.args,0.,0.;", &[ins("args", &["", ""])], End::Clean);
        check(
            b"0.,36.0f1e1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b;",
            &[ins("", &["0f1e1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"])],
            End::Clean,
        );
        // Leading zeros are digits like any other (guacd and the JS parser agree).
        check(b"004.ping;", &[ins("ping", &[])], End::Clean);
        // Separators and digits inside values are just text.
        check(
            b"5.error,7.a,b;c.d,3.512;",
            &[ins("error", &["a,b;c.d", "512"])],
            End::Clean,
        );
    }

    #[test]
    fn multi_byte_text_counts_code_points() {
        check("4.name,1.é;".as_bytes(), &[ins("name", &["é"])], End::Clean);
        check(
            "4.name,2.日本;".as_bytes(),
            &[ins("name", &["日本"])],
            End::Clean,
        );
        // Outside the BMP: one code point, though two UTF-16 units.
        check(
            "4.name,1.😀;".as_bytes(),
            &[ins("name", &["😀"])],
            End::Clean,
        );
        check(
            "9.clipboard,6.a😀é日b\u{10FFFF};".as_bytes(),
            &[ins("clipboard", &["a😀é日b\u{10FFFF}"])],
            End::Clean,
        );
        check("1.é,1.😀;".as_bytes(), &[ins("é", &["😀"])], End::Clean);
        // Counting bytes or UTF-16 units instead is caught.
        check(
            "4.name,2.😀;3.nop;".as_bytes(),
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 14,
                found: '3',
            }),
        );
        check(
            "4.name,4.😀;3.nop;".as_bytes(),
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 16,
                found: 'n',
            }),
        );
        check("4.name,2.é;".as_bytes(), &[], End::Incomplete(12));
    }

    #[test]
    fn truncated_input_is_incomplete_not_an_error() {
        let whole = "4.sync,13.1700000000000;3.nop;";
        for cut in 0..whole.len() {
            let expect = if cut >= 24 {
                vec![ins("sync", &["1700000000000"])]
            } else {
                vec![]
            };
            let left = if cut >= 24 { cut - 24 } else { cut };
            let end = if left == 0 {
                End::Clean
            } else {
                End::Incomplete(left)
            };
            check(&whole.as_bytes()[..cut], &expect, end);
        }
        // Cut inside a multi-byte character.
        let bytes = "4.name,1.😀;".as_bytes();
        for cut in 9..13 {
            check(&bytes[..cut], &[], End::Incomplete(cut));
        }
    }

    #[test]
    fn invalid_length_digits() {
        let err = |offset, found| End::Error(DecodeError::InvalidLength { offset, found });
        check(b"x.abc;", &[], err(0, 'x'));
        check(b"4.ping;-1.a;", &[ins("ping", &[])], err(7, '-'));
        check(b"4.ping,+1.a;", &[], err(7, '+'));
        check(b"4 .ping;", &[], err(1, ' '));
        check(b".;", &[], err(0, '.'));
        check(b"4.ping,.;", &[], err(7, '.'));
        check(b";", &[], err(0, ';'));
        check(b"4.ping,;", &[], err(7, ';'));
        check("٤.ping;".as_bytes(), &[], err(0, '٤'));
        check(b"\n4.ping;", &[], err(0, '\n'));
    }

    #[test]
    fn length_too_large_and_element_too_long() {
        check(
            b"123456.x",
            &[],
            End::Error(DecodeError::LengthTooLarge {
                offset: 5,
                max_digits: 5,
            }),
        );
        // A length that would overflow any integer stops at the first extra digit.
        check(
            b"4.blob,99999999999999999999999999999999.x;",
            &[],
            End::Error(DecodeError::LengthTooLarge {
                offset: 12,
                max_digits: 5,
            }),
        );
        check(
            b"000004.ping;",
            &[],
            End::Error(DecodeError::LengthTooLarge {
                offset: 5,
                max_digits: 5,
            }),
        );
        check(
            b"4.blob,8193.",
            &[],
            End::Error(DecodeError::ElementTooLong {
                offset: 11,
                len: 8193,
                limit: 8192,
            }),
        );
        check(
            b"99999.",
            &[],
            End::Error(DecodeError::ElementTooLong {
                offset: 5,
                len: 99999,
                limit: 8192,
            }),
        );
        // Exactly at the limit is fine.
        let mut max = b"4.blob,8192.".to_vec();
        max.extend(std::iter::repeat_n(b'A', 8192));
        max.push(b';');
        let value = "A".repeat(8192);
        check(&max, &[ins("blob", &[&value])], End::Clean);
        // Custom limits.
        let mut limits = Limits::default().with_max_element_chars(3);
        check_with(limits, b"3.abc;", &[ins("abc", &[])], End::Clean);
        check_with(
            limits,
            b"3.abc;4.abcd;",
            &[ins("abc", &[])],
            End::Error(DecodeError::ElementTooLong {
                offset: 7,
                len: 4,
                limit: 3,
            }),
        );
        limits.max_element_chars = 1_000_000;
        assert_eq!(limits.max_length_digits(), 7);
        check_with(limits, b"0000004.ping;", &[ins("ping", &[])], End::Clean);
        // No limit at all still bounds the digits (19: no overflow).
        let limits = Limits::default().with_max_element_chars(usize::MAX);
        assert_eq!(limits.max_length_digits(), 19);
        check_with(limits, b"9999999999999999999.abc", &[], End::Incomplete(23));
        check_with(
            limits,
            b"18446744073709551616.",
            &[],
            End::Error(DecodeError::LengthTooLarge {
                offset: 19,
                max_digits: 19,
            }),
        );
    }

    #[test]
    fn too_many_elements() {
        let mut at_limit = b"3.arg".to_vec();
        for _ in 1..128 {
            at_limit.extend_from_slice(b",1.x");
        }
        let mut over = at_limit.clone();
        at_limit.push(b';');
        over.extend_from_slice(b",1.x;");
        let args: Vec<&str> = vec!["x"; 127];
        check(&at_limit, &[ins("arg", &args)], End::Clean);
        check(
            &over,
            &[],
            End::Error(DecodeError::TooManyElements {
                offset: 5 + 127 * 4,
                limit: 128,
            }),
        );
        let mut limits = Limits::default().with_max_elements(2);
        check_with(limits, b"1.a,1.b;", &[ins("a", &["b"])], End::Clean);
        check_with(
            limits,
            b"1.a,1.b,1.c;",
            &[],
            End::Error(DecodeError::TooManyElements {
                offset: 7,
                limit: 2,
            }),
        );
        limits.max_elements = 0; // means 1: the opcode
        check_with(limits, b"1.a;", &[ins("a", &[])], End::Clean);
        check_with(
            limits,
            b"1.a,1.b;",
            &[],
            End::Error(DecodeError::TooManyElements {
                offset: 3,
                limit: 1,
            }),
        );
    }

    #[test]
    fn invalid_utf8() {
        let err = |offset| End::Error(DecodeError::InvalidUtf8 { offset });
        // A lone surrogate (U+D800 encoded, as CESU-8 or WTF-8 would).
        check(b"4.name,1.\xED\xA0\x80;", &[], err(9));
        // A surrogate pair encoded as two surrogates (CESU-8 for U+1F600).
        check(b"4.name,1.\xED\xA0\xBD\xED\xB8\x80;", &[], err(9));
        // Overlong '/'.
        check(b"4.name,1.\xC0\xAF;", &[], err(9));
        // Overlong NUL, as modified UTF-8 writes it.
        check(b"4.name,1.\xC0\x80;", &[], err(9));
        // Above U+10FFFF.
        check(b"4.name,1.\xF4\x90\x80\x80;", &[], err(9));
        // Bytes that never appear in UTF-8.
        check(b"4.name,1.\xFF;", &[], err(9));
        check(b"4.name,1.\xF8\x88\x80\x80\x80;", &[], err(9));
        // A stray continuation byte, a truncated sequence followed by ASCII.
        check(b"4.name,1.\x80;", &[], err(9));
        check(b"4.name,1.\xE6\x97;", &[], err(9));
        // Invalid bytes in a length prefix or between instructions, too.
        check(b"3.nop;\xFF", &[ins("nop", &[])], err(6));
        check(b"\xC3", &[], End::Incomplete(1));
        check(b"\xC3(", &[], err(0));
        // An invalid prefix is an error before the rest arrives.
        check(b"3.nop;\xED\xA0", &[ins("nop", &[])], err(6));
        check(b"3.nop;\xE0\x80", &[ins("nop", &[])], err(6));
    }

    #[test]
    fn wrong_length_cannot_inject_or_alter_instructions() {
        // CVE-2023-30575: a declared length that runs past the value into the
        // next instruction must be an error, never a reparse.
        check(
            b"4.name,20.x;5.mouse,1.0,1.0;3.nop;",
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 30,
                found: 'n',
            }),
        );
        // Shorter than the value: the rest of the value is not a separator.
        check(
            b"4.name,1.abc;4.sync,1.0;",
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 10,
                found: 'b',
            }),
        );
        // Too long by one: it waits for a separator that never comes, and
        // no instruction appears.
        check(b"4.name,12.x;3.key,1.1;", &[], End::Incomplete(22));
        // A value crafted to contain an instruction is just text.
        check(
            b"4.name,11.x;3.key,1.1;",
            &[ins("name", &["x;3.key,1.1"])],
            End::Clean,
        );
        // A value that swallows exactly up to a later separator is one
        // element, and reported as such (no instruction appears or vanishes).
        check(
            b"4.name,9.x;4.sync,;",
            &[ins("name", &["x;4.sync,"])],
            End::Clean,
        );
        // Any other separator.
        check(
            b"4.sync:1.0;",
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 6,
                found: ':',
            }),
        );
        check(
            "4.sync,1.0é".as_bytes(),
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 10,
                found: 'é',
            }),
        );
    }

    #[test]
    fn buffer_overflow() {
        let mut limits = Limits::default().with_max_buffer_bytes(10);
        // Exactly 10 bytes fit, twice.
        check_with(limits, b"4.abcd,1.x;", &[], End::Error(overflow(10, 10)));
        check_with(
            limits,
            b"3.abc,1.x;3.abc,1.y;",
            &[ins("abc", &["x"]), ins("abc", &["y"])],
            End::Clean,
        );
        check_with(limits, b"3.abc,1.x", &[], End::Incomplete(9));
        check_with(
            limits,
            b"3.abc,1.xy",
            &[],
            End::Error(DecodeError::UnexpectedSeparator {
                offset: 9,
                found: 'y',
            }),
        );
        check_with(limits, b"9.abcdefghijk", &[], End::Error(overflow(10, 10)));
        // A byte at the limit that is itself bad is still an overflow.
        check_with(limits, b"9.abcdefgh\xFF", &[], End::Error(overflow(10, 10)));
        check_with(
            limits,
            "9.abcdefgh😀".as_bytes(),
            &[],
            End::Error(overflow(10, 10)),
        );
        // A multi-byte character crossing the limit.
        check_with(
            limits,
            "9.abcdefg😀".as_bytes(),
            &[],
            End::Error(overflow(10, 10)),
        );
        check_with(
            limits,
            "1.😀,0.;".as_bytes(),
            &[ins("😀", &[""])],
            End::Clean,
        );
        // Before the limit, invalid UTF-8 is found first.
        check_with(
            limits,
            b"5.abc\xFF",
            &[],
            End::Error(DecodeError::InvalidUtf8 { offset: 5 }),
        );
        // The default fits the largest element of four-byte characters.
        let mut big = b"4.blob,8192.".to_vec();
        big.extend("😀".repeat(8192).as_bytes());
        big.push(b';');
        assert_eq!(decode_with(Limits::default(), &big).end, End::Clean);
        limits.max_buffer_bytes = 0;
        check_with(limits, b"", &[], End::Clean);
        check_with(limits, b"3", &[], End::Error(overflow(0, 0)));
    }

    fn overflow(offset: u64, limit: usize) -> DecodeError {
        DecodeError::BufferOverflow { offset, limit }
    }

    #[test]
    fn failed_decoder_stays_failed() {
        let mut decoder = Decoder::new();
        decoder.push(b"3.nop;x.;3.nop;").unwrap();
        assert!(decoder.next_raw().unwrap().is_some());
        let err = decoder.next_raw().unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidLength {
                offset: 6,
                found: 'x'
            }
        );
        assert_eq!(decoder.error(), Some(&err));
        assert_eq!(decoder.next_raw().unwrap_err(), err);
        assert_eq!(decoder.push(b"3.nop;").unwrap_err(), err);
        assert_eq!(decoder.next_instruction().unwrap_err(), err);
    }

    #[test]
    fn raw_instructions_expose_bytes_opcode_and_offsets() {
        let mut decoder = Decoder::new();
        decoder
            .push(b"0.,4.ping,13.1700000000000;4.sync,3.123;3.nop;4.na")
            .unwrap();
        let raw = decoder.next_raw().unwrap().unwrap();
        assert_eq!(raw.as_str(), "0.,4.ping,13.1700000000000;");
        assert_eq!(raw.offset(), 0);
        assert!(raw.is_internal());
        assert_eq!(raw.opcode(), "");
        assert_eq!(raw.arg_count(), 2);
        assert_eq!(raw.ping_timestamp(), Some("1700000000000"));
        let raw = decoder.next_raw().unwrap().unwrap();
        assert_eq!((raw.as_bytes(), raw.offset()), (&b"4.sync,3.123;"[..], 27));
        assert_eq!(raw.opcode(), "sync");
        assert!(!raw.is_internal());
        assert_eq!(raw.ping_timestamp(), None);
        assert_eq!(raw.args().collect::<Vec<_>>(), ["123"]);
        assert_eq!(raw.args().len(), 1);
        let raw = decoder.next_raw().unwrap().unwrap();
        assert_eq!(
            (raw.opcode(), raw.arg_count(), raw.offset()),
            ("nop", 0, 40)
        );
        assert_eq!(raw.args().next(), None);
        assert!(decoder.next_raw().unwrap().is_none());
        assert_eq!(decoder.buffered_len(), 4);
        assert_eq!(decoder.stream_offset(), 46);
        decoder.push(b"me,1.").unwrap();
        decoder.push("é".as_bytes()).unwrap();
        decoder.push(b";").unwrap();
        let raw = decoder.next_raw().unwrap().unwrap();
        assert_eq!((raw.as_str(), raw.offset()), ("4.name,1.é;", 46));
        assert_eq!(decoder.buffered_len(), 0);
        // Not a ping: other internal instructions, or too few arguments.
        for text in [
            "0.,36.0f1e1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b;",
            "0.,4.ping;",
            "4.ping,1.1;",
        ] {
            let mut decoder = Decoder::new();
            decoder.push(text.as_bytes()).unwrap();
            assert_eq!(
                decoder.next_raw().unwrap().unwrap().ping_timestamp(),
                None,
                "{text}"
            );
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(incomplete_suffix_start(b""), 0);
        assert_eq!(incomplete_suffix_start(b"ab"), 2);
        assert_eq!(incomplete_suffix_start("é".as_bytes()), 2);
        assert_eq!(incomplete_suffix_start(&"😀".as_bytes()[..3]), 0);
        assert_eq!(incomplete_suffix_start(b"a\xF0\x9F"), 1);
        assert_eq!(incomplete_suffix_start(b"\xF0\x9F\x98\x80"), 4);
        assert_eq!(ascii_prefix_len(b""), 0);
        assert_eq!(ascii_prefix_len(&[b'a'; 200]), 200);
        let mut s = vec![b'a'; 130];
        s.push(0xC3);
        assert_eq!(ascii_prefix_len(&s), 130);
        let text = "ab日😀c".as_bytes();
        assert_eq!(skip_chars(text, 0, 4), (9, 0));
        assert_eq!(skip_chars(&text[..4], 0, 4), (2, 2));
        assert_eq!(skip_chars(&text[..5], 0, 4), (5, 1));
        assert_eq!(skip_chars(text, 0, 9), (10, 4));
        assert_eq!(skip_chars(text, 2, 1), (5, 0));
        assert!(is_ascii(b"") && is_ascii(&[b'a'; 40]) && !is_ascii("aé".as_bytes()));
    }
}
