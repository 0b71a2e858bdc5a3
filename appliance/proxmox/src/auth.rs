//! Credentials: API tokens (`Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`)
//! and passwords for the ticket login (`POST /access/ticket`).
//!
//! Secrets come from files that only their owner may read; a file readable
//! by group or others is refused. A [`Secret`] never prints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The largest credentials file read.
const MAX_FILE: u64 = 4096;

/// A secret string: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself; only for the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why credentials could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error("{} is readable by group or others (mode {mode:o}): run chmod 600 on it", path.display())]
    InsecureFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file or value is not in the expected form.
    #[error("{what}: {reason}")]
    Format {
        /// What was parsed (a path or `token id`).
        what: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A token id, `USER@REALM!TOKENID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenId {
    /// `user@realm`.
    pub user: String,
    /// The token's name.
    pub name: String,
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}!{}", self.user, self.name)
    }
}

fn valid_user(u: &str) -> bool {
    match u.split_once('@') {
        Some((name, realm)) => {
            !name.is_empty()
                && name.len() <= 60
                && !name.contains(['!', ':', '/', '='])
                && !name.chars().any(|c| c.is_whitespace() || c.is_control())
                && realm.len() >= 2
                && realm.len() <= 32
                && realm
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        }
        None => false,
    }
}

impl FromStr for TokenId {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<TokenId, AuthError> {
        let bad = |reason| AuthError::Format {
            what: "token id".into(),
            reason,
        };
        let (user, name) = s
            .split_once('!')
            .ok_or_else(|| bad("expected USER@REALM!TOKENID"))?;
        if !valid_user(user) {
            return Err(bad("expected USER@REALM before '!'"));
        }
        // PVE: [A-Za-z][A-Za-z0-9\.\-_]+
        let ok = name.len() >= 2
            && name.len() <= 64
            && name.as_bytes()[0].is_ascii_alphabetic()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_');
        if !ok {
            return Err(bad("the token name must start with a letter and use only letters, digits, '.', '-' and '_'"));
        }
        Ok(TokenId {
            user: user.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// An API token: id and secret.
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// `USER@REALM!TOKENID`.
    pub id: TokenId,
    secret: Secret,
}

impl ApiToken {
    /// A token from its parts.
    pub fn new(id: TokenId, secret: Secret) -> ApiToken {
        ApiToken { id, secret }
    }

    /// Reads a token file: either the whole `USER@REALM!TOKENID=SECRET`
    /// (what `pveum user token add` prints, joined), or the secret alone, in
    /// which case `id` must be given. A given `id` must match the file's.
    pub fn from_file(path: &Path, id: Option<TokenId>) -> Result<ApiToken, AuthError> {
        let text = read_private_file(path)?;
        let what = || path.display().to_string();
        let (file_id, secret) = match text.split_once('=') {
            Some((id_text, secret)) => (Some(id_text.parse::<TokenId>()?), secret),
            None => (None, text.as_str()),
        };
        if !valid_secret(secret) {
            return Err(AuthError::Format {
                what: what(),
                reason: "the secret is empty or has spaces or control characters",
            });
        }
        let id = match (file_id, id) {
            (Some(f), Some(c)) if f != c => {
                return Err(AuthError::Format {
                    what: what(),
                    reason: "the file names another token id than the configuration",
                })
            }
            (Some(f), _) => f,
            (None, Some(c)) => c,
            (None, None) => return Err(AuthError::Format {
                what: what(),
                reason:
                    "the file holds only a secret: configure the token id (USER@REALM!TOKENID) too",
            }),
        };
        Ok(ApiToken {
            id,
            secret: Secret::new(secret),
        })
    }

    /// The `Authorization` header value, marked sensitive so that it is
    /// never logged.
    pub(crate) fn header_value(&self) -> reqwest::header::HeaderValue {
        let mut v = reqwest::header::HeaderValue::from_str(&format!(
            "PVEAPIToken={}={}",
            self.id,
            self.secret.expose()
        ))
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("PVEAPIToken=invalid"));
        v.set_sensitive(true);
        v
    }

    /// The secret, for tests and the simulator.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

fn valid_secret(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|c| c.is_ascii_graphic())
}

/// What the client logs in with.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// An API token (the default: privilege-separated, revocable).
    Token(ApiToken),
    /// A user and password: the client gets a ticket from
    /// `POST /access/ticket` and sends it as the `PVEAuthCookie` cookie,
    /// with the `CSRFPreventionToken` header on writes. Needed where PVE
    /// refuses tokens or non-root users (consoles, the `args` option, which
    /// only `root@pam` may set).
    Password {
        /// `user@realm`.
        username: String,
        /// The password.
        password: Secret,
    },
}

impl Credentials {
    /// A password login with the password read from a private file.
    pub fn password_from_file(username: &str, path: &Path) -> Result<Credentials, AuthError> {
        if !valid_user(username) {
            return Err(AuthError::Format {
                what: "user name".into(),
                reason: "expected USER@REALM",
            });
        }
        let password = read_private_file(path)?;
        if password.is_empty() {
            return Err(AuthError::Format {
                what: path.display().to_string(),
                reason: "the password is empty",
            });
        }
        Ok(Credentials::Password {
            username: username.to_owned(),
            password: Secret::new(password),
        })
    }
}

/// Reads a small file that only its owner may read; one trailing newline
/// (and surrounding whitespace) is removed.
fn read_private_file(path: &Path) -> Result<String, AuthError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| AuthError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthError::InsecureFile {
            path: path.to_owned(),
            mode,
        });
    }
    if !meta.is_file() {
        return Err(AuthError::Format {
            what: path.display().to_string(),
            reason: "not a regular file",
        });
    }
    let mut buf = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(AuthError::Format {
            what: path.display().to_string(),
            reason: "the file is too large for a credential",
        });
    }
    let text = String::from_utf8(buf).map_err(|_| AuthError::Format {
        what: path.display().to_string(),
        reason: "not UTF-8",
    })?;
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn token_ids() {
        let id: TokenId = "daas@pve!appliance".parse().unwrap();
        assert_eq!(id.user, "daas@pve");
        assert_eq!(id.name, "appliance");
        assert_eq!(id.to_string(), "daas@pve!appliance");
        for bad in [
            "",
            "daas",
            "daas@pve",
            "daas!x1",
            "@pve!tok",
            "daas@p!tok",
            "daas@pve!1tok",
            "daas@pve!t",
            "daas@pve!to k",
            "da as@pve!tok",
        ] {
            assert!(bad.parse::<TokenId>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let full = write(
            dir.path(),
            "full",
            "daas@pve!appliance=0b5c1f2e-1111-2222-3333-444455556666\n",
            0o600,
        );
        let t = ApiToken::from_file(&full, None).unwrap();
        assert_eq!(t.id.to_string(), "daas@pve!appliance");
        assert_eq!(t.secret().expose(), "0b5c1f2e-1111-2222-3333-444455556666");
        // The secret never prints.
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("0b5c1f2e"), "{dbg}");
        assert!(!format!("{:?}", t.header_value()).contains("0b5c1f2e"));

        let only = write(dir.path(), "only", "s3cret-value", 0o400);
        assert!(ApiToken::from_file(&only, None).is_err());
        let id: TokenId = "daas@pve!appliance".parse().unwrap();
        let t = ApiToken::from_file(&only, Some(id.clone())).unwrap();
        assert_eq!(t.secret().expose(), "s3cret-value");

        let other: TokenId = "root@pam!other".parse().unwrap();
        assert!(ApiToken::from_file(&full, Some(other)).is_err());

        let open = write(dir.path(), "open", "daas@pve!appliance=abc", 0o644);
        assert!(matches!(
            ApiToken::from_file(&open, None),
            Err(AuthError::InsecureFile { mode: 0o644, .. })
        ));
        let group = write(dir.path(), "group", "daas@pve!appliance=abc", 0o640);
        assert!(ApiToken::from_file(&group, None).is_err());

        let empty = write(dir.path(), "empty", "daas@pve!appliance=\n", 0o600);
        assert!(ApiToken::from_file(&empty, None).is_err());
        let spaced = write(dir.path(), "spaced", "daas@pve!appliance=a b", 0o600);
        assert!(ApiToken::from_file(&spaced, None).is_err());
        let big = write(dir.path(), "big", &"x".repeat(5000), 0o600);
        assert!(ApiToken::from_file(&big, Some(id)).is_err());
        assert!(ApiToken::from_file(&dir.path().join("missing"), None).is_err());
    }

    #[test]
    fn password_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "pw", "hunter2\n", 0o600);
        match Credentials::password_from_file("root@pam", &p).unwrap() {
            Credentials::Password { username, password } => {
                assert_eq!(username, "root@pam");
                assert_eq!(password.expose(), "hunter2");
                assert_eq!(format!("{password:?}"), "Secret(***)");
            }
            Credentials::Token(_) => panic!("not a password"),
        }
        assert!(Credentials::password_from_file("root", &p).is_err());
        let open = write(dir.path(), "open", "pw", 0o604);
        assert!(Credentials::password_from_file("root@pam", &open).is_err());
    }
}
