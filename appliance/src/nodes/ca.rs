//! The node CA: made on first use in `<state_dir>/nodes/` (key mode 0600),
//! it signs node certificates at join and the appliance's own client
//! certificate for calling agents over mutual TLS.
//!
//! Invariants: a node certificate takes **only the public key** of the
//! node's CSR (whose self-signature is checked); every name in it is ours:
//! CN = node name, DNS `<node-id>.nodes.daas.internal`, `CA:FALSE`, EKU
//! serverAuth + clientAuth. `appliance.daas.internal` is only ever put in
//! the appliance's client certificate.

use std::path::{Path, PathBuf};

use daas_agent_api::identity::{node_dns_name, APPLIANCE_CLIENT_NAME};
use daas_agent_api::join::MAX_PEM_BYTES;
use daas_agent_api::NodeId;

/// Why the CA could not be loaded, made, or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored key or certificate does not parse.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CSR does not parse or its signature is wrong.
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    /// rcgen failed.
    #[error("cannot make a certificate")]
    Rcgen(#[from] rcgen::Error),
}

/// The node CA, loaded.
pub struct NodeCa {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` to `path` atomically with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl NodeCa {
    /// Loads the CA from `dir` (`ca.key`, `ca.crt`), making it if missing.
    pub fn load_or_create(dir: &Path) -> Result<NodeCa, CaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        if !key_path.exists() || !cert_path.exists() {
            let key = rcgen::KeyPair::generate()?;
            let cert = Self::params().self_signed(&key)?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "made the node CA");
        }
        let corrupt = |path: &Path, reason: String| CaError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key =
            rcgen::KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e.to_string()))?;
        let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        // rcgen signs with a `Certificate`; re-make it from the stored
        // parameters and key (same subject, same key: chains verify).
        let params = rcgen::CertificateParams::from_ca_cert_pem(&pem)
            .map_err(|e| corrupt(&cert_path, e.to_string()))?;
        let cert = params.self_signed(&key)?;
        Ok(NodeCa {
            dir: dir.to_owned(),
            cert,
            key,
            pem,
        })
    }

    fn params() -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "DaaS node CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        p
    }

    /// The CA certificate, PEM (as stored).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Signs a node certificate for the CSR's public key: CN = `name`, DNS
    /// name of `id`, `CA:FALSE`, serverAuth + clientAuth.
    pub fn sign_node(&self, csr_pem: &str, id: &NodeId, name: &str) -> Result<String, CaError> {
        if csr_pem.len() > MAX_PEM_BYTES {
            return Err(CaError::BadCsr("larger than 64 KiB".into()));
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let params = leaf_params(&node_dns_name(id), name, true)?;
        Ok(params
            .signed_by(&csr.public_key, &self.cert, &self.key)?
            .pem())
    }

    /// The appliance's client certificate and key (PEM), for calling agents
    /// over mutual TLS; made on first use in the CA's directory.
    pub fn appliance_client(&self) -> Result<(String, String), CaError> {
        let cert_path = self.dir.join("appliance-client.crt");
        let key_path = self.dir.join("appliance-client.key");
        if !cert_path.exists() || !key_path.exists() {
            let key = rcgen::KeyPair::generate()?;
            let params = leaf_params(APPLIANCE_CLIENT_NAME, APPLIANCE_CLIENT_NAME, false)?;
            let cert = params.signed_by(&key, &self.cert, &self.key)?;
            write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        Ok((
            std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
            std::fs::read_to_string(&key_path).map_err(io(&key_path))?,
        ))
    }
}

fn leaf_params(dns: &str, cn: &str, server: bool) -> Result<rcgen::CertificateParams, CaError> {
    let mut p = rcgen::CertificateParams::new(vec![dns.to_owned()])?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if server {
        vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
    };
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_only_the_csr_key_with_our_names_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = NodeCa::load_or_create(&dir.path().join("nodes")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("nodes/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = rcgen::KeyPair::generate().unwrap();
        // The CSR asks for the appliance's name: it is ignored.
        let p = rcgen::CertificateParams::new(vec![APPLIANCE_CLIENT_NAME.to_owned()]).unwrap();
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let id: NodeId = "n-1".parse().unwrap();
        let pem = ca.sign_node(&csr, &id, "node-a").unwrap();
        let params = rcgen::CertificateParams::from_ca_cert_pem(&pem).unwrap();
        assert_eq!(
            params.subject_alt_names,
            vec![rcgen::SanType::DnsName(
                "n-1.nodes.daas.internal".try_into().unwrap()
            )]
        );
        assert!(!matches!(params.is_ca, rcgen::IsCa::Ca(_)));
        assert!(ca.sign_node("garbage", &id, "x").is_err());
        // A tampered CSR fails its signature check.
        let mut bad = csr.clone();
        let i = bad.len() / 2;
        bad.replace_range(i..i + 1, if &bad[i..i + 1] == "A" { "B" } else { "A" });
        assert!(ca.sign_node(&bad, &id, "x").is_err());
        let again = NodeCa::load_or_create(&dir.path().join("nodes")).unwrap();
        assert_eq!(again.pem(), ca.pem());
        let (c1, _) = ca.appliance_client().unwrap();
        assert_eq!(again.appliance_client().unwrap().0, c1);
    }
}
