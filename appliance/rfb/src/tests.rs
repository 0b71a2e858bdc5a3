//! Client tests from data: handshake transcripts, each encoding, the
//! client's own messages, malformed input, and property tests.

use proptest::prelude::*;

use crate::testenc::{cpx, px, u16be, u32be, zrle_encode, Server};
use crate::{
    Client, Config, DesktopSizeStatus, Encoding, Event, Limits, ProtocolVersion, Rect,
    RequestError, RfbError, Screen,
};

const RED: u32 = 0x00ff_0000;
const GREEN: u32 = 0x0000_ff00;
const BLUE: u32 = 0x0000_00ff;
const WHITE: u32 = 0x00ff_ffff;

/// What a run of the client produced.
#[derive(Debug)]
struct Outcome {
    events: Vec<Event>,
    error: Option<RfbError>,
    output: Vec<u8>,
}

/// Feeds `chunks` one by one, draining events after each.
fn run_chunks<'a>(client: &mut Client, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut events = Vec::new();
    let mut error = None;
    'feed: for chunk in chunks {
        client.feed(chunk);
        loop {
            match client.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    Outcome {
        events,
        error,
        output: client.take_output(),
    }
}

fn run(client: &mut Client, input: &[u8]) -> Outcome {
    run_chunks(client, [input])
}

fn config() -> Config {
    Config::default()
}

fn with_password(pw: &str) -> Config {
    Config {
        password: Some(pw.into()),
        ..Config::default()
    }
}

/// What the client sends after ServerInit with the default config.
fn init_messages(config: &Config) -> Vec<u8> {
    let mut out = vec![
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    out.extend_from_slice(&[2, 0]);
    out.extend_from_slice(&u16be(u16::try_from(config.encodings.len()).unwrap()));
    for e in &config.encodings {
        out.extend_from_slice(&e.code().to_be_bytes());
    }
    out
}

fn server_init(w: u16, h: u16, name: &[u8]) -> Vec<u8> {
    let mut s = Server::new();
    s.server_init(w, h, name);
    s.bytes
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The VNC Authentication challenge 0..16 and the response for "password"
/// (verified with openssl, see `auth.rs`).
fn challenge() -> Vec<u8> {
    (0u8..16).collect()
}
const RESPONSE_PASSWORD: &str = "b866924125c8eebb9debc1db61c538e2";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn connected_event(w: u16, h: u16, name: &str) -> Event {
    Event::Connected {
        width: w,
        height: h,
        name: name.into(),
    }
}

// ---- handshake ----------------------------------------------------------

#[test]
fn handshake_transcripts() {
    let init = server_init(800, 600, b"desk");
    let resp = unhex(RESPONSE_PASSWORD);
    let ok = u32be(0);
    let msgs = init_messages(&config());
    // (name, config, server bytes, client bytes, version)
    type Case = (&'static str, Config, Vec<u8>, Vec<u8>, ProtocolVersion);
    let table: Vec<Case> = vec![
        (
            "3.3 none",
            config(),
            cat(&[b"RFB 003.003\n", &u32be(1), &init]),
            cat(&[b"RFB 003.003\n", &[1], &msgs]),
            ProtocolVersion::V3_3,
        ),
        (
            "3.3 vnc auth",
            with_password("password"),
            cat(&[b"RFB 003.003\n", &u32be(2), &challenge(), &ok, &init]),
            cat(&[b"RFB 003.003\n", &resp, &[1], &msgs]),
            ProtocolVersion::V3_3,
        ),
        (
            "3.5 is read as 3.3",
            config(),
            cat(&[b"RFB 003.005\n", &u32be(1), &init]),
            cat(&[b"RFB 003.003\n", &[1], &msgs]),
            ProtocolVersion::V3_3,
        ),
        (
            "3.7 none: no SecurityResult",
            config(),
            cat(&[b"RFB 003.007\n", &[1, 1], &init]),
            cat(&[b"RFB 003.007\n", &[1], &[1], &msgs]),
            ProtocolVersion::V3_7,
        ),
        (
            "3.7 vnc auth",
            with_password("password"),
            cat(&[b"RFB 003.007\n", &[1, 2], &challenge(), &ok, &init]),
            cat(&[b"RFB 003.007\n", &[2], &resp, &[1], &msgs]),
            ProtocolVersion::V3_7,
        ),
        (
            "3.8 none",
            config(),
            cat(&[b"RFB 003.008\n", &[1, 1], &ok, &init]),
            cat(&[b"RFB 003.008\n", &[1], &[1], &msgs]),
            ProtocolVersion::V3_8,
        ),
        (
            "3.8 vnc auth",
            with_password("password"),
            cat(&[b"RFB 003.008\n", &[2, 16, 2], &challenge(), &ok, &init]),
            cat(&[b"RFB 003.008\n", &[2], &resp, &[1], &msgs]),
            ProtocolVersion::V3_8,
        ),
        (
            "3.8 prefers None when both are offered",
            with_password("password"),
            cat(&[b"RFB 003.008\n", &[2, 2, 1], &ok, &init]),
            cat(&[b"RFB 003.008\n", &[1], &[1], &msgs]),
            ProtocolVersion::V3_8,
        ),
        (
            "Apple 3.889 answered as 3.8",
            config(),
            cat(&[b"RFB 003.889\n", &[1, 1], &ok, &init]),
            cat(&[b"RFB 003.008\n", &[1], &[1], &msgs]),
            ProtocolVersion::V3_8,
        ),
        (
            "4.1 answered as 3.8",
            config(),
            cat(&[b"RFB 004.001\n", &[1, 1], &ok, &init]),
            cat(&[b"RFB 003.008\n", &[1], &[1], &msgs]),
            ProtocolVersion::V3_8,
        ),
        (
            "exclusive ClientInit",
            Config {
                shared: false,
                ..config()
            },
            cat(&[b"RFB 003.008\n", &[1, 1], &ok, &init]),
            cat(&[b"RFB 003.008\n", &[1], &[0], &msgs]),
            ProtocolVersion::V3_8,
        ),
    ];
    for (name, config, input, expect_out, version) in table {
        let mut c = Client::new(config);
        let o = run(&mut c, &input);
        assert!(o.error.is_none(), "{name}: {:?}", o.error);
        assert_eq!(o.events, vec![connected_event(800, 600, "desk")], "{name}");
        assert_eq!(o.output, expect_out, "{name}");
        assert_eq!(c.version(), Some(version), "{name}");
        assert!(c.is_connected(), "{name}");
        assert_eq!(
            (c.width(), c.height(), c.name()),
            (800, 600, "desk"),
            "{name}"
        );
        assert_eq!(c.pixels().len(), 800 * 600, "{name}");
        assert!(c.end_of_stream().is_ok(), "{name}");
    }
}

#[test]
fn handshake_failures() {
    let reason = |s: &str| cat(&[&u32be(u32::try_from(s.len()).unwrap()), s.as_bytes()]);
    type Check = fn(&RfbError) -> bool;
    let table: Vec<(&str, Config, Vec<u8>, Check)> = vec![
        ("not rfb", config(), b"HTTP/1.1 400".to_vec(), |e| {
            matches!(e, RfbError::NotRfb { .. })
        }),
        ("bad digits", config(), b"RFB 003.0x8\n".to_vec(), |e| {
            matches!(e, RfbError::NotRfb { .. })
        }),
        ("too old", config(), b"RFB 002.000\n".to_vec(), |e| {
            matches!(e, RfbError::UnsupportedVersion { major: 2, minor: 0 })
        }),
        (
            "3.8 refused",
            config(),
            cat(&[b"RFB 003.008\n", &[0], &reason("go away")]),
            |e| matches!(e, RfbError::ConnectionRefused { reason } if reason == "go away"),
        ),
        (
            "3.3 refused",
            config(),
            cat(&[b"RFB 003.003\n", &u32be(0), &reason("busy")]),
            |e| matches!(e, RfbError::ConnectionRefused { reason } if reason == "busy"),
        ),
        (
            "absurd reason length",
            config(),
            cat(&[b"RFB 003.008\n", &[0], &u32be(u32::MAX)]),
            |e| matches!(e, RfbError::TooLong { .. }),
        ),
        (
            "no common type",
            config(),
            cat(&[b"RFB 003.008\n", &[2, 16, 19]]),
            |e| matches!(e, RfbError::NoCommonSecurityType { offered } if offered == &[16, 19]),
        ),
        (
            "3.3 unknown type",
            config(),
            cat(&[b"RFB 003.003\n", &u32be(16)]),
            |e| matches!(e, RfbError::NoCommonSecurityType { offered } if offered == &[16]),
        ),
        (
            "vnc auth without password",
            config(),
            cat(&[b"RFB 003.008\n", &[1, 2]]),
            |e| matches!(e, RfbError::PasswordRequired),
        ),
        (
            "3.8 wrong password with reason",
            with_password("wrong"),
            cat(&[
                b"RFB 003.008\n",
                &[1, 2],
                &challenge(),
                &u32be(1),
                &reason("Authentication failed"),
            ]),
            |e| matches!(e, RfbError::AuthFailed { reason: Some(r) } if r == "Authentication failed"),
        ),
        (
            "3.7 wrong password, no reason",
            with_password("wrong"),
            cat(&[b"RFB 003.007\n", &[1, 2], &challenge(), &u32be(1)]),
            |e| matches!(e, RfbError::AuthFailed { reason: None }),
        ),
        (
            "3.3 too many attempts",
            with_password("wrong"),
            cat(&[b"RFB 003.003\n", &u32be(2), &challenge(), &u32be(2)]),
            |e| matches!(e, RfbError::AuthFailed { reason: Some(_) }),
        ),
        (
            "3.8 None then failure",
            config(),
            cat(&[b"RFB 003.008\n", &[1, 1], &u32be(1), &reason("no")]),
            |e| matches!(e, RfbError::AuthFailed { .. }),
        ),
        (
            "framebuffer too wide",
            config(),
            cat(&[
                b"RFB 003.008\n",
                &[1, 1],
                &u32be(0),
                &server_init(8193, 10, b""),
            ]),
            |e| matches!(e, RfbError::FramebufferTooLarge { width: 8193, .. }),
        ),
        (
            "framebuffer too tall",
            config(),
            cat(&[
                b"RFB 003.008\n",
                &[1, 1],
                &u32be(0),
                &server_init(10, 65535, b""),
            ]),
            |e| matches!(e, RfbError::FramebufferTooLarge { height: 65535, .. }),
        ),
        (
            "name too long",
            config(),
            cat(&[
                b"RFB 003.008\n",
                &[1, 1],
                &u32be(0),
                &server_init(10, 10, &[b'x'; 4097]),
            ]),
            |e| {
                matches!(
                    e,
                    RfbError::TooLong {
                        what: "desktop name",
                        ..
                    }
                )
            },
        ),
        (
            "name length 2^32-1",
            config(),
            {
                let mut b = cat(&[
                    b"RFB 003.008\n",
                    &[1, 1],
                    &u32be(0),
                    &server_init(10, 10, b""),
                ]);
                let n = b.len();
                b[n - 4..].copy_from_slice(&u32be(u32::MAX));
                b
            },
            |e| matches!(e, RfbError::TooLong { .. }),
        ),
    ];
    for (name, config, input, check) in table {
        let mut c = Client::new(config);
        let o = run(&mut c, &input);
        let err = o
            .error
            .unwrap_or_else(|| panic!("{name}: no error, events {:?}", o.events));
        assert!(check(&err), "{name}: {err:?}");
        assert!(matches!(c.next_event(), Err(RfbError::Failed)), "{name}");
        // Display never includes the source and always says something.
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn handshake_waits_for_every_byte() {
    let input = cat(&[
        b"RFB 003.008\n",
        &[1, 2],
        &challenge(),
        &u32be(0),
        &server_init(4, 4, b"n"),
    ]);
    let mut c = Client::new(with_password("password"));
    for (i, b) in input.iter().enumerate() {
        c.feed(&[*b]);
        let e = c.next_event().unwrap();
        if i + 1 < input.len() {
            assert_eq!(e, None, "byte {i}");
            assert!(c.end_of_stream().is_err());
        } else {
            assert_eq!(e, Some(connected_event(4, 4, "n")));
        }
    }
}

#[test]
fn requests_before_connection_are_refused() {
    let mut c = Client::new(config());
    assert_eq!(c.key(true, 0x61), Err(RequestError::NotConnected));
    assert_eq!(c.pointer(0, 1, 1), Err(RequestError::NotConnected));
    assert_eq!(
        c.request_full_update(false),
        Err(RequestError::NotConnected)
    );
    assert_eq!(c.send_clipboard("x"), Err(RequestError::NotConnected));
    assert_eq!(c.set_desktop_size(10, 10), Err(RequestError::NotConnected));
    assert!(!c.has_output());
}

// ---- updates ------------------------------------------------------------

/// A client connected to an 8×4 framebuffer (or `w`×`h`), output drained.
fn connected(w: u16, h: u16) -> Client {
    connected_with(config(), w, h)
}

fn connected_with(config: Config, w: u16, h: u16) -> Client {
    let mut c = Client::new(config);
    let o = run(&mut c, &Server::connected(w, h).bytes);
    assert_eq!(o.events, vec![connected_event(w, h, "test")]);
    c
}

fn stream(build: impl FnOnce(&mut Server)) -> Vec<u8> {
    let mut s = Server::new();
    build(&mut s);
    s.bytes
}

#[test]
fn raw_rects() {
    let mut c = connected(8, 4);
    let input = stream(|s| {
        s.update(2)
            .raw(Rect::new(0, 0, 2, 2), &[RED; 4])
            .raw(Rect::new(6, 2, 2, 2), &[RED, GREEN, BLUE, WHITE]);
    });
    let o = run(&mut c, &input);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.events,
        vec![
            Event::Fill {
                rect: Rect::new(0, 0, 2, 2),
                color: RED
            },
            Event::Pixels {
                rect: Rect::new(6, 2, 2, 2)
            },
            Event::UpdateEnd,
        ]
    );
    let fb = c.framebuffer();
    assert_eq!(fb.copy_out(Rect::new(0, 0, 2, 2)), vec![RED; 4]);
    assert_eq!(
        fb.copy_out(Rect::new(6, 2, 2, 2)),
        vec![RED, GREEN, BLUE, WHITE]
    );
    assert_eq!(fb.pixel(2, 0), Some(0));
}

#[test]
fn raw_padding_byte_is_ignored() {
    let mut c = connected(2, 1);
    let input = stream(|s| {
        s.update(1)
            .rect(Rect::new(0, 0, 2, 1), 0)
            .raw_bytes(&[1, 2, 3, 0xff, 1, 2, 3, 0x00]);
    });
    let o = run(&mut c, &input);
    assert_eq!(
        o.events[0],
        Event::Fill {
            rect: Rect::new(0, 0, 2, 1),
            color: 0x0003_0201
        }
    );
}

#[test]
fn copy_rect() {
    let mut c = connected(4, 2);
    let input = stream(|s| {
        s.update(2)
            .raw(Rect::new(0, 0, 2, 1), &[RED, GREEN])
            .copy(Rect::new(2, 1, 2, 1), 0, 0);
    });
    let o = run(&mut c, &input);
    assert_eq!(
        o.events,
        vec![
            Event::Pixels {
                rect: Rect::new(0, 0, 2, 1)
            },
            Event::Copy {
                src_x: 0,
                src_y: 0,
                rect: Rect::new(2, 1, 2, 1)
            },
            Event::UpdateEnd,
        ]
    );
    assert_eq!(
        c.framebuffer().copy_out(Rect::new(2, 1, 2, 1)),
        vec![RED, GREEN]
    );
}

#[test]
fn hextile() {
    // 20×17: tiles 16×16, 4×16, 16×1, 4×1.
    let mut c = connected(20, 17);
    let input = stream(|s| {
        s.update(1).rect(Rect::new(0, 0, 20, 17), 5);
        // Tile 1: background red, one foreground green subrect at (1,2) 3×2.
        s.raw_bytes(&[2 | 4 | 8])
            .raw_bytes(&px(RED))
            .raw_bytes(&px(GREEN));
        s.raw_bytes(&[1, 0x12, 0x21]);
        // Tile 2: background only (carried over red): a Fill.
        s.raw_bytes(&[0]);
        // Tile 3: raw 16×1 blue.
        s.raw_bytes(&[1]);
        for _ in 0..16 {
            s.raw_bytes(&px(BLUE));
        }
        // Tile 4: new background white, two coloured subrects of 1×1.
        s.raw_bytes(&[2 | 8 | 16])
            .raw_bytes(&px(WHITE))
            .raw_bytes(&[2]);
        s.raw_bytes(&px(RED)).raw_bytes(&[0x00, 0x00]);
        s.raw_bytes(&px(GREEN)).raw_bytes(&[0x30, 0x00]);
    });
    let o = run(&mut c, &input);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.events,
        vec![
            Event::Pixels {
                rect: Rect::new(0, 0, 16, 16)
            },
            Event::Fill {
                rect: Rect::new(16, 0, 4, 16),
                color: RED
            },
            Event::Pixels {
                rect: Rect::new(0, 16, 20, 1)
            },
            Event::UpdateEnd,
        ]
    );
    let fb = c.framebuffer();
    assert_eq!(fb.pixel(0, 0), Some(RED));
    assert_eq!(fb.copy_out(Rect::new(1, 2, 3, 2)), vec![GREEN; 6]);
    assert_eq!(fb.pixel(4, 2), Some(RED));
    assert_eq!(fb.pixel(17, 5), Some(RED));
    assert_eq!(fb.copy_out(Rect::new(0, 16, 20, 1)), {
        let mut v = vec![BLUE; 16];
        v.extend_from_slice(&[RED, WHITE, WHITE, GREEN]);
        v
    });
}

#[test]
fn hextile_solid_rect_merges_to_one_fill() {
    let mut c = connected(40, 40);
    let input = stream(|s| {
        s.update(1).rect(Rect::new(0, 0, 40, 40), 5);
        s.raw_bytes(&[2]).raw_bytes(&px(BLUE));
        for _ in 1..9 {
            s.raw_bytes(&[0]);
        }
    });
    let o = run(&mut c, &input);
    assert_eq!(
        o.events,
        vec![
            Event::Fill {
                rect: Rect::new(0, 0, 40, 40),
                color: BLUE
            },
            Event::UpdateEnd
        ]
    );
    assert!(c.pixels().iter().all(|&p| p == BLUE));
}

#[test]
fn zrle_solid_and_mixed_with_persistent_stream() {
    let mut c = connected(130, 70);
    let all = Rect::new(0, 0, 130, 70);
    let mixed: Vec<u32> = (0..130 * 70)
        .map(|i| if i % 7 == 0 { RED } else { GREEN })
        .collect();
    let input = stream(|s| {
        s.update(1).zrle(all, &vec![BLUE; 130 * 70]);
        s.update(2).zrle(
            Rect::new(0, 0, 3, 2),
            &[RED, GREEN, BLUE, WHITE, RED, GREEN],
        );
        s.zrle(Rect::new(0, 0, 130, 70), &mixed);
    });
    let o = run(&mut c, &input);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.events,
        vec![
            Event::Fill {
                rect: all,
                color: BLUE
            },
            Event::UpdateEnd,
            Event::Pixels {
                rect: Rect::new(0, 0, 3, 2)
            },
            Event::Pixels { rect: all },
            Event::UpdateEnd,
        ]
    );
    assert_eq!(c.pixels(), &mixed[..]);
}

#[test]
fn zrle_mixed_tiles_give_fills_and_pixels() {
    // 128×64: left tile solid, right tile raw.
    let mut c = connected(128, 64);
    let mut pixels = vec![RED; 128 * 64];
    pixels[64 + 5] = GREEN;
    let input = stream(|s| {
        s.update(1).zrle(Rect::new(0, 0, 128, 64), &pixels);
    });
    let o = run(&mut c, &input);
    assert_eq!(
        o.events,
        vec![
            Event::Fill {
                rect: Rect::new(0, 0, 64, 64),
                color: RED
            },
            Event::Pixels {
                rect: Rect::new(64, 0, 64, 64)
            },
            Event::UpdateEnd,
        ]
    );
    assert_eq!(c.pixels(), &pixels[..]);
}

#[test]
fn zrle_all_subencodings_through_the_client() {
    let mut c = connected(4, 2);
    let r = Rect::new(0, 0, 4, 2);
    let table: Vec<(Vec<u8>, Vec<u32>)> = vec![
        (cat(&[&[1], &cpx(RED)]), vec![RED; 8]),
        (
            cat(&[
                &[0],
                &cpx(RED),
                &cpx(GREEN),
                &cpx(BLUE),
                &cpx(WHITE),
                &cpx(RED),
                &cpx(GREEN),
                &cpx(BLUE),
                &cpx(WHITE),
            ]),
            vec![RED, GREEN, BLUE, WHITE, RED, GREEN, BLUE, WHITE],
        ),
        (
            cat(&[&[2], &cpx(RED), &cpx(BLUE), &[0b1010_0000, 0b0101_0000]]),
            vec![BLUE, RED, BLUE, RED, RED, BLUE, RED, BLUE],
        ),
        (
            cat(&[&[128], &cpx(GREEN), &[4], &cpx(RED), &[2]]),
            vec![GREEN, GREEN, GREEN, GREEN, GREEN, RED, RED, RED],
        ),
        (
            cat(&[&[131], &cpx(RED), &cpx(GREEN), &cpx(BLUE), &[0x82, 5, 1, 0]]),
            vec![BLUE, BLUE, BLUE, BLUE, BLUE, BLUE, GREEN, RED],
        ),
    ];
    let mut s = Server::new();
    for (tiles, _) in &table {
        s.update(1).zrle_tiles(r, tiles);
    }
    c.feed(&s.bytes);
    for (tiles, expect) in table {
        loop {
            match c.next_event().unwrap() {
                Some(Event::UpdateEnd) => break,
                Some(_) => {}
                None => panic!("stream ended early"),
            }
        }
        assert_eq!(c.pixels(), &expect[..], "{tiles:?}");
    }
}

#[test]
fn zrle_by_real_zlib_without_sync_flush_per_tile() {
    // Tiles compressed in one go and the stream split mid-way across two
    // rectangles' lengths is not allowed; but one rectangle whose data is
    // fed one byte at a time must decode.
    let mut c = connected(64, 64);
    let pixels: Vec<u32> = (0..64 * 64)
        .map(|i: u32| i.wrapping_mul(2_654_435_761) & 0xff_ffff)
        .collect();
    let input = stream(|s| {
        s.update(1).zrle(Rect::new(0, 0, 64, 64), &pixels);
    });
    let o = run_chunks(&mut c, input.chunks(1));
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.events,
        vec![
            Event::Pixels {
                rect: Rect::new(0, 0, 64, 64)
            },
            Event::UpdateEnd
        ]
    );
    assert_eq!(c.pixels(), &pixels[..]);
}

#[test]
fn pseudo_encodings() {
    let mut c = connected(8, 4);
    assert!(!c.can_resize());
    let screen = |id: u32, w: u16, h: u16| {
        cat(&[
            &u32be(id),
            &u16be(0),
            &u16be(0),
            &u16be(w),
            &u16be(h),
            &u32be(0),
        ])
    };
    let input = stream(|s| {
        // DesktopSize to 10×5.
        s.update(1).rect(Rect::new(0, 0, 10, 5), -223);
        // Cursor 3×2, hotspot (1,1): mask 101 / 010.
        s.update(1).rect(Rect::new(1, 1, 3, 2), -239);
        for p in [RED, GREEN, BLUE, WHITE, RED, GREEN] {
            s.raw_bytes(&px(p));
        }
        s.raw_bytes(&[0b1010_0000, 0b0100_0000]);
        // ExtendedDesktopSize, server-side change to 12×6, one screen.
        s.update(1).rect(Rect::new(0, 0, 12, 6), -308);
        s.raw_bytes(&[1, 0, 0, 0]).raw_bytes(&screen(7, 12, 6));
        // Same size again: no Resize.
        s.update(1).rect(Rect::new(0, 0, 12, 6), -308);
        s.raw_bytes(&[1, 0, 0, 0]).raw_bytes(&screen(7, 12, 6));
    });
    let o = run(&mut c, &input);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.events,
        vec![
            Event::Resize {
                width: 10,
                height: 5
            },
            Event::UpdateEnd,
            Event::Cursor {
                hotspot_x: 1,
                hotspot_y: 1,
                width: 3,
                height: 2,
                rgba: vec![
                    255, 0, 0, 255, 0, 255, 0, 0, 0, 0, 255, 255, //
                    255, 255, 255, 0, 255, 0, 0, 255, 0, 255, 0, 0,
                ],
            },
            Event::UpdateEnd,
            Event::Resize {
                width: 12,
                height: 6
            },
            Event::UpdateEnd,
            Event::UpdateEnd,
        ]
    );
    assert!(c.can_resize());
    assert_eq!(
        c.screens(),
        &[Screen {
            id: 7,
            rect: Rect::new(0, 0, 12, 6),
            flags: 0
        }]
    );
    assert_eq!(c.pixels().len(), 12 * 6);
}

#[test]
fn set_desktop_size_round_trip() {
    let mut c = connected(8, 4);
    assert_eq!(
        c.set_desktop_size(10, 10),
        Err(RequestError::ResizeUnsupported)
    );
    let screen = cat(&[
        &u32be(9),
        &u16be(0),
        &u16be(0),
        &u16be(8),
        &u16be(4),
        &u32be(5),
    ]);
    let o = run(
        &mut c,
        &stream(|s| {
            s.update(1)
                .rect(Rect::new(0, 0, 8, 4), -308)
                .raw_bytes(&[1, 0, 0, 0])
                .raw_bytes(&screen);
        }),
    );
    assert_eq!(o.events, vec![Event::UpdateEnd]);
    assert!(c.can_resize());
    assert_eq!(
        c.set_desktop_size(0, 10),
        Err(RequestError::InvalidSize {
            width: 0,
            height: 10
        })
    );
    assert_eq!(
        c.set_desktop_size(9000, 10),
        Err(RequestError::InvalidSize {
            width: 9000,
            height: 10
        })
    );
    c.set_desktop_size(16, 9).unwrap();
    assert_eq!(
        c.take_output(),
        cat(&[
            &[251, 0],
            &u16be(16),
            &u16be(9),
            &[1, 0],
            &u32be(9),
            &u16be(0),
            &u16be(0),
            &u16be(16),
            &u16be(9),
            &u32be(5)
        ])
    );
    let reply = |status: u16, w: u16, h: u16| {
        stream(|s| {
            s.update(1)
                .rect(Rect::new(1, status, w, h), -308)
                .raw_bytes(&[1, 0, 0, 0]);
            s.raw_bytes(&cat(&[
                &u32be(9),
                &u16be(0),
                &u16be(0),
                &u16be(w),
                &u16be(h),
                &u32be(5),
            ]));
        })
    };
    let table = [
        (
            reply(0, 16, 9),
            vec![
                Event::Resize {
                    width: 16,
                    height: 9,
                },
                Event::DesktopSizeResult(DesktopSizeStatus::Ok),
                Event::UpdateEnd,
            ],
        ),
        (
            reply(1, 0, 0),
            vec![
                Event::DesktopSizeResult(DesktopSizeStatus::Prohibited),
                Event::UpdateEnd,
            ],
        ),
        (
            reply(3, 99, 99),
            vec![
                Event::DesktopSizeResult(DesktopSizeStatus::InvalidLayout),
                Event::UpdateEnd,
            ],
        ),
        (
            reply(4, 0, 0),
            vec![
                Event::DesktopSizeResult(DesktopSizeStatus::Forwarded),
                Event::UpdateEnd,
            ],
        ),
        (
            reply(77, 0, 0),
            vec![
                Event::DesktopSizeResult(DesktopSizeStatus::Unknown(77)),
                Event::UpdateEnd,
            ],
        ),
    ];
    for (input, expect) in table {
        let o = run(&mut c, &input);
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(o.events, expect);
        assert_eq!((c.width(), c.height()), (16, 9));
    }
}

#[test]
fn last_rect_empty_updates_bell_colour_map() {
    let mut c = connected(4, 4);
    let input = stream(|s| {
        s.update(0xffff)
            .raw(Rect::new(0, 0, 1, 1), &[RED])
            .rect(Rect::new(0, 0, 0, 0), -224);
        s.update(0);
        s.bell();
        // SetColourMapEntries with 2 colours: skipped.
        s.raw_bytes(&[1, 0, 0, 0, 0, 2]).raw_bytes(&[0; 12]);
        // Empty rectangles of every drawing encoding.
        s.update(4)
            .raw(Rect::new(4, 4, 0, 0), &[])
            .copy(Rect::new(0, 0, 0, 3), 4, 0);
        s.rect(Rect::new(1, 1, 0, 0), 5);
        s.zrle_tiles(Rect::new(2, 2, 0, 2), &[]);
        s.bell();
    });
    let o = run(&mut c, &input);
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.events,
        vec![
            Event::Fill {
                rect: Rect::new(0, 0, 1, 1),
                color: RED
            },
            Event::UpdateEnd,
            Event::UpdateEnd,
            Event::Bell,
            Event::UpdateEnd,
            Event::Bell,
        ]
    );
    assert!(c.end_of_stream().is_ok());
}

// ---- clipboard ----------------------------------------------------------

fn ext_payload(flags: u32, rest: &[u8]) -> Vec<u8> {
    cat(&[&u32be(flags), rest])
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const CAPS: u32 = 1 << 24;
const REQUEST: u32 = 1 << 25;
const PEEK: u32 = 1 << 26;
const NOTIFY: u32 = 1 << 27;
const PROVIDE: u32 = 1 << 28;

/// ClientCutText with an extended payload.
fn client_ext(payload: &[u8]) -> Vec<u8> {
    cat(&[
        &[6, 0, 0, 0],
        &(-i32::try_from(payload.len()).unwrap()).to_be_bytes(),
        payload,
    ])
}

#[test]
fn latin1_clipboard_both_ways() {
    let mut c = connected(4, 4);
    let o = run(
        &mut c,
        &stream(|s| {
            s.cut_text(b"caf\xe9\r\nbar");
        }),
    );
    assert_eq!(o.events, vec![Event::ClipboardText("café\nbar".into())]);
    assert!(!c.has_extended_clipboard());
    c.send_clipboard("Grüße — 日本 😀").unwrap();
    let expect = b"Gr\xfc\xdfe ? ?? ?";
    assert_eq!(c.take_output(), cat(&[&[6, 0, 0, 0], &u32be(12), expect]));
}

#[test]
fn extended_clipboard_flow() {
    let mut c = connected(4, 4);
    let text = "Grüße — 日本 😀\nline 2";
    let wire_text = "Grüße — 日本 😀\r\nline 2\0";
    // The server's caps (TigerVNC: text, all actions, size 0).
    let caps = ext_payload(CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | 1, &u32be(0));
    let o = run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&caps);
        }),
    );
    assert!(o.error.is_none(), "{:?}", o.error);
    assert!(o.events.is_empty());
    assert!(c.has_extended_clipboard());
    assert_eq!(
        o.output,
        client_ext(&ext_payload(
            CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | 1,
            &u32be(0)
        ))
    );

    // The server announces text: the client requests it.
    let o = run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&ext_payload(NOTIFY | 1, &[]));
        }),
    );
    assert!(o.events.is_empty());
    assert_eq!(o.output, client_ext(&ext_payload(REQUEST | 1, &[])));

    // It provides the text.
    let mut body = u32be(u32::try_from(wire_text.len()).unwrap()).to_vec();
    body.extend_from_slice(wire_text.as_bytes());
    let o = run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&ext_payload(PROVIDE | 1, &zlib(&body)));
        }),
    );
    assert_eq!(o.events, vec![Event::ClipboardText(text.into())]);

    // Our text: the server's size limit is 0, so we notify...
    c.send_clipboard(text).unwrap();
    assert_eq!(c.take_output(), client_ext(&ext_payload(NOTIFY | 1, &[])));
    // ...answer a peek...
    let o = run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&ext_payload(PEEK, &[]));
        }),
    );
    assert_eq!(o.output, client_ext(&ext_payload(NOTIFY | 1, &[])));
    // ...and provide on request.
    let o = run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&ext_payload(REQUEST | 1, &[]));
        }),
    );
    let payload = &o.output[8..];
    assert_eq!(&o.output[..4], &[6, 0, 0, 0]);
    assert_eq!(
        u32::from_be_bytes(payload[..4].try_into().unwrap()),
        PROVIDE | 1
    );
    let mut inflated = Vec::new();
    use std::io::Read;
    flate2::read::ZlibDecoder::new(&payload[4..])
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(inflated, body);
}

#[test]
fn extended_clipboard_provides_directly_when_it_fits() {
    let mut c = connected(4, 4);
    let caps = ext_payload(CAPS | PROVIDE | NOTIFY | 1, &u32be(1024));
    run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&caps);
        }),
    );
    c.send_clipboard("hi").unwrap();
    let out = c.take_output();
    assert_eq!(
        u32::from_be_bytes(out[8..12].try_into().unwrap()),
        PROVIDE | 1
    );
    // A request with no local text and a notify without text do nothing.
    let mut c = connected(4, 4);
    run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&caps);
        }),
    );
    let o = run(
        &mut c,
        &stream(|s| {
            s.ext_clip(&ext_payload(REQUEST | 1, &[]));
            s.ext_clip(&ext_payload(NOTIFY, &[]));
        }),
    );
    assert!(o.output.is_empty() && o.events.is_empty());
}

// ---- client messages ----------------------------------------------------

#[test]
fn client_messages() {
    let mut c = connected(100, 50);
    type Action = fn(&mut Client);
    let table: Vec<(&str, Action, Vec<u8>)> = vec![
        (
            "full request",
            |c| c.request_full_update(false).unwrap(),
            cat(&[&[3, 0], &u16be(0), &u16be(0), &u16be(100), &u16be(50)]),
        ),
        (
            "incremental",
            |c| c.request_update(true, Rect::new(10, 20, 5, 5)).unwrap(),
            cat(&[&[3, 1], &u16be(10), &u16be(20), &u16be(5), &u16be(5)]),
        ),
        (
            "request clipped",
            |c| c.request_update(true, Rect::new(90, 40, 500, 500)).unwrap(),
            cat(&[&[3, 1], &u16be(90), &u16be(40), &u16be(10), &u16be(10)]),
        ),
        (
            "pointer",
            |c| c.pointer(1, 10, 20).unwrap(),
            cat(&[&[5, 1], &u16be(10), &u16be(20)]),
        ),
        (
            "pointer clamped",
            |c| c.pointer(4, -5, 9999).unwrap(),
            cat(&[&[5, 4], &u16be(0), &u16be(49)]),
        ),
        (
            "key down",
            |c| c.key(true, 0xff0d).unwrap(),
            cat(&[&[4, 1, 0, 0], &u32be(0xff0d)]),
        ),
        (
            "key up",
            |c| c.key(false, 0x61).unwrap(),
            cat(&[&[4, 0, 0, 0], &u32be(0x61)]),
        ),
        (
            "latin1 clipboard",
            |c| c.send_clipboard("a\r\nb").unwrap(),
            cat(&[&[6, 0, 0, 0], &u32be(3), b"a\nb"]),
        ),
    ];
    for (name, action, expect) in table {
        action(&mut c);
        assert_eq!(c.take_output(), expect, "{name}");
    }
}

// ---- malformed ----------------------------------------------------------

#[test]
fn malformed_updates() {
    type Check = fn(&RfbError) -> bool;
    let small = || Limits {
        max_rects_per_update: 3,
        max_cut_text: 100,
        max_cursor_size: 32,
        ..Limits::default()
    };
    let table: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "raw outside",
            stream(|s| {
                s.update(1).rect(Rect::new(7, 0, 2, 1), 0);
            }),
            |e| matches!(e, RfbError::RectOutsideFramebuffer { .. }),
        ),
        (
            "raw overflowing x+w",
            stream(|s| {
                s.update(1).rect(Rect::new(65535, 0, 65535, 1), 0);
            }),
            |e| matches!(e, RfbError::RectOutsideFramebuffer { .. }),
        ),
        (
            "raw overflowing y+h",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 65535, 1, 2), 0);
            }),
            |e| matches!(e, RfbError::RectOutsideFramebuffer { .. }),
        ),
        (
            "hextile outside",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 0, 9, 1), 5);
            }),
            |e| matches!(e, RfbError::RectOutsideFramebuffer { encoding: 5, .. }),
        ),
        (
            "zrle outside",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 4, 1, 1), 16);
            }),
            |e| matches!(e, RfbError::RectOutsideFramebuffer { encoding: 16, .. }),
        ),
        (
            "copy dest outside",
            stream(|s| {
                s.update(1).copy(Rect::new(0, 0, 9, 1), 0, 0);
            }),
            |e| matches!(e, RfbError::RectOutsideFramebuffer { .. }),
        ),
        (
            "copy source outside",
            stream(|s| {
                s.update(1).copy(Rect::new(0, 0, 2, 2), 7, 3);
            }),
            |e| matches!(e, RfbError::CopySourceOutside { .. }),
        ),
        (
            "copy source overflow",
            stream(|s| {
                s.update(1).copy(Rect::new(0, 0, 2, 2), 65535, 65535);
            }),
            |e| matches!(e, RfbError::CopySourceOutside { .. }),
        ),
        (
            "too many rects",
            stream(|s| {
                s.update(5);
                for _ in 0..5 {
                    s.raw(Rect::new(0, 0, 1, 1), &[RED]);
                }
            }),
            |e| matches!(e, RfbError::TooManyRects { max: 3 }),
        ),
        (
            "tight is unknown",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 0, 1, 1), 7);
            }),
            |e| matches!(e, RfbError::UnknownEncoding(7)),
        ),
        (
            "rre is unknown",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 0, 1, 1), 2);
            }),
            |e| matches!(e, RfbError::UnknownEncoding(2)),
        ),
        ("unknown message", vec![200], |e| {
            matches!(e, RfbError::UnknownMessageType(200))
        }),
        ("fence not enabled", vec![248], |e| {
            matches!(e, RfbError::UnknownMessageType(248))
        }),
        (
            "cut text too long",
            stream(|s| {
                s.raw_bytes(&[3, 0, 0, 0]).raw_bytes(&u32be(101));
            }),
            |e| {
                matches!(
                    e,
                    RfbError::TooLong {
                        what: "clipboard text",
                        ..
                    }
                )
            },
        ),
        (
            "cut text 2 GiB",
            stream(|s| {
                s.raw_bytes(&[3, 0, 0, 0]).raw_bytes(&u32be(0x7fff_ffff));
            }),
            |e| matches!(e, RfbError::TooLong { .. }),
        ),
        (
            "ext clipboard i32::MIN",
            stream(|s| {
                s.raw_bytes(&[3, 0, 0, 0])
                    .raw_bytes(&i32::MIN.to_be_bytes());
            }),
            |e| matches!(e, RfbError::TooLong { .. }),
        ),
        (
            "ext clipboard too short",
            stream(|s| {
                s.ext_clip(&[0, 0]);
            }),
            |e| matches!(e, RfbError::BadClipboard(_)),
        ),
        (
            "ext clipboard bad zlib",
            stream(|s| {
                s.ext_clip(&ext_payload(PROVIDE | 1, b"garbage!"));
            }),
            |e| matches!(e, RfbError::Zlib(_)),
        ),
        (
            "ext clipboard size over limit",
            stream(|s| {
                s.ext_clip(&ext_payload(PROVIDE | 1, &zlib(&u32be(1000))));
            }),
            |e| matches!(e, RfbError::TooLong { .. }),
        ),
        (
            "cursor too large",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 0, 33, 1), -239);
            }),
            |e| matches!(e, RfbError::CursorTooLarge { width: 33, .. }),
        ),
        (
            "desktop size too large",
            stream(|s| {
                s.update(1).rect(Rect::new(0, 0, 9000, 1), -223);
            }),
            |e| matches!(e, RfbError::FramebufferTooLarge { .. }),
        ),
        (
            "ext desktop size too large",
            stream(|s| {
                s.update(1)
                    .rect(Rect::new(0, 0, 1, 60000), -308)
                    .raw_bytes(&[0, 0, 0, 0]);
            }),
            |e| matches!(e, RfbError::FramebufferTooLarge { .. }),
        ),
        (
            "hextile subrect outside tile",
            stream(|s| {
                s.update(1)
                    .rect(Rect::new(0, 0, 4, 4), 5)
                    .raw_bytes(&[2 | 8])
                    .raw_bytes(&px(RED))
                    .raw_bytes(&[1])
                    .raw_bytes(&[0x33, 0x11]);
            }),
            |e| matches!(e, RfbError::BadHextile(_)),
        ),
        (
            "zrle length beyond bound",
            stream(|s| {
                s.update(1)
                    .rect(Rect::new(0, 0, 1, 1), 16)
                    .raw_bytes(&u32be(u32::MAX));
            }),
            |e| {
                matches!(
                    e,
                    RfbError::TooLong {
                        what: "ZRLE rectangle data",
                        ..
                    }
                )
            },
        ),
        (
            "zrle truncated zlib",
            {
                let mut s = Server::new();
                let data = s.compress(&zrle_encode(8, 4, &[RED, GREEN].repeat(16)));
                let cut = &data[..data.len() / 2];
                stream(|t| {
                    t.update(1)
                        .rect(Rect::new(0, 0, 8, 4), 16)
                        .raw_bytes(&u32be(u32::try_from(cut.len()).unwrap()))
                        .raw_bytes(cut);
                })
            },
            |e| matches!(e, RfbError::BadZrle(_) | RfbError::Zlib(_)),
        ),
        (
            "zrle zero length",
            stream(|s| {
                s.update(1)
                    .rect(Rect::new(0, 0, 1, 1), 16)
                    .raw_bytes(&u32be(0));
            }),
            |e| matches!(e, RfbError::BadZrle(_)),
        ),
        (
            "zrle trailing data",
            stream(|s| {
                let tiles = cat(&[&[1], &cpx(RED), &[1], &cpx(RED)]);
                s.update(1).zrle_tiles(Rect::new(0, 0, 1, 1), &tiles);
            }),
            |e| matches!(e, RfbError::BadZrle(_)),
        ),
        (
            "zrle garbage",
            stream(|s| {
                s.update(1)
                    .rect(Rect::new(0, 0, 1, 1), 16)
                    .raw_bytes(&u32be(6))
                    .raw_bytes(b"\xff\xff\xff\xff\xff\xff");
            }),
            |e| matches!(e, RfbError::Zlib(_)),
        ),
        (
            "zrle bad palette index",
            stream(|s| {
                s.update(1).zrle_tiles(
                    Rect::new(0, 0, 1, 1),
                    &cat(&[&[130], &cpx(RED), &cpx(BLUE), &[5]]),
                );
            }),
            |e| matches!(e, RfbError::BadZrle(_)),
        ),
        (
            "zrle run too long",
            stream(|s| {
                s.update(1).zrle_tiles(
                    Rect::new(0, 0, 2, 1),
                    &cat(&[&[128], &cpx(RED), &[255, 255, 3]]),
                );
            }),
            |e| matches!(e, RfbError::BadZrle(_)),
        ),
    ];
    for (name, input, check) in table {
        let mut c = connected_with(
            Config {
                limits: small(),
                ..config()
            },
            8,
            4,
        );
        let o = run(&mut c, &input);
        let err = o
            .error
            .unwrap_or_else(|| panic!("{name}: no error, events {:?}", o.events));
        assert!(check(&err), "{name}: {err:?}");
        assert!(matches!(c.next_event(), Err(RfbError::Failed)), "{name}");
        // Also byte by byte: the same error.
        let mut c = connected_with(
            Config {
                limits: small(),
                ..config()
            },
            8,
            4,
        );
        let o = run_chunks(&mut c, input.chunks(1));
        assert!(
            o.error.as_ref().is_some_and(check),
            "{name} split: {:?}",
            o.error
        );
    }
}

#[test]
fn eof_mid_message_is_reported() {
    let mut c = connected(4, 4);
    let input = stream(|s| {
        s.update(1).raw(Rect::new(0, 0, 2, 2), &[RED; 4]);
    });
    run(&mut c, &input[..input.len() - 3]);
    assert!(matches!(c.end_of_stream(), Err(RfbError::UnexpectedEof)));
    assert!(Client::new(config()).end_of_stream().is_err());
}

#[test]
fn encodings_are_configurable() {
    let cfg = Config {
        encodings: vec![Encoding::Hextile, Encoding::Raw, Encoding::CompressLevel(1)],
        ..config()
    };
    let mut c = Client::new(cfg.clone());
    let o = run(&mut c, &Server::connected(2, 2).bytes);
    let tail = &o.output[o.output.len() - 16..];
    assert_eq!(
        tail,
        &cat(&[
            &[2, 0],
            &u16be(3),
            &5i32.to_be_bytes(),
            &0i32.to_be_bytes(),
            &(-255i32).to_be_bytes()
        ])[..]
    );
    assert!(o.output.ends_with(&init_messages(&cfg)));
}

// ---- properties ---------------------------------------------------------

/// One server message for the property tests.
#[derive(Debug, Clone)]
enum Op {
    Raw(Rect, u32, bool),
    Zrle(Rect, u32, bool),
    Hextile(Rect, u32),
    Copy(Rect, u16, u16),
    Cursor(u16, u16),
    Bell,
    Cut(Vec<u8>),
    DesktopSize(u16, u16),
    Empty,
}

const W: u16 = 70;
const H: u16 = 40;

fn rect_in(w: u16, h: u16) -> impl Strategy<Value = Rect> {
    (0..w, 0..h)
        .prop_flat_map(move |(x, y)| (Just(x), Just(y), 0..=w - x, 0..=h - y))
        .prop_map(|(x, y, rw, rh)| Rect::new(x, y, rw, rh))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (rect_in(W, H), any::<u32>(), any::<bool>()).prop_map(|(r, c, m)| Op::Raw(
            r,
            c & 0xff_ffff,
            m
        )),
        (rect_in(W, H), any::<u32>(), any::<bool>()).prop_map(|(r, c, m)| Op::Zrle(
            r,
            c & 0xff_ffff,
            m
        )),
        (rect_in(W, H), any::<u32>()).prop_map(|(r, c)| Op::Hextile(r, c & 0xff_ffff)),
        rect_in(W, H)
            .prop_flat_map(|r| (Just(r), 0..=W - r.width, 0..=H - r.height))
            .prop_map(|(r, x, y)| Op::Copy(r, x, y)),
        (0u16..5, 0u16..5).prop_map(|(w, h)| Op::Cursor(w, h)),
        Just(Op::Bell),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Op::Cut),
        (W..W + 3, H..H + 3).prop_map(|(w, h)| Op::DesktopSize(w, h)),
        Just(Op::Empty),
    ]
}

fn pattern(r: Rect, c: u32, mixed: bool) -> Vec<u32> {
    (0..r.area())
        .map(|i| {
            if mixed && i % 3 == 1 {
                c ^ 0x0012_3456
            } else {
                c
            }
        })
        .collect()
}

/// A valid server stream for `ops` (after the handshake). DesktopSize only
/// grows the framebuffer, so every rectangle stays inside.
fn build(ops: &[Op]) -> Vec<u8> {
    let mut s = Server::connected(W, H);
    for op in ops {
        match op {
            Op::Raw(r, c, m) => {
                s.update(1).raw(*r, &pattern(*r, *c, *m));
            }
            Op::Zrle(r, c, m) => {
                s.update(1).zrle(*r, &pattern(*r, *c, *m));
            }
            Op::Hextile(r, c) => {
                s.update(1).rect(*r, 5);
                let tiles = u32::from(r.width.div_ceil(16)) * u32::from(r.height.div_ceil(16));
                for t in 0..tiles {
                    if t == 0 {
                        s.raw_bytes(&[2 | 4 | 8])
                            .raw_bytes(&px(*c))
                            .raw_bytes(&px(!*c & 0xff_ffff))
                            .raw_bytes(&[1, 0, 0]);
                    } else {
                        s.raw_bytes(&[0]);
                    }
                }
            }
            Op::Copy(r, x, y) => {
                s.update(1).copy(*r, *x, *y);
            }
            Op::Cursor(w, h) => {
                s.update(1).rect(Rect::new(0, 0, *w, *h), -239);
                for i in 0..u32::from(*w) * u32::from(*h) {
                    s.raw_bytes(&px(i));
                }
                s.raw_bytes(&vec![0xa5; usize::from(w.div_ceil(8)) * usize::from(*h)]);
            }
            Op::Bell => {
                s.bell();
            }
            Op::Cut(t) => {
                s.cut_text(t);
            }
            Op::DesktopSize(w, h) => {
                s.update(1).rect(Rect::new(0, 0, *w, *h), -223);
            }
            Op::Empty => {
                s.update(0);
            }
        }
    }
    s.bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_result(ops in proptest::collection::vec(op(), 0..12), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20)) {
        let input = build(&ops);
        let mut whole = Client::new(config());
        let expect = run(&mut whole, &input);
        prop_assert!(expect.error.is_none(), "{:?}", expect.error);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.push(0);
        points.push(input.len());
        points.sort_unstable();
        let chunks = points.windows(2).map(|w| &input[w[0]..w[1]]);
        let mut split = Client::new(config());
        let got = run_chunks(&mut split, chunks);
        prop_assert!(got.error.is_none(), "{:?}", got.error);
        prop_assert_eq!(&got.events, &expect.events);
        prop_assert_eq!(&got.output, &expect.output);
        prop_assert_eq!(split.framebuffer(), whole.framebuffer());
        prop_assert!(split.end_of_stream().is_ok());
        // One UpdateEnd per update.
        let updates = ops.iter().filter(|o| !matches!(o, Op::Bell | Op::Cut(_))).count();
        prop_assert_eq!(expect.events.iter().filter(|e| **e == Event::UpdateEnd).count(), updates);
    }

    #[test]
    fn arbitrary_bytes_after_the_handshake_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        let mut input = Server::connected(W, H).bytes;
        input.extend_from_slice(&tail);
        let mut a = Client::new(config());
        let whole = run(&mut a, &input);
        let mut b = Client::new(config());
        let split = run_chunks(&mut b, input.chunks(chunk));
        prop_assert_eq!(whole.events, split.events);
        prop_assert_eq!(whole.error.map(|e| e.to_string()), split.error.map(|e| e.to_string()));
    }

    #[test]
    fn arbitrary_bytes_from_the_start_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut c = Client::new(with_password("pw"));
        let _ = run(&mut c, &input);
        let mut input = b"RFB 003.008\n".to_vec();
        input.extend_from_slice(&[1, 1, 0, 0, 0, 0]);
        let mut c = Client::new(config());
        let _ = run(&mut c, &input);
    }

    #[test]
    fn arbitrary_update_bodies_never_panic(enc in prop_oneof![Just(0i32), Just(1), Just(5), Just(16), Just(-239), Just(-308), Just(-223)], r in rect_in(W + 2, H + 2), body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut s = Server::connected(W, H);
        s.update(1).rect(r, enc).raw_bytes(&body);
        let mut c = Client::new(config());
        let _ = run(&mut c, &s.bytes);
    }

    #[test]
    fn arbitrary_zlib_content_never_panics(r in rect_in(W, H), tiles in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut s = Server::connected(W, H);
        s.update(1).zrle_tiles(r, &tiles);
        let mut c = Client::new(config());
        let _ = run(&mut c, &s.bytes);
    }
}

/// Found by the fuzzer: valid ZRLE tiles followed, inside the same
/// rectangle, by bytes that inflate to extra data and then fail. zlib used
/// to see different slices depending on how the input was split, giving
/// different errors; it is now always fed the same slices.
#[test]
fn zrle_errors_do_not_depend_on_the_split() {
    let tail = unhex(concat!(
        "000000020000000000400030000000100000000c789c620c331102000000ffff",
        "000000000000000200000010000000136a620000006460606260686466606c60",
        "0500005bffff00000000100000000002000000100000000b6282701604060000",
        "000000",
    ));
    let mut input = Server::connected(64, 48).bytes;
    input.extend_from_slice(&tail);
    let mut whole = Client::new(config());
    let expect = run(&mut whole, &input);
    let expect_err = expect.error.as_ref().map(ToString::to_string);
    assert!(expect_err.is_some(), "{:?}", expect.events);
    for chunk in 1..=40 {
        let mut c = Client::new(config());
        let got = run_chunks(&mut c, input.chunks(chunk));
        assert_eq!(got.events, expect.events, "chunk {chunk}");
        assert_eq!(
            got.error.as_ref().map(ToString::to_string),
            expect_err,
            "chunk {chunk}"
        );
    }
}
