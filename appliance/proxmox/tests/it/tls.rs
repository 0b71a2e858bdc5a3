//! The node's certificate: pinned by fingerprint, or verified by CA.

use daas_proxmox::sim::SimTls;
use daas_proxmox::*;

use crate::harness::*;

#[tokio::test]
async fn the_right_pin_works_and_a_wrong_one_is_refused() {
    let env = Env::start().await;
    env.client().version().await.unwrap();

    let wrong: Fingerprint = "11".repeat(32).parse().unwrap();
    let c = env.client_with(|c| c.tls = TlsTrust::Fingerprint(wrong));
    let e = c.version().await.unwrap_err();
    match &e {
        PveError::TlsPinMismatch { expected, got } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*got, env.sim.fingerprint());
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert_eq!(e.kind(), ErrorKind::TlsPinMismatch);
    assert!(!e.is_transient());
    // Refused in the handshake: no request reached the server.
    assert_eq!(env.count_requests("GET", "/version"), 1);
    // The pinned client goes on working after its neighbour's failure.
    env.client().nodes().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn ca_verification_checks_chain_and_name() {
    let env = Env::start().await;
    let port = env.sim.addr().port();
    let by_ca = env.client_with(|c| {
        c.url = format!("https://localhost:{port}");
        c.tls = TlsTrust::CaPem(env.sim.ca_pem().to_owned());
    });
    by_ca.version().await.unwrap();

    // Another CA: refused, and not as a pin mismatch.
    let other = SimTls::generate(&[]).unwrap();
    let c = env.client_with(|c| {
        c.url = format!("https://localhost:{port}");
        c.tls = TlsTrust::CaPem(other.ca_pem);
    });
    let e = c.version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect, "{e:?}");

    // A name the certificate does not carry: refused.
    let c = env.client_with(|c| {
        c.url = format!("https://127.0.0.2:{port}");
        c.tls = TlsTrust::CaPem(env.sim.ca_pem().to_owned());
    });
    assert!(c.version().await.is_err());
    env.finish().await;
}

#[tokio::test]
async fn plain_http_and_bad_urls_are_refused() {
    let env = Env::start().await;
    for url in [
        "http://127.0.0.1:8006",
        "not a url",
        "https://user:pw@host:8006",
        "https://host:8006/?x=1",
    ] {
        let mut c = env.config();
        c.url = url.into();
        let e = Client::new(c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{url}: {e}");
    }
    env.client().version().await.unwrap();
    env.finish().await;
}
