//! `Hostname`: the name dnsmasq gives an instance.

use std::fmt;
use std::str::FromStr;

/// One RFC 1123 DNS label: 1 to 63 ASCII letters, digits and `-`, not
/// starting or ending with `-`; stored in lower case.
///
/// Labels that dnsmasq would read as something other than a name in a
/// `--dhcp-hostsfile` line are refused too: all digits (or digits and a
/// unit such as `45m`, a lease time), `infinite` and `ignore`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

/// Why a text is not a [`Hostname`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("invalid hostname: empty")]
    Empty,
    #[error("invalid hostname: {0} characters, at most 63")]
    TooLong(usize),
    #[error("invalid hostname: only letters, digits and '-' are allowed")]
    BadChar,
    #[error("invalid hostname: must not start or end with '-'")]
    EdgeHyphen,
    #[error("invalid hostname: {0:?} would be read by dnsmasq as a lease time or keyword")]
    Reserved(String),
}

impl Hostname {
    /// The longest label, in bytes.
    pub const MAX_LEN: usize = 63;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(HostnameError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(HostnameError::BadChar);
        }
        if s.len() > Self::MAX_LEN {
            return Err(HostnameError::TooLong(s.len()));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(HostnameError::EdgeHyphen);
        }
        let lower = s.to_ascii_lowercase();
        let digits = lower.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
        let looks_like_time = (digits.len() + 1 >= lower.len())
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit());
        if looks_like_time || lower == "infinite" || lower == "ignore" {
            return Err(HostnameError::Reserved(lower));
        }
        Ok(Hostname(lower))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({})", self.0)
    }
}

crate::serde_via_str!(Hostname, "a hostname (one DNS label)");

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, HostnameError>) {
        let got = input.parse::<Hostname>().map(|h| h.to_string());
        assert_eq!(got, expect.map(str::to_owned), "input {input:?}");
    }

    #[test]
    fn parses_from_data() {
        check("app-1", Ok("app-1"));
        check("App-1", Ok("app-1"));
        check("a", Ok("a"));
        check("1a", Ok("1a"));
        check("x1", Ok("x1"));
        check("12mm", Ok("12mm"));
        check("m5", Ok("m5"));
        check("infinitely", Ok("infinitely"));
        check(&"a".repeat(63), Ok(&"a".repeat(63)));
        check(&"a".repeat(64), Err(HostnameError::TooLong(64)));
        check(&"a".repeat(10_000), Err(HostnameError::TooLong(10_000)));
        check("", Err(HostnameError::Empty));
        check("-a", Err(HostnameError::EdgeHyphen));
        check("a-", Err(HostnameError::EdgeHyphen));
        check("-", Err(HostnameError::EdgeHyphen));
        for bad in [
            "a.b",
            "a_b",
            "a b",
            "a,b",
            "a:b",
            "a/b",
            "../x",
            "ä",
            "a\u{0}",
            "a\n",
            "é",
            "x\u{ffff}",
            "Ａ",
        ] {
            check(bad, Err(HostnameError::BadChar));
        }
        for reserved in [
            "123", "45m", "45M", "1h", "7d", "2w", "30s", "0", "infinite", "IGNORE",
        ] {
            check(
                reserved,
                Err(HostnameError::Reserved(reserved.to_ascii_lowercase())),
            );
        }
    }

    #[test]
    fn serde_is_a_string() {
        let h: Hostname = serde_json::from_str("\"Desk-7\"").unwrap();
        assert_eq!(h.as_str(), "desk-7");
        assert!(serde_json::from_str::<Hostname>("\"a,b\"").is_err());
    }
}
