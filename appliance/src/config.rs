//! The appliance's TOML configuration.
//!
//! Every key but the fixed ones has a default that works on the embedded
//! default (local backend, SQLite). Unknown keys and bad values are errors
//! that name the key, the file and the line ([`ConfigError`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// The installed default location.
pub const DEFAULT_PATH: &str = "/etc/daas/appliance.toml";

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP(S) listener.
    pub server: Server,
    /// The SQLite store.
    pub store: StoreConfig,
    /// Where state lives.
    pub paths: Paths,
    /// The Guacamole gateway.
    pub gateway: Gateway,
    /// Logins and sessions.
    pub auth: Auth,
    /// Per-user limits.
    pub limits: Limits,
    /// The job engine.
    pub jobs: Jobs,
    /// The reconciler.
    pub reconciler: Reconciler,
    /// Logging.
    pub log: Log,
    /// The backends.
    pub backends: Backends,
    /// Nodes joined to this appliance.
    pub nodes: Nodes,
    /// The agent on this node.
    pub agent: Agent,
    /// `serve --demo`.
    pub demo: Demo,
}

/// `[demo]`: what `serve --demo` seeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Demo {
    /// The backend the demo catalogue is made on: `local` or `docker`
    /// (which needs `[backends.docker] enabled` and `demo_image`).
    pub backend: crate::model::BackendKind,
}

impl Default for Demo {
    fn default() -> Self {
        Demo {
            backend: crate::model::BackendKind::Local,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// `HOST:PORT` to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// `auto` (a configured certificate if given, else self-signed made on
    /// first start) or `off` (plain HTTP).
    pub tls: TlsMode,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    pub insecure_http: bool,
    /// The URL users reach the portal at (printed, and trusted as Origin).
    pub public_url: Option<String>,
    /// More origins trusted for cookie-authenticated writes.
    pub trusted_origins: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds allowed to drain on shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            tls: TlsMode::Auto,
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            public_url: None,
            trusted_origins: Vec::new(),
            max_body_bytes: 1 << 20,
            shutdown_grace_secs: 10,
        }
    }
}

/// TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// The configured certificate, or a self-signed one.
    Auto,
    /// Plain HTTP.
    Off,
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The database file; default `<state_dir>/daas.db`.
    pub path: Option<PathBuf>,
}

/// `[paths]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// Where the appliance keeps its state.
    pub state_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state_dir: PathBuf::from("/var/lib/daas"),
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// `builtin` or `guacd`.
    pub engine: Engine,
    /// guacd's `HOST:PORT`.
    pub guacd: String,
    /// Speak TLS to guacd.
    pub guacd_tls: bool,
    /// Seconds a tunnel may stay silent before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a connect ticket stays valid.
    pub ticket_ttl_secs: u64,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            engine: Engine::Builtin,
            guacd: "127.0.0.1:4822".into(),
            guacd_tls: false,
            idle_timeout_secs: 900,
            ticket_ttl_secs: 30,
        }
    }
}

/// The gateway engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The built-in VNC engine.
    Builtin,
    /// Relay to guacd.
    Guacd,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Seconds of inactivity after which a session ends.
    pub session_idle_secs: i64,
    /// Seconds after login after which a session ends regardless.
    pub session_absolute_secs: i64,
    /// Failed logins allowed per user name and per client address in a window.
    pub login_max_failures: u32,
    /// The throttling window in seconds.
    pub login_window_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 3600,
            login_max_failures: 5,
            login_window_secs: 300,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Environments a user may own.
    pub environments_per_user: u32,
    /// Live instances a user may have at once.
    pub instances_per_user: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            environments_per_user: 1,
            instances_per_user: 8,
        }
    }
}

/// `[jobs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jobs {
    /// Jobs run at once.
    pub workers: usize,
    /// Attempts of a step whose backend error is retryable.
    pub max_attempts: u32,
    /// First retry delay in milliseconds (doubling).
    pub retry_backoff_ms: u64,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            workers: 8,
            max_attempts: 3,
            retry_backoff_ms: 250,
        }
    }
}

/// `[reconciler]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconciler {
    /// Seconds between passes (0 disables).
    pub interval_secs: u64,
}

impl Default for Reconciler {
    fn default() -> Self {
        Reconciler { interval_secs: 30 }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `daas_appliance=debug`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[backends]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backends {
    /// `[backends.local]`.
    pub local: LocalBackend,
    /// `[backends.docker]`.
    pub docker: DockerBackend,
    /// `[backends.proxmox]`.
    pub proxmox: ProxmoxBackend,
}

/// `[backends.proxmox]`: desktops as VMs of a Proxmox VE cluster, through
/// its REST API (docs/proxmox.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxmoxBackend {
    /// Whether the backend is on.
    pub enabled: bool,
    /// A node's API address, `https://HOST:8006` (any node of the cluster).
    pub url: String,
    /// The API token file: one line `USER@REALM!TOKENID=SECRET` (or the
    /// secret alone with `token_id`), mode 600.
    pub token_file: PathBuf,
    /// The token id, when `token_file` holds only the secret.
    pub token_id: Option<String>,
    /// The SHA-256 fingerprint of the node's certificate (`AA:BB:...`).
    pub fingerprint: Option<String>,
    /// A CA certificate file (PEM) the node's certificate chains to.
    pub ca_file: Option<PathBuf>,
    /// The node new VMs are made on (where the templates are).
    pub node: String,
    /// Storage for full clones (where linked ones are impossible); default:
    /// the source's.
    pub storage: Option<String>,
    /// The bridge of every desktop VM's `net0`.
    pub bridge: String,
    /// A pool new VMs go into (the token's privileges may be on it).
    pub pool: Option<String>,
    /// Tasks in flight per node (parallel clones hit PVE's lock timeouts).
    pub tasks_per_node: usize,
    /// Cores of an Environment VM whose spec has none.
    pub cores: u32,
    /// Memory of an Environment VM whose spec has none, MiB.
    pub memory_mib: u32,
    /// The marks' scope: the tag `daas-<scope>` on every VM made, so
    /// appliances sharing a cluster tell theirs apart; default: made at
    /// first start and kept in `<state_dir>/proxmox/scope`.
    pub scope: Option<String>,
    /// Launch apps and run ConfigAuto scripts through the guest-proxy
    /// (SSH to the VM's address). Off: instances are the resumed VM only
    /// (the simulator's VMs have no guest).
    pub guest: bool,
    /// The guest-proxy's SSH login user and port.
    pub guest_user: String,
    /// The guest's SSH port.
    pub guest_port: u16,
    /// Seconds to wait for the guest-proxy to answer after a start.
    pub guest_timeout_secs: u64,
    /// The desktop's user in the guest (apps are spawned as it).
    pub desktop_user: String,
    /// The X display the guest's VNC server serves.
    pub display: String,
    /// The TCP port of the guest's VNC server (on the VM's address).
    pub vnc_port: u16,
    /// Warm instances kept per App (0 or 1: an App runs on its
    /// Deployment's VM, which holds one instance at a time).
    pub warm_pool: u32,
    /// Warm instances kept in all (bounds the pool's VMs and RAM).
    pub warm_pool_max: u32,
    /// Seconds a clean shutdown may take before the VM is stopped hard.
    pub shutdown_timeout_secs: u64,
    /// Seconds one API request may take.
    pub request_timeout_secs: u64,
    /// First wait between task status polls, ms.
    pub poll_initial_ms: u64,
    /// Longest wait between task status polls, ms.
    pub poll_max_ms: u64,
}

impl Default for ProxmoxBackend {
    fn default() -> Self {
        ProxmoxBackend {
            enabled: false,
            url: String::new(),
            token_file: PathBuf::from("/etc/daas/pve.token"),
            token_id: None,
            fingerprint: None,
            ca_file: None,
            node: "pve".into(),
            storage: None,
            bridge: "vmbr1".into(),
            pool: None,
            tasks_per_node: 4,
            cores: 2,
            memory_mib: 2048,
            scope: None,
            guest: true,
            guest_user: "daas-proxy".into(),
            guest_port: 22,
            guest_timeout_secs: 120,
            desktop_user: "daas".into(),
            display: ":0".into(),
            vnc_port: 5900,
            warm_pool: 0,
            warm_pool_max: 16,
            shutdown_timeout_secs: 30,
            request_timeout_secs: 60,
            poll_initial_ms: 100,
            poll_max_ms: 2000,
        }
    }
}

/// `[backends.docker]`: desktops as containers of a Docker Engine reached
/// over its unix socket (docs/docker.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerBackend {
    /// Whether the backend is on.
    pub enabled: bool,
    /// The engine's unix socket.
    pub socket: PathBuf,
    /// The value of the `org.daas.appliance` label that marks what this
    /// appliance makes; default: an id made at first start and kept in
    /// `<state_dir>/docker/scope`. Appliances sharing an engine need
    /// different scopes.
    pub scope: Option<String>,
    /// The image the demo Baseimage is made from (`[demo] backend = "docker"`).
    pub demo_image: Option<String>,
    /// The user (`UID:GID` or a name in the image) desktops and the
    /// ConfigAuto scripts of Environments and Deployments run as.
    /// Baseimage scripts run as root (admins install software there).
    pub user: String,
    /// That user's home in the images; App containers start on a copy of it
    /// on their tmpfs.
    pub home: String,
    /// The Xvnc binary inside the images.
    pub xvnc: String,
    /// Default desktop size.
    pub geometry: Geometry,
    /// Seconds to wait for a container's display.
    pub start_timeout_secs: u64,
    /// Size of each App container's `/tmp` tmpfs (which holds its home), MiB.
    pub tmpfs_mib: u32,
    /// Memory limit of an App whose spec has none, MiB (0: none).
    pub default_memory_mib: u32,
    /// Process limit of an App whose spec has none (0: none).
    pub default_pids: u32,
    /// CPU limit of an App whose spec has none, cores (0: none).
    pub default_cpus: u32,
    /// Seconds between garbage collections (dangling images, empty
    /// networks; 0 disables the timer, GC still follows deletes).
    pub gc_interval_secs: u64,
}

impl Default for DockerBackend {
    fn default() -> Self {
        DockerBackend {
            enabled: false,
            socket: PathBuf::from("/var/run/docker.sock"),
            scope: None,
            demo_image: None,
            user: "1000:1000".into(),
            home: "/home/daas".into(),
            xvnc: "Xvnc".into(),
            geometry: Geometry {
                width: 1280,
                height: 800,
            },
            start_timeout_secs: 20,
            tmpfs_mib: 256,
            default_memory_mib: 2048,
            default_pids: 1024,
            default_cpus: 0,
            gc_interval_secs: 300,
        }
    }
}

/// `[backends.local]`: desktops as sandboxed Xvnc sessions on this machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalBackend {
    /// Whether the backend is on.
    pub enabled: bool,
    /// The Xvnc binary.
    pub xvnc: String,
    /// The bubblewrap binary that sandboxes each session.
    pub bwrap: String,
    /// The user sessions run as when the appliance itself runs as root.
    pub run_as: String,
    /// Default desktop size.
    pub geometry: Geometry,
    /// Give sessions the host's network (`host`) or none (`none`).
    pub network: Network,
    /// Seconds to wait for a session's display.
    pub start_timeout_secs: u64,
    /// The skeleton copied into a new Baseimage's home.
    pub skeleton: PathBuf,
}

impl Default for LocalBackend {
    fn default() -> Self {
        LocalBackend {
            enabled: true,
            xvnc: "Xvnc".into(),
            bwrap: "bwrap".into(),
            run_as: "nobody".into(),
            geometry: Geometry {
                width: 1280,
                height: 800,
            },
            network: Network::None,
            start_timeout_secs: 15,
            skeleton: PathBuf::from("/etc/skel"),
        }
    }
}

/// `[nodes]`: joining nodes and their heartbeats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nodes {
    /// Seconds between a node's heartbeats (told to agents at join and in
    /// every heartbeat answer).
    pub heartbeat_interval_secs: u32,
    /// Heartbeats missed in a row after which a node is unavailable.
    pub missed_heartbeats: u32,
    /// Minutes a join token stays valid unless told otherwise.
    pub token_ttl_minutes: u32,
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes {
            heartbeat_interval_secs: 5,
            missed_heartbeats: 3,
            token_ttl_minutes: 60,
        }
    }
}

/// `[agent]`: the `daas-agent` on this node (static DHCP leases).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agent {
    /// The agent's unix socket; unset: no local agent.
    pub socket: Option<PathBuf>,
    /// Seconds one call to an agent may take.
    pub timeout_secs: u64,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            socket: None,
            timeout_secs: 10,
        }
    }
}

/// Session network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No network at all (own namespace with loopback only).
    None,
    /// The host's network.
    Host,
}

/// A desktop size `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
}

impl std::str::FromStr for Geometry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid geometry {s:?}: expected WIDTHxHEIGHT, each 64 to 8192");
        let (w, h) = s.split_once('x').ok_or_else(bad)?;
        let w: u16 = w.parse().map_err(|_| bad())?;
        let h: u16 = h.parse().map_err(|_| bad())?;
        if !(64..=8192).contains(&w) || !(64..=8192).contains(&h) {
            return Err(bad());
        }
        Ok(Geometry {
            width: w,
            height: h,
        })
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl<'de> Deserialize<'de> for Geometry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Loads and validates a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` is used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            let message = e.message().trim();
            let message = match key_at(text, line) {
                Some(key)
                    if !message
                        .contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(""))) =>
                {
                    format!("{key}: {message}")
                }
                Some(key) => format!("in {key}: {message}"),
                None => message.to_owned(),
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
        cfg.validate(text, path)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| {
            let (line, column) = find_key(text, key);
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message: format!("{key}: {message}"),
            })
        };
        let s = &self.server;
        if s.tls == TlsMode::Off && !s.listen.ip().is_loopback() && !s.insecure_http {
            return err(
                "listen",
                format!(
                    "plain HTTP on the non-loopback address {} is refused; enable TLS or set insecure_http = true",
                    s.listen
                ),
            );
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return err(
                "tls_cert",
                "tls_cert and tls_key must be given together".into(),
            );
        }
        if s.max_body_bytes < 1024 {
            return err("max_body_bytes", "must be at least 1024".into());
        }
        if self.gateway.engine == Engine::Guacd && self.gateway.guacd.trim().is_empty() {
            return err(
                "guacd",
                "the guacd engine needs guacd = \"HOST:PORT\"".into(),
            );
        }
        if self.gateway.ticket_ttl_secs == 0 || self.gateway.ticket_ttl_secs > 600 {
            return err("ticket_ttl_secs", "must be between 1 and 600".into());
        }
        if self.auth.session_idle_secs <= 0 || self.auth.session_absolute_secs <= 0 {
            return err(
                "session_idle_secs",
                "session lifetimes must be positive".into(),
            );
        }
        if self.jobs.workers == 0 || self.jobs.workers > 256 {
            return err("workers", "must be between 1 and 256".into());
        }
        if self.jobs.max_attempts == 0 {
            return err("max_attempts", "must be at least 1".into());
        }
        if !(1..=3600).contains(&self.nodes.heartbeat_interval_secs) {
            return err(
                "heartbeat_interval_secs",
                "must be between 1 and 3600".into(),
            );
        }
        if !(1..=100).contains(&self.nodes.missed_heartbeats) {
            return err("missed_heartbeats", "must be between 1 and 100".into());
        }
        if !crate::nodes::TOKEN_TTL_MINUTES.contains(&self.nodes.token_ttl_minutes) {
            return err("token_ttl_minutes", "must be between 1 and 10080".into());
        }
        if self.agent.timeout_secs == 0 {
            return err("timeout_secs", "must be at least 1".into());
        }
        let d = &self.backends.docker;
        if self.demo.backend == crate::model::BackendKind::Proxmox {
            return err(
                "backend",
                "the demo catalogue runs on \"local\" or \"docker\"".into(),
            );
        }
        if self.demo.backend == crate::model::BackendKind::Docker
            && (!d.enabled || d.demo_image.as_deref().is_none_or(str::is_empty))
        {
            return err(
                "backend",
                "the demo on docker needs [backends.docker] enabled = true and demo_image = \"IMAGE\"".into(),
            );
        }
        if let Some(s) = &d.scope {
            if s.is_empty()
                || s.len() > 64
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return err("scope", "1 to 64 letters, digits, '-' or '_'".into());
            }
        }
        if d.enabled && !d.socket.is_absolute() {
            return err("socket", "must be an absolute path".into());
        }
        self.validate_proxmox(&err)?;
        if !self.paths.state_dir.is_absolute() {
            return err("state_dir", "must be an absolute path".into());
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return err("level", format!("invalid log filter {:?}", self.log.level));
        }
        Ok(())
    }

    /// The database file.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.paths.state_dir.join("daas.db"))
    }

    /// Whether the listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.server.tls == TlsMode::Auto
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted key assigned (or table opened) on a 1-based line.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let l = lines.get(line.checked_sub(1)?)?.trim();
    if l.starts_with('[') {
        return Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    }
    let key = l.split_once('=')?.0.trim().trim_matches('"').to_owned();
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|t| t.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

/// The line of the first `key =` assignment, for errors found after parsing.
impl Config {
    fn validate_proxmox(
        &self,
        err: &dyn Fn(&str, String) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let p = &self.backends.proxmox;
        if let Some(s) = &p.scope {
            if s.is_empty()
                || s.len() > 32
                || !s
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return err(
                    "scope",
                    "1 to 32 lowercase letters, digits or '-' (it becomes a Proxmox VE tag)".into(),
                );
            }
        }
        if !p.enabled {
            return Ok(());
        }
        if !p.url.starts_with("https://") {
            return err(
                "url",
                format!(
                    "[backends.proxmox] needs the node's https:// address (https://HOST:8006), not {:?}",
                    p.url
                ),
            );
        }
        if !p.token_file.is_absolute() {
            return err("token_file", "must be an absolute path".into());
        }
        if let Some(id) = &p.token_id {
            if id.parse::<daas_proxmox::TokenId>().is_err() {
                return err("token_id", format!("{id:?} is not USER@REALM!TOKENID"));
            }
        }
        match (&p.fingerprint, &p.ca_file) {
            (None, None) => {
                return err(
                    "url",
                    "[backends.proxmox] needs fingerprint = \"AA:BB:...\" (pvenode cert info) or ca_file = \"/path/pve-root-ca.pem\"".into(),
                );
            }
            (Some(_), Some(_)) => {
                return err(
                    "fingerprint",
                    "give fingerprint or ca_file, not both".into(),
                );
            }
            (Some(f), None) => {
                if f.parse::<daas_proxmox::Fingerprint>().is_err() {
                    return err(
                        "fingerprint",
                        "expected a SHA-256 fingerprint: 32 hex bytes, colons optional".into(),
                    );
                }
            }
            (None, Some(c)) => {
                if !c.is_absolute() {
                    return err("ca_file", "must be an absolute path".into());
                }
            }
        }
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if !dns(&p.node) {
            return err("node", format!("{:?} is not a node name", p.node));
        }
        if !dns(&p.bridge) {
            return err("bridge", format!("{:?} is not a bridge name", p.bridge));
        }
        if !(1..=256).contains(&p.tasks_per_node) {
            return err("tasks_per_node", "must be between 1 and 256".into());
        }
        if !(1..=512).contains(&p.cores) {
            return err("cores", "must be between 1 and 512".into());
        }
        if p.memory_mib < 16 {
            return err("memory_mib", "must be at least 16".into());
        }
        if p.warm_pool > 1 {
            return err(
                "warm_pool",
                "0 or 1: an App runs on its Deployment's VM, which holds one instance at a time (docs/proxmox.md, warm pool)".into(),
            );
        }
        if p.request_timeout_secs == 0
            || p.poll_initial_ms == 0
            || p.poll_max_ms < p.poll_initial_ms
        {
            return err(
                "request_timeout_secs",
                "timeouts must be positive and poll_max_ms >= poll_initial_ms".into(),
            );
        }
        Ok(())
    }
}

fn find_key(text: &str, key: &str) -> (usize, usize) {
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return (i + 1, l.len() - t.len() + 1);
            }
        }
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/daas/appliance.toml"))
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.gateway.engine, Engine::Builtin);
        assert_eq!(c.limits.environments_per_user, 1);
        assert_eq!(c.store_path(), PathBuf::from("/var/lib/daas/daas.db"));
    }

    #[test]
    fn fixed_keys_parse() {
        let c = parse(
            "[server]\nlisten = \"0.0.0.0:443\"\n[store]\npath = \"/tmp/x.db\"\n[gateway]\nengine = \"guacd\"\nguacd = \"10.0.0.1:4822\"\n",
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 443);
        assert_eq!(c.gateway.engine, Engine::Guacd);
        assert_eq!(c.store_path(), PathBuf::from("/tmp/x.db"));
    }

    #[test]
    fn errors_name_key_file_and_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 1\n",
                3,
                "listen_typo",
            ),
            ("\n[gateway]\nengine = \"rdp\"\n", 3, "rdp"),
            ("[server]\nlisten = \"nonsense\"\n", 2, "socket address"),
            ("[nope]\n", 1, "nope"),
            (
                "[limits]\nenvironments_per_user = -1\n",
                2,
                "environments_per_user",
            ),
            ("[backends.local]\ngeometry = \"10x10\"\n", 2, "geometry"),
            (
                "[server]\nlisten = \"0.0.0.0:80\"\ntls = \"off\"\n",
                2,
                "insecure_http",
            ),
            ("[jobs]\nworkers = 0\n", 2, "workers"),
            ("[demo]\nbackend = \"docker\"\n", 2, "demo_image"),
            (
                "[backends.docker]\nenabled = true\nscope = \"a b\"\n",
                3,
                "scope",
            ),
            (
                "[backends.docker]\nsocket_path = \"/x\"\n",
                2,
                "socket_path",
            ),
            (
                "[backends.proxmox]\nenabled = true\nurl = \"http://pve:8006\"\nfingerprint = \"00\"\n",
                3,
                "https://",
            ),
            (
                "[backends.proxmox]\nenabled = true\nurl = \"https://pve:8006\"\n",
                3,
                "fingerprint",
            ),
            (
                "[backends.proxmox]\nenabled = true\nurl = \"https://pve:8006\"\nfingerprint = \"zz\"\n",
                4,
                "SHA-256",
            ),
            (
                "[backends.proxmox]\nwarm_pool = 3\nenabled = true\nurl = \"https://pve:8006\"\nca_file = \"/ca.pem\"\n",
                2,
                "warm_pool",
            ),
            ("[backends.proxmox]\ntoken = \"x\"\n", 2, "token"),
            ("[server\n", 1, ""),
        ];
        for (text, line, needle) in cases {
            match parse(text) {
                Err(ConfigError::Invalid {
                    path,
                    line: l,
                    message,
                    ..
                }) => {
                    assert_eq!(path, Path::new("/etc/daas/appliance.toml"));
                    assert_eq!(l, *line, "{text:?}: {message}");
                    assert!(message.contains(needle), "{text:?}: {message}");
                }
                other => panic!("{text:?}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_shipped_example_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../configs/appliance.toml");
        let c = parse(text).unwrap();
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(
            c.limits.environments_per_user,
            d.limits.environments_per_user
        );
        assert_eq!(c.backends.local.geometry, d.backends.local.geometry);
        assert_eq!(c.jobs.workers, d.jobs.workers);
    }

    #[test]
    fn plain_http_on_non_loopback_needs_opt_in() {
        parse("[server]\nlisten = \"0.0.0.0:80\"\ntls = \"off\"\ninsecure_http = true\n").unwrap();
        parse("[server]\nlisten = \"127.0.0.1:80\"\ntls = \"off\"\n").unwrap();
    }
}
