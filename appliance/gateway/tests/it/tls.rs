//! TLS to guacd (guacd `-C`/`-k`): a rustls server in front of the stand-in,
//! with a certificate made for the test.

use std::sync::Arc;
use std::time::Duration;

use daas_gateway::{guacd_tls_config, Status, TunnelConfig, Upstream};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{ins, test_config, vnc_args};
use crate::guacd::{Behavior, StandIn, Step};
use crate::ws::{self, read_all, read_until, Route, TunnelServer};

const SECOND: Duration = Duration::from_secs(1);

/// Accepts TLS on 127.0.0.1 and relays the plaintext to `backend`. Returns
/// its port and the CA (self-signed) certificate in PEM.
async fn tls_front(backend: std::net::SocketAddr) -> (u16, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, pem)
}

fn route(addr: String, cfg: TunnelConfig) -> Route {
    Arc::new(move |_q: &[(String, String)]| {
        (
            Upstream::Guacd {
                addr: addr.clone(),
                tls: true,
                protocol: "rdp".into(),
                args: vnc_args(),
            },
            cfg.clone(),
        )
    })
}

#[tokio::test]
async fn relays_over_tls_verified_against_the_configured_ca() {
    let drawing = ins("sync", &["1700000000000"]);
    let guacd = StandIn::start(Behavior::Script(vec![Step::Write(
        drawing.clone().into_bytes(),
    )]))
    .await;
    let (port, ca) = tls_front(guacd.addr).await;
    let cfg = TunnelConfig {
        guacd_tls: Some(guacd_tls_config(ca.as_bytes()).unwrap()),
        ..test_config()
    };
    let server = TunnelServer::start("127.0.0.1:0", route(format!("localhost:{port}"), cfg)).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_until(&mut client, "4.sync,", 10 * SECOND).await;
    assert_eq!(seen.texts[1..].concat(), drawing);
    let s = guacd
        .wait_for(5 * SECOND, |s| !s.connect.is_empty())
        .await
        .unwrap();
    assert!(s.faults.is_empty(), "{:?}", s.faults);
    assert_eq!(s.protocol, "rdp");
}

#[tokio::test]
async fn an_untrusted_certificate_is_upstream_unavailable() {
    let guacd = StandIn::start(Behavior::Script(vec![])).await;
    let (port, _ca) = tls_front(guacd.addr).await;
    // Trust another CA than the one that signed guacd's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cfg = TunnelConfig {
        guacd_tls: Some(guacd_tls_config(other.cert.pem().as_bytes()).unwrap()),
        ..test_config()
    };
    let mut server =
        TunnelServer::start("127.0.0.1:0", route(format!("localhost:{port}"), cfg)).await;
    let mut client = ws::connect(&server.url("")).await;
    let seen = read_all(&mut client, 10 * SECOND).await;
    assert_eq!(seen.close, Some((1011, "520".to_owned())));
    assert_eq!(
        server.next_end().await.status(),
        Status::UpstreamUnavailable
    );
    assert!(
        guacd.sessions().iter().all(|s| s.connect.is_empty()),
        "no handshake reached guacd"
    );
}

#[test]
fn bad_ca_pem_is_refused() {
    assert!(guacd_tls_config(b"not a certificate").is_err());
    assert!(guacd_tls_config(b"").is_err());
}
