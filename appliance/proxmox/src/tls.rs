//! How the client trusts a Proxmox VE node: by a CA (the cluster's
//! `pve-root-ca.pem`, or the CA of a certificate you installed), or by the
//! SHA-256 fingerprint of the node's certificate (`pvenode cert info`), pinned.
//! rustls with the ring provider.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

/// A SHA-256 certificate fingerprint. Parses hex with or without colons
/// (`AB:CD:...` as PVE shows it); prints colon-separated upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(sha2::Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A text that is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
pub struct FingerprintError;

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Fingerprint, FingerprintError> {
        let s = s.trim();
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return Err(FingerprintError);
        }
        let bytes = hex::decode(digits).map_err(|_| FingerprintError)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Fingerprint(out))
    }
}

/// How the node's certificate is checked.
#[derive(Debug, Clone)]
pub enum TlsTrust {
    /// Chains to one of these CA certificates (PEM) and is valid for the
    /// URL's host name.
    CaPem(String),
    /// Is exactly the certificate with this fingerprint (no CA, no name).
    Fingerprint(Fingerprint),
}

/// The ring provider every config here uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the server certificate whose SHA-256 is `expected`, and
/// remembers a mismatch so the error can name the certificate it met.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    mismatch: Mutex<Option<Fingerprint>>,
}

impl PinnedVerifier {
    pub(crate) fn new(expected: Fingerprint) -> PinnedVerifier {
        PinnedVerifier {
            expected,
            algorithms: provider().signature_verification_algorithms,
            mismatch: Mutex::new(None),
        }
    }

    pub(crate) fn expected(&self) -> Fingerprint {
        self.expected
    }

    /// The fingerprint the last handshake refused (cleared by a handshake
    /// that matched).
    pub(crate) fn last_mismatch(&self) -> Option<Fingerprint> {
        *self.mismatch.lock().ok()?
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_der(end_entity);
        if got == self.expected {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = None;
            }
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(got);
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

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA PEM has no certificate or a bad one.
    #[error("the CA certificate PEM: {0}")]
    Ca(String),
    /// rustls refused the setup.
    #[error("TLS setup")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client config for a trust choice, and the pinned verifier if
/// one is used.
pub(crate) fn client_config(
    trust: &TlsTrust,
) -> Result<(rustls::ClientConfig, Option<Arc<PinnedVerifier>>), TlsConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let (mut config, pin) = match trust {
        TlsTrust::Fingerprint(fp) => {
            let v = Arc::new(PinnedVerifier::new(*fp));
            let c = builder
                .dangerous()
                .with_custom_certificate_verifier(v.clone())
                .with_no_client_auth();
            (c, Some(v))
        }
        TlsTrust::CaPem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsConfigError::Ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(TlsConfigError::Ca("no certificate found".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| TlsConfigError::Ca(e.to_string()))?;
            }
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                None,
            )
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_both_ways() {
        let hex64 = "ab".repeat(32);
        let a: Fingerprint = hex64.parse().unwrap();
        let colons = a.to_string();
        assert_eq!(colons.len(), 95);
        assert!(colons.starts_with("AB:AB:"));
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), a);
        assert_eq!(format!("sha256:{hex64}").parse::<Fingerprint>().unwrap(), a);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn bad_ca_pem_is_refused() {
        assert!(client_config(&TlsTrust::CaPem("not a pem".into())).is_err());
    }
}
