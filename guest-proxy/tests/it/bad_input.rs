//! Bad input: clean typed errors, and the proxy keeps serving, or exits
//! cleanly where the stream itself is broken.

use std::time::Duration;

use daas_guest_proxy_wire::message::{Exec, Ping};
use daas_guest_proxy_wire::{ErrorCode, Frame, Incoming, Stream};

use crate::harness::{Msg, Proxy};

fn control(json: &[u8]) -> Vec<u8> {
    Frame::Control(json.to_vec()).encode().unwrap()
}

/// The next message must be an error with this id and code.
fn expect_error(p: &mut Proxy, id: Option<u64>, code: ErrorCode) -> String {
    match p.next(Duration::from_secs(10)) {
        Msg::In(Incoming::Error { id: got, error }) => {
            assert_eq!((got, error.code), (id, code), "{}", error.message);
            error.message
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

#[test]
fn malformed_messages_get_errors_and_the_session_goes_on() {
    let mut p = crate::support::local(&[]);
    let cases: &[(&[u8], Option<u64>, ErrorCode)] = &[
        (b"not json", None, ErrorCode::BadMessage),
        (b"", None, ErrorCode::BadMessage),
        (b"{\"type\":\"request\",\"id\":5,\"op\":\"rm_rf\"}", Some(5), ErrorCode::UnknownOperation),
        (b"{\"type\":\"request\",\"id\":6,\"op\":\"exec\",\"args\":{\"argv\":7}}", Some(6), ErrorCode::InvalidArgument),
        (b"{\"type\":\"request\",\"id\":7,\"op\":\"exec\",\"args\":{\"argv\":[\"true\"],\"bogus\":1}}", Some(7), ErrorCode::InvalidArgument),
        (b"{\"type\":\"request\",\"id\":8}", Some(8), ErrorCode::BadMessage),
        (b"{\"type\":\"launch_missiles\",\"id\":9}", Some(9), ErrorCode::BadMessage),
        (b"{\"type\":\"request\",\"id\":\"ten\",\"op\":\"ping\"}", None, ErrorCode::BadMessage),
        (b"{\"type\":\"request\",\"id\":11,\"op\":\"ping\",\"args\":\"x\"}", Some(11), ErrorCode::InvalidArgument),
        (b"{\"type\":\"request\",\"id\":12,\"op\":\"get_file\",\"args\":{\"path\":\"\xff\xfe\"}}", None, ErrorCode::BadMessage),
        (b"{\"type\":\"request\",\"id\":13,\"op\":\"get_file\",\"args\":{\"path\":\"\\ud800\"}}", None, ErrorCode::BadMessage),
        (b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", None, ErrorCode::BadMessage),
    ];
    for (json, id, code) in cases {
        p.send_raw(&control(json));
        expect_error(&mut p, *id, *code);
        p.call(Ping {}).unwrap();
    }
    // multi-byte text is fine
    let r = p
        .call(Exec {
            argv: vec!["printf".into(), "%s".into(), "héllo 😀 \u{10FFFF}".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.stdout_bytes, "héllo 😀 \u{10FFFF}".len() as u64);
}

#[test]
fn bad_frames_are_skipped_where_possible() {
    let mut p = crate::support::local(&[]);
    // unknown frame type: skipped
    p.send_raw(b"\0\0\0\x03\x7fabc");
    expect_error(&mut p, None, ErrorCode::BadFrame);
    // data frame shorter than its header, unknown stream
    p.send_raw(b"\0\0\0\x02\x02ab");
    expect_error(&mut p, None, ErrorCode::BadFrame);
    p.send_raw(b"\0\0\0\x09\x02\0\0\0\0\0\0\0\x01\x09");
    expect_error(&mut p, None, ErrorCode::BadFrame);
    // data for a request that does not exist: dropped silently
    p.data(424242, Stream::File, b"stray");
    p.data(424242, Stream::Stdin, b"");
    p.call(Ping {}).unwrap();
    // a frame split into single bytes
    let ping = daas_guest_proxy_wire::ClientMessage::Request(daas_guest_proxy_wire::Request {
        id: 77,
        op: Ping {}.into(),
    })
    .encode()
    .unwrap();
    for b in &ping {
        p.send_raw(std::slice::from_ref(b));
    }
    assert!(p.wait(77).outcome.unwrap().is_ok());
}

#[test]
fn a_huge_length_prefix_ends_the_session_cleanly() {
    let mut p = crate::support::local(&[]);
    p.send_raw(b"\xff\xff\xff\xf0\x01");
    let msg = expect_error(&mut p, None, ErrorCode::BadFrame);
    assert!(msg.contains("exceeds the limit"), "{msg}");
    assert!(matches!(p.next(Duration::from_secs(10)), Msg::Eof));
    let status = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(2));
    // just past the limit is refused too
    let mut p = crate::support::local(&[]);
    p.send_raw(&((1u32 << 20) + 1).to_be_bytes());
    p.send_raw(b"\x02");
    expect_error(&mut p, None, ErrorCode::BadFrame);
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(2)
    );
}

#[test]
fn a_truncated_frame_at_eof_exits_cleanly() {
    let mut p = crate::support::local(&[]);
    p.send_raw(b"\0\0\0\x40\x01{\"type\":");
    let status = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn duplicate_ids_and_too_many_requests() {
    let mut p = crate::support::local(&[]);
    let sleep = |s: &str| Exec {
        argv: vec!["sleep".into(), s.into()],
        ..Default::default()
    };
    p.send_with_id(1, sleep("30"));
    p.send_with_id(1, Ping {});
    expect_error(&mut p, Some(1), ErrorCode::DuplicateId);
    let max = p.hello.limits.max_in_flight;
    let mut ids = vec![1];
    for _ in 1..max {
        ids.push(p.send(sleep("30")));
    }
    let extra = p.send(Ping {});
    assert_eq!(
        p.wait(extra).outcome.unwrap().unwrap_err().code,
        ErrorCode::TooManyRequests
    );
    for id in &ids {
        p.cancel(*id);
    }
    for id in ids {
        assert_eq!(
            p.wait(id).outcome.unwrap().unwrap_err().code,
            ErrorCode::Cancelled
        );
    }
    // the id is free again once answered
    p.send_with_id(1, Ping {});
    assert!(p.wait(1).outcome.unwrap().is_ok());
}

#[test]
fn stdin_overflow_is_an_error_not_unbounded_memory() {
    let mut p = crate::support::local(&[]);
    let id = p.send(Exec {
        argv: vec!["sleep".into(), "30".into()],
        stdin: true,
        ..Default::default()
    });
    let chunk = vec![0u8; 1 << 20];
    let max = p.hello.limits.max_stdin_buffer;
    for _ in 0..=(max >> 20) {
        p.data(id, Stream::Stdin, &chunk);
    }
    assert_eq!(
        p.wait(id).outcome.unwrap().unwrap_err().code,
        ErrorCode::TooLarge
    );
    p.call(Ping {}).unwrap();
}
