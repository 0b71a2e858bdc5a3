//! The tunnel contract of the design README, end to end: real WebSocket, real
//! TCP to the guacd stand-in.

use std::time::Duration;

use daas_gateway::{Status, TunnelEnd, TunnelError};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use crate::guacd::{Behavior, StandIn, Step};
use crate::ws::{self, read_all, read_until};

const SECOND: Duration = Duration::from_secs(1);

fn script(steps: Vec<Step>) -> Behavior {
    Behavior::Script(steps)
}

#[tokio::test]
async fn uuid_first_then_guacd_handshake_by_name_then_drawing() {
    let drawing = format!(
        "{}{}",
        ins("size", &["0", "1280", "800"]),
        ins("sync", &["1700000000000"])
    );
    let (guacd, mut server) = setup(script(vec![Step::Write(drawing.clone().into_bytes())])).await;
    let url = server.url(
        "ticket=t&GUAC_WIDTH=1920&GUAC_HEIGHT=1080&GUAC_DPI=120&GUAC_TIMEZONE=Europe%2FBerlin\
         &GUAC_AUDIO=audio%2FL16&GUAC_IMAGE=image%2Fpng&GUAC_IMAGE=image%2Fwebp",
    );
    let mut client = ws::connect(&url).await;
    let seen = read_until(&mut client, "4.sync,", 5 * SECOND).await;
    assert_uuid_first(&seen.texts);
    assert_eq!(seen.texts[1..].concat(), drawing);
    assert_whole(&seen.texts);

    let s = guacd
        .wait_for(5 * SECOND, |s| !s.connect.is_empty())
        .await
        .expect("a session");
    assert!(s.faults.is_empty(), "{:?}", s.faults);
    assert_eq!(s.protocol, "vnc");
    assert_eq!(s.version, "VERSION_1_5_0");
    let ops: Vec<_> = s.handshake.iter().map(|i| i.opcode.as_str()).collect();
    assert_eq!(
        ops,
        ["size", "audio", "video", "image", "timezone", "name", "connect"]
    );
    assert_eq!(s.handshake[0].args, ["1920", "1080", "120"]);
    assert_eq!(s.handshake[1].args, ["audio/L16"]);
    assert!(s.handshake[2].args.is_empty());
    assert_eq!(s.handshake[3].args, ["image/png", "image/webp"]);
    assert_eq!(s.handshake[4].args, ["Europe/Berlin"]);
    assert_eq!(s.handshake[5].args, ["daas"]);
    // By name: values where guacd listed the names, empty for the others.
    assert_eq!(s.connect["hostname"], "10.1.2.3");
    assert_eq!(s.connect["port"], "5901");
    assert_eq!(s.connect["password"], "pä$$,wörd;1");
    assert_eq!(s.connect["read-only"], "");
    assert_eq!(s.connect["username"], "");
    assert!(!s.connect.contains_key("not-a-guacd-arg"));

    client.close(None).await.unwrap();
    assert!(matches!(server.next_end().await, TunnelEnd::ClientClosed));
    assert_eq!(
        server
            .metrics
            .open_tunnels
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn pings_are_answered_and_internal_instructions_never_forwarded() {
    let (guacd, server) = setup(script(vec![])).await;
    let mut client = ws::connect(&server.url("")).await;
    read_until(&mut client, ";", 5 * SECOND).await;
    guacd
        .wait_for(5 * SECOND, |s| !s.connect.is_empty())
        .await
        .unwrap();

    client
        .send(Message::text("0.,4.ping,13.1700000000123;"))
        .await
        .unwrap();
    let seen = read_until(&mut client, "ping", 5 * SECOND).await;
    assert_eq!(seen.all(), "0.,4.ping,13.1700000000123;");
    // Internal instructions of any kind are dropped; the rest goes through.
    client
        .send(Message::text(
            "0.,3.foo,3.bar;0.,4.ping,1.5;3.key,5.65307,1.1;0.,4.ping,1.6;",
        ))
        .await
        .unwrap();
    let seen = read_until(&mut client, "1.6;", 5 * SECOND).await;
    assert_eq!(seen.all(), "0.,4.ping,1.5;0.,4.ping,1.6;");
    // Binary messages are accepted as well.
    client
        .send(Message::binary(b"5.mouse,2.10,2.20,1.1;".to_vec()))
        .await
        .unwrap();
    let s = guacd
        .wait_for(5 * SECOND, |s| {
            s.received.ends_with(b"5.mouse,2.10,2.20,1.1;")
        })
        .await
        .expect("forwarded");
    assert_eq!(s.received, b"3.key,5.65307,1.1;5.mouse,2.10,2.20,1.1;");
    assert!(
        server
            .metrics
            .pings_answered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

/// Sends `message` after the handshake; expects `status` as an `error`
/// instruction and close frame, and nothing of it at guacd.
async fn bad_message(message: Message, status: Status) {
    let (guacd, mut server) = setup(script(vec![])).await;
    let mut client = ws::connect(&server.url("")).await;
    read_until(&mut client, ";", 5 * SECOND).await;
    guacd
        .wait_for(5 * SECOND, |s| !s.connect.is_empty())
        .await
        .unwrap();
    client
        .send(Message::text("3.key,5.65307,1.1;"))
        .await
        .unwrap();
    guacd
        .wait_for(5 * SECOND, |s| !s.received.is_empty())
        .await
        .unwrap();
    client.send(message.clone()).await.unwrap();
    let seen = read_all(&mut client, 5 * SECOND).await;
    let end = server.next_end().await;
    assert_eq!(end.status(), status, "{message:?}: {end:?}");
    let error = seen.texts.last().expect("an error instruction");
    let expect_tail = format!(",{}.{};", status.code().to_string().len(), status.code());
    assert!(
        error.starts_with("5.error,") && error.ends_with(&expect_tail),
        "{error:?}"
    );
    assert_eq!(
        seen.close,
        Some((status.websocket_code(), status.close_reason().to_owned())),
        "{message:?}"
    );
    let s = guacd
        .wait_for(5 * SECOND, |s| s.closed)
        .await
        .expect("guacd connection closed");
    assert_eq!(
        s.received, b"3.key,5.65307,1.1;",
        "{message:?}: nothing of the bad message reached guacd"
    );
}

#[tokio::test]
async fn a_partial_instruction_is_a_bad_request_and_injects_nothing() {
    // Whole instructions before the partial one are not forwarded either.
    bad_message(
        Message::text("3.key,5.65307,1.0;4.size,4.1024"),
        Status::ClientBadRequest,
    )
    .await;
    bad_message(Message::text("3.key,5.6530"), Status::ClientBadRequest).await;
}

#[tokio::test]
async fn malformed_input_gets_a_clean_error() {
    let cases: Vec<(Message, Status)> = vec![
        // A declared length that runs into the next instruction (CVE-2023-30575).
        (
            Message::text("3.key,10.65307,1.1;5.mouse,1.0,1.0,1.0;"),
            Status::ClientBadRequest,
        ),
        // A length shorter than the value.
        (
            Message::text("3.key,4.65307,1.1;"),
            Status::ClientBadRequest,
        ),
        (Message::text("x.key;"), Status::ClientBadRequest),
        (Message::text(";"), Status::ClientBadRequest),
        // Invalid UTF-8, and an encoded lone surrogate (U+D800), in binary.
        (
            Message::binary(b"4.name,1.\xff;".to_vec()),
            Status::ClientBadRequest,
        ),
        (
            Message::binary(b"4.name,1.\xed\xa0\x80;".to_vec()),
            Status::ClientBadRequest,
        ),
        // Oversized: an element beyond 8192 code points, too many elements, a
        // huge length, a message beyond 64 KiB.
        (
            Message::text(format!("4.blob,8193.{};", "a".repeat(8193))),
            Status::ClientOverrun,
        ),
        (
            Message::text(format!("4.nest{};", ",1.x".repeat(200))),
            Status::ClientBadRequest,
        ),
        (
            Message::text("4.blob,99999999999999999999.x;"),
            Status::ClientOverrun,
        ),
        (
            Message::text(ins("blob", &[&"b".repeat(8000)]).repeat(9)),
            Status::ClientOverrun,
        ),
    ];
    for (message, status) in cases {
        bad_message(message, status).await;
    }
}

#[tokio::test]
async fn multi_byte_text_with_code_point_lengths_passes_both_ways() {
    let clip = ins("blob", &["0", "日本語 😀 ä"]);
    let (guacd, server) = setup(script(vec![Step::Write(clip.clone().into_bytes())])).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_until(&mut client, "😀", 5 * SECOND).await;
    assert_eq!(seen.texts[1..].concat(), clip);
    let typed = ins("clipboard", &["1", "text/plain"])
        + &ins("blob", &["1", "Grüße 👋🏽"])
        + &ins("end", &["1"]);
    client.send(Message::text(typed.clone())).await.unwrap();
    let s = guacd
        .wait_for(5 * SECOND, |s| s.received.ends_with(b"3.end,1.1;"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(s.received).unwrap(), typed);
}

#[tokio::test]
async fn idle_timeout_is_session_timeout() {
    let cfg = daas_gateway::TunnelConfig {
        idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (_guacd, mut server) = setup_with(script(vec![]), "vnc", cfg).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert!(
        seen.all()
            .ends_with("5.error,26.Session idle for too long.,3.522;"),
        "{seen:?}"
    );
    assert_eq!(seen.close, Some((1002, "522".to_owned())));
    assert!(matches!(
        server.next_end().await,
        TunnelEnd::Failed(TunnelError::Idle)
    ));
}

#[tokio::test]
async fn shutdown_is_session_closed() {
    let (guacd, mut server) = setup(script(vec![])).await;
    let mut client = ws::connect(&server.url("")).await;
    guacd
        .wait_for(5 * SECOND, |s| !s.connect.is_empty())
        .await
        .unwrap();
    server.shutdown.cancel();
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert!(
        seen.all().ends_with("5.error,15.Session closed.,3.523;"),
        "{seen:?}"
    );
    assert_eq!(seen.close, Some((1002, "523".to_owned())));
    assert!(matches!(
        server.next_end().await,
        TunnelEnd::Failed(TunnelError::Shutdown)
    ));
    assert!(
        guacd.wait_for(5 * SECOND, |s| s.closed).await.is_some(),
        "guacd's connection is closed"
    );
}

#[tokio::test]
async fn guacd_down_is_upstream_unavailable() {
    // A port nobody listens on: bind, note it, drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = server_to(format!("127.0.0.1:{port}"), "vnc", test_config()).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert_uuid_first(&seen.texts);
    assert!(seen.all().ends_with("3.520;"), "{seen:?}");
    assert_eq!(seen.close, Some((1011, "520".to_owned())));
    assert_eq!(
        server.next_end().await.status(),
        Status::UpstreamUnavailable
    );
}

#[tokio::test]
async fn guacd_silent_is_upstream_timeout() {
    let cfg = daas_gateway::TunnelConfig {
        upstream_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (_guacd, mut server) = setup_with(Behavior::Silent, "vnc", cfg).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert!(seen.all().ends_with("3.514;"), "{seen:?}");
    assert_eq!(seen.close, Some((1011, "514".to_owned())));
    assert!(matches!(
        server.next_end().await,
        TunnelEnd::Failed(TunnelError::UpstreamTimeout { step: "args" })
    ));
}

#[tokio::test]
async fn guacds_own_error_is_forwarded_unchanged() {
    let refusal = ins("error", &["Connection refused by VNC server.", "519"]);
    for behavior in [
        Behavior::RefuseConnect(refusal.clone().into_bytes()),
        Behavior::RefuseSelect(refusal.clone().into_bytes()),
    ] {
        let (_guacd, mut server) = setup(behavior).await;
        let mut client = ws::connect(&server.url("")).await;
        let seen = read_all(&mut client, 5 * SECOND).await;
        assert_eq!(seen.texts[1..].concat(), refusal);
        assert_eq!(seen.close, Some((1011, "519".to_owned())));
        assert_eq!(server.next_end().await.status(), Status::UpstreamNotFound);
    }
    // After `ready`: relayed like any instruction, and the close carries it.
    let (_guacd, mut server) = setup(script(vec![
        Step::Write(refusal.clone().into_bytes()),
        Step::Close,
    ]))
    .await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert_eq!(seen.texts[1..].concat(), refusal);
    assert_eq!(seen.close, Some((1011, "519".to_owned())));
    assert!(matches!(
        server.next_end().await,
        TunnelEnd::UpstreamClosed {
            status: Status::UpstreamNotFound
        }
    ));
}

#[tokio::test]
async fn guacd_ending_cleanly_closes_with_success() {
    let bye = ins("disconnect", &[]);
    let (_guacd, server) = setup(script(vec![
        Step::Write(bye.clone().into_bytes()),
        Step::Close,
    ]))
    .await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert_eq!(seen.texts[1..].concat(), bye);
    assert_eq!(seen.close, Some((1000, "0".to_owned())));
}

#[tokio::test]
async fn malformed_guacd_output_is_upstream_error_and_nothing_of_it_is_forwarded() {
    let good = ins("sync", &["1"]);
    // The length of "hello" is declared 9: it would swallow `;4.sync,1.2`.
    let evil = "4.name,9.hello;4.sync,1.2;";
    let (_guacd, mut server) = setup(script(vec![Step::Write(
        format!("{good}{evil}").into_bytes(),
    )]))
    .await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    let texts = &seen.texts[1..];
    assert_eq!(
        texts.concat(),
        format!("{good}5.error,37.The remote desktop connection failed.,3.515;")
    );
    assert_whole(texts);
    assert_eq!(seen.close, Some((1011, "515".to_owned())));
    assert!(matches!(
        server.next_end().await,
        TunnelEnd::Failed(TunnelError::UpstreamProtocol(_))
    ));
}

#[tokio::test]
async fn size_is_dropped_for_vnc_and_forwarded_for_rdp() {
    for (protocol, forwarded) in [("vnc", false), ("rdp", true)] {
        let (guacd, server) = setup_with(script(vec![]), protocol, test_config()).await;
        let mut client = ws::connect(&server.url("")).await;
        guacd
            .wait_for(5 * SECOND, |s| !s.connect.is_empty())
            .await
            .unwrap();
        client
            .send(Message::text("4.size,4.1280,3.720,2.96;3.key,5.65307,1.1;"))
            .await
            .unwrap();
        let s = guacd
            .wait_for(5 * SECOND, |s| s.received.ends_with(b"1.1;"))
            .await
            .unwrap();
        let expect: &[u8] = if forwarded {
            b"4.size,4.1280,3.720,2.96;3.key,5.65307,1.1;"
        } else {
            b"3.key,5.65307,1.1;"
        };
        assert_eq!(s.received, expect, "{protocol}");
    }
}

#[tokio::test]
async fn invalid_display_parameters_are_refused() {
    use daas_gateway::{DisplayParams, FromQuery};
    let q = ws::parse_query("GUAC_WIDTH=0&GUAC_HEIGHT=768");
    assert!(matches!(
        DisplayParams::from_query(&q),
        Err(TunnelError::InvalidParameter {
            name: "GUAC_WIDTH",
            ..
        })
    ));
    let q = ws::parse_query("GUAC_TIMEZONE=Europe%2FBerlin%0A");
    assert!(DisplayParams::from_query(&q).is_err());
    // A stand-in never sees a connection for such a tunnel.
    let guacd = StandIn::start(script(vec![])).await;
    let server = server_to(guacd.addr_string(), "vnc", test_config()).await;
    let mut client = ws::connect(&server.url("GUAC_DPI=100000")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert_eq!(seen.close, Some((1002, "768".to_owned())));
    assert!(guacd.sessions().is_empty());
}

#[tokio::test]
async fn metrics_count_the_traffic() {
    let drawing = ins("rect", &["0", "0", "0", "10", "10"]) + &ins("sync", &["1700000000000"]);
    let (guacd, mut server) = setup(script(vec![Step::Write(drawing.clone().into_bytes())])).await;
    let mut client = ws::connect(&server.url("")).await;
    read_until(&mut client, "4.sync", 5 * SECOND).await;
    // The browser acknowledges the frame: a round trip is measured.
    client
        .send(Message::text(ins("sync", &["1700000000000"])))
        .await
        .unwrap();
    guacd
        .wait_for(5 * SECOND, |s| !s.received.is_empty())
        .await
        .unwrap();
    client.close(None).await.unwrap();
    server.next_end().await;
    let m: std::collections::HashMap<_, _> = server
        .metrics
        .prometheus()
        .into_iter()
        .map(|(n, _, v)| (n, v))
        .collect();
    assert_eq!(m["daas_gateway_open_tunnels"], 0);
    assert_eq!(m["daas_gateway_tunnels_total"], 1);
    assert_eq!(m["daas_gateway_frames_total"], 1);
    assert_eq!(m["daas_gateway_relayed_instructions_total"], 2);
    assert_eq!(m["daas_gateway_sync_round_trips_total"], 1);
    assert_eq!(
        m["daas_gateway_sent_bytes_total"],
        43 + drawing.len() as u64
    );
    assert_eq!(m["daas_gateway_received_instructions_total"], 1);
    assert!(server
        .metrics
        .prometheus_text()
        .contains("# TYPE daas_gateway_frames_total counter"));
}
