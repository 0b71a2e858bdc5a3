//! Fuzzes the frame decoder and the message parsers behind it.
//!
//! The first byte picks how the input is split before feeding; every split
//! must give the same frames and errors as feeding the input whole, and every
//! decoded frame must encode back to the bytes it came from.
#![no_main]

use daas_guest_proxy_wire::frame::{Decoder, Frame};
use daas_guest_proxy_wire::message::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fn decode(input: &[u8], step: usize) -> Vec<String> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for chunk in input.chunks(step.max(1)) {
        d.feed(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let bytes = f.encode().expect("a decoded frame re-encodes");
                    let mut again = Decoder::new();
                    again.feed(&bytes);
                    assert_eq!(again.next_frame(), Ok(Some(f.clone())));
                    if let Frame::Control(json) = &f {
                        if let Ok(m) = ClientMessage::parse(json) {
                            let back = m.to_json().expect("a parsed message re-encodes");
                            assert_eq!(ClientMessage::parse(&back).as_ref(), Ok(&m));
                        }
                        let _ = ServerMessage::parse(json);
                    }
                    out.push(format!("{f:?}"));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("{e:?}"));
                    if e.is_fatal() {
                        return out;
                    }
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(rest, rest.len());
    let split = decode(rest, usize::from(first % 17) + 1);
    assert_eq!(whole, split);
});
