//! decode∘encode is the identity, every split of a stream decodes alike, and
//! no input makes the decoder panic.

use daas_guacamole::{DecodeError, Decoder, Instruction, Limits};
use proptest::prelude::*;

use crate::support::{decode_owned, decode_split, encode_all, End};

/// Any character, with the protocol's own characters and multi-byte text
/// more likely than chance would make them.
fn any_text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>(),
        2 => prop::sample::select(vec![',', ';', '.', '0', '9', 'a', 'é', '日', '😀', '\u{10FFFF}', '\u{FFFD}', '\0']),
        2 => prop::char::range(' ', '~'),
    ];
    prop::collection::vec(ch, 0..12).prop_map(|v| v.into_iter().collect())
}

fn any_instruction() -> impl Strategy<Value = Instruction> {
    (any_text(), prop::collection::vec(any_text(), 0..6))
        .prop_map(|(opcode, args)| Instruction { opcode, args })
}

fn any_stream() -> impl Strategy<Value = Vec<Instruction>> {
    prop::collection::vec(any_instruction(), 0..8)
}

/// Small limits that generated streams run into, or the defaults.
fn any_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0usize..24, 0usize..6, 0usize..80).prop_map(|(chars, elements, bytes)| {
            Limits::default()
                .with_max_element_chars(chars)
                .with_max_elements(elements)
                .with_max_buffer_bytes(bytes)
        }),
    ]
}

/// Bytes that are sometimes Guacamole, sometimes nearly, sometimes not.
fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = prop_oneof![
        3 => prop::sample::select(b"0123456789.,;ax".to_vec()),
        1 => prop::sample::select(vec![0xC3, 0xA9, 0xE6, 0x97, 0xA5, 0xF0, 0x9F, 0x98, 0x80, 0xED, 0xA0, 0xC0, 0xAF, 0xF4, 0x90, 0xFF]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(alphabet, 0..96),
        // A valid stream with a few bytes changed, inserted or removed.
        (
            any_stream(),
            prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..4)
        )
            .prop_map(|(stream, edits)| {
                let mut bytes = encode_all(&stream);
                for (at, byte, kind) in edits {
                    let at = at % (bytes.len() + 1);
                    match kind {
                        0 if at < bytes.len() => bytes[at] = byte,
                        1 => bytes.insert(at, byte),
                        _ if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => {}
                    }
                }
                bytes
            }),
    ]
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_of_encode_is_the_identity(stream in any_stream()) {
        let bytes = encode_all(&stream);
        let (decoded, error) = decode_owned(Limits::default(), &bytes);
        prop_assert_eq!(error, None);
        prop_assert_eq!(&decoded, &stream);
        // Display writes the same bytes as write_instruction.
        let shown: String = stream.iter().map(Instruction::encode).collect();
        prop_assert_eq!(shown.as_bytes(), &bytes[..]);
    }

    #[test]
    fn every_split_yields_the_same_instructions_and_boundaries(
        stream in any_stream(),
        cuts in cuts(),
    ) {
        let bytes = encode_all(&stream);
        let whole = decode_split(Limits::default(), &bytes, &[]);
        prop_assert_eq!(&whole.end, &End::Clean);
        let mut offset = 0u64;
        prop_assert_eq!(whole.instructions.len(), stream.len());
        for (got, sent) in whole.instructions.iter().zip(&stream) {
            prop_assert_eq!(&got.owned, sent);
            prop_assert_eq!(&got.raw, &sent.encode());
            prop_assert_eq!(got.offset, offset);
            prop_assert_eq!(&got.opcode, &sent.opcode);
            prop_assert_eq!(got.internal, sent.opcode.is_empty());
            offset += got.raw.len() as u64;
        }
        prop_assert_eq!(decode_split(Limits::default(), &bytes, &cuts), whole);
    }

    #[test]
    fn byte_by_byte_is_like_all_at_once(stream in prop::collection::vec(any_instruction(), 0..4)) {
        let bytes = encode_all(&stream);
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(
            decode_split(Limits::default(), &bytes, &every),
            decode_split(Limits::default(), &bytes, &[])
        );
    }

    #[test]
    fn a_truncated_stream_is_incomplete_not_an_error(stream in any_stream(), cut in any::<usize>()) {
        let bytes = encode_all(&stream);
        let cut = cut % (bytes.len() + 1);
        let out = decode_split(Limits::default(), &bytes[..cut], &[]);
        prop_assert!(!matches!(out.end, End::Failed(_)), "{:?}", out.end);
        prop_assert_eq!(
            out.instructions.iter().map(|d| &d.owned).collect::<Vec<_>>(),
            stream.iter().take(out.instructions.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn any_bytes_any_split_same_outcome_and_no_panic(
        bytes in any_bytes(),
        limits in any_limits(),
        cuts in cuts(),
    ) {
        let whole = decode_split(limits, &bytes, &[]);
        prop_assert_eq!(&decode_split(limits, &bytes, &cuts), &whole);
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&decode_split(limits, &bytes, &every), &whole);

        // The owned decode agrees with the raw one.
        let (owned, error) = decode_owned(limits, &bytes);
        prop_assert_eq!(
            owned.iter().collect::<Vec<_>>(),
            whole.instructions.iter().map(|d| &d.owned).collect::<Vec<_>>()
        );
        match &whole.end {
            End::Failed(e) => prop_assert_eq!(error.as_ref(), Some(e)),
            _ => prop_assert_eq!(error, None),
        }

        let mut expected_offset = 0u64;
        for d in &whole.instructions {
            // Boundaries tile the stream: no byte is skipped or reused.
            prop_assert_eq!(d.offset, expected_offset);
            prop_assert_eq!(&bytes[usize::try_from(d.offset).unwrap()..][..d.raw.len()], d.raw.as_bytes());
            expected_offset += d.raw.len() as u64;
            // Each raw instruction decodes alone to itself; its owned form
            // re-encodes to something that decodes to the same.
            let alone = decode_split(limits, d.raw.as_bytes(), &[]);
            prop_assert_eq!(alone.end, End::Clean);
            prop_assert_eq!(alone.instructions.len(), 1);
            prop_assert_eq!(&alone.instructions[0].owned, &d.owned);
            let (again, error) = decode_owned(limits, d.owned.encode().as_bytes());
            prop_assert_eq!(error, None);
            prop_assert_eq!(again, vec![d.owned.clone()]);
            prop_assert_eq!(d.internal, d.opcode.is_empty());
            prop_assert!(d.raw.ends_with(';'));
        }
        if let End::Failed(e) = &whole.end {
            prop_assert!(e.offset() >= expected_offset, "{:?} before {}", e, expected_offset);
            prop_assert!(e.offset() <= bytes.len() as u64, "{:?} past {}", e, bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Elements around the default limit of 8192 code points, in any script.
    #[test]
    fn large_elements_round_trip_up_to_the_limit(
        chars in prop::collection::vec(any::<char>(), 8180..8200),
        cuts in cuts(),
    ) {
        let value: String = chars.iter().collect();
        let stream = vec![Instruction::new("blob", ["1".to_owned(), value])];
        let bytes = encode_all(&stream);
        let out = decode_split(Limits::default(), &bytes, &cuts);
        if chars.len() <= 8192 {
            prop_assert_eq!(out.end, End::Clean);
            prop_assert_eq!(&out.instructions[0].owned, &stream[0]);
        } else {
            let expected = DecodeError::ElementTooLong { offset: 15, len: chars.len() as u64, limit: 8192 };
            prop_assert_eq!(out.end, End::Failed(expected));
        }
    }
}

#[test]
fn a_pushed_decoder_can_be_drained_later_in_one_go() {
    // Several pushes without draining in between, then drain: same result.
    let stream = vec![
        Instruction::sync(1),
        Instruction::new("name", ["日本😀"]),
        Instruction::ping("1700000000000"),
    ];
    let bytes = encode_all(&stream);
    let mut decoder = Decoder::new();
    for b in &bytes {
        decoder.push(std::slice::from_ref(b)).unwrap();
    }
    let mut got = Vec::new();
    while let Some(i) = decoder.next_instruction().unwrap() {
        got.push(i);
    }
    assert_eq!(got, stream);
    assert_eq!(decoder.buffered_len(), 0);
    assert_eq!(decoder.stream_offset(), bytes.len() as u64);
}
