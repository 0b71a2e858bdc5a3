//! The agent's TOML configuration, `/etc/daas/agent.toml` by default.
//!
//! Every key has a default that works; unknown keys and bad values are
//! errors that name the key, the file and the line ([`ConfigError`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use daas_agent_api::{Hostname, Ipv4Net, Ipv4Range};
use serde::{Deserialize, Deserializer};

/// The installed default location.
pub const DEFAULT_PATH: &str = "/etc/daas/agent.toml";

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type or form.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A value that parses but does not fit (`key` is `table.key`).
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub leases: LeasesConfig,
    pub dnsmasq: DnsmasqConfig,
    pub heartbeat: HeartbeatConfig,
    pub log: LogConfig,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name at join; default: the host name's first label.
    pub name: Option<Hostname>,
    /// Where the key, certificates and join state live (mode 0700).
    pub state_dir: PathBuf,
    /// Paths whose disk space the facts report.
    pub storage_paths: Vec<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            state_dir: PathBuf::from("/var/lib/daas-agent"),
            storage_paths: vec![PathBuf::from("/")],
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The unix socket of the API (for an appliance on the same node).
    pub socket: PathBuf,
    /// Its mode (TOML octal: `0o660`).
    pub socket_mode: u32,
    /// The group that owns the socket (the appliance's), if any.
    pub socket_group: Option<String>,
    /// `HOST:PORT` of the mutual-TLS API, served once the node has joined;
    /// `"off"` for none.
    pub tls_listen: Listen,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: PathBuf::from("/run/daas-agent/agent.sock"),
            socket_mode: 0o660,
            socket_group: None,
            tls_listen: Listen::Addr(SocketAddr::from(([0, 0, 0, 0], 7443))),
        }
    }
}

/// A TCP listen address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    Addr(SocketAddr),
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse().map(Listen::Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not HOST:PORT (an IP address and a port) or \"off\""
            ))
        })
    }
}

/// `[leases]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// The dnsmasq `--dhcp-hostsfile` the agent owns; default
    /// `<state_dir>/dnsmasq-hosts`.
    pub hosts_file: Option<PathBuf>,
    /// The instances' subnet.
    pub subnet: Ipv4Net,
    /// First address to hand out.
    pub range_start: Ipv4Addr,
    /// Last address to hand out.
    pub range_end: Ipv4Addr,
    /// How long changes may gather before one write of the hosts file, in
    /// milliseconds (0..=1000).
    pub batch_delay_ms: u64,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig {
            hosts_file: None,
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 77, 0, 0), 24).expect("valid default"),
            range_start: Ipv4Addr::new(10, 77, 0, 100),
            range_end: Ipv4Addr::new(10, 77, 0, 250),
            batch_delay_ms: 2,
        }
    }
}

/// `[dnsmasq]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsmasqConfig {
    /// `true`: the agent runs and supervises dnsmasq; `false`: dnsmasq is
    /// the system's, found through `pid_file`.
    pub manage: bool,
    /// The dnsmasq program.
    pub binary: PathBuf,
    /// External mode: dnsmasq's pid file (its `--pid-file`).
    pub pid_file: PathBuf,
    /// Managed mode: the interface (bridge) to serve DHCP on. Required there.
    pub interface: Option<String>,
    /// Managed mode: the lease time dnsmasq gives (`45m`, `1h`, `infinite`).
    pub lease_time: String,
    /// Managed mode: dnsmasq's lease database; default `<state_dir>/dnsmasq.leases`.
    pub lease_file: Option<PathBuf>,
    /// Managed mode: more arguments for dnsmasq (e.g. `"--log-dhcp"`).
    pub extra_args: Vec<String>,
    /// Managed mode: the longest wait before a restart, in seconds.
    pub restart_max_secs: u64,
}

impl Default for DnsmasqConfig {
    fn default() -> Self {
        DnsmasqConfig {
            manage: false,
            binary: PathBuf::from("dnsmasq"),
            pid_file: PathBuf::from("/run/dnsmasq/dnsmasq.pid"),
            interface: None,
            lease_time: "1h".into(),
            lease_file: None,
            extra_args: Vec::new(),
            restart_max_secs: 30,
        }
    }
}

/// `[heartbeat]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Seconds between heartbeats; default: what the appliance said at join.
    pub interval_secs: Option<u32>,
    /// Seconds one heartbeat (connect, TLS, request) may take.
    pub timeout_secs: u32,
    /// The longest wait between retries while the appliance is unreachable.
    pub max_backoff_secs: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_secs: None,
            timeout_secs: 10,
            max_backoff_secs: 60,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `daas_agent=debug,info`, ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Loads `path`; with `None`, the installed default if it exists, else
    /// the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        match path {
            Some(p) => Ok((Config::from_file(p)?, Some(p.to_owned()))),
            None if Path::new(DEFAULT_PATH).exists() => {
                let p = Path::new(DEFAULT_PATH);
                Ok((Config::from_file(p)?, Some(p.to_owned())))
            }
            None => Ok((Config::default(), None)),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and checks `text`; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim_end().to_owned(),
        })?;
        config
            .validate()
            .map_err(|(table, key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                line: key_line(text, table, key),
                key: format!("{table}.{key}"),
                message,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, &'static str, String)> {
        self.range().map_err(|e| {
            let key = match e {
                daas_agent_api::Ipv4RangeError::OutsideSubnet { ip, .. }
                    if ip == self.leases.range_end && ip != self.leases.range_start =>
                {
                    "range_end"
                }
                _ => "range_start",
            };
            ("leases", key, e.to_string())
        })?;
        if self.leases.batch_delay_ms > 1000 {
            return Err((
                "leases",
                "batch_delay_ms",
                format!("{} is more than 1000", self.leases.batch_delay_ms),
            ));
        }
        if self.api.socket_mode > 0o777 {
            return Err((
                "api",
                "socket_mode",
                format!(
                    "{:#o} is not a file mode (0o000..=0o777)",
                    self.api.socket_mode
                ),
            ));
        }
        if !self.api.socket.is_absolute() {
            return Err(("api", "socket", "must be an absolute path".into()));
        }
        if !self.node.state_dir.is_absolute() {
            return Err(("node", "state_dir", "must be an absolute path".into()));
        }
        if let Some(h) = &self.leases.hosts_file {
            if !h.is_absolute() || h.file_name().is_none() {
                return Err((
                    "leases",
                    "hosts_file",
                    "must be an absolute file path".into(),
                ));
            }
        }
        let d = &self.dnsmasq;
        match (&d.interface, d.manage) {
            (None, true) => {
                return Err((
                    "dnsmasq",
                    "interface",
                    "required when manage = true (the bridge to serve DHCP on)".into(),
                ))
            }
            (Some(i), _) if !valid_interface(i) => {
                return Err((
                    "dnsmasq",
                    "interface",
                    format!(
                        "{i:?} is not an interface name (1-15 characters, no '/', ',', spaces)"
                    ),
                ))
            }
            _ => {}
        }
        if !valid_lease_time(&d.lease_time) {
            return Err((
                "dnsmasq",
                "lease_time",
                format!(
                    "{:?} is not a lease time (a number with s, m, h, d or w, at least 2m, or \"infinite\")",
                    d.lease_time
                ),
            ));
        }
        if let Some(a) = d.extra_args.iter().find(|a| a.contains('\0')) {
            return Err((
                "dnsmasq",
                "extra_args",
                format!("{a:?} contains a NUL byte"),
            ));
        }
        if d.restart_max_secs == 0 || d.restart_max_secs > 3600 {
            return Err(("dnsmasq", "restart_max_secs", "must be 1..=3600".into()));
        }
        let hb = &self.heartbeat;
        if let Some(i) = hb.interval_secs {
            if !daas_agent_api::join::HEARTBEAT_INTERVAL_SECS.contains(&i) {
                return Err((
                    "heartbeat",
                    "interval_secs",
                    format!("{i} is not in 1..=3600"),
                ));
            }
        }
        if hb.timeout_secs == 0 || hb.timeout_secs > 300 {
            return Err(("heartbeat", "timeout_secs", "must be 1..=300".into()));
        }
        if hb.max_backoff_secs == 0 || hb.max_backoff_secs > 3600 {
            return Err(("heartbeat", "max_backoff_secs", "must be 1..=3600".into()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(("log", "level", format!("{:?}: {e}", self.log.level)));
        }
        Ok(())
    }

    /// The address pool.
    pub fn range(&self) -> Result<Ipv4Range, daas_agent_api::Ipv4RangeError> {
        Ipv4Range::new(
            self.leases.subnet,
            self.leases.range_start,
            self.leases.range_end,
        )
    }

    pub fn hosts_file(&self) -> PathBuf {
        self.leases
            .hosts_file
            .clone()
            .unwrap_or_else(|| self.node.state_dir.join("dnsmasq-hosts"))
    }

    pub fn dnsmasq_lease_file(&self) -> PathBuf {
        self.dnsmasq
            .lease_file
            .clone()
            .unwrap_or_else(|| self.node.state_dir.join("dnsmasq.leases"))
    }
}

fn valid_interface(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',')
}

fn valid_lease_time(t: &str) -> bool {
    if t == "infinite" {
        return true;
    }
    let Some(unit) = t.chars().last() else {
        return false;
    };
    let digits = &t[..t.len() - unit.len_utf8()];
    let factor: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 604800,
        _ => return false,
    };
    !digits.is_empty()
        && digits.len() <= 9
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits
            .parse::<u64>()
            .map(|n| n * factor >= 120)
            .unwrap_or(false)
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line where `key` is set in `[table]`; else the line of `[table]`;
/// else 1.
fn key_line(text: &str, table: &str, key: &str) -> usize {
    let mut current = String::new();
    let mut table_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            if let Some(name) = rest.split(']').next() {
                current = name.trim().to_owned();
                if current == table {
                    table_line = table_line.or(Some(i + 1));
                }
            }
            continue;
        }
        let dotted = format!("{table}.{key}");
        let (k, has_eq) = match line.split_once('=') {
            Some((k, _)) => (k.trim().trim_matches('"'), true),
            None => (line, false),
        };
        if has_eq && ((current == table && k == key) || (current.is_empty() && k == dotted)) {
            return i + 1;
        }
    }
    table_line.unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("/etc/daas/agent.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.range().unwrap().len(), 151);
        assert_eq!(
            c.hosts_file(),
            Path::new("/var/lib/daas-agent/dnsmasq-hosts")
        );
        assert!(!c.dnsmasq.manage);
        assert_eq!(c.api.socket_mode, 0o660);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../configs/agent.toml");
        load(text).unwrap();
    }

    #[test]
    fn errors_name_key_file_and_line() {
        for (text, want) in [
            (
                "[leases]\nsubnet = \"10.0.0.0/24\"\nbogus = 1\n",
                "/etc/daas/agent.toml:3: unknown field `bogus`",
            ),
            ("[nope]\n", "/etc/daas/agent.toml:1: unknown field `nope`"),
            (
                "\n[leases]\nsubnet = \"10.0.0.1/24\"\n",
                "/etc/daas/agent.toml:3: invalid subnet: 10.0.0.1/24 has host bits set",
            ),
            (
                "[api]\ntls_listen = \"nowhere\"\n",
                "/etc/daas/agent.toml:2: \"nowhere\" is not HOST:PORT",
            ),
            (
                "[leases]\nsubnet = \"10.1.0.0/24\"\nrange_start = \"10.1.0.10\"\nrange_end = \"10.1.1.10\"\n",
                "/etc/daas/agent.toml:4: leases.range_end: invalid range: 10.1.1.10 is not a host address of 10.1.0.0/24",
            ),
            (
                "[leases]\nsubnet = \"10.1.0.0/24\"\n",
                "/etc/daas/agent.toml:1: leases.range_start: invalid range: 10.77.0.100 is not a host address",
            ),
            (
                "[dnsmasq]\nmanage = true\n",
                "/etc/daas/agent.toml:1: dnsmasq.interface: required when manage = true",
            ),
            (
                "[dnsmasq]\nmanage = true\ninterface = \"a/b\"\n",
                "/etc/daas/agent.toml:3: dnsmasq.interface: \"a/b\" is not an interface name",
            ),
            (
                "[dnsmasq]\nlease_time = \"10\"\n",
                "/etc/daas/agent.toml:2: dnsmasq.lease_time:",
            ),
            (
                "[api]\nsocket_mode = 0o7777\n",
                "/etc/daas/agent.toml:2: api.socket_mode: 0o7777 is not a file mode",
            ),
            (
                "[heartbeat]\ninterval_secs = 0\n",
                "/etc/daas/agent.toml:2: heartbeat.interval_secs: 0 is not in 1..=3600",
            ),
            (
                "[heartbeat]\ninterval_secs = -1\n",
                "/etc/daas/agent.toml:2: invalid value: integer `-1`",
            ),
            (
                "[node]\nname = \"bad_name\"\n",
                "/etc/daas/agent.toml:2: invalid hostname",
            ),
            ("[log]\nformat = \"xml\"\n", "/etc/daas/agent.toml:2: unknown variant `xml`"),
            ("[log\n", "/etc/daas/agent.toml:1:"),
            ("leases.batch_delay_ms = 5000\n", "/etc/daas/agent.toml:1: leases.batch_delay_ms"),
        ] {
            let got = load(text).unwrap_err();
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn lease_times() {
        for ok in ["2m", "1h", "120s", "7d", "1w", "infinite"] {
            assert!(valid_lease_time(ok), "{ok}");
        }
        for bad in [
            "",
            "h",
            "1",
            "1x",
            "59s",
            "1m",
            "-1h",
            "1.5h",
            "99999999999h",
            "1hh",
            "é",
        ] {
            assert!(!valid_lease_time(bad), "{bad}");
        }
    }
}
