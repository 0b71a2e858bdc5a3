//! `MacAddr`: an Ethernet address an instance may have.

use std::fmt;
use std::str::FromStr;

/// A unicast, non-zero Ethernet address, written `aa:bb:cc:dd:ee:ff`
/// (lower case on output; upper case, and `-` instead of `:`, accepted on input).
///
/// Multicast and broadcast addresses (low bit of the first octet set) and
/// `00:00:00:00:00:00` are refused: dnsmasq could not hand a lease to them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

/// Why a text is not a [`MacAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddrError {
    #[error("invalid MAC address: expected 6 hex pairs separated by ':' (aa:bb:cc:dd:ee:ff)")]
    Syntax,
    #[error("invalid MAC address: {0} is a multicast or broadcast address")]
    Multicast(MacAddr),
    #[error("invalid MAC address: 00:00:00:00:00:00 is not an address")]
    Zero,
}

impl MacAddr {
    /// Checks and wraps six octets.
    pub fn new(octets: [u8; 6]) -> Result<Self, MacAddrError> {
        if octets == [0; 6] {
            return Err(MacAddrError::Zero);
        }
        if octets[0] & 1 == 1 {
            return Err(MacAddrError::Multicast(MacAddr(octets)));
        }
        Ok(MacAddr(octets))
    }

    /// A locally administered unicast address from six (random) bytes:
    /// what the appliance gives a new instance. Never fails.
    pub fn local_from_bytes(mut octets: [u8; 6]) -> Self {
        octets[0] = (octets[0] & 0xfc) | 0x02;
        MacAddr(octets)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the address is locally administered (bit 1 of the first octet),
    /// as generated MACs of VMs and containers usually are.
    pub fn is_local(&self) -> bool {
        self.0[0] & 2 == 2
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 17 {
            return Err(MacAddrError::Syntax);
        }
        let sep = b[2];
        if sep != b':' && sep != b'-' {
            return Err(MacAddrError::Syntax);
        }
        let mut octets = [0u8; 6];
        for (i, o) in octets.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != sep {
                return Err(MacAddrError::Syntax);
            }
            let hi = hex_val(b[at]).ok_or(MacAddrError::Syntax)?;
            let lo = hex_val(b[at + 1]).ok_or(MacAddrError::Syntax)?;
            *o = hi << 4 | lo;
        }
        MacAddr::new(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

crate::serde_via_str!(MacAddr, "a MAC address like \"52:54:00:12:34:56\"");

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, MacAddrError>) {
        let got = input.parse::<MacAddr>().map(|m| m.to_string());
        assert_eq!(got, expect.map(str::to_owned), "input {input:?}");
    }

    #[test]
    fn parses_from_data() {
        check("52:54:00:12:34:56", Ok("52:54:00:12:34:56"));
        check("52:54:00:AB:cd:EF", Ok("52:54:00:ab:cd:ef"));
        check("52-54-00-12-34-56", Ok("52:54:00:12:34:56"));
        check("02:00:00:00:00:00", Ok("02:00:00:00:00:00"));
        check("00:00:00:00:00:01", Ok("00:00:00:00:00:01"));
        check("00:00:00:00:00:00", Err(MacAddrError::Zero));
        let mc = MacAddr([1, 0, 0x5e, 0, 0, 1]);
        check("01:00:5e:00:00:01", Err(MacAddrError::Multicast(mc)));
        check(
            "ff:ff:ff:ff:ff:ff",
            Err(MacAddrError::Multicast(MacAddr([0xff; 6]))),
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54:00:12:34:56:",
            "52:54:00:12:34:56:78",
            "52:54-00:12:34:56",
            "52.54.00.12.34.56",
            "5254.0012.3456",
            "525400123456",
            "52:54:00:12:34:5g",
            "+2:54:00:12:34:56",
            " 52:54:00:12:34:5",
            "52:54:00:12:34:56 ",
            "52:54:00:12:34:é",
            "52:54:00:12:3\u{0}:56",
            "52:54:00:12:34:56,10.0.0.1",
            "\u{ff12}2:54:00:12:34:56",
        ] {
            check(bad, Err(MacAddrError::Syntax));
        }
    }

    #[test]
    fn serde_is_a_string() {
        let m: MacAddr = serde_json::from_str("\"52:54:00:12:34:56\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"52:54:00:12:34:56\"");
        assert!(serde_json::from_str::<MacAddr>("\"ff:ff:ff:ff:ff:ff\"").is_err());
        assert!(serde_json::from_str::<MacAddr>("42").is_err());
        assert!(m.is_local());
        assert!(!"00:16:3e:00:00:01".parse::<MacAddr>().unwrap().is_local());
        assert!("02:00:00:00:00:01".parse::<MacAddr>().unwrap().is_local());
        for b in [[0xff; 6], [0; 6], [1, 2, 3, 4, 5, 6]] {
            let m = MacAddr::local_from_bytes(b);
            assert!(m.is_local());
            assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }
    }
}
