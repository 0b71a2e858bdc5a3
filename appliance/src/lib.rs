//! The DaaS appliance: web portal, REST API, Guacamole gateway, users,
//! lifecycle state in SQLite, durable jobs and the backends.
//!
//! `main` is thin: [`cli`] parses the command line; `serve` builds an
//! [`Appliance`] and runs it until a signal. Tests build one on port 0 in a
//! temporary state directory the same way.
//!
//! See `docs/ARCHITECTURE.md` for the map of modules and their invariants.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod demo;
pub mod guest;
pub mod jobs;
pub mod lifecycle;
pub mod model;
pub mod nodes;
pub mod reconcile;
pub mod store;
pub mod web;

use backend::{BackendError, Backends};
use config::Config;
use jobs::{error_chain, Engine};
use lifecycle::Lifecycle;
use store::{Store, StoreError};

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory is missing and cannot be made, or is not writable.
    #[error("the state directory {path} is not usable: {reason}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store could not be opened or migrated.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// A backend cannot work.
    #[error("the {backend} backend cannot work")]
    Backend {
        /// Which.
        backend: &'static str,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("cannot set up TLS")]
    Tls(#[from] web::serve::TlsError),
    /// The appliance's SSH key for guests could not be made or read.
    #[error("cannot set up the appliance's guest key")]
    GuestKey(#[source] guest::GuestError),
}

/// Options of `serve`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Seed the demo catalogue on first start.
    pub demo: bool,
    /// Print where the portal is on standard output once ready (the CLI).
    pub announce: bool,
}

/// A built appliance, bound to its port, not yet serving.
pub struct Appliance {
    cfg: Arc<Config>,
    opts: Options,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    tls_fingerprint: Option<String>,
    state: Arc<web::AppState>,
    engine: Engine,
    reconciler: reconcile::Reconciler,
    events: tokio::sync::mpsc::UnboundedReceiver<backend::BackendEvent>,
    shutdown: CancellationToken,
    local_agent: Option<nodes::agent::AgentLeases>,
    backends: Backends,
}

/// Checks that `dir` exists (creating it) and is writable.
fn prepare_state_dir(dir: &Path) -> Result<(), StartError> {
    let err = |reason: String| StartError::StateDir {
        path: dir.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| err(format!("cannot write in it: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl Appliance {
    /// Opens the store, checks the backends, binds the listener.
    pub async fn build(cfg: Config, opts: Options) -> Result<Appliance, StartError> {
        let cfg = Arc::new(cfg);
        prepare_state_dir(&cfg.paths.state_dir)?;
        let store_path = cfg.store_path();
        if let Some(parent) = store_path.parent() {
            prepare_state_dir(parent)?;
        }
        let store = Store::open(&store_path)?;
        info!(path = %store_path.display(), version = store.schema_version()?, "store ready");
        // The key guests trust (docs/guest-proxy.md): made at first start.
        let guest_key = guest::ssh::ApplianceKey::load_or_create(&cfg.paths.state_dir)
            .map_err(StartError::GuestKey)?;
        info!(fingerprint = %guest_key.fingerprint(), "guest key ready");

        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut backends = Backends::default();
        let local_agent = cfg.agent.socket.as_ref().map(|socket| {
            let client = nodes::agent::AgentClient::unix(
                socket.clone(),
                Duration::from_secs(cfg.agent.timeout_secs),
            );
            nodes::agent::AgentLeases::new(client, store.clone(), "")
        });
        if let Some(l) = &local_agent {
            backends.set_leases(Arc::new(l.clone()));
        }
        if cfg.backends.local.enabled {
            let local = backend::local::LocalBackend::new(
                cfg.backends.local.clone(),
                &cfg.paths.state_dir,
                events_tx.clone(),
                cfg.gateway.engine == config::Engine::Guacd,
            )
            .map_err(|source| StartError::Backend {
                backend: "local",
                source,
            })?;
            use backend::Backend as _;
            local.check().await.map_err(|source| StartError::Backend {
                backend: "local",
                source,
            })?;
            backends.insert(Arc::new(local));
        }
        if cfg.backends.docker.enabled {
            let docker = backend::docker::DockerBackend::new(
                cfg.backends.docker.clone(),
                &cfg.paths.state_dir,
                events_tx.clone(),
            )
            .map_err(|source| StartError::Backend {
                backend: "docker",
                source,
            })?;
            use backend::Backend as _;
            docker.check().await.map_err(|source| StartError::Backend {
                backend: "docker",
                source,
            })?;
            backends.insert(Arc::new(docker));
        }
        if cfg.backends.proxmox.enabled {
            let pve = backend::proxmox::ProxmoxBackend::new(
                cfg.backends.proxmox.clone(),
                &cfg.paths.state_dir,
                backends.leases().cloned(),
                guest_key.clone(),
                Arc::new(store.clone()),
            )
            .map_err(|source| StartError::Backend {
                backend: "proxmox",
                source,
            })?;
            use backend::Backend as _;
            pve.check().await.map_err(|source| StartError::Backend {
                backend: "proxmox",
                source,
            })?;
            backends.insert(Arc::new(pve));
        }

        let engine = Engine::new(store.clone(), backends.clone(), cfg.jobs.clone());
        let tickets = Arc::new(auth::Tickets::new(Duration::from_secs(
            cfg.gateway.ticket_ttl_secs,
        )));
        let lifecycle = Lifecycle::new(
            store.clone(),
            engine.clone(),
            backends.clone(),
            tickets,
            cfg.clone(),
        );
        let reconciler =
            reconcile::Reconciler::new(store.clone(), backends.clone(), engine.clone());

        let (tls, tls_fingerprint) = if cfg.tls_enabled() {
            let (c, fp) = web::serve::tls_config(&cfg)?;
            (Some(c), Some(fp))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind(cfg.server.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.server.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.server.listen,
            source,
        })?;
        let fingerprint = tls_fingerprint.as_deref().and_then(|f| f.parse().ok());
        let nodes = nodes::Nodes::new(
            store.clone(),
            cfg.nodes.clone(),
            &cfg.paths.state_dir,
            fingerprint,
        );
        let shutdown = CancellationToken::new();
        let state = Arc::new(web::AppState {
            nodes,
            lifecycle,
            cfg: cfg.clone(),
            throttle: auth::Throttle::new(
                cfg.auth.login_max_failures,
                Duration::from_secs(cfg.auth.login_window_secs),
            ),
            ready: Default::default(),
            shutdown: shutdown.clone(),
            tls: tls.is_some(),
            http: Default::default(),
            started_at: model::now(),
            reconciler: reconciler.clone(),
            tunnels: Default::default(),
            gateway: Default::default(),
        });
        Ok(Appliance {
            cfg,
            opts,
            listener,
            addr,
            tls,
            tls_fingerprint,
            state,
            engine,
            reconciler,
            events,
            shutdown,
            local_agent,
            backends,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The URL of the portal.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = match self.addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "localhost".to_owned(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "localhost".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    /// The SHA-256 fingerprint of the TLS certificate, if TLS is on.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls_fingerprint.as_deref()
    }

    /// Cancel this to stop the appliance (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains: no new
    /// work, open tunnels closed, running jobs given the grace period to
    /// reach a checkpoint (they resume at the next start).
    pub async fn run_until_stopped(self) -> Result<(), StartError> {
        let url = self.url();
        let Appliance {
            cfg,
            opts,
            listener,
            addr,
            tls,
            state,
            engine,
            reconciler,
            events,
            shutdown,
            tls_fingerprint,
            local_agent,
            backends,
        } = self;

        // Crash leftovers first: reap orphaned sessions, then resume jobs.
        if let Err(e) = reconciler.pass(true).await {
            warn!(error = %error_chain(&e), "first reconciler pass failed");
        }
        let resumed = engine.recover()?;
        if resumed > 0 {
            info!(jobs = resumed, "resuming unfinished jobs");
        }
        engine.start(shutdown.clone(), events);
        if cfg.reconciler.interval_secs > 0 {
            tokio::spawn(reconciler.clone().run(
                Duration::from_secs(cfg.reconciler.interval_secs),
                shutdown.clone(),
            ));
        }
        spawn_housekeeping(state.clone(), shutdown.clone());
        tokio::spawn(state.nodes.clone().run_liveness(shutdown.clone()));
        if let Some(agent) = local_agent {
            // The appliance holds the truth: the agent's leases become the store's.
            tokio::spawn(agent.converge_until_done(Duration::from_secs(5), shutdown.clone()));
        }
        web::tunnel::spawn_instance_watch(state.clone());

        let app = web::router(state.clone());
        let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
        let server = tokio::spawn(web::serve::serve(
            listener,
            tls,
            app,
            shutdown.clone(),
            grace,
        ));
        state.ready.store(true, Ordering::Release);
        info!(%addr, "listening");
        if opts.announce {
            println!("DaaS appliance listening on {url}");
            if let Some(fp) = &tls_fingerprint {
                println!("TLS certificate SHA-256 fingerprint: {fp}");
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        spawn_watchdog(state.clone(), shutdown.clone());

        if opts.demo && !demo::seeded(&state.lifecycle) {
            let lc = state.lifecycle.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                match demo_admin(&lc) {
                    Ok(admin) => {
                        if let Err(e) = demo::seed(&lc, &admin, &cfg).await {
                            error!(error = %e, "cannot seed the demo catalogue");
                        }
                    }
                    Err(e) => error!(error = %e, "cannot seed the demo catalogue"),
                }
            });
        }

        shutdown.cancelled().await;
        info!("shutting down: draining");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        state.ready.store(false, Ordering::Release);
        let drained = engine.drain(grace);
        let served = server;
        // Tunnels were told SESSION_CLOSED by the cancelled token; give them
        // a moment to deliver it before the runtime goes away.
        let tunnels = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while state.tunnels.count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::join!(drained, served, tunnels);
        for b in backends.iter() {
            b.shutdown().await;
        }
        // Heartbeats answered since the last second's write.
        if let Err(e) = state.nodes.flush() {
            warn!(error = %jobs::error_chain(&e), "heartbeats not written at shutdown");
        }
        info!("stopped");
        Ok(())
    }
}

/// The admin the demo catalogue belongs to: the first admin, or a new
/// `admin` whose password is printed once.
fn demo_admin(lc: &Lifecycle) -> Result<model::User, String> {
    let store = lc.store();
    let users = store.users().map_err(|e| e.to_string())?;
    if let Some(a) = users.iter().find(|u| u.is_admin() && !u.disabled) {
        return Ok(a.clone());
    }
    let pw = auth::new_secret("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect::<String>();
    let hash = auth::hash_password(&pw).map_err(|e| e.to_string())?;
    let u = store
        .create_user("admin", model::Role::Admin, &hash)
        .map_err(|e| e.to_string())?;
    // Printed once, on standard output, for the person who started the demo.
    println!("Demo login: user \"admin\", password \"{pw}\" (change it in the portal)");
    info!("made the demo admin; its password is printed on standard output");
    Ok(u)
}

fn spawn_housekeeping(state: Arc<web::AppState>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stop.cancelled() => return,
            }
            match state.lifecycle.store().purge_sessions(model::now()) {
                Ok(n) if n > 0 => info!(sessions = n, "expired sessions removed"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot purge sessions"),
            }
        }
    });
}

/// WATCHDOG=1 while the store answers, at half the interval systemd asks.
fn spawn_watchdog(state: Arc<web::AppState>, stop: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            if state.lifecycle.store().ping().is_ok() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                warn!("store not answering: withholding the watchdog ping");
            }
        }
    });
}

/// Sets up tracing from the config (RUST_LOG overrides the level).
pub fn init_logging(cfg: &config::Log) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        config::LogFormat::Json => b.json().try_init(),
        config::LogFormat::Text => b.try_init(),
    };
}
