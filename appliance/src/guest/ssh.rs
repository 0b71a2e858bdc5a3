//! The SSH transport: the appliance's own ed25519 key, guest host keys
//! pinned at first contact, and a session channel whose forced command is
//! `daas-guest-proxy serve`.
//!
//! russh (pure Rust, native async) rather than libssh2: one connection task
//! per guest, reads and writes of the channel concurrent without a lock or a
//! polling thread, key generation and OpenSSH key formats included, and no C
//! library to build or link (see docs/guest-proxy.md, "The appliance side").

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::net::TcpStream;

use super::{Connector, GuestError, HostKeyPins};
use crate::guest::session::Session;

/// File name of the appliance's guest key in the state directory.
pub const KEY_FILE: &str = "guest_ed25519";

/// The appliance's own SSH key for guests (ed25519), made at first start.
#[derive(Clone)]
pub struct ApplianceKey {
    key: Arc<PrivateKey>,
    path: PathBuf,
}

impl std::fmt::Debug for ApplianceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceKey")
            .field("path", &self.path)
            .field("public", &self.public_openssh())
            .finish()
    }
}

impl ApplianceKey {
    /// Loads `<state_dir>/guest_ed25519`, making it (mode 0600, and the
    /// `.pub` beside it) if it does not exist. A key file that others may
    /// read is refused, as ssh refuses it.
    pub fn load_or_create(state_dir: &Path) -> Result<ApplianceKey, GuestError> {
        let path = state_dir.join(KEY_FILE);
        let err = |reason: String| GuestError::Key {
            path: path.clone(),
            reason,
        };
        match std::fs::metadata(&path) {
            Ok(_) => return Self::load(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("cannot read it: {e}"))),
        }
        std::fs::create_dir_all(state_dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        seed.fill(0);
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        key.set_comment(format!("daas-appliance@{host}"));
        let pem = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| err(format!("cannot encode the new key: {e}")))?;
        // Written beside, then linked into place: never a half-written key,
        // and two first starts cannot overwrite each other's.
        let tmp = state_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            Ok(())
        };
        write().map_err(|e| err(format!("cannot write it: {e}")))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::load(&path),
            Err(e) => return Err(err(format!("cannot write it: {e}"))),
        }
        let me = ApplianceKey {
            key: Arc::new(key),
            path: path.clone(),
        };
        let pub_path = path.with_extension("pub");
        std::fs::write(&pub_path, format!("{}\n", me.public_openssh()))
            .map_err(|e| err(format!("cannot write {}: {e}", pub_path.display())))?;
        Ok(me)
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<ApplianceKey, GuestError> {
        let err = |reason: String| GuestError::Key {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "its mode is {mode:04o}; it must be readable by the appliance only (chmod 600)"
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let key = PrivateKey::from_openssh(text.as_bytes())
            .map_err(|e| err(format!("not an OpenSSH private key: {e}")))?;
        if key.is_encrypted() {
            return Err(err(
                "it is encrypted; the appliance needs it without a passphrase".into(),
            ));
        }
        Ok(ApplianceKey {
            key: Arc::new(key),
            path: path.to_owned(),
        })
    }

    /// The public key in `authorized_keys` form (`ssh-ed25519 AAAA... comment`).
    pub fn public_openssh(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| String::from("<unencodable key>"))
    }

    /// `SHA256:...` of the public key.
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long the SSH steps may take.
#[derive(Debug, Clone, Copy)]
pub struct SshTimeouts {
    /// TCP connect, SSH handshake and authentication, each.
    pub connect: Duration,
    /// From the channel's open to the proxy's hello.
    pub hello: Duration,
    /// Keepalive interval; three unanswered ones close the connection.
    pub keepalive: Duration,
}

impl Default for SshTimeouts {
    fn default() -> Self {
        SshTimeouts {
            connect: Duration::from_secs(10),
            hello: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// Reaches one guest over SSH: `user@host:port`, its host key pinned under
/// `subject`.
pub struct SshConnector {
    /// `host:port`.
    pub addr: String,
    /// The login user (the one `daas-guest-proxy install --user` prepared).
    pub user: String,
    /// What the host key is pinned under (`instance:<id>`).
    pub subject: String,
    /// The appliance's key.
    pub key: ApplianceKey,
    /// Where pins live.
    pub pins: Arc<dyn HostKeyPins>,
    /// Limits.
    pub timeouts: SshTimeouts,
}

impl std::fmt::Debug for SshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConnector")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("subject", &self.subject)
            .finish()
    }
}

/// Canonical text of a host key: algorithm and base64, no comment.
pub fn host_key_text(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh()
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

struct PinCheck {
    subject: String,
    pins: Arc<dyn HostKeyPins>,
    refused: Arc<Mutex<Option<GuestError>>>,
}

impl client::Handler for PinCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = server_public_key.public_key();
        let text = host_key_text(&key);
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let verdict = match self.pins.pin_first(&self.subject, &text, &fp) {
            Ok(pinned) if pinned.public_key == text => return Ok(true),
            Ok(pinned) => GuestError::HostKeyChanged {
                subject: self.subject.clone(),
                pinned: pinned.fingerprint,
                presented: fp,
            },
            Err(e) => GuestError::Pin(e),
        };
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
        Ok(false)
    }
}

/// What the session keeps alive: the SSH connection.
struct SshTransport {
    _handle: client::Handle<PinCheck>,
}

fn ssh_config(t: &SshTimeouts) -> client::Config {
    use russh::cipher;
    let preferred = russh::Preferred {
        // AES-GCM first: hardware AES makes it the fastest here.
        cipher: std::borrow::Cow::Owned(vec![
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_128_CTR,
        ]),
        ..Default::default()
    };
    client::Config {
        keepalive_interval: Some(t.keepalive),
        keepalive_max: 3,
        nodelay: true,
        window_size: 8 << 20,
        preferred,
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl Connector for SshConnector {
    fn describe(&self) -> String {
        format!("{}@{}", self.user, self.addr)
    }

    async fn connect(&self) -> Result<Session, GuestError> {
        let target = self.describe();
        let t = self.timeouts;
        let timeout = |what: &str| GuestError::Timeout {
            what: format!("{what} {target}"),
            after: t.connect,
        };
        let socket = tokio::time::timeout(t.connect, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| timeout("connecting to"))?
            .map_err(|source| GuestError::Connect {
                target: target.clone(),
                source,
            })?;
        let _ = socket.set_nodelay(true);
        let refused = Arc::new(Mutex::new(None));
        let handler = PinCheck {
            subject: self.subject.clone(),
            pins: self.pins.clone(),
            refused: refused.clone(),
        };
        let ssh_err = |source: russh::Error| {
            if let Some(e) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return e;
            }
            GuestError::Ssh {
                target: target.clone(),
                source,
            }
        };
        let mut handle = tokio::time::timeout(
            t.connect,
            client::connect_stream(Arc::new(ssh_config(&t)), socket, handler),
        )
        .await
        .map_err(|_| timeout("the SSH handshake with"))?
        .map_err(ssh_err)?;
        let auth = tokio::time::timeout(
            t.connect,
            handle.authenticate_publickey(
                self.user.clone(),
                PrivateKeyWithHashAlg::new(self.key.key.clone(), None),
            ),
        )
        .await
        .map_err(|_| timeout("authenticating to"))?
        .map_err(ssh_err)?;
        if !auth.success() {
            return Err(GuestError::Auth {
                target,
                fingerprint: self.key.fingerprint(),
            });
        }
        let channel = tokio::time::timeout(t.connect, async {
            let ch = handle.channel_open_session().await?;
            // The guest's forced command runs the proxy whatever is asked;
            // asking for it by name makes a misconfigured guest obvious.
            ch.exec(true, "daas-guest-proxy serve").await?;
            Ok::<_, russh::Error>(ch)
        })
        .await
        .map_err(|_| timeout("opening a channel to"))?
        .map_err(ssh_err)?;
        let (r, w) = tokio::io::split(channel.into_stream());
        Session::start(
            r,
            w,
            Some(Box::new(SshTransport { _handle: handle })),
            t.hello,
        )
        .await
    }
}
