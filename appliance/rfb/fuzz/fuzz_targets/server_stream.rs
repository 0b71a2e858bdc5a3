//! Arbitrary server bytes after a valid handshake prefix.
//!
//! The first input byte picks the handshake (RFB 3.3 / 3.7 / 3.8, None or
//! VNC Authentication), tight or default limits, and how the rest is split
//! into chunks. The client must never panic, and feeding the same bytes in
//! one piece must give the same events, output and error (and, when no error
//! happened, the same framebuffer).
#![no_main]

use daas_rfb::{Client, Config, Event, Limits, RfbError};
use libfuzzer_sys::fuzz_target;

const W: u16 = 64;
const H: u16 = 48;

fn server_init() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&W.to_be_bytes());
    b.extend_from_slice(&H.to_be_bytes());
    b.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    b.extend_from_slice(&4u32.to_be_bytes());
    b.extend_from_slice(b"fuzz");
    b
}

fn prefix(selector: u8) -> (Config, Vec<u8>) {
    let mut config = Config::default();
    if selector & 0x10 != 0 {
        config.limits = Limits {
            max_rects_per_update: 8,
            max_cut_text: 1024,
            max_name_len: 16,
            max_cursor_size: 8,
            max_width: 128,
            max_height: 96,
        };
    }
    let mut b = Vec::new();
    match selector % 5 {
        0 => {
            b.extend_from_slice(b"RFB 003.003\n");
            b.extend_from_slice(&1u32.to_be_bytes());
        }
        1 => {
            b.extend_from_slice(b"RFB 003.007\n");
            b.extend_from_slice(&[1, 1]);
        }
        2 => {
            config.password = Some("fuzz".into());
            b.extend_from_slice(b"RFB 003.008\n");
            b.extend_from_slice(&[1, 2]);
            b.extend_from_slice(&[7; 16]);
            b.extend_from_slice(&0u32.to_be_bytes());
        }
        // Handshake bytes come from the fuzzer itself.
        3 => return (config, Vec::new()),
        _ => {
            b.extend_from_slice(b"RFB 003.008\n");
            b.extend_from_slice(&[1, 1]);
            b.extend_from_slice(&0u32.to_be_bytes());
        }
    }
    b.extend_from_slice(&server_init());
    (config, b)
}

#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Event>,
    output: Vec<u8>,
    error: Option<String>,
}

/// Feeds `chunks`, reacting to events the way an IO pump would.
fn run<'a>(config: Config, chunks: impl Iterator<Item = &'a [u8]>) -> (Client, Outcome) {
    let mut client = Client::new(config);
    let mut events = Vec::new();
    let mut output = Vec::new();
    let mut error = None;
    'feed: for chunk in chunks {
        client.feed(chunk);
        loop {
            match client.next_event() {
                Ok(Some(event)) => {
                    match &event {
                        Event::Connected { .. } => {
                            let _ = client.request_full_update(false);
                            let _ = client.send_clipboard("Grüße 😀\n");
                        }
                        Event::UpdateEnd => {
                            let _ = client.request_full_update(true);
                            let _ = client.pointer(1, -1, 99_999);
                            if client.can_resize() {
                                let _ = client.set_desktop_size(W + 1, H);
                            }
                        }
                        Event::Pixels { rect } => {
                            let rgb = client.framebuffer().copy_out_rgb(*rect);
                            assert_eq!(rgb.len(), rect.area() * 3);
                        }
                        Event::Cursor {
                            width,
                            height,
                            rgba,
                            ..
                        } => {
                            assert_eq!(rgba.len(), usize::from(*width) * usize::from(*height) * 4);
                        }
                        _ => {}
                    }
                    events.push(event);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(client.next_event(), Err(RfbError::Failed)));
                    error = Some(e.to_string());
                    break 'feed;
                }
            }
        }
        output.extend(client.take_output());
    }
    // Also what was queued before an error.
    output.extend(client.take_output());
    let _ = client.end_of_stream();
    let fb = client.framebuffer();
    assert_eq!(
        fb.pixels().len(),
        usize::from(fb.width()) * usize::from(fb.height())
    );
    (
        client,
        Outcome {
            events,
            output,
            error,
        },
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (config, mut input) = prefix(selector);
    input.extend_from_slice(rest);
    let chunk = usize::from(selector >> 5) * 7 + 1;
    let (split_client, split) = run(config.clone(), input.chunks(chunk));
    let (whole_client, whole) = run(config, std::iter::once(&input[..]));
    assert_eq!(split, whole);
    // After an error the framebuffer may hold part of the failed rectangle,
    // depending on how much had arrived; without one it must match.
    if whole.error.is_none() && split_client.framebuffer() != whole_client.framebuffer() {
        panic!("framebuffers differ after the same events");
    }
});
