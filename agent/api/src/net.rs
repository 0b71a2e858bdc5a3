//! IPv4 subnets and address ranges.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet in CIDR form, `10.77.0.0/24`. The address must be the
/// network address (no host bits set); the prefix is 8 to 30, so the subnet
/// has a network, a broadcast and at least two host addresses.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a text is not an [`Ipv4Net`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4NetError {
    #[error("invalid subnet: expected ADDRESS/PREFIX such as 10.77.0.0/24")]
    Syntax,
    #[error("invalid subnet: prefix /{0} is outside /8../30")]
    Prefix(u8),
    #[error(
        "invalid subnet: {addr}/{prefix} has host bits set; the network is {network}/{prefix}"
    )]
    HostBits {
        addr: Ipv4Addr,
        prefix: u8,
        network: Ipv4Addr,
    },
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, Ipv4NetError> {
        if !(8..=30).contains(&prefix) {
            return Err(Ipv4NetError::Prefix(prefix));
        }
        let mask = mask(prefix);
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(Ipv4NetError::HostBits {
                addr,
                prefix,
                network,
            });
        }
        Ok(Ipv4Net { network, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// Whether `ip` is in the subnet at all (network and broadcast included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` may be given to a host: in the subnet, and neither the
    /// network nor the broadcast address.
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Ipv4Net {
    type Err = Ipv4NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or(Ipv4NetError::Syntax)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| Ipv4NetError::Syntax)?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Ipv4NetError::Syntax);
        }
        let prefix: u8 = p.parse().map_err(|_| Ipv4NetError::Syntax)?;
        Ipv4Net::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ipv4Net({self})")
    }
}

crate::serde_via_str!(Ipv4Net, "a subnet like \"10.77.0.0/24\"");

/// An inclusive range of host addresses inside one subnet, written
/// `10.77.0.100-10.77.0.199`; the pool the agent allocates from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Range {
    subnet: Ipv4Net,
    start: Ipv4Addr,
    end: Ipv4Addr,
}

/// Why two addresses do not make an [`Ipv4Range`] in a subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4RangeError {
    #[error("invalid range: {ip} is not a host address of {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("invalid range: start {start} is after end {end}")]
    Reversed { start: Ipv4Addr, end: Ipv4Addr },
}

impl Ipv4Range {
    pub fn new(subnet: Ipv4Net, start: Ipv4Addr, end: Ipv4Addr) -> Result<Self, Ipv4RangeError> {
        for ip in [start, end] {
            if !subnet.contains_host(ip) {
                return Err(Ipv4RangeError::OutsideSubnet { ip, subnet });
            }
        }
        if u32::from(start) > u32::from(end) {
            return Err(Ipv4RangeError::Reversed { start, end });
        }
        Ok(Ipv4Range { subnet, start, end })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    pub fn start(&self) -> Ipv4Addr {
        self.start
    }

    pub fn end(&self) -> Ipv4Addr {
        self.end
    }

    /// The number of addresses in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never true: a range has at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// The `index`-th address of the range (0-based), if there is one.
    pub fn nth(&self, index: u32) -> Option<Ipv4Addr> {
        (index < self.len()).then(|| Ipv4Addr::from(u32::from(self.start) + index))
    }

    /// The position of `ip` in the range.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip)
            .then(|| u32::from(ip) - u32::from(self.start))
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl fmt::Debug for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ipv4Range({self} in {})", self.subnet)
    }
}

impl serde::Serialize for Ipv4Range {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Ipv4Range", 3)?;
        st.serialize_field("subnet", &self.subnet)?;
        st.serialize_field("start", &self.start)?;
        st.serialize_field("end", &self.end)?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Range {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            subnet: Ipv4Net,
            start: Ipv4Addr,
            end: Ipv4Addr,
        }
        let r = Raw::deserialize(d)?;
        Ipv4Range::new(r.subnet, r.start, r.end).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_from_data() {
        let ok = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let n = ok("10.77.0.0/24");
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 77, 0, 255));
        assert!(n.contains_host(Ipv4Addr::new(10, 77, 0, 1)));
        assert!(!n.contains_host(Ipv4Addr::new(10, 77, 0, 0)));
        assert!(!n.contains_host(Ipv4Addr::new(10, 77, 0, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 77, 1, 1)));
        assert_eq!(
            ok("10.0.0.0/8").broadcast(),
            Ipv4Addr::new(10, 255, 255, 255)
        );
        assert_eq!(ok("192.168.1.4/30").to_string(), "192.168.1.4/30");
        for (bad, err) in [
            ("10.77.0.1/24", "host bits"),
            ("10.77.0.0/7", "prefix"),
            ("10.77.0.0/31", "prefix"),
            ("10.77.0.0/32", "prefix"),
            ("10.77.0.0/33", "prefix"),
            ("10.77.0.0/", "expected"),
            ("10.77.0.0", "expected"),
            ("10.77.0.0/+8", "expected"),
            ("10.77.0.0/024", "expected"),
            ("10.77.0/24", "expected"),
            ("10.77.0.256/24", "expected"),
            ("::1/64", "expected"),
            ("", "expected"),
        ] {
            let e = bad.parse::<Ipv4Net>().unwrap_err().to_string();
            assert!(e.contains(err), "{bad}: {e}");
        }
    }

    #[test]
    fn ranges_from_data() {
        let n: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        let ip = |d: u8| Ipv4Addr::new(10, 77, 0, d);
        let r = Ipv4Range::new(n, ip(100), ip(199)).unwrap();
        assert_eq!(r.len(), 100);
        assert_eq!(r.nth(0), Some(ip(100)));
        assert_eq!(r.nth(99), Some(ip(199)));
        assert_eq!(r.nth(100), None);
        assert_eq!(r.index_of(ip(150)), Some(50));
        assert_eq!(r.index_of(ip(99)), None);
        assert!(!r.contains(ip(200)));
        assert!(Ipv4Range::new(n, ip(5), ip(5)).is_ok());
        assert!(matches!(
            Ipv4Range::new(n, ip(0), ip(9)),
            Err(Ipv4RangeError::OutsideSubnet { .. })
        ));
        assert!(matches!(
            Ipv4Range::new(n, ip(1), ip(255)),
            Err(Ipv4RangeError::OutsideSubnet { .. })
        ));
        assert!(matches!(
            Ipv4Range::new(n, ip(9), ip(8)),
            Err(Ipv4RangeError::Reversed { .. })
        ));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"subnet":"10.77.0.0/24","start":"10.77.0.100","end":"10.77.0.199"}"#
        );
        assert_eq!(serde_json::from_str::<Ipv4Range>(&json).unwrap(), r);
    }
}
