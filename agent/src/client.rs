//! The agent's HTTPS client to the appliance: one kept-alive connection,
//! reused from heartbeat to heartbeat (a TLS handshake per heartbeat is
//! most of what 1,000 nodes cost the appliance) and made again when the
//! appliance closed it; the appliance's certificate pinned by fingerprint
//! (see [`crate::tls`]), JSON in and out, errors typed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use daas_agent_api::{ApiError, ErrorBody, Fingerprint, NodeSecret, MAX_BODY_BYTES};
use hyper::http::{header, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::{client_config, PinnedServerVerifier, TlsError};

/// Why a request to the appliance failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid appliance URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the appliance's TLS certificate has fingerprint {got}, but the token pins {expected}: \
         refusing to talk to it (wrong URL, a new appliance certificate, or someone in between)"
    )]
    FingerprintMismatch {
        expected: Fingerprint,
        got: Fingerprint,
    },
    #[error("TLS handshake with {addr} failed")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup")]
    TlsConfig(#[from] TlsError),
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("HTTP exchange failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the appliance answered {status}: {}", .error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| .body.clone()))]
    Status {
        status: u16,
        error: Option<Box<ApiError>>,
        body: String,
    },
    #[error("the appliance's answer does not parse")]
    Decode(#[source] serde_json::Error),
}

/// `https://HOST[:PORT]` taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceUrl {
    pub host: String,
    pub port: u16,
}

impl ApplianceUrl {
    /// Parses `https://HOST[:PORT][/]`; no path, query, user info or plain http.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let auth = uri.authority().ok_or(bad("no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give the appliance's base URL, without a path"));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(ApplianceUrl {
            host: host.to_owned(),
            port: auth.port_u16().unwrap_or(443),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The canonical form, `https://HOST[:PORT]`.
    pub fn to_url(&self) -> String {
        format!("https://{}", self.host_header())
    }
}

/// A client for one appliance.
pub struct ApplianceClient {
    url: ApplianceUrl,
    verifier: Arc<PinnedServerVerifier>,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    /// The open connection, if any; one request at a time uses it.
    conn: Arc<tokio::sync::Mutex<Option<Conn>>>,
}

type Conn = hyper::client::conn::http1::SendRequest<Body>;

impl ApplianceClient {
    /// `client_auth`: the node certificate and key PEM, once joined.
    pub fn new(
        url: ApplianceUrl,
        fingerprint: Fingerprint,
        client_auth: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let verifier = PinnedServerVerifier::new(fingerprint);
        let config = client_config(verifier.clone(), client_auth)?;
        Ok(ApplianceClient {
            url,
            verifier,
            config,
            timeout,
            conn: Arc::default(),
        })
    }

    pub fn url(&self) -> &ApplianceUrl {
        &self.url
    }

    /// POSTs `body` as JSON to `path` and reads a JSON answer (2xx), all
    /// within the timeout.
    pub async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        bearer: Option<&NodeSecret>,
    ) -> Result<Resp, ClientError> {
        let addr = self.url.to_url();
        tokio::time::timeout(self.timeout, self.exchange(&addr, path, body, bearer))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.clone(),
                timeout: self.timeout,
            })?
    }

    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        bearer: Option<&NodeSecret>,
    ) -> Result<Resp, ClientError> {
        let mut slot = self.conn.lock().await;
        // A kept connection the appliance has closed in the meantime is
        // seen here, before anything is sent on it: then a new one.
        let kept = match slot.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match kept {
            Some(s) => s,
            None => self.connect(addr).await?,
        };
        let json = serde_json::to_vec(body).map_err(ClientError::Decode)?;
        let mut req = Request::post(path)
            .header(header::HOST, self.url.host_header())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("daas-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(secret) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", secret.expose()));
        }
        let req = req
            .body(Body::from(json))
            .map_err(|e| ClientError::Http(Box::new(e)))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(Box::new(e)))?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_BODY_BYTES)
            .await
            .map_err(|e| ClientError::Http(e.into()))?;
        // Whole answer read: the connection may serve the next request.
        *slot = Some(sender);
        if !status.is_success() {
            let error = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .map(|b| Box::new(b.error));
            return Err(ClientError::Status {
                status: status.as_u16(),
                error,
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// A new connection: TCP, TLS with the pinned certificate, HTTP/1.1.
    async fn connect(&self, addr: &str) -> Result<Conn, ClientError> {
        let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.url.host.clone()).map_err(|_| ClientError::Url {
            url: self.url.to_url(),
            reason: "the host is not a DNS name or IP address",
        })?;
        let _ = self.verifier.take_mismatch();
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| match self.verifier.take_mismatch() {
                Some(got) => ClientError::FingerprintMismatch {
                    expected: self.verifier.expected(),
                    got,
                },
                None => ClientError::Tls {
                    addr: addr.to_owned(),
                    source,
                },
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(Box::new(e)))?;
        // The connection lives in its own task until either side closes it.
        tokio::spawn(conn);
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_from_data() {
        let u = ApplianceUrl::parse("https://appliance.example:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("appliance.example", 8443));
        assert_eq!(u.to_url(), "https://appliance.example:8443");
        let u = ApplianceUrl::parse("https://10.0.0.1/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 443));
        assert_eq!(u.to_url(), "https://10.0.0.1");
        let u = ApplianceUrl::parse("https://[::1]:9443").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_url(), "https://[::1]:9443");
        for bad in [
            "http://10.0.0.1",
            "10.0.0.1",
            "https://",
            "https://u:p@host",
            "https://host/api",
            "https://host?x=1",
            "",
            "https://ho st",
        ] {
            assert!(ApplianceUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
