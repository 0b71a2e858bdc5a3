//! Users' credentials: argon2id passwords, random bearer secrets stored as
//! SHA-256 hashes (sessions, API tokens), login throttling, and the one-time
//! connect tickets of the tunnel.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The longest password accepted (argon2 takes any length; this bounds work).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The shortest password accepted for new passwords.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// A password or name that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Too short.
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// Too long.
    #[error("the password must have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// A bad user name.
    #[error("a user name is 1 to 64 characters of letters, digits, '.', '_', '-' and '@', starting with a letter or digit")]
    BadName,
    /// Hashing failed.
    #[error("cannot hash the password")]
    Hash,
}

/// Checks a new password's length.
pub fn check_new_password(pw: &str) -> Result<(), CredentialError> {
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(CredentialError::TooLong);
    }
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(CredentialError::TooShort);
    }
    Ok(())
}

/// Checks a user name.
pub fn check_user_name(name: &str) -> Result<(), CredentialError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::BadName)
    }
}

fn argon2() -> Argon2<'static> {
    // argon2id, 19 MiB, 2 passes, 1 lane: OWASP's baseline.
    let params = argon2::Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(pw: &str) -> Result<String, CredentialError> {
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(CredentialError::TooLong);
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CredentialError::Hash)
}

/// Verifies a password against a PHC string. Constant-time in the password.
pub fn verify_password(pw: &str, phc: &str) -> bool {
    if pw.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(pw.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash that costs as much as a real one, to spend the same time when the
/// user does not exist.
pub fn dummy_verify(pw: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let h = DUMMY.get_or_init(|| hash_password("dummy-password-for-timing").unwrap_or_default());
    let _ = verify_password(pw, h);
}

/// A new random secret (32 bytes, base64url) with a prefix naming its use.
pub fn new_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// The stored form of a bearer secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Counts failed logins per user name and per client address in a sliding
/// window; past the limit, logins are refused until the window passes.
pub struct Throttle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Throttle {
    /// A throttle allowing `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> Throttle {
        Throttle {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(name: &str, ip: Option<IpAddr>) -> [String; 2] {
        [
            format!("u:{}", name.to_lowercase()),
            ip.map_or_else(|| "ip:-".into(), |ip| format!("ip:{ip}")),
        ]
    }

    /// Seconds until a login for this name/address is allowed again, if throttled.
    pub fn retry_after(&self, name: &str, ip: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut worst = None;
        for k in Self::keys(name, ip) {
            if let Some(v) = map.get_mut(&k) {
                v.retain(|t| now.duration_since(*t) < self.window);
                if v.len() >= self.max as usize {
                    let oldest = v[0];
                    let wait = self
                        .window
                        .saturating_sub(now.duration_since(oldest))
                        .as_secs()
                        + 1;
                    worst = Some(worst.map_or(wait, |w: u64| w.max(wait)));
                }
            }
        }
        // Keep the map from growing without bound.
        if map.len() > 100_000 {
            map.retain(|_, v| {
                v.last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        worst
    }

    /// Records a failed login.
    pub fn failed(&self, name: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for k in Self::keys(name, ip) {
            map.entry(k).or_default().push(now);
        }
    }

    /// Forgets a name's failures after a successful login.
    pub fn succeeded(&self, name: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("u:{}", name.to_lowercase()));
    }
}

/// What a connect ticket grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketGrant {
    /// The user it was issued to.
    pub user_id: String,
    /// The instance it connects to.
    pub instance_id: String,
}

/// One-time, short-lived tunnel tickets bound to a user and an instance.
/// Kept in memory by hash: a restart invalidates them, which is intended.
pub struct Tickets {
    ttl: Duration,
    map: Mutex<HashMap<String, (TicketGrant, Instant)>>,
}

impl Tickets {
    /// Tickets valid for `ttl`.
    pub fn new(ttl: Duration) -> Tickets {
        Tickets {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a ticket.
    pub fn issue(&self, grant: TicketGrant) -> String {
        let t = new_secret("tk_");
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        map.insert(hash_secret(&t), (grant, now));
        t
    }

    /// Redeems a ticket: valid once, within its TTL.
    pub fn redeem(&self, ticket: &str) -> Option<TicketGrant> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (grant, at) = map.remove(&hash_secret(ticket))?;
        (at.elapsed() < self.ttl).then_some(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("x", "not a phc string"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn password_and_name_rules() {
        assert_eq!(check_new_password("short"), Err(CredentialError::TooShort));
        assert_eq!(
            check_new_password(&"x".repeat(2000)),
            Err(CredentialError::TooLong)
        );
        assert!(check_new_password("Grüße-日本語").is_ok());
        for ok in ["ann", "a.b-c_d@x", "7zip"] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn throttle_blocks_after_max_failures() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let ip = Some("127.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert!(t.retry_after("ann", ip).is_none());
            t.failed("ann", ip);
        }
        assert!(t.retry_after("ann", ip).is_some());
        assert!(
            t.retry_after("ANN", None).is_some(),
            "names are case-insensitive"
        );
        assert!(
            t.retry_after("bob", ip).is_some(),
            "the address is throttled too"
        );
        assert!(t
            .retry_after("bob", Some("127.0.0.2".parse().unwrap()))
            .is_none());
    }

    #[test]
    fn tickets_are_single_use_and_expire() {
        let t = Tickets::new(Duration::from_millis(50));
        let g = TicketGrant {
            user_id: "u".into(),
            instance_id: "i".into(),
        };
        let a = t.issue(g.clone());
        assert_eq!(t.redeem(&a), Some(g.clone()));
        assert_eq!(t.redeem(&a), None, "replayed");
        let b = t.issue(g);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(t.redeem(&b), None, "expired");
        assert_eq!(t.redeem("tk_forged"), None);
    }
}
