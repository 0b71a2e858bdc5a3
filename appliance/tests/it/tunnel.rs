//! The tunnel through the appliance: tickets, the built-in engine against a
//! real Xvnc session, and the guacd engine against a guacd stand-in that
//! performs guacd 1.6's handshake and checks it got the session's display.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

use crate::harness::*;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn demo_app(c: &Client) -> String {
    for _ in 0..300 {
        let (_, a) = c.get("/api/v1/apps").await;
        if let Some(x) = a["items"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "XTerm"))
        {
            return x["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no demo app");
}

pub async fn open_ws(d: &Daemon, ticket: &str, extra: &str) -> (Ws, Option<String>) {
    let url = format!(
        "{}/api/v1/tunnel?ticket={ticket}{extra}",
        d.url.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "guacamole".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, proto)
}

/// Reads text messages until `pred` holds for the accumulated text.
pub async fn read_until(
    ws: &mut Ws,
    pred: impl Fn(&str) -> bool,
) -> (String, Option<(u16, String)>) {
    let mut all = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await;
        match m {
            Ok(Some(Ok(Message::Text(t)))) => {
                all.push_str(&t);
                if pred(&all) {
                    return (all, None);
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return (all, c.map(|c| (u16::from(c.code), c.reason.to_string())));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => return (all, None),
            Err(_) => panic!("timed out; got {all:?}"),
        }
    }
}

pub async fn ticket(c: &Client, iid: &str) -> String {
    let (s, t) = c
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(s, 200, "{t}");
    t["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn builtin_engine_shows_the_desktop_and_tickets_work_once() {
    let d = Daemon::start("", true);
    let c = d.admin().await;
    let app = demo_app(&c).await;
    let (_, o) = c.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    c.job_ok(&o).await;
    let iid = o["instance"]["id"].as_str().unwrap().to_owned();
    let t = ticket(&c, &iid).await;
    let (mut ws, proto) = open_ws(
        &d,
        &t,
        "&GUAC_WIDTH=800&GUAC_HEIGHT=600&GUAC_DPI=96&GUAC_IMAGE=image/png",
    )
    .await;
    assert_eq!(proto.as_deref(), Some("guacamole"), "subprotocol echoed");
    let (text, closed) = read_until(&mut ws, |s| {
        (s.contains("3.img,") || s.contains("4.rect,"))
            && s.rfind("4.sync,") > s.find("3.img,").or(s.find("4.rect,"))
    })
    .await;
    assert!(closed.is_none(), "{text}");
    assert!(
        text.starts_with("0.,36."),
        "the tunnel id comes first: {}",
        &text[..40.min(text.len())]
    );
    assert!(
        text.contains("4.size,1.0,"),
        "a size for the default layer: {}",
        &text[..200.min(text.len())]
    );
    assert!(
        text.contains("3.img,") || text.contains("4.rect,"),
        "drawing arrives"
    );
    // An internal ping is answered by the tunnel itself.
    ws.send(Message::Text("0.,4.ping,13.1700000000000;".into()))
        .await
        .unwrap();
    let (text, _) = read_until(&mut ws, |s| s.contains("0.,4.ping,13.1700000000000;")).await;
    assert!(text.contains("0.,4.ping,13.1700000000000;"));
    // The ticket was used: a second tunnel with it is refused.
    let (mut again, _) = open_ws(&d, &t, "").await;
    let (text, close) = read_until(&mut again, |s| s.contains("5.error,")).await;
    assert!(
        text.contains("5.error,") && text.contains(",3.771;"),
        "CLIENT_FORBIDDEN: {text}"
    );
    let _ = close;
    // A forged ticket too.
    let (mut forged, _) = open_ws(&d, "tk_forged", "").await;
    let (text, _) = read_until(&mut forged, |s| s.contains("5.error,")).await;
    assert!(text.contains(",3.771;"), "{text}");
    // Stopping the instance closes its tunnel with SESSION_CLOSED.
    let (s, stop) = c.post_empty(&format!("/api/v1/instances/{iid}/stop")).await;
    assert_eq!(s, 202);
    let (text, close) = read_until(&mut ws, |s| s.contains("5.error,")).await;
    if !text.contains("5.error,") {
        // The close may come without an error instruction if the server hung up first.
        assert!(close.is_some(), "{text}");
    } else {
        assert!(
            text.contains(",3.523;") || text.contains(",3.517;") || text.contains(",3.512;"),
            "{text}"
        );
    }
    c.job_ok(&stop).await;
    let (_, m) = c.get("/metrics").await;
    assert!(
        m.as_str().unwrap_or_default().contains("daas_tunnels_open"),
        "{m}"
    );
}

#[tokio::test]
async fn sigterm_closes_open_tunnels_with_session_closed() {
    let d = Daemon::start("", true);
    let c = d.admin().await;
    let app = demo_app(&c).await;
    let (_, o) = c.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    c.job_ok(&o).await;
    let iid = o["instance"]["id"].as_str().unwrap().to_owned();
    let t = ticket(&c, &iid).await;
    let (mut ws, _) = open_ws(&d, &t, "").await;
    let _ = read_until(&mut ws, |s| s.contains("4.sync,")).await;
    let dir = d.dir.path().to_owned();
    let stopper = std::thread::spawn(move || d.terminate());
    let (text, close) = read_until(&mut ws, |s| s.contains("5.error,")).await;
    assert!(text.contains(",3.523;"), "SESSION_CLOSED: {text}");
    let _ = close;
    assert!(stopper.join().unwrap(), "clean exit");
    // The desktop itself outlives the appliance; clean it up.
    for pid in session_pids(&dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A guacd 1.6 stand-in: handshake as guacd does, then proves the display
/// it was given is a VNC server (password included) by connecting to it.
async fn guacd_stand_in(listener: tokio::net::TcpListener) -> Value {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut dec = daas_guacamole::Decoder::new();
    async fn next(
        s: &mut tokio::net::TcpStream,
        d: &mut daas_guacamole::Decoder,
    ) -> daas_guacamole::Instruction {
        loop {
            if let Some(i) = d.next_instruction().unwrap() {
                return i;
            }
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            d.push(&b[..n]).unwrap();
        }
    }
    let select = next(&mut s, &mut dec).await;
    assert_eq!(select.opcode, "select");
    let names = ["VERSION_1_5_0", "hostname", "port", "password", "read-only"];
    let mut out = Vec::new();
    daas_guacamole::write_instruction(&mut out, "args", names);
    s.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let connect = loop {
        let i = next(&mut s, &mut dec).await;
        if i.opcode == "connect" {
            break i;
        }
        seen.push(i.opcode.clone());
    };
    let by_name: std::collections::HashMap<&str, &str> = names
        .iter()
        .copied()
        .zip(connect.args.iter().map(String::as_str))
        .collect();
    let host = by_name["hostname"].to_owned();
    let port: u16 = by_name["port"].parse().unwrap();
    // The display is a real VNC server that asks for a password.
    let mut vnc = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    let mut banner = [0u8; 12];
    vnc.read_exact(&mut banner).await.unwrap();
    vnc.write_all(b"RFB 003.008\n").await.unwrap();
    let mut n = [0u8; 1];
    vnc.read_exact(&mut n).await.unwrap();
    let mut types = vec![0u8; n[0] as usize];
    vnc.read_exact(&mut types).await.unwrap();
    let mut out = Vec::new();
    daas_guacamole::write_instruction(&mut out, "ready", ["$stand-in"]);
    daas_guacamole::write_instruction(&mut out, "size", ["0", "640", "480"]);
    daas_guacamole::write_instruction(&mut out, "sync", ["1"]);
    s.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    serde_json::json!({
        "seen": seen,
        "version": connect.args[0],
        "host": host,
        "password": by_name["password"],
        "banner": String::from_utf8_lossy(&banner),
        "security_types": types,
    })
}

#[tokio::test]
async fn guacd_engine_gets_a_loopback_display_with_a_password() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stand_in = tokio::spawn(guacd_stand_in(listener));
    let d = Daemon::start(
        &format!("[gateway]\nengine = \"guacd\"\nguacd = \"{addr}\"\n"),
        true,
    );
    let c = d.admin().await;
    let app = demo_app(&c).await;
    let (_, o) = c.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    c.job_ok(&o).await;
    let iid = o["instance"]["id"].as_str().unwrap().to_owned();
    let t = ticket(&c, &iid).await;
    let (mut ws, _) = open_ws(
        &d,
        &t,
        "&GUAC_WIDTH=1024&GUAC_HEIGHT=768&GUAC_TIMEZONE=Europe/Berlin",
    )
    .await;
    let (text, _) = read_until(&mut ws, |s| s.contains("4.sync,")).await;
    assert!(text.starts_with("0.,36."), "{text}");
    assert!(text.contains("4.size,1.0,3.640,3.480;"), "{text}");
    let got = tokio::time::timeout(Duration::from_secs(10), stand_in)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got["version"], "VERSION_1_5_0");
    assert_eq!(
        got["seen"],
        serde_json::json!(["size", "audio", "video", "image", "timezone", "name"]),
        "{got}"
    );
    assert_eq!(got["host"], "127.0.0.1");
    assert_eq!(got["password"].as_str().unwrap().len(), 8, "{got}");
    assert!(
        got["banner"].as_str().unwrap().starts_with("RFB 003.008"),
        "{got}"
    );
    assert_eq!(
        got["security_types"],
        serde_json::json!([2]),
        "VNC authentication only: {got}"
    );
    let (_, stop) = c.post_empty(&format!("/api/v1/instances/{iid}/stop")).await;
    c.job_ok(&stop).await;
}
