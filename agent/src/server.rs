//! Building and running the agent.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daas_agent_api::status::HeartbeatStatus;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Listen};
use crate::dnsmasq::{Dnsmasq, ManagedSpec};
use crate::heartbeat::HeartbeatTask;
use crate::shared::Shared;
use crate::state::{StateDir, StateError};
use crate::store::{LeaseStore, LoadError};
use crate::util::unix_now;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state directory")]
    State(#[from] StateError),
    #[error("another daas-agent holds {path}")]
    Locked { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hosts file")]
    Hosts(#[from] LoadError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("socket group {0:?} does not exist")]
    NoGroup(String),
    #[error("mutual TLS from the join state")]
    Tls(#[from] crate::tls::TlsError),
    #[error("heartbeat")]
    Heartbeat(#[from] crate::client::ClientError),
    #[error("leases")]
    Range(#[from] daas_agent_api::Ipv4RangeError),
}

/// A built agent: listeners bound, dnsmasq started, hosts file loaded.
pub struct Agent {
    shared: Arc<Shared>,
    unix: UnixListener,
    socket_path: PathBuf,
    tls: Option<TlsListener>,
    heartbeat: Option<HeartbeatTask>,
    stop: CancellationToken,
    flusher: tokio::task::JoinHandle<()>,
    _lock: Flock<File>,
}

impl Agent {
    /// Binds the unix socket (and the mutual-TLS port when joined), loads
    /// the hosts file, starts (or finds) dnsmasq.
    pub async fn build(config: Config) -> Result<Agent, StartError> {
        let state = StateDir::new(&config.node.state_dir);
        state.ensure()?;
        let lock_path = config.node.state_dir.join("agent.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StartError::Io {
                what: "lock",
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StartError::Locked { path: lock_path })?;

        let joined = state.load()?;
        let stop = CancellationToken::new();
        let range = config.range()?;
        let hosts_file = config.hosts_file();
        if let Some(dir) = hosts_file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Io {
                what: "hosts file directory",
                path: dir.to_owned(),
                source,
            })?;
        }
        warn_if_unreadable_by_dnsmasq(&hosts_file);

        let dnsmasq = if config.dnsmasq.manage {
            let spec = ManagedSpec {
                binary: config.dnsmasq.binary.clone(),
                interface: config.dnsmasq.interface.clone().unwrap_or_default(),
                range,
                lease_time: config.dnsmasq.lease_time.clone(),
                hosts_file: hosts_file.clone(),
                lease_file: config.dnsmasq_lease_file(),
                extra_args: config.dnsmasq.extra_args.clone(),
                restart_max: Duration::from_secs(config.dnsmasq.restart_max_secs),
            };
            // The file must exist before dnsmasq reads it.
            if !hosts_file.exists() {
                crate::hostsfile::write_atomic(
                    &hosts_file,
                    crate::hostsfile::render([]).as_bytes(),
                )
                .map_err(|source| StartError::Io {
                    what: "hosts file",
                    path: hosts_file.clone(),
                    source,
                })?;
            }
            Dnsmasq::managed(spec, stop.child_token()).await
        } else {
            Dnsmasq::external(&config.dnsmasq.binary, config.dnsmasq.pid_file.clone()).await
        };
        let st = dnsmasq.status();
        if st.state != daas_agent_api::DnsmasqState::Running {
            tracing::error!(status = %crate::dnsmasq::describe(&st), "dnsmasq is not running: leases are stored but not served");
        }

        let (store, flusher) = LeaseStore::open(
            &hosts_file,
            range,
            Duration::from_millis(config.leases.batch_delay_ms),
            dnsmasq.clone(),
            stop.clone(),
        )?;

        let socket_path = config.api.socket.clone();
        let unix = bind_unix(
            &socket_path,
            config.api.socket_mode,
            config.api.socket_group.as_deref(),
        )?;

        let mut tls = None;
        let mut heartbeat = None;
        if let Some(j) = &joined {
            if let Listen::Addr(addr) = config.api.tls_listen {
                let server_config = crate::tls::server_config(&j.cert_pem, &j.key_pem, &j.ca_pem)?;
                let tcp = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?;
                tls = Some(TlsListener::start(tcp, server_config)?);
            }
            heartbeat = Some(HeartbeatTask::new(
                j,
                config.heartbeat.interval_secs,
                Duration::from_secs(u64::from(config.heartbeat.timeout_secs)),
                Duration::from_secs(u64::from(config.heartbeat.max_backoff_secs)),
            )?);
        } else {
            tracing::info!("not joined: no mutual-TLS API, no heartbeats (see `daas-agent join`)");
        }

        let node_name = match &joined {
            Some(j) => j.record.node_name.to_string(),
            None => crate::join::node_name(&config)
                .map(|n| n.to_string())
                .unwrap_or_default(),
        };
        let interval = heartbeat
            .as_ref()
            .map(|h| u32::try_from(h.interval.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            store,
            dnsmasq,
            node_name,
            storage_paths: config.node.storage_paths.clone(),
            started: Instant::now(),
            started_unix: unix_now(),
            join: joined.map(|j| j.record),
            heartbeat: Mutex::new(HeartbeatStatus {
                interval_secs: interval,
                sequence: 0,
                last_ok: None,
                last_error: None,
                consecutive_failures: 0,
            }),
            appliance_instances: Mutex::new(None),
        });
        Ok(Agent {
            shared,
            unix,
            socket_path,
            tls,
            heartbeat,
            stop,
            flusher,
            _lock: lock,
        })
    }

    /// The unix socket of the API.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The bound address of the mutual-TLS API, when the node has joined.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.addr)
    }

    /// Cancel it to stop the agent.
    pub fn stop_handle(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until the stop handle is cancelled, then finishes pending
    /// writes, stops a managed dnsmasq and removes the socket.
    pub async fn run_until_stopped(self) -> Result<(), StartError> {
        let Agent {
            shared,
            unix,
            socket_path,
            tls,
            heartbeat,
            stop,
            flusher,
            _lock,
        } = self;
        let router = crate::api::router(shared.clone());
        let mut tasks = tokio::task::JoinSet::new();
        {
            let stop = stop.clone();
            let router = router.clone();
            tasks.spawn(async move {
                if let Err(e) = axum::serve(unix, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "unix socket server failed");
                }
            });
        }
        if let Some(tls) = tls {
            let stop = stop.clone();
            tracing::info!(addr = %tls.addr, "mutual-TLS API listening");
            tasks.spawn(async move {
                if let Err(e) = axum::serve(tls, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "mutual-TLS server failed");
                }
            });
        }
        if let Some(hb) = heartbeat {
            tasks.spawn(hb.run(shared.clone(), stop.clone()));
        }
        tasks.spawn(watchdog(stop.clone()));
        tracing::info!(socket = %socket_path.display(), "daas-agent ready");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

        stop.cancelled().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!("stopping");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s; closing them");
        }
        let _ = flusher.await;
        shared.dnsmasq.join().await;
        let _ = std::fs::remove_file(&socket_path);
        Ok(())
    }
}

/// WATCHDOG=1 at half the interval systemd asks for.
async fn watchdog(stop: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = stop.cancelled() => return,
        }
    }
}

fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, StartError> {
    let io = |what: &'static str| {
        let path = path.to_owned();
        move |source| StartError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("socket directory"))?;
    }
    // A socket left by a crash: remove it (only if it is a socket).
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(io("stale socket"))?;
        }
    }
    let listener = UnixListener::bind(path).map_err(io("socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("socket"))?;
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| StartError::NoGroup(g.to_owned()))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| io("socket")(std::io::Error::from(e)))?;
    }
    Ok(listener)
}

/// dnsmasq re-reads the hosts file after dropping root: every directory on
/// the way must be searchable and the file readable by others.
fn warn_if_unreadable_by_dnsmasq(path: &Path) {
    for dir in path.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.permissions().mode() & 0o001 == 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    "directory of the hosts file is not searchable by others: dnsmasq (which drops root) may fail to re-read it"
                );
                return;
            }
        }
    }
}

/// TLS connections whose handshake succeeded, for `axum::serve`.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn start(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Result<Self, StartError> {
        let addr = tcp.local_addr().map_err(|source| StartError::Io {
            what: "TLS listener",
            path: PathBuf::new(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            addr,
            acceptor: task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
