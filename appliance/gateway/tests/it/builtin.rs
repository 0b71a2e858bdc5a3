//! The built-in VNC engine behind the tunnel, against a real TigerVNC Xvnc.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use daas_gateway::{Status, Target, TunnelEnd, Upstream};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{assert_whole, ins, test_config};
use crate::ws::{self, read_all, read_until, Route, TunnelServer};
use crate::xvnc::{have, Xvnc};

const SECOND: Duration = Duration::from_secs(1);

async fn server_for(target: Target, password: Option<String>) -> TunnelServer {
    let route: Route = Arc::new(move |_q: &[(String, String)]| {
        (
            Upstream::Builtin {
                target: target.clone(),
                password: password.clone(),
            },
            test_config(),
        )
    });
    TunnelServer::start("127.0.0.1:0", route).await
}

/// Plays guacamole-common-js: reads whole-instruction messages, answering
/// each `sync` with its timestamp, until `done` holds for what arrived.
async fn browse_until(client: &mut ws::Client, done: impl Fn(&str) -> bool) -> String {
    use futures_util::StreamExt;
    let mut all = String::new();
    let deadline = tokio::time::Instant::now() + 20 * SECOND;
    while !done(&all) {
        let m = tokio::time::timeout_at(deadline, client.next())
            .await
            .expect("drawing within 20 s");
        let Some(Ok(Message::Text(t))) = m else {
            panic!("tunnel ended: {m:?} after {all:?}");
        };
        assert_whole(&[t.as_str().to_owned()]);
        let mut d = daas_guacamole::Decoder::new();
        d.push(t.as_bytes()).unwrap();
        while let Some(i) = d.next_instruction().unwrap() {
            if i.opcode == "sync" {
                client
                    .send(Message::text(ins("sync", &[&i.args[0]])))
                    .await
                    .unwrap();
            }
        }
        all.push_str(t.as_str());
    }
    all
}

fn xvnc_available() -> bool {
    have("Xvnc") && have("xsetroot") && have("vncpasswd")
}

#[tokio::test]
async fn xvnc_desktop_draws_through_the_tunnel_and_takes_input() {
    if !xvnc_available() {
        return;
    }
    let x = Xvnc::start("800x600", &["-SecurityTypes", "None"], false).expect("Xvnc");
    x.run("xsetroot", &["-solid", "#336699"]).unwrap();
    let mut server = server_for(
        Target::Unix {
            path: x.socket.clone(),
        },
        None,
    )
    .await;
    let mut client =
        ws::connect(&server.url("GUAC_WIDTH=800&GUAC_HEIGHT=600&GUAC_IMAGE=image%2Fpng")).await;
    let all = browse_until(&mut client, |all| {
        all.contains("3.img,") || all.contains("5.cfill,")
    })
    .await;
    assert!(all.starts_with("0.,36."));
    assert!(
        all.contains("4.size,1.0,3.800,3.600;"),
        "{}",
        &all[..all.len().min(300)]
    );
    client
        .send(Message::text(ins("mouse", &["10", "10", "0"])))
        .await
        .unwrap();
    client.send(Message::text("0.,4.ping,1.9;")).await.unwrap();
    let seen = read_until(&mut client, "0.,4.ping,1.9;", 5 * SECOND).await;
    assert_whole(&seen.texts);
    // A new colour shows as new drawing.
    x.run("xsetroot", &["-solid", "#993366"]).unwrap();
    browse_until(&mut client, |all| {
        all.contains("3.img,") || all.contains("5.cfill,")
    })
    .await;
    client.close(None).await.unwrap();
    assert!(matches!(server.next_end().await, TunnelEnd::ClientClosed));
    let m = &server.metrics;
    assert!(m.frames.load(Relaxed) >= 1);
    assert!(m.engine_server_bytes.load(Relaxed) > 0);
    assert!(m.engine_encode_micros.load(Relaxed) > 0);
    assert_eq!(m.open_tunnels.load(Relaxed), 0);
}

#[tokio::test]
async fn xvnc_over_tcp_with_vnc_authentication() {
    if !xvnc_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = Xvnc::password_file(dir.path(), "s3cret").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let x = Xvnc::start(
        "640x480",
        &["-SecurityTypes", "VncAuth", "-PasswordFile", &file],
        true,
    )
    .expect("Xvnc");
    let target = Target::Tcp {
        host: "127.0.0.1".into(),
        port: x.port.unwrap(),
    };
    // The right password: drawing.
    let mut server = server_for(target.clone(), Some("s3cret".into())).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_until(&mut client, "4.sync,", 20 * SECOND).await;
    assert!(
        seen.all().contains("4.size,1.0,3.640,3.480;"),
        "{:?}",
        seen.close
    );
    client.close(None).await.unwrap();
    server.next_end().await;
    // A wrong one: a clean error, with the engine's status.
    let mut server = server_for(target, Some("wrong".into())).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 20 * SECOND).await;
    assert!(seen.all().ends_with("3.515;"), "{seen:?}");
    assert_eq!(seen.close, Some((1011, "515".to_owned())));
    assert_eq!(server.next_end().await.status(), Status::UpstreamError);
}

#[tokio::test]
async fn vnc_server_down_is_upstream_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_for(
        Target::Unix {
            path: dir.path().join("nothing.sock"),
        },
        None,
    )
    .await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 5 * SECOND).await;
    assert!(seen.all().ends_with("3.520;"), "{seen:?}");
    assert_eq!(seen.close, Some((1011, "520".to_owned())));
    assert_eq!(
        server.next_end().await.status(),
        Status::UpstreamUnavailable
    );
}
