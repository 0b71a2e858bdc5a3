//! UPIDs, Proxmox VE's task ids: `UPID:node:pid:pstart:starttime:type:id:user:`.
//!
//! `pid`, `pstart` and `starttime` are upper-case hex, 8 digits each
//! (`pstart` may grow to 9 after a long uptime). `type` is the worker name
//! (`qmclone`, `qmstart`, ...), `id` usually the VMID (may be empty), `user`
//! the user or token that started the task. Pure: no IO.

use std::fmt;
use std::str::FromStr;

/// The longest UPID accepted (PVE's are well under 200 bytes).
const MAX_LEN: usize = 512;

/// A parsed task id. Displays as the original text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    /// The node the task runs on (its status is read there).
    pub node: String,
    /// Worker process id.
    pub pid: u32,
    /// Process start time in clock ticks since boot.
    pub pstart: u64,
    /// Task start, seconds since the epoch.
    pub starttime: u64,
    /// Worker type, such as `qmclone`.
    pub task_type: String,
    /// What the task works on, usually the VMID; may be empty.
    pub id: String,
    /// Who started it (`user@realm` or `user@realm!token`).
    pub user: String,
}

/// Why a text is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a UPID: {0}")]
pub struct UpidError(&'static str);

impl Upid {
    /// Encodes a UPID the way PVE does.
    pub fn new(
        node: &str,
        pid: u32,
        pstart: u64,
        starttime: u64,
        task_type: &str,
        id: &str,
        user: &str,
    ) -> Result<Upid, UpidError> {
        format!("UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{task_type}:{id}:{user}:")
            .parse()
    }

    /// The UPID as text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn is_node_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn hex_field(s: &str, min: usize, max: usize, what: &'static str) -> Result<u64, UpidError> {
    if s.len() < min || s.len() > max || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(UpidError(what));
    }
    u64::from_str_radix(s, 16).map_err(|_| UpidError(what))
}

fn plain_field(s: &str) -> bool {
    s.bytes()
        .all(|c| c != b':' && c != b'/' && !c.is_ascii_whitespace() && !c.is_ascii_control())
}

impl FromStr for Upid {
    type Err = UpidError;

    fn from_str(s: &str) -> Result<Upid, UpidError> {
        if s.len() > MAX_LEN {
            return Err(UpidError("too long"));
        }
        let body = s
            .strip_prefix("UPID:")
            .ok_or(UpidError("missing UPID: prefix"))?
            .strip_suffix(':')
            .ok_or(UpidError("missing trailing colon"))?;
        let f: Vec<&str> = body.split(':').collect();
        if f.len() != 7 {
            return Err(UpidError("wrong number of fields"));
        }
        if !is_node_name(f[0]) {
            return Err(UpidError("bad node name"));
        }
        let pid = hex_field(f[1], 8, 8, "bad pid")?;
        let pstart = hex_field(f[2], 8, 9, "bad pstart")?;
        let starttime = hex_field(f[3], 8, 8, "bad starttime")?;
        if f[4].is_empty() || !plain_field(f[4]) {
            return Err(UpidError("bad type"));
        }
        if !plain_field(f[5]) {
            return Err(UpidError("bad id"));
        }
        if f[6].is_empty() || !plain_field(f[6]) {
            return Err(UpidError("bad user"));
        }
        Ok(Upid {
            raw: s.to_owned(),
            node: f[0].to_owned(),
            pid: u32::try_from(pid).map_err(|_| UpidError("bad pid"))?,
            pstart,
            starttime,
            task_type: f[4].to_owned(),
            id: f[5].to_owned(),
            user: f[6].to_owned(),
        })
    }
}

impl serde::Serialize for Upid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Upid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Upid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_upids() {
        let u: Upid = "UPID:pve1:00001A2B:0012D687:6650A1B2:qmclone:9000:daas@pve!appliance:"
            .parse()
            .unwrap();
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 0x1A2B);
        assert_eq!(u.pstart, 0x0012_D687);
        assert_eq!(u.starttime, 0x6650_A1B2);
        assert_eq!(u.task_type, "qmclone");
        assert_eq!(u.id, "9000");
        assert_eq!(u.user, "daas@pve!appliance");
        // 9-digit pstart, empty id.
        let u: Upid = "UPID:node-2:0000000A:1000000AB:6650A1B2:vncproxy::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.pstart, 0x1_0000_00AB);
        assert_eq!(u.id, "");
    }

    #[test]
    fn round_trips() {
        let u = Upid::new("pve", 42, 7, 1_700_000_000, "qmstart", "100", "root@pam").unwrap();
        assert_eq!(
            u.as_str(),
            "UPID:pve:0000002A:00000007:6553F100:qmstart:100:root@pam:"
        );
        assert_eq!(u.to_string().parse::<Upid>().unwrap(), u);
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "UPID:",
            "UPID:pve:0000002A:00000007:6553F100:qmstart:100:root@pam",
            "upid:pve:0000002A:00000007:6553F100:qmstart:100:root@pam:",
            "UPID:-pve:0000002A:00000007:6553F100:qmstart:100:root@pam:",
            "UPID:pve:2A:00000007:6553F100:qmstart:100:root@pam:",
            "UPID:pve:0000002G:00000007:6553F100:qmstart:100:root@pam:",
            "UPID:pve:0000002A:00000007:6553F100::100:root@pam:",
            "UPID:pve:0000002A:00000007:6553F100:qm start:100:root@pam:",
            "UPID:pve:0000002A:00000007:6553F100:qmstart:1/00:root@pam:",
            "UPID:pve:0000002A:00000007:6553F100:qmstart:100::",
            "UPID:pve:0000002A:00000007:6553F100:qmstart:100:root@pam:extra:",
            "UPID:pvé:0000002A:00000007:6553F100:qmstart:100:root@pam:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "accepted {bad:?}");
        }
        assert!("UPID:".repeat(200).parse::<Upid>().is_err());
    }
}
