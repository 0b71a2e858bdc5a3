//! The lease table: who has which address. Pure; the store around it
//! ([`crate::store`]) persists it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use daas_agent_api::{AllocateRequest, Hostname, Ipv4Range, Lease, MacAddr, MAX_LEASES};

/// Why a change of the lease table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("{ip} is outside the range {range}")]
    OutOfRange { ip: Ipv4Addr, range: Ipv4Range },
    #[error("{ip} is leased to {mac}")]
    AddressInUse { ip: Ipv4Addr, mac: MacAddr },
    #[error("{mac} already has the lease {ip} {hostname}")]
    MacInUse {
        mac: MacAddr,
        ip: Ipv4Addr,
        hostname: Hostname,
    },
    #[error("hostname {hostname} belongs to {mac}")]
    HostnameInUse { hostname: Hostname, mac: MacAddr },
    #[error("no free address left in {range}")]
    PoolExhausted { range: Ipv4Range },
    #[error("{mac} has no lease")]
    NotFound { mac: MacAddr },
    #[error("{what} {value} is given twice")]
    Duplicate { what: &'static str, value: String },
    #[error("{count} leases, at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("the agent holds {max} leases, its most")]
    LimitReached { max: usize },
}

/// What a converge changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvergeStats {
    pub added: u32,
    pub removed: u32,
    pub changed: u32,
    pub unchanged: u32,
}

/// The leases, indexed three ways; every address, MAC and hostname at most once.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    range: Ipv4Range,
    by_mac: BTreeMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    by_name: HashMap<Hostname, MacAddr>,
    /// Where the search for a free address starts: just after the last one
    /// handed out, so a released address is not reused at once.
    cursor: u32,
}

impl LeaseTable {
    pub fn new(range: Ipv4Range) -> Self {
        LeaseTable {
            range,
            by_mac: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_name: HashMap::new(),
            cursor: 0,
        }
    }

    /// A table holding `leases` (from the hosts file). Leases outside the
    /// range are kept (the range may have changed; dnsmasq still serves
    /// them); duplicates are refused.
    pub fn from_leases(range: Ipv4Range, leases: Vec<Lease>) -> Result<Self, LeaseError> {
        let mut t = LeaseTable::new(range);
        t.check_unique(&leases)?;
        for l in leases {
            t.insert(l);
        }
        Ok(t)
    }

    pub fn range(&self) -> Ipv4Range {
        self.range
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Free addresses of the range.
    pub fn free(&self) -> u32 {
        let used = self
            .by_ip
            .keys()
            .filter(|ip| self.range.contains(**ip))
            .count();
        self.range.len() - u32::try_from(used).unwrap_or(u32::MAX)
    }

    /// The leases, ordered by MAC.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    pub fn get(&self, mac: &MacAddr) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// Leases outside the range (kept from an older configuration).
    pub fn out_of_range(&self) -> Vec<&Lease> {
        self.leases()
            .filter(|l| !self.range.contains(l.ip))
            .collect()
    }

    /// Gives `req.mac` an address. `Ok((lease, true))` if the lease is new;
    /// `Ok((lease, false))` if the same lease already existed (a repeated
    /// request), which changes nothing.
    pub fn allocate(&mut self, req: &AllocateRequest) -> Result<(Lease, bool), LeaseError> {
        if let Some(have) = self.by_mac.get(&req.mac) {
            if have.hostname == req.hostname && req.ip.is_none_or(|ip| ip == have.ip) {
                return Ok((have.clone(), false));
            }
            return Err(LeaseError::MacInUse {
                mac: have.mac,
                ip: have.ip,
                hostname: have.hostname.clone(),
            });
        }
        if self.by_mac.len() >= MAX_LEASES {
            return Err(LeaseError::LimitReached { max: MAX_LEASES });
        }
        if let Some(mac) = self.by_name.get(&req.hostname) {
            return Err(LeaseError::HostnameInUse {
                hostname: req.hostname.clone(),
                mac: *mac,
            });
        }
        let ip = match req.ip {
            Some(ip) => {
                if !self.range.contains(ip) {
                    return Err(LeaseError::OutOfRange {
                        ip,
                        range: self.range,
                    });
                }
                if let Some(mac) = self.by_ip.get(&ip) {
                    return Err(LeaseError::AddressInUse { ip, mac: *mac });
                }
                ip
            }
            None => self.next_free()?,
        };
        let lease = Lease {
            mac: req.mac,
            ip,
            hostname: req.hostname.clone(),
        };
        self.insert(lease.clone());
        Ok((lease, true))
    }

    fn next_free(&mut self) -> Result<Ipv4Addr, LeaseError> {
        let len = self.range.len();
        for step in 0..len {
            let index = (self.cursor + step) % len;
            let ip = self.range.nth(index).expect("index < len");
            if !self.by_ip.contains_key(&ip) {
                self.cursor = (index + 1) % len;
                return Ok(ip);
            }
        }
        Err(LeaseError::PoolExhausted { range: self.range })
    }

    /// Removes the lease of `mac`.
    pub fn release(&mut self, mac: &MacAddr) -> Result<Lease, LeaseError> {
        let lease = self
            .by_mac
            .remove(mac)
            .ok_or(LeaseError::NotFound { mac: *mac })?;
        self.by_ip.remove(&lease.ip);
        self.by_name.remove(&lease.hostname);
        Ok(lease)
    }

    /// Replaces the whole table with `desired`, all or nothing.
    pub fn converge(&mut self, desired: Vec<Lease>) -> Result<ConvergeStats, LeaseError> {
        if desired.len() > MAX_LEASES {
            return Err(LeaseError::TooMany {
                count: desired.len(),
                max: MAX_LEASES,
            });
        }
        if let Some(l) = desired.iter().find(|l| !self.range.contains(l.ip)) {
            return Err(LeaseError::OutOfRange {
                ip: l.ip,
                range: self.range,
            });
        }
        self.check_unique(&desired)?;
        let mut stats = ConvergeStats::default();
        for l in &desired {
            match self.by_mac.get(&l.mac) {
                None => stats.added += 1,
                Some(have) if have == l => stats.unchanged += 1,
                Some(_) => stats.changed += 1,
            }
        }
        let desired_macs: std::collections::HashSet<_> = desired.iter().map(|l| l.mac).collect();
        stats.removed = count_u32(
            self.by_mac
                .keys()
                .filter(|m| !desired_macs.contains(m))
                .count(),
        );
        let range = self.range;
        let cursor = self.cursor;
        *self = LeaseTable::new(range);
        self.cursor = cursor;
        for l in desired {
            self.insert(l);
        }
        Ok(stats)
    }

    fn check_unique(&self, leases: &[Lease]) -> Result<(), LeaseError> {
        let mut macs = std::collections::HashSet::new();
        let mut ips = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for l in leases {
            if !macs.insert(l.mac) {
                return Err(LeaseError::Duplicate {
                    what: "MAC",
                    value: l.mac.to_string(),
                });
            }
            if !ips.insert(l.ip) {
                return Err(LeaseError::Duplicate {
                    what: "address",
                    value: l.ip.to_string(),
                });
            }
            if !names.insert(&l.hostname) {
                return Err(LeaseError::Duplicate {
                    what: "hostname",
                    value: l.hostname.to_string(),
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, l: Lease) {
        self.by_ip.insert(l.ip, l.mac);
        self.by_name.insert(l.hostname.clone(), l.mac);
        self.by_mac.insert(l.mac, l);
    }
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Ipv4Range {
        Ipv4Range::new(
            "10.77.0.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 77, 0, 10),
            Ipv4Addr::new(10, 77, 0, 13),
        )
        .unwrap()
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0, n]).unwrap()
    }

    fn req(n: u8, ip: Option<u8>) -> AllocateRequest {
        AllocateRequest {
            mac: mac(n),
            hostname: format!("h{n}").parse().unwrap(),
            ip: ip.map(|d| Ipv4Addr::new(10, 77, 0, d)),
        }
    }

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, d)
    }

    #[test]
    fn allocates_in_order_without_duplicates_until_full() {
        let mut t = LeaseTable::new(range());
        let got: Vec<_> = (1..=4)
            .map(|n| t.allocate(&req(n, None)).unwrap().0.ip)
            .collect();
        assert_eq!(got, [ip(10), ip(11), ip(12), ip(13)]);
        assert_eq!(t.free(), 0);
        assert_eq!(
            t.allocate(&req(5, None)),
            Err(LeaseError::PoolExhausted { range: range() })
        );
        // released addresses come back, after the cursor
        t.release(&mac(2)).unwrap();
        assert_eq!(t.allocate(&req(6, None)).unwrap().0.ip, ip(11));
    }

    #[test]
    fn does_not_reuse_a_released_address_at_once() {
        let mut t = LeaseTable::new(range());
        assert_eq!(t.allocate(&req(1, None)).unwrap().0.ip, ip(10));
        t.release(&mac(1)).unwrap();
        assert_eq!(t.allocate(&req(2, None)).unwrap().0.ip, ip(11));
    }

    #[test]
    fn fixed_addresses_and_conflicts() {
        let mut t = LeaseTable::new(range());
        assert_eq!(
            t.allocate(&req(1, Some(12))).unwrap(),
            (
                Lease {
                    mac: mac(1),
                    ip: ip(12),
                    hostname: "h1".parse().unwrap()
                },
                true
            )
        );
        // the same request again: no change
        assert!(!t.allocate(&req(1, Some(12))).unwrap().1);
        assert!(!t.allocate(&req(1, None)).unwrap().1);
        assert!(matches!(
            t.allocate(&req(1, Some(13))),
            Err(LeaseError::MacInUse { .. })
        ));
        assert_eq!(
            t.allocate(&req(2, Some(12))),
            Err(LeaseError::AddressInUse {
                ip: ip(12),
                mac: mac(1)
            })
        );
        let mut other = req(3, None);
        other.hostname = "h1".parse().unwrap();
        assert_eq!(
            t.allocate(&other),
            Err(LeaseError::HostnameInUse {
                hostname: "h1".parse().unwrap(),
                mac: mac(1)
            })
        );
        for outside in [9, 14, 0, 255] {
            assert!(matches!(
                t.allocate(&req(4, Some(outside))),
                Err(LeaseError::OutOfRange { .. })
            ));
        }
        let mut foreign = req(4, None);
        foreign.ip = Some(Ipv4Addr::new(192, 0, 2, 1));
        assert!(matches!(
            t.allocate(&foreign),
            Err(LeaseError::OutOfRange { .. })
        ));
        // automatic allocation skips the fixed address
        let got: Vec<_> = (5..=7)
            .map(|n| t.allocate(&req(n, None)).unwrap().0.ip)
            .collect();
        assert_eq!(got, [ip(10), ip(11), ip(13)]);
        assert_eq!(
            t.release(&mac(9)),
            Err(LeaseError::NotFound { mac: mac(9) })
        );
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn converge_replaces_all_or_nothing() {
        let mut t = LeaseTable::new(range());
        t.allocate(&req(1, Some(10))).unwrap();
        t.allocate(&req(2, Some(11))).unwrap();
        t.allocate(&req(3, Some(12))).unwrap();
        let l = |n: u8, d: u8| Lease {
            mac: mac(n),
            ip: ip(d),
            hostname: format!("h{n}").parse().unwrap(),
        };
        let stats = t.converge(vec![l(1, 10), l(2, 13), l(4, 12)]).unwrap();
        assert_eq!(
            stats,
            ConvergeStats {
                added: 1,
                removed: 1,
                changed: 1,
                unchanged: 1
            }
        );
        let now: Vec<_> = t.leases().cloned().collect();
        assert_eq!(now, vec![l(1, 10), l(2, 13), l(4, 12)]);
        for bad in [
            vec![l(1, 10), l(1, 11)],
            vec![l(1, 10), l(2, 10)],
            vec![
                l(1, 10),
                Lease {
                    hostname: "h1".parse().unwrap(),
                    ..l(2, 11)
                },
            ],
            vec![l(1, 9)],
        ] {
            assert!(t.converge(bad).is_err());
            assert_eq!(t.leases().cloned().collect::<Vec<_>>(), now);
        }
        assert_eq!(t.converge(vec![]).unwrap().removed, 3);
        assert!(t.is_empty());
    }

    #[test]
    fn loads_out_of_range_leases_but_refuses_duplicates() {
        let l = |n: u8, d: u8| Lease {
            mac: mac(n),
            ip: ip(d),
            hostname: format!("h{n}").parse().unwrap(),
        };
        let t = LeaseTable::from_leases(range(), vec![l(1, 10), l(2, 200)]).unwrap();
        assert_eq!(t.out_of_range().len(), 1);
        assert_eq!(t.free(), 3);
        assert!(LeaseTable::from_leases(range(), vec![l(1, 10), l(1, 11)]).is_err());
    }
}
