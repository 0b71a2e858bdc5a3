//! `daas-agent join URL --token T`: make a key, send a CSR to the appliance
//! over HTTPS pinned by the token's fingerprint, store what comes back.

use std::time::Duration;

use daas_agent_api::identity::node_dns_name;
use daas_agent_api::join::{HEARTBEAT_INTERVAL_SECS, MAX_PEM_BYTES};
use daas_agent_api::{
    paths, Hostname, JoinRequest, JoinResponse, JoinToken, NodeFacts, API_VERSION,
};

use crate::client::{ApplianceClient, ApplianceUrl, ClientError};
use crate::config::{Config, Listen};
use crate::state::{JoinRecord, Joined, StateDir, StateError};
use crate::tls;
use crate::util::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "this node already joined as {node_id} ({path}); remove {dir} (and restart the agent) to join again, or pass --force"
    )]
    AlreadyJoined {
        node_id: String,
        path: String,
        dir: String,
    },
    #[error("no node name: the host name {0:?} is not a valid name; pass --name")]
    NoName(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot make the node key or CSR")]
    Key(#[source] rcgen::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the appliance's answer is not usable: {0}")]
    Response(String),
}

/// What to join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub url: String,
    pub token: JoinToken,
    pub name: Option<Hostname>,
    /// Join again although the node has joined.
    pub force: bool,
    pub timeout: Duration,
}

/// The node's default name: the config's, else the host name's first label.
pub fn node_name(config: &Config) -> Result<Hostname, JoinError> {
    if let Some(n) = &config.node.name {
        return Ok(n.clone());
    }
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let label = host.split('.').next().unwrap_or("").to_owned();
    label.parse().map_err(|_| JoinError::NoName(host))
}

/// Joins; `facts` are the node's facts to send.
pub async fn join(
    config: &Config,
    opts: &JoinOptions,
    facts: NodeFacts,
) -> Result<JoinRecord, JoinError> {
    let state = StateDir::new(&config.node.state_dir);
    state.ensure()?;
    if let Some(r) = state.load_record()? {
        if !opts.force {
            return Err(JoinError::AlreadyJoined {
                node_id: r.node_id.to_string(),
                path: state.record_path().display().to_string(),
                dir: state.node_dir().display().to_string(),
            });
        }
    }
    let url = ApplianceUrl::parse(&opts.url)?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => node_name(config)?,
    };

    // The key is made here and stays here (0600); only the CSR travels.
    let key = rcgen::KeyPair::generate().map_err(JoinError::Key)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(JoinError::Key)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.as_str());
    let csr = params.serialize_request(&key).map_err(JoinError::Key)?;
    let csr_pem = csr.pem().map_err(JoinError::Key)?;
    let key_pem = key.serialize_pem();

    let client = ApplianceClient::new(url.clone(), opts.token.fingerprint(), None, opts.timeout)?;
    let request = JoinRequest {
        api_version: API_VERSION,
        token: opts.token.clone(),
        node_name: name.clone(),
        csr_pem,
        facts,
        api_listen: match config.api.tls_listen {
            Listen::Addr(a) => Some(a),
            Listen::Off => None,
        },
    };
    tracing::info!(appliance = %url.to_url(), token = opts.token.id(), node = %name, "joining");
    let resp: JoinResponse = client
        .post_json(paths::APPLIANCE_JOIN, &request, None)
        .await?;
    check_response(&resp, &key_pem)?;

    let record = JoinRecord {
        node_id: resp.node_id.clone(),
        node_name: name,
        appliance_url: url.to_url(),
        appliance_fingerprint: opts.token.fingerprint(),
        heartbeat_interval_secs: resp.heartbeat_interval_secs,
        joined_at: unix_now(),
    };
    state.save_key(&key_pem)?;
    state.save_join(&Joined {
        record: record.clone(),
        key_pem,
        cert_pem: resp.certificate_pem,
        ca_pem: resp.ca_certificate_pem,
        secret: resp.node_secret,
    })?;
    tracing::info!(node_id = %record.node_id, "joined");
    Ok(record)
}

/// The certificate must be for our key, chain to the CA, and carry the
/// node's name; the interval and secret must be sane.
fn check_response(resp: &JoinResponse, key_pem: &str) -> Result<(), JoinError> {
    let bad = |m: String| JoinError::Response(m);
    if resp.certificate_pem.len() > MAX_PEM_BYTES || resp.ca_certificate_pem.len() > MAX_PEM_BYTES {
        return Err(bad("a certificate is larger than 64 KiB".into()));
    }
    if !HEARTBEAT_INTERVAL_SECS.contains(&resp.heartbeat_interval_secs) {
        return Err(bad(format!(
            "heartbeat interval {} s is not in 1..=3600",
            resp.heartbeat_interval_secs
        )));
    }
    if !resp.node_secret.is_valid() {
        return Err(bad("the node secret is empty or not printable ASCII".into()));
    }
    tls::verify_node_certificate(
        &resp.certificate_pem,
        &resp.ca_certificate_pem,
        &node_dns_name(&resp.node_id),
    )
    .map_err(|e| bad(format!("node certificate: {}", crate::util::chain(&e))))?;
    // rustls refuses a certificate whose public key is not the key's.
    tls::server_config(&resp.certificate_pem, key_pem, &resp.ca_certificate_pem).map_err(|e| {
        bad(format!(
            "node certificate does not fit the node key: {}",
            crate::util::chain(&e)
        ))
    })?;
    Ok(())
}
