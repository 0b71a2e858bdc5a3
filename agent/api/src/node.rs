//! Node identity: the id the appliance gives a node, and the node's secret.

use std::fmt;
use std::str::FromStr;

/// The id the appliance assigns to a node at join (a UUID is fine).
///
/// 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with
/// `-`: it is a URL path segment and a DNS label of the node's certificate
/// name ([`crate::identity::node_dns_name`]).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

/// Why a text is not a [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id: 1 to 63 characters of a-z, 0-9 and '-', not at either end")]
pub struct NodeIdError;

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(NodeId(s.to_owned()))
        } else {
            Err(NodeIdError)
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

crate::serde_via_str!(NodeId, "a node id");

/// A secret that must not reach logs: `Debug` and `Display` print
/// `<redacted>`; [`NodeSecret::expose`] gives the text.
///
/// The appliance hands one to each node at join; the agent sends it as
/// `Authorization: Bearer <secret>` with every heartbeat. The appliance
/// keeps only a hash of it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct NodeSecret(String);

impl NodeSecret {
    /// The longest secret accepted, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Wraps a secret; `None` if it is empty, longer than
    /// [`NodeSecret::MAX_LEN`] or not printable ASCII (it travels in an
    /// HTTP header).
    pub fn new(secret: impl Into<String>) -> Option<Self> {
        let s = secret.into();
        let ok =
            !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then_some(NodeSecret(s))
    }

    /// Whether the secret is well formed (see [`NodeSecret::new`]); the
    /// deserializer does not check, so check after reading one.
    pub fn is_valid(&self) -> bool {
        NodeSecret::new(self.0.clone()).is_some()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSecret(<redacted>)")
    }
}

impl fmt::Display for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_from_data() {
        for ok in ["n1", "3f2a9c1e-7b4d-4e8a-9a51-0c6f1d2e3b4a", "a"] {
            assert_eq!(ok.parse::<NodeId>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A1",
            "a.b",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = NodeSecret::new("hunter2hunter2").unwrap();
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2hunter2");
        assert!(NodeSecret::new("").is_none());
        assert!(NodeSecret::new("a b").is_none());
        assert!(NodeSecret::new("a\nb").is_none());
        assert!(NodeSecret::new("x".repeat(257)).is_none());
        let back: NodeSecret = serde_json::from_str("\"a\\nb\"").unwrap();
        assert!(!back.is_valid());
    }
}
