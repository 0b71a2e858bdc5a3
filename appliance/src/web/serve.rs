//! The listener: TLS by rustls (a configured certificate or a self-signed
//! one made on first start) or plain HTTP, HTTP/1.1 and HTTP/2 with
//! WebSocket upgrades, and a graceful drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::ClientAddr;
use crate::config::Config;

/// The OpenAPI document of the REST API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PEM had no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate and key.
    #[error("the certificate and key do not work together")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate")]
    Rcgen(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The TLS server configuration, and the certificate's SHA-256 fingerprint
/// (nodes pin it when they join).
pub fn tls_config(cfg: &Config) -> Result<(Arc<rustls::ServerConfig>, String), TlsError> {
    let (cert_path, key_path) = cert_paths(cfg)?;
    let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let key_pem = std::fs::read(&key_path).map_err(io(&key_path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(io(&cert_path))?;
    let first = certs.first().ok_or_else(|| {
        TlsError::Pem(format!(
            "{}: no certificate in the file",
            cert_path.display()
        ))
    })?;
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(first.as_ref()))
    };
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(io(&key_path))?
        .ok_or_else(|| {
            TlsError::Pem(format!(
                "{}: no private key in the file",
                key_path.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(sc), fingerprint))
}

/// The certificate and key files: the configured ones, or the self-signed
/// pair in `<state_dir>/tls`, made if missing.
pub fn cert_paths(cfg: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    Ok(match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = cfg.paths.state_dir.join("tls");
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            if !c.exists() || !k.exists() {
                make_self_signed(&dir, &c, &k)?;
            }
            (c, k)
        }
    })
}

/// The SHA-256 fingerprint of the TLS certificate the listener serves (the
/// first of the chain), as the CLI needs it for join tokens: the same as
/// [`tls_config`] gives, made self-signed if missing.
pub fn certificate_fingerprint(cfg: &Config) -> Result<String, TlsError> {
    let (cert_path, _) = cert_paths(cfg)?;
    let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let first = rustls_pemfile::certs(&mut &cert_pem[..])
        .next()
        .ok_or_else(|| {
            TlsError::Pem(format!(
                "{}: no certificate in the file",
                cert_path.display()
            ))
        })?
        .map_err(io(&cert_path))?;
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(first.as_ref())))
}

fn make_self_signed(dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !names.contains(&host) {
        names.push(host);
    }
    let ck = rcgen::generate_simple_self_signed(names)?;
    let tmp_key = key.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp_key)
            .map_err(io(&tmp_key))?;
        f.write_all(ck.key_pair.serialize_pem().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp_key))?;
    }
    std::fs::rename(&tmp_key, key).map_err(io(key))?;
    let tmp_cert = cert.with_extension("tmp");
    std::fs::write(&tmp_cert, ck.cert.pem()).map_err(io(&tmp_cert))?;
    std::fs::rename(&tmp_cert, cert).map_err(io(cert))?;
    info!(cert = %cert.display(), "made a self-signed TLS certificate");
    Ok(())
}

/// Serves `app` on `listener` until `shutdown`, then drains open
/// connections for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = service(app.clone(), addr);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                let conn = watcher.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%addr, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acc) => {
                let acc = acc.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    let conn = watcher.watch(conn.into_owned());
                    if let Err(e) = conn.await {
                        debug!(%addr, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after the grace period; closing them");
    }
}

fn service(
    app: Router,
    addr: SocketAddr,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    let svc = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(addr));
        req
    });
    hyper_util::service::TowerToHyperService::new(svc)
}
