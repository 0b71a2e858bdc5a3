//! Joining against a stand-in appliance (a real HTTPS server, doing what
//! the appliance must do), then heartbeats and the mutual-TLS API.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use daas_agent::join::{JoinError, JoinOptions};
use daas_agent_api::identity::{node_dns_name, APPLIANCE_CLIENT_NAME};
use daas_agent_api::{
    paths, ApiError, ErrorBody, ErrorCode, Fingerprint, Heartbeat, HeartbeatResponse, JoinRequest,
    JoinResponse, JoinToken, NodeId, NodeSecret,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::harness::*;

const NODE_SECRET: &str = "node-secret-0123456789";

struct Appliance {
    pki: Pki,
    token: JoinToken,
    heartbeats: mpsc::UnboundedSender<(Option<String>, String, Heartbeat)>,
}

fn refuse(status: StatusCode, code: ErrorCode, msg: &str) -> (StatusCode, Json<ErrorBody>) {
    (status, Json(ErrorBody::from(ApiError::new(code, msg))))
}

async fn join(
    State(a): State<Arc<Appliance>>,
    Json(req): Json<JoinRequest>,
) -> Result<(StatusCode, Json<JoinResponse>), (StatusCode, Json<ErrorBody>)> {
    if req.token.id() != a.token.id() || req.token.secret() != a.token.secret() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken,
            "invalid join token",
        ));
    }
    let node_id: NodeId = "n1".parse().unwrap();
    let cert = a
        .pki
        .sign_csr(&req.csr_pem, &node_dns_name(&node_id))
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, &e))?;
    Ok((
        StatusCode::CREATED,
        Json(JoinResponse {
            node_id,
            certificate_pem: cert,
            ca_certificate_pem: a.pki.ca_pem(),
            heartbeat_interval_secs: 1,
            node_secret: NodeSecret::new(NODE_SECRET).unwrap(),
        }),
    ))
}

async fn heartbeat(
    State(a): State<Arc<Appliance>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Json<HeartbeatResponse> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = a.heartbeats.send((auth, id, hb));
    Json(HeartbeatResponse {
        heartbeat_interval_secs: None,
        running_instances: Some(7),
    })
}

/// Serves the stand-in over TLS on 127.0.0.1:0; its address and the
/// fingerprint of its certificate.
async fn serve(app: Router, node_ca_pem: &str) -> (std::net::SocketAddr, Fingerprint) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let fingerprint = Fingerprint::of_der(cert.der());
    // Client certificates are optional here, but must chain to the node CA if sent.
    let mut roots = rustls::RootCertStore::empty();
    for c in daas_agent::tls::certs_from_pem("ca", node_ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        daas_agent::tls::provider(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(daas_agent::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            daas_agent::tls::key_from_pem("k", &key.serialize_pem()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, fingerprint)
}

#[tokio::test]
async fn join_pins_the_fingerprint_then_heartbeats_and_serves_mutual_tls() {
    let dir = tempdir();
    let pki = Pki::new("DaaS node CA");
    let ca_pem = pki.ca_pem();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let token = JoinToken::generate(|b| b.fill(7), Fingerprint::from_bytes([0; 32]));
    let appliance = Arc::new(Appliance {
        pki,
        token: token.clone(),
        heartbeats: tx,
    });
    let app = Router::new()
        .route(paths::APPLIANCE_JOIN, post(join))
        .route(paths::APPLIANCE_HEARTBEAT, post(heartbeat))
        .with_state(appliance.clone());
    let (addr, fingerprint) = serve(app, &ca_pem).await;
    let url = format!("https://{addr}");

    let mut text = config_text(
        dir.path(),
        "",
        &format!("pid_file = \"{}/none.pid\"", dir.path().display()),
        "",
    );
    text = text.replace("tls_listen = \"off\"", "tls_listen = \"127.0.0.1:0\"");
    let config = parse_config(dir.path(), &text);
    let facts = daas_agent::facts::gather(&daas_agent::facts::FactsInput {
        storage_paths: vec![],
        leases: 0,
        appliance_instances: None,
        dnsmasq_version: None,
    });
    let opts = |token: &JoinToken| JoinOptions {
        url: url.clone(),
        token: token.clone(),
        name: None,
        force: false,
        timeout: Duration::from_secs(10),
    };
    let with =
        |fp: Fingerprint, secret: &str| JoinToken::from_parts(token.id(), secret, fp).unwrap();

    // a token pinning another certificate: refused before anything is sent
    let wrong_fp = with(Fingerprint::of_der(b"another certificate"), token.secret());
    let err = daas_agent::join::join(&config, &opts(&wrong_fp), facts.clone())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&fingerprint.to_string()) && msg.contains(&wrong_fp.fingerprint().to_string()),
        "{msg}"
    );
    assert!(msg.contains("refusing"), "{msg}");
    assert!(!dir.path().join("state/node/node.json").exists());
    assert!(rx.try_recv().is_err());

    // the right certificate, a wrong secret: the appliance's error, cleanly
    let wrong_secret = with(fingerprint, &"x".repeat(32));
    let err = daas_agent::join::join(&config, &opts(&wrong_secret), facts.clone())
        .await
        .unwrap_err();
    match &err {
        JoinError::Client(daas_agent::client::ClientError::Status {
            status: 401,
            error: Some(e),
            ..
        }) => {
            assert_eq!(e.code, ErrorCode::InvalidToken)
        }
        other => panic!("{other:?}"),
    }
    assert!(!dir.path().join("state/node/node.json").exists());

    // the right token
    let good = with(fingerprint, token.secret());
    let record = daas_agent::join::join(&config, &opts(&good), facts.clone())
        .await
        .unwrap();
    assert_eq!(record.node_id.as_str(), "n1");
    assert_eq!(record.node_name.as_str(), "test-node");
    assert_eq!(record.appliance_fingerprint, fingerprint);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("state/node/node.key"), 0o600);
    assert_eq!(mode("state/node/node.secret"), 0o600);
    assert_eq!(mode("state/node"), 0o700);
    // joined once: a second join is refused
    let err = daas_agent::join::join(&config, &opts(&good), facts.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::AlreadyJoined { .. }), "{err}");

    // serve: heartbeats arrive with the node secret
    let agent = InProcess::start(config).await;
    let (auth, id, hb) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        auth.as_deref(),
        Some(format!("Bearer {NODE_SECRET}").as_str())
    );
    assert_eq!(id, "n1");
    assert_eq!(hb.node_id.as_str(), "n1");
    assert_eq!(hb.sequence, 1);
    assert!(hb.facts.cpu.count >= 1);
    let (_, _, hb2) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hb2.sequence, 2);
    assert_eq!(hb2.agent_started_at, hb.agent_started_at);
    // the appliance's count shows in the facts
    assert_eq!(hb2.facts.instances.running, 7);

    // and the appliance reaches the agent over mutual TLS
    let tls_addr = agent.tls_addr.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = appliance.pki.issue(APPLIANCE_CLIENT_NAME, &key);
    let (st, v) = tls_get(
        tls_addr,
        &ca_pem,
        "n1.nodes.daas.internal",
        Some((&cert, &key.serialize_pem())),
        "/v1/status",
    )
    .await
    .unwrap();
    assert!(st.is_success(), "{v}");
    assert_eq!(v["join"]["heartbeat"]["consecutive_failures"], 0, "{v}");
    assert!(v["join"]["heartbeat"]["last_ok"].is_u64(), "{v}");
    agent.shutdown().await;
}
