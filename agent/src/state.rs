//! The agent's state directory (`[node] state_dir`, default
//! `/var/lib/daas-agent`, mode 0755):
//!
//! | file | mode | what |
//! | --- | --- | --- |
//! | `agent.lock` | 0600 | held (flock) by the running agent: one agent per state dir |
//! | `dnsmasq-hosts` | 0644 | the dnsmasq hosts file (default place) |
//! | `node/` | 0700 | the node's identity, written by `daas-agent join` |
//! | `node/node.key` | 0600 | the node's private key (made on the node, never sent) |
//! | `node/node.crt` | 0644 | the node certificate signed by the appliance's node CA |
//! | `node/ca.crt` | 0644 | the node CA's certificate |
//! | `node/node.secret` | 0600 | the bearer secret for heartbeats |
//! | `node/node.json` | 0600 | node id, name, appliance URL and fingerprint, interval; written last: its presence means "joined" |

use std::path::{Path, PathBuf};

use daas_agent_api::{Fingerprint, Hostname, NodeId, NodeSecret};
use serde::{Deserialize, Serialize};

use crate::util::{ensure_dir, write_atomic};

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRecord {
    pub node_id: NodeId,
    pub node_name: Hostname,
    /// The appliance's base URL, `https://HOST[:PORT]`.
    pub appliance_url: String,
    /// The SHA-256 of the appliance's TLS certificate, pinned.
    pub appliance_fingerprint: Fingerprint,
    pub heartbeat_interval_secs: u32,
    /// Unix seconds.
    pub joined_at: u64,
}

/// Everything of a joined node.
#[derive(Debug, Clone)]
pub struct Joined {
    pub record: JoinRecord,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub secret: NodeSecret,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node_dir(&self) -> PathBuf {
        self.root.join("node")
    }

    pub fn key_path(&self) -> PathBuf {
        self.node_dir().join("node.key")
    }

    pub fn record_path(&self) -> PathBuf {
        self.node_dir().join("node.json")
    }

    /// Creates the directories with their modes.
    pub fn ensure(&self) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        ensure_dir(&self.root, 0o755).map_err(io(&self.root))?;
        ensure_dir(&self.node_dir(), 0o700).map_err(io(&self.node_dir()))?;
        Ok(())
    }

    fn read(&self, name: &str) -> Result<String, StateError> {
        let path = self.node_dir().join(name);
        std::fs::read_to_string(&path).map_err(|source| StateError::Io { path, source })
    }

    fn write(&self, name: &str, contents: &str, mode: u32) -> Result<(), StateError> {
        let path = self.node_dir().join(name);
        write_atomic(&path, contents.as_bytes(), mode)
            .map_err(|source| StateError::Io { path, source })
    }

    /// The join record, if the node has joined.
    pub fn load_record(&self) -> Result<Option<JoinRecord>, StateError> {
        let path = self.record_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Invalid {
                path,
                message: e.to_string(),
            })
    }

    /// Everything of the join, if the node has joined.
    pub fn load(&self) -> Result<Option<Joined>, StateError> {
        let Some(record) = self.load_record()? else {
            return Ok(None);
        };
        let secret =
            NodeSecret::new(self.read("node.secret")?.trim().to_owned()).ok_or_else(|| {
                StateError::Invalid {
                    path: self.node_dir().join("node.secret"),
                    message: "not a valid secret".into(),
                }
            })?;
        Ok(Some(Joined {
            record,
            key_pem: self.read("node.key")?,
            cert_pem: self.read("node.crt")?,
            ca_pem: self.read("ca.crt")?,
            secret,
        }))
    }

    /// Stores the node's new private key (0600), before the join request.
    pub fn save_key(&self, key_pem: &str) -> Result<(), StateError> {
        self.write("node.key", key_pem, 0o600)
    }

    /// Stores the join's outcome; `node.json` last.
    pub fn save_join(&self, j: &Joined) -> Result<(), StateError> {
        self.write("node.crt", &j.cert_pem, 0o644)?;
        self.write("ca.crt", &j.ca_pem, 0o644)?;
        self.write("node.secret", j.secret.expose(), 0o600)?;
        let json = serde_json::to_string_pretty(&j.record).expect("serializable");
        self.write("node.json", &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_and_loads_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path().join("state"));
        s.ensure().unwrap();
        assert!(s.load().unwrap().is_none());
        s.save_key("KEY").unwrap();
        let j = Joined {
            record: JoinRecord {
                node_id: "n1".parse().unwrap(),
                node_name: "node-a".parse().unwrap(),
                appliance_url: "https://127.0.0.1:8443".into(),
                appliance_fingerprint: Fingerprint::of_der(b"x"),
                heartbeat_interval_secs: 5,
                joined_at: 1,
            },
            key_pem: "KEY".into(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
            secret: NodeSecret::new("s3cret").unwrap(),
        };
        s.save_join(&j).unwrap();
        let back = s.load().unwrap().unwrap();
        assert_eq!(back.record, j.record);
        assert_eq!(back.key_pem, "KEY");
        assert_eq!(back.secret.expose(), "s3cret");
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.key_path()), 0o600);
        assert_eq!(mode(s.node_dir().join("node.secret")), 0o600);
        assert_eq!(mode(s.node_dir()), 0o700);
        assert_eq!(mode(s.root().to_owned()), 0o755);
        std::fs::write(s.record_path(), "{\"node_id\":\"n1\",\"extra\":1}").unwrap();
        assert!(matches!(s.load(), Err(StateError::Invalid { .. })));
    }
}
