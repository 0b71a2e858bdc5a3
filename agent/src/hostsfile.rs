//! The dnsmasq `--dhcp-hostsfile` the agent owns: one `MAC,IP,hostname`
//! line per lease. The file is the truth on the agent's side: it is read at
//! start, and every change replaces it atomically.

use std::path::Path;

use daas_agent_api::Lease;

/// The first line of every file the agent writes.
pub const HEADER: &str =
    "# Managed by daas-agent: do not edit. One MAC,IP,hostname per line (dnsmasq --dhcp-hostsfile).";

/// A line that is not a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a hosts file: blank lines and `#` comments are skipped; every
/// other line must be `MAC,IP,hostname`.
pub fn parse(text: &str) -> Result<Vec<Lease>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?);
    }
    Ok(out)
}

/// Parses one `MAC,IP,hostname` line.
pub fn parse_line(line: &str) -> Result<Lease, String> {
    let fields: Vec<&str> = line.split(',').collect();
    let [mac, ip, hostname] = fields[..] else {
        return Err(format!(
            "expected MAC,IP,hostname, found {} field(s)",
            fields.len()
        ));
    };
    Ok(Lease {
        mac: mac.trim().parse().map_err(|e| format!("{e}"))?,
        ip: ip
            .trim()
            .parse()
            .map_err(|_| format!("invalid IPv4 address {:?}", ip.trim()))?,
        hostname: hostname.trim().parse().map_err(|e| format!("{e}"))?,
    })
}

/// The file for `leases` (given in the order to write them).
pub fn render<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> String {
    let mut s = String::with_capacity(4096);
    s.push_str(HEADER);
    s.push('\n');
    for l in leases {
        s.push_str(&format!("{},{},{}\n", l.mac, l.ip, l.hostname));
    }
    s
}

/// Replaces `path` with `contents` atomically ([`crate::util::write_atomic`]).
/// The file is mode 0644: dnsmasq re-reads it after dropping privileges.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    crate::util::write_atomic(path, contents, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_data() {
        let text = "# c\n\n52:54:00:00:00:01,10.77.0.100,app-1\n 52:54:00:00:00:02 , 10.77.0.101 , App-2 \n";
        let leases = parse(text).unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[1].hostname.as_str(), "app-2");
        assert_eq!(
            render(&leases),
            format!("{HEADER}\n52:54:00:00:00:01,10.77.0.100,app-1\n52:54:00:00:00:02,10.77.0.101,app-2\n")
        );
        assert_eq!(parse(&render(&leases)).unwrap(), leases);
        for (bad, want) in [
            (
                "52:54:00:00:00:01,10.77.0.100",
                "line 1: expected MAC,IP,hostname, found 2",
            ),
            (
                "#\n52:54:00:00:00:01,10.77.0.100,a,b",
                "line 2: expected MAC,IP,hostname, found 4",
            ),
            ("52:54:00:00:00:0,10.77.0.100,a", "line 1: invalid MAC"),
            (
                "52:54:00:00:00:01,10.77.0.300,a",
                "line 1: invalid IPv4 address \"10.77.0.300\"",
            ),
            (
                "52:54:00:00:00:01,10.77.0.3,a_b",
                "line 1: invalid hostname",
            ),
            (
                "52:54:00:00:00:01,10.77.0.3,45m",
                "line 1: invalid hostname",
            ),
            ("52:54:00:00:00:01,id:x,a", "line 1: invalid IPv4"),
            ("52:54:00:00:00:0", "line 1: expected"),
        ] {
            let got = parse(bad).unwrap_err().to_string();
            assert!(got.starts_with(want), "{bad:?}: {got}");
        }
    }

    #[test]
    fn writes_atomically_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        write_atomic(&p, b"one\n").unwrap();
        write_atomic(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(write_atomic(&dir.path().join("missing/hosts"), b"x").is_err());
    }
}
