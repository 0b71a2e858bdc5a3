//! Helpers shared by the test modules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use daas_gateway::{TunnelConfig, Upstream};

use crate::guacd::{Behavior, StandIn};
use crate::ws::{Route, TunnelServer};

/// The connection arguments the web layer would take from the ticket.
pub(crate) fn vnc_args() -> HashMap<String, String> {
    HashMap::from([
        ("hostname".to_owned(), "10.1.2.3".to_owned()),
        ("port".to_owned(), "5901".to_owned()),
        ("password".to_owned(), "pä$$,wörd;1".to_owned()),
        ("not-a-guacd-arg".to_owned(), "ignored".to_owned()),
    ])
}

/// A config with short timeouts for tests.
pub(crate) fn test_config() -> TunnelConfig {
    TunnelConfig {
        idle_timeout: Duration::from_secs(10),
        upstream_timeout: Duration::from_secs(5),
        ..TunnelConfig::default()
    }
}

/// A tunnel server relaying every tunnel to `guacd` with protocol `protocol`.
pub(crate) async fn server_to(
    guacd_addr: String,
    protocol: &str,
    cfg: TunnelConfig,
) -> TunnelServer {
    let protocol = protocol.to_owned();
    let route: Route = Arc::new(move |_q: &[(String, String)]| {
        (
            Upstream::Guacd {
                addr: guacd_addr.clone(),
                tls: false,
                protocol: protocol.clone(),
                args: vnc_args(),
            },
            cfg.clone(),
        )
    });
    TunnelServer::start("127.0.0.1:0", route).await
}

/// A stand-in with `behavior` and a tunnel server relaying to it (VNC).
pub(crate) async fn setup(behavior: Behavior) -> (StandIn, TunnelServer) {
    setup_with(behavior, "vnc", test_config()).await
}

pub(crate) async fn setup_with(
    behavior: Behavior,
    protocol: &str,
    cfg: TunnelConfig,
) -> (StandIn, TunnelServer) {
    let guacd = StandIn::start(behavior).await;
    let server = server_to(guacd.addr_string(), protocol, cfg).await;
    (guacd, server)
}

/// Encodes an instruction.
pub(crate) fn ins(opcode: &str, args: &[&str]) -> String {
    daas_guacamole::Instruction::new(opcode, args.iter().copied()).encode()
}

/// Every message must hold whole instructions only.
pub(crate) fn assert_whole(texts: &[String]) {
    for (i, t) in texts.iter().enumerate() {
        let mut d = daas_guacamole::Decoder::new();
        d.push(t.as_bytes()).unwrap();
        while d
            .next_raw()
            .unwrap_or_else(|e| panic!("message {i} invalid: {e}"))
            .is_some()
        {}
        assert_eq!(
            d.buffered_len(),
            0,
            "message {i} ends inside an instruction: {t:?}"
        );
    }
}

/// The uuid instruction's form: `0.,36.<uuid>;`.
pub(crate) fn assert_uuid_first(texts: &[String]) {
    let first = texts.first().expect("a first message");
    assert!(first.starts_with("0.,36."), "first message: {first:?}");
    let id = &first[6..42];
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(&first[42..43], ";");
}
