//! A fake RFB server in a task, speaking raw bytes: exact pixels through
//! the engine, and servers that misbehave (absurd sizes, rectangles
//! outside the framebuffer, hanging up mid-update, silence).

use std::time::Duration;

use anyhow::Result;
use daas_guacamole::Status;
use daas_vnc_engine::{EngineConfig, EngineError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::harness::{params, Browser, T};

/// ServerInit for a 32-bit true-colour `w` × `h` screen.
fn server_init(w: u16, h: u16, name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(w.to_be_bytes());
    v.extend(h.to_be_bytes());
    // bpp 32, depth 24, little-endian, true colour, max 255, shifts 16/8/0.
    v.extend([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    v.extend(u32::try_from(name.len()).unwrap().to_be_bytes());
    v.extend(name.as_bytes());
    v
}

fn rect_header(x: u16, y: u16, w: u16, h: u16, encoding: i32) -> Vec<u8> {
    let mut v = Vec::new();
    for n in [x, y, w, h] {
        v.extend(n.to_be_bytes());
    }
    v.extend(encoding.to_be_bytes());
    v
}

/// Runs the RFB 3.8 handshake (security None) as a server, then sends
/// `init` and `rest`, reading and discarding whatever the client sends.
/// `hang_up` closes the connection after `rest`.
async fn fake_server(mut s: UnixStream, init: Vec<u8>, rest: Vec<u8>, hang_up: bool) {
    let mut buf = [0u8; 12];
    let _ = s.write_all(b"RFB 003.008\n").await;
    if s.read_exact(&mut buf).await.is_err() {
        return;
    }
    let _ = s.write_all(&[1, 1]).await; // one type: None
    let mut one = [0u8; 1];
    let _ = s.read_exact(&mut one).await;
    let _ = s.write_all(&0u32.to_be_bytes()).await; // SecurityResult OK
    let _ = s.read_exact(&mut one).await; // ClientInit
    let _ = s.write_all(&init).await;
    let _ = s.write_all(&rest).await;
    if hang_up {
        return;
    }
    let mut sink = vec![0u8; 4096];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

fn engine_with(init: Vec<u8>, rest: Vec<u8>, hang_up: bool, cfg: EngineConfig) -> Browser {
    let (a, b) = UnixStream::pair().expect("socketpair");
    tokio::spawn(fake_server(b, init, rest, hang_up));
    Browser::start(a, params(640, 480), cfg)
}

/// A Raw rectangle of known pixels arrives in the browser exactly.
#[tokio::test]
async fn raw_pixels_arrive_exactly() -> Result<()> {
    let (w, h) = (40u16, 30u16);
    let mut update = vec![0u8, 0];
    update.extend(1u16.to_be_bytes());
    update.extend(rect_header(0, 0, w, h, 0));
    let mut want = Vec::new();
    for y in 0..u32::from(h) {
        for x in 0..u32::from(w) {
            let c = ((x * 6) << 16) | ((y * 8) << 8) | ((x + y) % 3 * 100);
            want.push(c);
            update.extend(c.to_le_bytes());
        }
    }
    let mut b = engine_with(
        server_init(w, h, "fake"),
        update,
        false,
        EngineConfig::default(),
    );
    b.until(T, "a frame", |b| !b.syncs.is_empty()).await?;
    assert_eq!((b.width, b.height), (40, 30));
    assert_eq!(b.pixels, want);
    assert!(b
        .log
        .iter()
        .any(|i| i.opcode == "name" && i.args == ["fake"]));
    // The client closing its side ends the engine with Ok.
    let (tx, _rx) = tokio::sync::mpsc::channel::<daas_guacamole::Instruction>(1);
    drop(std::mem::replace(&mut b.to_engine, tx));
    assert!(b.until_end(T).await?.is_ok());
    Ok(())
}

async fn expect_error(b: &mut Browser) -> EngineError {
    b.until_end(T)
        .await
        .expect("the engine ends")
        .expect_err("the engine must fail")
}

#[tokio::test]
async fn absurd_framebuffer_size_is_refused() -> Result<()> {
    let mut b = engine_with(
        server_init(60000, 60000, "huge"),
        vec![],
        false,
        EngineConfig::default(),
    );
    let e = expect_error(&mut b).await;
    assert!(matches!(e, EngineError::Protocol(_)), "{e:?}");
    assert_eq!(e.status(), Status::UpstreamError);
    assert!(b.syncs.is_empty());
    Ok(())
}

#[tokio::test]
async fn rectangle_outside_the_framebuffer_is_refused() -> Result<()> {
    for (x, y, w, h) in [
        (600u16, 0u16, 100u16, 10u16),
        (0, 65535, 1, 1),
        (65535, 65535, 65535, 65535),
    ] {
        let mut update = vec![0u8, 0];
        update.extend(1u16.to_be_bytes());
        update.extend(rect_header(x, y, w, h, 0));
        update.extend(vec![0u8; 4000]);
        let mut b = engine_with(
            server_init(640, 480, "x"),
            update,
            false,
            EngineConfig::default(),
        );
        let e = expect_error(&mut b).await;
        assert!(matches!(e, EngineError::Protocol(_)), "{e:?}");
        assert_eq!(e.status(), Status::UpstreamError);
    }
    Ok(())
}

#[tokio::test]
async fn hanging_up_mid_update_is_an_upstream_error() -> Result<()> {
    let mut update = vec![0u8, 0];
    update.extend(2u16.to_be_bytes());
    update.extend(rect_header(0, 0, 100, 100, 0));
    update.extend(vec![7u8; 1000]); // of 40 000 bytes
    let mut b = engine_with(
        server_init(640, 480, "x"),
        update,
        true,
        EngineConfig::default(),
    );
    let e = expect_error(&mut b).await;
    assert!(matches!(e, EngineError::Protocol(_)), "{e:?}");
    assert_eq!(e.status(), Status::UpstreamError);
    Ok(())
}

#[tokio::test]
async fn hanging_up_between_messages_closes_the_session() -> Result<()> {
    let mut b = engine_with(
        server_init(64, 64, "x"),
        vec![],
        true,
        EngineConfig::default(),
    );
    let e = expect_error(&mut b).await;
    assert!(matches!(e, EngineError::ServerClosed), "{e:?}");
    assert_eq!(e.status(), Status::SessionClosed);
    // Whether the browser got the size before the hang-up is a race between
    // the engine's first flush and the server's close; the status is what
    // the tunnel reports either way.
    Ok(())
}

#[tokio::test]
async fn hanging_up_in_the_handshake_is_unavailable() -> Result<()> {
    let (a, mut s) = UnixStream::pair()?;
    tokio::spawn(async move {
        let _ = s.write_all(b"RFB 003.008\n").await;
        let mut buf = [0u8; 12];
        let _ = s.read_exact(&mut buf).await;
    });
    let mut b = Browser::start(a, params(640, 480), EngineConfig::default());
    let e = expect_error(&mut b).await;
    assert!(matches!(e, EngineError::Unavailable(_)), "{e:?}");
    assert_eq!(e.status(), Status::UpstreamUnavailable);

    // Not an RFB server at all.
    let (a, mut s) = UnixStream::pair()?;
    tokio::spawn(async move {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut b = Browser::start(a, params(640, 480), EngineConfig::default());
    let e = expect_error(&mut b).await;
    assert_eq!(e.status(), Status::UpstreamError, "{e:?}");
    Ok(())
}

#[tokio::test]
async fn a_silent_server_times_out() -> Result<()> {
    let (a, s) = UnixStream::pair()?;
    let cfg = EngineConfig {
        connect_timeout: Duration::from_millis(200),
        ..EngineConfig::default()
    };
    let mut b = Browser::start(a, params(640, 480), cfg);
    let e = expect_error(&mut b).await;
    drop(s);
    assert!(matches!(e, EngineError::HandshakeTimeout(_)), "{e:?}");
    assert_eq!(e.status(), Status::UpstreamTimeout);
    Ok(())
}

/// Garbage after the handshake: an unknown message type.
#[tokio::test]
async fn garbage_is_an_upstream_error() -> Result<()> {
    let mut b = engine_with(
        server_init(64, 64, "x"),
        vec![0xEE; 64],
        false,
        EngineConfig::default(),
    );
    let e = expect_error(&mut b).await;
    assert!(matches!(e, EngineError::Protocol(_)), "{e:?}");
    Ok(())
}
