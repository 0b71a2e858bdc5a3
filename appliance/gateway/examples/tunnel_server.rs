//! A small server that runs `run_tunnel` for each WebSocket on a port, for
//! testing real clients (guacamole-common-js in Node, Chromium) against the
//! tunnel without the whole appliance.
//!
//! Run: `cargo run -p daas-gateway --example tunnel_server [-- --listen 127.0.0.1:0]`.
//! It prints `LISTENING <addr>` on stdout once ready and runs until killed or
//! until its standard input closes.
//!
//! The query's `scenario` picks what is behind the tunnel (as the connect
//! ticket would in the appliance); everything else in the query is the
//! browser's display parameters:
//!
//! | scenario | upstream |
//! | --- | --- |
//! | `draw` (default) | the guacd stand-in: `size`, drawing, `sync`; then answers each `key` with a `rect` + `cfill` + `sync` |
//! | `split` | the stand-in sends multi-byte text split in every way across writes |
//! | `refuse` | the stand-in refuses `connect` with `error` 519 (UPSTREAM_NOT_FOUND) |
//! | `down` | guacd is not running: 520 (UPSTREAM_UNAVAILABLE) |
//! | `idle` | the stand-in; the tunnel's idle timeout is 1 s |
//! | `xvnc` | the built-in engine on a real Xvnc (started on first use; needs `Xvnc`) |

#[path = "../tests/support/guacd.rs"]
mod guacd;
#[path = "../tests/support/ws.rs"]
mod ws;
#[path = "../tests/support/xvnc.rs"]
mod xvnc;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use daas_gateway::{Target, TunnelConfig, Upstream};
use guacd::{Behavior, StandIn, Step};

/// What the `draw` scenario shows first.
fn drawing() -> String {
    let mut s = String::new();
    for (op, args) in [
        ("size", &["0", "640", "480"][..]),
        ("rect", &["0", "0", "0", "640", "480"]),
        ("cfill", &["14", "0", "32", "64", "128", "255"]),
        ("rect", &["0", "10", "10", "100", "50"]),
        ("cfill", &["14", "0", "255", "255", "255", "255"]),
        ("name", &["Ünïcødé desktop ✓"]),
        ("sync", &["1700000000000"]),
    ] {
        s += &daas_guacamole::Instruction::new(op, args.iter().copied()).encode();
    }
    s
}

/// The `split` scenario's stream, sent in pieces of 1, 2, 3, ... bytes.
fn split_steps() -> Vec<Step> {
    let mut s = String::new();
    for (op, args) in [
        ("size", &["0", "320", "200"][..]),
        ("name", &["日本語 — Grüße ☀"]),
        ("clipboard", &["7", "text/plain"]),
        ("blob", &["7", "w6TigqzinJMsOy4w"]), // "ä€✓,;.0" in UTF-8
        ("end", &["7"]),
        ("sync", &["1700000000001"]),
    ] {
        s += &daas_guacamole::Instruction::new(op, args.iter().copied()).encode();
    }
    let bytes = s.into_bytes();
    let mut pieces = Vec::new();
    let (mut total, mut n) = (0, 1);
    while total < bytes.len() {
        pieces.push(n);
        total += n;
        n = n % 5 + 1;
    }
    vec![Step::Split {
        bytes,
        pieces,
        pause: Duration::from_millis(2),
    }]
}

fn behavior_for(values: &HashMap<String, String>) -> Behavior {
    let echo = daas_guacamole::Instruction::new("rect", ["0", "20", "20", "5", "5"]).encode()
        + &daas_guacamole::Instruction::new("cfill", ["14", "0", "255", "0", "0", "255"]).encode()
        + &daas_guacamole::Instruction::new("sync", ["1700000000002"]).encode();
    match values.get("hostname").map(String::as_str) {
        Some("refuse") => Behavior::RefuseConnect(
            daas_guacamole::Instruction::new(
                "error",
                ["Connection refused by the VNC server.", "519"],
            )
            .encode()
            .into_bytes(),
        ),
        Some("split") => Behavior::Script(keep_alive(split_steps())),
        Some("echo") => Behavior::Echo {
            reply: echo.into_bytes(),
        },
        _ => Behavior::Script(keep_alive(vec![Step::Write(drawing().into_bytes())])),
    }
}

/// Then `nop` every 5 s, as guacd does, so that the tunnel does not time
/// guacd out while a client looks at the drawing.
fn keep_alive(mut steps: Vec<Step>) -> Vec<Step> {
    steps.push(Step::KeepAlive(Duration::from_secs(5)));
    steps
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--help" | "-h" => {
                println!("tunnel_server [--listen 127.0.0.1:0]: see the example's docs");
                return;
            }
            other => panic!("unknown argument {other:?}"),
        }
    }
    // The `refuse` scenario is decided at `connect`; `down` never reaches it.
    let standin = StandIn::start_with(guacd::VNC_ARGS, Arc::new(behavior_for)).await;
    let guacd_addr = standin.addr_string();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let xvnc: Arc<OnceLock<Mutex<Option<xvnc::Xvnc>>>> = Arc::new(OnceLock::new());

    let route: ws::Route = Arc::new(move |query: &[(String, String)]| {
        let scenario = query
            .iter()
            .find(|(k, _)| k == "scenario")
            .map_or("draw", |(_, v)| v.as_str())
            .to_owned();
        let mut cfg = TunnelConfig::default();
        let guacd = |addr: String, hostname: &str| Upstream::Guacd {
            addr,
            tls: false,
            protocol: "vnc".into(),
            args: HashMap::from([
                ("hostname".to_owned(), hostname.to_owned()),
                ("port".to_owned(), "5900".to_owned()),
            ]),
        };
        let upstream = match scenario.as_str() {
            "down" => guacd(format!("127.0.0.1:{closed_port}"), "draw"),
            "idle" => {
                cfg.idle_timeout = Duration::from_secs(1);
                guacd(guacd_addr.clone(), "draw")
            }
            "xvnc" => {
                let x = xvnc.get_or_init(|| {
                    let x = xvnc::have("Xvnc")
                        .then(|| {
                            xvnc::Xvnc::start("1024x768", &["-SecurityTypes", "None"], false).ok()
                        })
                        .flatten();
                    if let Some(x) = &x {
                        let _ = x.run("xsetroot", &["-solid", "#336699"]);
                    }
                    Mutex::new(x)
                });
                let path = x.lock().unwrap().as_ref().map(|x| x.socket.clone());
                Upstream::Builtin {
                    target: Target::Unix {
                        path: path.unwrap_or_else(|| "/nonexistent/xvnc.sock".into()),
                    },
                    password: None,
                }
            }
            other => guacd(guacd_addr.clone(), other),
        };
        (upstream, cfg)
    });
    let server = ws::TunnelServer::start(&listen, route).await;
    println!("LISTENING {}", server.addr);
    let _ = std::io::stdout().flush();
    // Until stdin closes (the parent went away) or a signal ends us.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
    drop(server);
    drop(standin);
}
