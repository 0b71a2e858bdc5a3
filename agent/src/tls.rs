//! TLS for both directions.
//!
//! - The agent's **server** (mutual TLS): the node certificate from the
//!   join; a client must present a certificate that chains to the node CA
//!   **and** is valid for [`APPLIANCE_CLIENT_NAME`], so another node's
//!   certificate (same CA, other name) is refused in the handshake.
//! - The agent's **client** to the appliance: the appliance's certificate is
//!   pinned by its SHA-256 fingerprint (no CA, no name check: the token
//!   names exactly one certificate); the node certificate is presented as
//!   client certificate once the node has joined.

use std::sync::{Arc, Mutex};

use daas_agent_api::identity::APPLIANCE_CLIENT_NAME;
use daas_agent_api::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A certificate or key that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM {kind} found")]
    Missing {
        what: &'static str,
        kind: &'static str,
    },
    #[error("{what}: bad PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}")]
    Verifier {
        what: &'static str,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The crypto provider of every config here (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM text.
pub fn certs_from_pem(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what,
            kind: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM text.
pub fn key_from_pem(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|source| TlsError::Pem { what, source })?
        .ok_or(TlsError::Missing {
            what,
            kind: "private key",
        })
}

/// The server config of the mutual-TLS API.
pub fn server_config(
    node_cert_pem: &str,
    node_key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem("node CA", ca_pem)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "node CA",
            source,
        })?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            what: "node CA",
            source,
        })?;
    let verifier = Arc::new(NamedClientVerifier {
        inner,
        name: ServerName::try_from(APPLIANCE_CLIENT_NAME).expect("valid DNS name"),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem("node certificate", node_cert_pem)?,
            key_from_pem("node key", node_key_pem)?,
        )
        .map_err(|source| TlsError::Rustls {
            what: "node certificate",
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Chains to the CA (webpki) and is valid for one DNS name.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for NamedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.name).map_err(|_| {
            tracing::warn!(
                "refused a client certificate of the node CA that is not the appliance's ({})",
                APPLIANCE_CLIENT_NAME
            );
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts exactly the server certificate whose SHA-256 is `expected`.
/// A mismatch is remembered, so the caller can say which certificate it met.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    seen_mismatch: Mutex<Option<Fingerprint>>,
}

impl PinnedServerVerifier {
    pub fn new(expected: Fingerprint) -> Arc<Self> {
        Arc::new(PinnedServerVerifier {
            expected,
            algorithms: provider().signature_verification_algorithms,
            seen_mismatch: Mutex::new(None),
        })
    }

    /// The pinned fingerprint.
    pub fn expected(&self) -> Fingerprint {
        self.expected
    }

    /// The fingerprint of a refused certificate, if the last handshake met one.
    pub fn take_mismatch(&self) -> Option<Fingerprint> {
        self.seen_mismatch.lock().ok()?.take()
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_der(end_entity);
        if got.matches(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut slot) = self.seen_mismatch.lock() {
                *slot = Some(got);
            }
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client config for the appliance: pinned server, and the node
/// certificate as client certificate if given.
pub fn client_config(
    verifier: Arc<PinnedServerVerifier>,
    client_auth: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS versions",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                certs_from_pem("node certificate", cert_pem)?,
                key_from_pem("node key", key_pem)?,
            )
            .map_err(|source| TlsError::Rustls {
                what: "node certificate",
                source,
            })?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Checks that `cert_pem` chains to `ca_pem` and is valid for `dns_name`
/// (what the agent checks of the certificate the appliance sent at join).
pub fn verify_node_certificate(
    cert_pem: &str,
    ca_pem: &str,
    dns_name: &str,
) -> Result<(), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem("node CA", ca_pem)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "node CA",
            source,
        })?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|source| TlsError::Verifier {
                what: "node CA",
                source,
            })?;
    let certs = certs_from_pem("node certificate", cert_pem)?;
    let name = ServerName::try_from(dns_name.to_owned()).map_err(|_| TlsError::Missing {
        what: "node certificate name",
        kind: "DNS name",
    })?;
    verifier
        .verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
        .map_err(|source| TlsError::Rustls {
            what: "node certificate",
            source,
        })?;
    Ok(())
}
