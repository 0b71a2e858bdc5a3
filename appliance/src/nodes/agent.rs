//! The appliance's client to a node agent: only `daas-agent-api` types on
//! the wire, over the agent's unix socket (the local node) or mutual TLS
//! (a joined node: the appliance's client certificate of the node CA, the
//! agent's certificate verified against the node CA with the name
//! `<node-id>.nodes.daas.internal`, whatever address is dialled).
//!
//! [`AgentLeases`] is the lease capability backends call
//! ([`LeaseAllocator`]): it asks the agent for a static DHCP lease and keeps
//! the appliance's desired state in the store, and [`AgentLeases::converge`]
//! makes the agent's leases equal to the store's (at appliance start).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use daas_agent_api::identity::node_dns_name;
use daas_agent_api::{
    paths, AgentStatus, AllocateRequest, ApiError, ConvergeRequest, ConvergeResponse, ErrorBody,
    ErrorCode, Hostname, Lease, LeaseList, MacAddr, NodeFacts, NodeId, MAX_BODY_BYTES,
};
use hyper::http::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{Store, StoreError};

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket or address could not be reached.
    #[error("cannot reach the agent at {addr}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The mutual-TLS setup or handshake failed.
    #[error("TLS with the agent at {addr} failed: {reason}")]
    Tls {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer from the agent at {addr} within {timeout:?}")]
    Timeout {
        /// Where.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with the agent failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The agent answered with an error.
    #[error("the agent answered {status}: {error}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its error body.
        error: Box<ApiError>,
    },
    /// The answer does not parse.
    #[error("the agent's answer does not parse")]
    Decode(#[source] serde_json::Error),
}

impl AgentError {
    /// Whether a retry may help (the agent unreachable, or dnsmasq down).
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Status { error, .. } => error.code == ErrorCode::DnsmasqUnavailable,
            AgentError::Decode(_) => false,
            _ => true,
        }
    }
}

#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tls {
        addr: String,
        name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    },
}

/// A client for one agent.
#[derive(Clone)]
pub struct AgentClient {
    endpoint: Endpoint,
    timeout: Duration,
}

impl AgentClient {
    /// The local agent on its unix socket.
    pub fn unix(socket: PathBuf, timeout: Duration) -> AgentClient {
        AgentClient {
            endpoint: Endpoint::Unix(socket),
            timeout,
        }
    }

    /// A joined node's agent over mutual TLS at `addr` (`HOST:PORT`).
    pub fn mtls(
        addr: &str,
        node: &NodeId,
        ca_pem: &str,
        client_cert_pem: &str,
        client_key_pem: &str,
        timeout: Duration,
    ) -> Result<AgentClient, AgentError> {
        let tls = |reason: String| AgentError::Tls {
            addr: addr.to_owned(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| tls(format!("node CA: {e}")))?)
                .map_err(|e| tls(format!("node CA: {e}")))?;
        }
        let certs = rustls_pemfile::certs(&mut client_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(format!("client certificate: {e}")))?;
        let key = rustls_pemfile::private_key(&mut client_key_pem.as_bytes())
            .map_err(|e| tls(format!("client key: {e}")))?
            .ok_or_else(|| tls("client key: none in the PEM".into()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(node_dns_name(node))
            .map_err(|e| tls(e.to_string()))?;
        Ok(AgentClient {
            endpoint: Endpoint::Tls {
                addr: addr.to_owned(),
                name,
                config: Arc::new(config),
            },
            timeout,
        })
    }

    fn addr(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tls { addr, .. } => addr.clone(),
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, AgentError> {
        let addr = self.addr();
        tokio::time::timeout(self.timeout, self.exchange(&addr, method, path, body))
            .await
            .map_err(|_| AgentError::Timeout {
                addr,
                timeout: self.timeout,
            })?
    }

    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, AgentError> {
        let connect = |source| AgentError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let json = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(AgentError::Decode)?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "agent")
            .header(header::ACCEPT, "application/json");
        if json.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Body::from(json.unwrap_or_default()))
            .map_err(|e| AgentError::Http(Box::new(e)))?;
        let (status, bytes) = match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(connect)?;
                send(s, req).await?
            }
            Endpoint::Tls { addr, name, config } => {
                let tcp = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect)?;
                let _ = tcp.set_nodelay(true);
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| AgentError::Tls {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
                send(tls, req).await?
            }
        };
        if !(200..300).contains(&status) {
            let error = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| Box::new(b.error))
                .unwrap_or_else(|_| {
                    Box::new(ApiError::new(
                        ErrorCode::Unknown,
                        String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
                    ))
                });
            return Err(AgentError::Status { status, error });
        }
        serde_json::from_slice(&bytes).map_err(AgentError::Decode)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        self.call::<(), _>(Method::GET, paths::STATUS, None).await
    }

    /// `GET /v1/facts`.
    pub async fn facts(&self) -> Result<NodeFacts, AgentError> {
        self.call::<(), _>(Method::GET, paths::FACTS, None).await
    }

    /// `GET /v1/leases`.
    pub async fn leases(&self) -> Result<Vec<Lease>, AgentError> {
        let l: LeaseList = self.call::<(), _>(Method::GET, paths::LEASES, None).await?;
        Ok(l.items)
    }

    /// `POST /v1/leases`.
    pub async fn allocate(&self, req: &AllocateRequest) -> Result<Lease, AgentError> {
        self.call(Method::POST, paths::LEASES, Some(req)).await
    }

    /// `DELETE /v1/leases/{mac}`.
    pub async fn release(&self, mac: &MacAddr) -> Result<Lease, AgentError> {
        self.call::<(), _>(Method::DELETE, &paths::lease(mac), None)
            .await
    }

    /// `PUT /v1/leases`: the desired set replaces the agent's.
    pub async fn converge(&self, req: &ConvergeRequest) -> Result<ConvergeResponse, AgentError> {
        self.call(Method::PUT, paths::LEASES, Some(req)).await
    }
}

async fn send<S>(stream: S, req: Request<Body>) -> Result<(u16, Vec<u8>), AgentError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| AgentError::Http(Box::new(e)))?;
    let task = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| AgentError::Http(Box::new(e)))?;
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(Body::new(resp.into_body()), MAX_BODY_BYTES)
        .await
        .map_err(|e| AgentError::Http(e.into()))?
        .to_vec();
    task.abort();
    Ok((status, body))
}

/// Why a lease could not be given or released.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The agent refused or could not be reached.
    #[error("the agent")]
    Agent(#[from] AgentError),
    /// The store failed.
    #[error("the store")]
    Store(#[from] StoreError),
}

impl LeaseError {
    /// Whether a retry may help.
    pub fn retryable(&self) -> bool {
        match self {
            LeaseError::Agent(e) => e.retryable(),
            LeaseError::Store(_) => false,
        }
    }
}

/// The lease capability a backend calls for an instance that needs a
/// known address before it boots (VMs and containers on a bridge served
/// by the node's dnsmasq). The local backend needs none.
#[async_trait]
pub trait LeaseAllocator: Send + Sync {
    /// A static lease for `mac`; the same answer when asked again.
    async fn allocate_lease(
        &self,
        mac: &MacAddr,
        hostname: &Hostname,
    ) -> Result<Ipv4Addr, LeaseError>;
    /// Releases the lease of `mac`; fine when there is none.
    async fn release(&self, mac: &MacAddr) -> Result<(), LeaseError>;
}

/// Leases through one node's agent, with the desired state in the store.
#[derive(Clone)]
pub struct AgentLeases {
    client: AgentClient,
    store: Store,
    /// The store's key for the node: `""` for the local agent.
    node: String,
}

impl AgentLeases {
    /// Leases of the agent `client` on `node` (`""`: the local agent).
    pub fn new(client: AgentClient, store: Store, node: &str) -> AgentLeases {
        AgentLeases {
            client,
            store,
            node: node.to_owned(),
        }
    }

    /// The agent's client.
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// Makes the agent's leases the store's (`PUT /v1/leases`). Stored
    /// rows that no longer parse are skipped with a warning.
    pub async fn converge(&self) -> Result<ConvergeResponse, LeaseError> {
        let mut leases = Vec::new();
        for (mac, ip, host) in self.store.leases(&self.node)? {
            match (mac.parse(), ip.parse(), host.parse()) {
                (Ok(mac), Ok(ip), Ok(hostname)) => leases.push(Lease { mac, ip, hostname }),
                _ => tracing::warn!(%mac, %ip, %host, "stored lease does not parse; skipped"),
            }
        }
        Ok(self.client.converge(&ConvergeRequest { leases }).await?)
    }

    /// Converges, retrying every `every` until it works or `stop`.
    pub async fn converge_until_done(
        self,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match self.converge().await {
                Ok(r) => {
                    tracing::info!(
                        added = r.added,
                        removed = r.removed,
                        changed = r.changed,
                        unchanged = r.unchanged,
                        "agent leases converged to the store"
                    );
                    return;
                }
                Err(e) => tracing::warn!(
                    error = %crate::jobs::error_chain(&e),
                    "cannot converge the agent's leases; retrying"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[async_trait]
impl LeaseAllocator for AgentLeases {
    async fn allocate_lease(
        &self,
        mac: &MacAddr,
        hostname: &Hostname,
    ) -> Result<Ipv4Addr, LeaseError> {
        let lease = self
            .client
            .allocate(&AllocateRequest {
                mac: *mac,
                hostname: hostname.clone(),
                ip: None,
            })
            .await?;
        self.store.put_lease(
            &self.node,
            &lease.mac.to_string(),
            &lease.ip.to_string(),
            lease.hostname.as_str(),
        )?;
        Ok(lease.ip)
    }

    async fn release(&self, mac: &MacAddr) -> Result<(), LeaseError> {
        match self.client.release(mac).await {
            Ok(_) => {}
            Err(AgentError::Status { error, .. }) if error.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.store.delete_lease(&mac.to_string())?;
        Ok(())
    }
}
