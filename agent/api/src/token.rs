//! The one-time join token and the certificate fingerprint it carries.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The SHA-256 of a DER-encoded X.509 certificate: what the agent pins the
/// appliance's TLS certificate by (as kubeadm's discovery hash).
///
/// Written as 64 lower-case hex digits; on input, upper case and the
/// `AA:BB:...` form of `openssl x509 -fingerprint -sha256` are accepted too
/// (but not inside a [`JoinToken`], which is strict).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// Why a text is not a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("invalid fingerprint: {found} hex digits, expected 64 (SHA-256)")]
    Length { found: usize },
    #[error("invalid fingerprint: not a hex digit")]
    Char,
}

impl Fingerprint {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The fingerprint of a certificate, from its DER bytes.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in constant time, so a timing side channel tells nothing.
    pub fn matches(&self, other: &Fingerprint) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// 64 lower-case hex digits, nothing else.
    fn parse_strict(s: &str) -> Result<Self, FingerprintError> {
        if s.len() != 64 {
            return Err(FingerprintError::Length { found: s.len() });
        }
        let mut out = [0u8; 32];
        let b = s.as_bytes();
        for (i, o) in out.iter_mut().enumerate() {
            let hi = lower_hex(b[2 * i]).ok_or(FingerprintError::Char)?;
            let lo = lower_hex(b[2 * i + 1]).ok_or(FingerprintError::Char)?;
            *o = hi << 4 | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn lower_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 200 {
            return Err(FingerprintError::Length { found: s.len() });
        }
        let compact: String = if s.len() == 95 && s.bytes().skip(2).step_by(3).all(|b| b == b':') {
            s.split(':').collect()
        } else {
            s.to_owned()
        };
        if !compact.is_ascii() {
            return Err(FingerprintError::Char);
        }
        Fingerprint::parse_strict(&compact.to_ascii_lowercase())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(sha256:{self})")
    }
}

crate::serde_via_str!(Fingerprint, "a SHA-256 fingerprint as 64 hex digits");

/// A printable one-time join token:
/// `daas1.<token-id>.<secret>.<fingerprint>`.
///
/// - `token-id`: 8 characters `[a-z0-9]`, public; names the token in the
///   appliance's list and logs;
/// - `secret`: 32 characters `[a-z0-9]` (about 165 bits), the proof;
/// - `fingerprint`: 64 lower-case hex digits, the SHA-256 of the DER of the
///   appliance's TLS certificate, which the joining agent pins.
///
/// `Debug` hides the secret; `Display` prints the whole token (that is its
/// purpose: an admin copies it to the node).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
    fingerprint: Fingerprint,
}

/// Why a text is not a [`JoinToken`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("invalid join token: {found} characters, a token has {expected}")]
    Length { found: usize, expected: usize },
    #[error("invalid join token: must start with \"daas1.\"")]
    Prefix,
    #[error("invalid join token: expected 4 parts separated by '.', found {found}")]
    Parts { found: usize },
    #[error("invalid join token: the token id must be {expected} characters of a-z and 0-9")]
    TokenId { expected: usize },
    #[error("invalid join token: the secret must be {expected} characters of a-z and 0-9")]
    Secret { expected: usize },
    #[error("invalid join token: bad fingerprint")]
    Fingerprint(#[source] FingerprintError),
}

impl JoinToken {
    /// The version prefix.
    pub const PREFIX: &'static str = "daas1";
    /// Characters of the token id.
    pub const ID_LEN: usize = 8;
    /// Characters of the secret.
    pub const SECRET_LEN: usize = 32;
    /// Characters of a whole token.
    pub const LEN: usize = Self::PREFIX.len() + 1 + Self::ID_LEN + 1 + Self::SECRET_LEN + 1 + 64;
    /// The alphabet of the id and the secret.
    pub const ALPHABET: &'static [u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

    /// Builds a token from its parts, checking each.
    pub fn from_parts(
        id: &str,
        secret: &str,
        fingerprint: Fingerprint,
    ) -> Result<Self, JoinTokenError> {
        if !is_token_chars(id, Self::ID_LEN) {
            return Err(JoinTokenError::TokenId {
                expected: Self::ID_LEN,
            });
        }
        if !is_token_chars(secret, Self::SECRET_LEN) {
            return Err(JoinTokenError::Secret {
                expected: Self::SECRET_LEN,
            });
        }
        Ok(JoinToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
            fingerprint,
        })
    }

    /// Makes a fresh token from a source of random bytes (the appliance
    /// passes its CSPRNG, e.g. `|b| rand::thread_rng().fill_bytes(b)`).
    /// Rejection sampling keeps every character uniform.
    pub fn generate(mut fill: impl FnMut(&mut [u8]), fingerprint: Fingerprint) -> Self {
        let mut pick = |n: usize| {
            let mut out = String::with_capacity(n);
            let mut buf = [0u8; 64];
            while out.len() < n {
                fill(&mut buf);
                for &b in &buf {
                    // 252 = 7 * 36: bytes at or above it would bias the draw.
                    if b < 252 && out.len() < n {
                        out.push(char::from(Self::ALPHABET[usize::from(b % 36)]));
                    }
                }
            }
            out
        };
        let id = pick(Self::ID_LEN);
        let secret = pick(Self::SECRET_LEN);
        JoinToken {
            id,
            secret,
            fingerprint,
        }
    }

    /// The public id of the token.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret part; compare it in constant time and store only a hash.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The fingerprint of the appliance's TLS certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

fn is_token_chars(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl FromStr for JoinToken {
    type Err = JoinTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 4 * Self::LEN {
            return Err(JoinTokenError::Length {
                found: s.len(),
                expected: Self::LEN,
            });
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts[0] != Self::PREFIX {
            return Err(JoinTokenError::Prefix);
        }
        if parts.len() != 4 {
            return Err(JoinTokenError::Parts { found: parts.len() });
        }
        let fingerprint =
            Fingerprint::parse_strict(parts[3]).map_err(JoinTokenError::Fingerprint)?;
        JoinToken::from_parts(parts[1], parts[2], fingerprint)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            Self::PREFIX,
            self.id,
            self.secret,
            self.fingerprint
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

crate::serde_via_str!(
    JoinToken,
    "a join token \"daas1.<id>.<secret>.<fingerprint>\""
);

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const ID: &str = "abcd1234";
    const SECRET: &str = "0123456789abcdefghijklmnopqrstuv";

    fn token() -> String {
        format!("daas1.{ID}.{SECRET}.{FP}")
    }

    fn check(input: &str, expect: Result<(), JoinTokenError>) {
        let got = input.parse::<JoinToken>();
        match (got, expect) {
            (Ok(t), Ok(())) => assert_eq!(t.to_string(), input),
            (Err(e), Err(want)) => assert_eq!(e, want, "input {input:?}"),
            (got, want) => panic!("input {input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let t: JoinToken = token().parse().unwrap();
        assert_eq!(t.id(), ID);
        assert_eq!(t.secret(), SECRET);
        assert_eq!(t.fingerprint().to_string(), FP);
        assert_eq!(t.to_string().len(), JoinToken::LEN);
        assert!(!format!("{t:?}").contains(SECRET));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<JoinToken>(&json).unwrap(), t);
    }

    #[test]
    fn refuses_forged_and_truncated_tokens() {
        let id_err = Err(JoinTokenError::TokenId { expected: 8 });
        let secret_err = Err(JoinTokenError::Secret { expected: 32 });
        let fp_len = |found| {
            Err(JoinTokenError::Fingerprint(FingerprintError::Length {
                found,
            }))
        };
        let fp_char = Err(JoinTokenError::Fingerprint(FingerprintError::Char));
        check(&token(), Ok(()));
        check("", Err(JoinTokenError::Prefix));
        check("daas1", Err(JoinTokenError::Parts { found: 1 }));
        check("daas1.", Err(JoinTokenError::Parts { found: 2 }));
        check(
            &token().replace("daas1", "daas2"),
            Err(JoinTokenError::Prefix),
        );
        check(
            &token().replace("daas1", "DAAS1"),
            Err(JoinTokenError::Prefix),
        );
        check(&format!(" {}", token()), Err(JoinTokenError::Prefix));
        check(
            &format!("daas1.{ID}.{SECRET}"),
            Err(JoinTokenError::Parts { found: 3 }),
        );
        check(
            &format!("{}.extra", token()),
            Err(JoinTokenError::Parts { found: 5 }),
        );
        // truncated at every length
        let full = token();
        for n in 0..full.len() {
            assert!(full[..n].parse::<JoinToken>().is_err(), "prefix of {n}");
        }
        check(&format!("daas1.abcd123.{SECRET}.{FP}"), id_err.clone());
        check(&format!("daas1.abcd12345.{SECRET}.{FP}"), id_err.clone());
        check(&format!("daas1.ABCD1234.{SECRET}.{FP}"), id_err.clone());
        check(&format!("daas1.abcd-234.{SECRET}.{FP}"), id_err.clone());
        check(&format!("daas1.abcd12é.{SECRET}.{FP}"), id_err.clone());
        check(&format!("daas1..{SECRET}.{FP}"), id_err);
        check(
            &format!("daas1.{ID}.{}.{FP}", &SECRET[1..]),
            secret_err.clone(),
        );
        check(&format!("daas1.{ID}.{SECRET}x.{FP}"), secret_err.clone());
        check(
            &format!("daas1.{ID}.{}.{FP}", SECRET.to_uppercase()),
            secret_err.clone(),
        );
        check(
            &format!("daas1.{ID}.{}\u{0}.{FP}", &SECRET[1..]),
            secret_err.clone(),
        );
        check(&format!("daas1.{ID}..{FP}"), secret_err);
        check(&format!("daas1.{ID}.{SECRET}.{}", &FP[1..]), fp_len(63));
        check(&format!("daas1.{ID}.{SECRET}.{FP}0"), fp_len(65));
        check(&format!("daas1.{ID}.{SECRET}."), fp_len(0));
        check(
            &format!("daas1.{ID}.{SECRET}.{}", FP.to_uppercase()),
            fp_char.clone(),
        );
        check(
            &format!("daas1.{ID}.{SECRET}.{}g", &FP[1..]),
            fp_char.clone(),
        );
        // a multi-byte character keeps the byte length at 64
        check(&format!("daas1.{ID}.{SECRET}.{}é", &FP[2..]), fp_char);
        let huge = "a".repeat(10_000);
        assert!(matches!(
            huge.parse::<JoinToken>(),
            Err(JoinTokenError::Length { .. })
        ));
    }

    #[test]
    fn generates_uniform_valid_tokens() {
        let fp: Fingerprint = FP.parse().unwrap();
        let mut counter = 0u8;
        let t = JoinToken::generate(
            |b| {
                for x in b.iter_mut() {
                    *x = counter;
                    counter = counter.wrapping_add(1);
                }
            },
            fp,
        );
        let again: JoinToken = t.to_string().parse().unwrap();
        assert_eq!(again, t);
        // bytes >= 252 are skipped: an all-0xff source would never finish,
        // so a source with some 0xff still yields valid characters.
        let mut flip = false;
        let t = JoinToken::generate(
            |b| {
                flip = !flip;
                b.fill(if flip { 0xff } else { 37 });
            },
            fp,
        );
        assert_eq!(t.id(), "bbbbbbbb");
    }

    #[test]
    fn fingerprints_from_data() {
        let fp: Fingerprint = FP.parse().unwrap();
        assert_eq!(FP.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
        let colons: Vec<String> = FP
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
            .collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
        assert!(Fingerprint::of_der(b"test").matches(&fp));
        assert!(!Fingerprint::of_der(b"tesT").matches(&fp));
        assert_eq!(
            "abc".parse::<Fingerprint>(),
            Err(FingerprintError::Length { found: 3 })
        );
        assert_eq!(
            FP.replace('a', "z").parse::<Fingerprint>(),
            Err(FingerprintError::Char)
        );
    }
}
