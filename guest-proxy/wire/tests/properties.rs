//! Properties of the frame codec and message parser: encode then decode is
//! the identity, any split of the input gives the same frames, and arbitrary
//! bytes never panic.

use daas_guest_proxy_wire::frame::{Decoder, Frame, FrameError, Stream};
use daas_guest_proxy_wire::message::{ClientMessage, ServerMessage};
use proptest::prelude::*;

fn stream() -> impl Strategy<Value = Stream> {
    prop_oneof![
        Just(Stream::Stdin),
        Just(Stream::Stdout),
        Just(Stream::Stderr),
        Just(Stream::File)
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Frame::Control),
        (
            any::<u64>(),
            stream(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(id, stream, data)| Frame::Data { id, stream, data }),
    ]
}

/// Decodes `input` fed in pieces cut at `cuts`, collecting frames and errors.
fn decode_split(input: &[u8], cuts: &[usize]) -> (Vec<Result<Frame, FrameError>>, usize) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut start = 0;
    for p in points {
        d.feed(&input[start..p]);
        start = p;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return (out, d.pending());
                    }
                }
            }
        }
    }
    (out, d.pending())
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(frames in proptest::collection::vec(frame(), 0..8)) {
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode_into(&mut bytes).unwrap();
        }
        let (decoded, pending) = decode_split(&bytes, &[]);
        prop_assert_eq!(pending, 0);
        let decoded: Vec<Frame> = decoded.into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn any_split_gives_the_same_frames(
        frames in proptest::collection::vec(frame(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode_into(&mut bytes).unwrap();
        }
        let whole = decode_split(&bytes, &[]);
        let split = decode_split(&bytes, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_does_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = decode_split(&bytes, &[]);
        let split = decode_split(&bytes, &cuts);
        prop_assert_eq!(&whole, &split);
        for f in whole.0.into_iter().flatten() {
            if let Frame::Control(json) = f {
                let _ = ClientMessage::parse(&json);
                let _ = ServerMessage::parse(&json);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics_the_message_parsers(s in "\\PC{0,200}") {
        let _ = ClientMessage::parse(s.as_bytes());
        let _ = ServerMessage::parse(s.as_bytes());
        let wrapped = format!(r#"{{"type":"request","id":1,"op":"exec","args":{s}}}"#);
        let _ = ClientMessage::parse(wrapped.as_bytes());
    }

    #[test]
    fn request_ids_survive_argument_errors(id in any::<u64>(), op in "[a-z_]{1,20}") {
        let msg = format!(r#"{{"type":"request","id":{id},"op":"{op}","args":{{"bogus_field_x":1}}}}"#);
        let err = ClientMessage::parse(msg.as_bytes()).unwrap_err();
        prop_assert_eq!(err.id, Some(id));
    }
}
