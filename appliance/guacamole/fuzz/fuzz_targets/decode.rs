//! Arbitrary bytes, split where the fuzzer says, under default or tiny
//! limits: the decoder never panics, every split decodes like one push, the
//! raw scan and the owned decode agree, and what it returns re-decodes to
//! itself.
//!
//! Input layout: `[flags, count, len_1 .. len_n, stream ...]` with
//! `n = count % 16`; the `len_i` are chunk lengths. Bit 0 of `flags` picks
//! tiny limits, from the other bits of `flags` and from `count`.
//!
//! Run: `cargo +nightly fuzz run decode -- -max_total_time=60`
//! (from appliance/guacamole).

#![no_main]

use daas_guacamole::{DecodeError, Decoder, Instruction, Limits};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    offset: u64,
    raw: String,
    opcode: String,
    internal: bool,
    owned: Instruction,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    Incomplete(usize),
    Failed(DecodeError),
}

fn decode(limits: Limits, chunks: &[&[u8]]) -> (Vec<Decoded>, End) {
    let mut decoder = Decoder::with_limits(limits);
    let mut out = Vec::new();
    for chunk in chunks {
        if let Err(e) = decoder.push(chunk) {
            return (out, End::Failed(e));
        }
        loop {
            match decoder.next_raw() {
                Ok(Some(raw)) => out.push(Decoded {
                    offset: raw.offset(),
                    raw: raw.as_str().to_owned(),
                    opcode: raw.opcode().to_owned(),
                    internal: raw.is_internal(),
                    owned: raw.to_instruction(),
                }),
                Ok(None) => break,
                Err(e) => return (out, End::Failed(e)),
            }
        }
    }
    let end = match decoder.buffered_len() {
        0 => End::Clean,
        n => End::Incomplete(n),
    };
    (out, end)
}

fn decode_owned(limits: Limits, bytes: &[u8]) -> (Vec<Instruction>, Option<DecodeError>) {
    let mut decoder = Decoder::with_limits(limits);
    let mut out = Vec::new();
    if let Err(e) = decoder.push(bytes) {
        return (out, Some(e));
    }
    loop {
        match decoder.next_instruction() {
            Ok(Some(i)) => out.push(i),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (limits, lens, stream) = match data {
        [flags, count, rest @ ..] => {
            let n = usize::from(*count % 16).min(rest.len());
            let (lens, stream) = rest.split_at(n);
            let limits = if flags & 1 == 1 {
                Limits::default()
                    .with_max_element_chars(usize::from(flags >> 1 & 0x0F))
                    .with_max_elements(usize::from(flags >> 5) + 1)
                    .with_max_buffer_bytes(usize::from(*count))
            } else {
                Limits::default()
            };
            (limits, lens, stream)
        }
        _ => (Limits::default(), &[][..], data),
    };

    // Chunks of the fuzzer's lengths (0 means 1), the rest in one piece.
    let mut chunks = Vec::new();
    let mut at = 0;
    for len in lens {
        let end = (at + usize::from(*len).max(1)).min(stream.len());
        chunks.push(&stream[at..end]);
        at = end;
    }
    chunks.push(&stream[at..]);

    let whole = decode(limits, &[stream]);
    let split = decode(limits, &chunks);
    assert_eq!(split, whole, "split {:?}", lens);
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode(limits, &bytewise), whole, "byte by byte");

    let (owned, error) = decode_owned(limits, stream);
    assert_eq!(owned.len(), whole.0.len());
    for (o, d) in owned.iter().zip(&whole.0) {
        assert_eq!(o, &d.owned);
    }
    match &whole.1 {
        End::Failed(e) => assert_eq!(error.as_ref(), Some(e)),
        _ => assert_eq!(error, None),
    }

    let mut offset = 0u64;
    for d in &whole.0 {
        assert_eq!(d.offset, offset);
        let start = usize::try_from(offset).unwrap();
        assert_eq!(&stream[start..start + d.raw.len()], d.raw.as_bytes());
        offset += d.raw.len() as u64;
        assert_eq!(d.opcode, d.owned.opcode);
        assert_eq!(d.internal, d.opcode.is_empty());
        let alone = decode(limits, &[d.raw.as_bytes()]);
        assert_eq!(alone.1, End::Clean);
        assert_eq!(alone.0.len(), 1);
        assert_eq!(alone.0[0].owned, d.owned);
        let (again, error) = decode_owned(limits, d.owned.encode().as_bytes());
        assert_eq!(error, None);
        assert_eq!(again.as_slice(), std::slice::from_ref(&d.owned));
    }
    if let End::Failed(e) = &whole.1 {
        assert!(
            e.offset() >= offset && e.offset() <= stream.len() as u64,
            "{e:?}"
        );
    }
});
