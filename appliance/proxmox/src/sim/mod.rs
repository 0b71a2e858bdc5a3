//! A Proxmox VE simulator: a real HTTPS server speaking the `/api2/json`
//! subset the client uses, with PVE's envelope, status lines and error
//! formats (400 with per-field `errors`; 500 with `VM is locked (clone)`
//! and friends; 401/403), UPIDs and tasks that take time, config locks held
//! while tasks run, linked clones only from templates on storage that can
//! link, live snapshots and rollback semantics, the `nextid` race, and
//! faults injected at a seeded rate or by script.
//!
//! Outside `/api2`, the simulator answers (with the same credentials):
//! - `GET /sim/state`: VMs, locks, snapshots, tasks and fault counts;
//! - `GET /sim/requests`: every API request received, with its parameters
//!   and answer (tests check them against PVE's API schema);
//! - `POST /sim/faults`: a scripted fault (`{"method":"GET","path":"/status/current","kind":"595","count":2}`)
//!   or a new rate (`{"rate":0.1}`).

mod api;
mod params;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::tls::Fingerprint;
use world::{Shared, TicketSession};
pub use world::{SimSnapshot, SimTask, SimVm};

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileges {
    /// Everything.
    All,
    /// Only these privileges (on every path).
    Only(BTreeSet<String>),
}

/// An accepted API token.
#[derive(Debug, Clone)]
pub struct SimToken {
    /// `USER@REALM!TOKENID`.
    pub id: String,
    /// Its secret.
    pub secret: String,
    /// Its privileges.
    pub privileges: Privileges,
}

/// A user that may log in with a password (tickets have all privileges).
#[derive(Debug, Clone)]
pub struct SimUser {
    /// `user@realm`.
    pub userid: String,
    /// Password.
    pub password: String,
}

/// A storage.
#[derive(Debug, Clone)]
pub struct SimStorage {
    /// Its id.
    pub id: String,
    /// Its type (`lvmthin`, `lvm`, ...).
    pub kind: String,
    /// Whether disks on it can be linked-cloned.
    pub linked_clones: bool,
    /// Whether all nodes see it.
    pub shared: bool,
}

/// A VM present at start.
#[derive(Debug, Clone)]
pub struct SimSeedVm {
    /// VMID.
    pub vmid: u32,
    /// Node.
    pub node: String,
    /// Name.
    pub name: String,
    /// Storage of its disk.
    pub storage: String,
    /// Whether it is a template.
    pub template: bool,
}

/// How long things take.
#[derive(Debug, Clone)]
pub struct SimTimings {
    /// From the call to the worker running.
    pub fork: Duration,
    /// A linked clone.
    pub clone: Duration,
    /// A full clone.
    pub full_clone: Duration,
    /// How long a clone holds its storage's allocation lock.
    pub storage_lock_hold: Duration,
    /// Template conversion.
    pub template: Duration,
    /// A snapshot without RAM.
    pub snapshot: Duration,
    /// A snapshot with RAM.
    pub snapshot_vmstate: Duration,
    /// A rollback.
    pub rollback: Duration,
    /// A start.
    pub start: Duration,
    /// A clean shutdown.
    pub shutdown: Duration,
    /// A hard stop.
    pub stop: Duration,
    /// A destroy.
    pub destroy: Duration,
    /// How long a worker waits for a file lock (PVE: 10 s for configs and
    /// storage).
    pub lock_timeout: Duration,
    /// Added to every API answer.
    pub latency: Duration,
}

impl SimTimings {
    /// Durations of a small real cluster on fast storage.
    pub fn realistic() -> SimTimings {
        SimTimings {
            fork: Duration::from_millis(30),
            clone: Duration::from_millis(1500),
            full_clone: Duration::from_secs(8),
            storage_lock_hold: Duration::from_millis(500),
            template: Duration::from_millis(1500),
            snapshot: Duration::from_millis(800),
            snapshot_vmstate: Duration::from_secs(4),
            rollback: Duration::from_millis(1500),
            start: Duration::from_secs(2),
            shutdown: Duration::from_secs(5),
            stop: Duration::from_millis(800),
            destroy: Duration::from_millis(1200),
            lock_timeout: Duration::from_secs(10),
            latency: Duration::from_millis(5),
        }
    }

    /// Every duration multiplied by `f`.
    pub fn scaled(&self, f: f64) -> SimTimings {
        let s = |d: Duration| d.mul_f64(f);
        SimTimings {
            fork: s(self.fork),
            clone: s(self.clone),
            full_clone: s(self.full_clone),
            storage_lock_hold: s(self.storage_lock_hold),
            template: s(self.template),
            snapshot: s(self.snapshot),
            snapshot_vmstate: s(self.snapshot_vmstate),
            rollback: s(self.rollback),
            start: s(self.start),
            shutdown: s(self.shutdown),
            stop: s(self.stop),
            destroy: s(self.destroy),
            lock_timeout: s(self.lock_timeout),
            latency: s(self.latency),
        }
    }
}

/// A fault the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// `595 Connection refused` before the call is applied (pveproxy could
    /// not reach the node).
    #[serde(rename = "595")]
    Refused595,
    /// `596 Connection timed out` before the call is applied.
    #[serde(rename = "596")]
    Timeout596,
    /// The call is applied, then the answer is lost as a 596.
    #[serde(rename = "lost")]
    Lost596,
    /// The answer hangs for the configured time, then the call goes on
    /// (if the client still waits).
    #[serde(rename = "hang")]
    Hang,
    /// The call's task fails (for calls that start tasks).
    #[serde(rename = "task")]
    TaskFail,
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultKind, String> {
        Ok(match s {
            "595" => FaultKind::Refused595,
            "596" => FaultKind::Timeout596,
            "lost" => FaultKind::Lost596,
            "hang" => FaultKind::Hang,
            "task" => FaultKind::TaskFail,
            _ => return Err(format!("unknown fault {s:?} (595, 596, lost, hang, task)")),
        })
    }
}

/// Faults at a rate.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// The share of API requests that get a fault (0 to 1).
    pub rate: f64,
    /// The random seed.
    pub seed: u64,
    /// The kinds to pick from.
    pub kinds: Vec<FaultKind>,
    /// How long a hang lasts.
    pub hang: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            rate: 0.0,
            seed: 1,
            kinds: Vec::new(),
            hang: Duration::from_secs(30),
        }
    }
}

/// A fault for the next `count` requests whose method matches (if given)
/// and whose path contains `path`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptedFault {
    /// `GET`, `POST`, ...; any if absent.
    #[serde(default)]
    pub method: Option<String>,
    /// A part of the API path (`/clone`, `/status/current`).
    pub path: String,
    /// What happens.
    pub kind: FaultKind,
    /// How many times.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl ScriptedFault {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && path.contains(&self.path)
    }
}

/// The simulator's setup.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Cluster nodes.
    pub nodes: Vec<String>,
    /// Accepted tokens.
    pub tokens: Vec<SimToken>,
    /// Password logins.
    pub users: Vec<SimUser>,
    /// Storages.
    pub storages: Vec<SimStorage>,
    /// VMs at start.
    pub vms: Vec<SimSeedVm>,
    /// Durations.
    pub timings: SimTimings,
    /// Faults.
    pub faults: FaultConfig,
    /// PVE delays every 401 by 3 s; tests want less.
    pub unauthorized_delay: Duration,
    /// The version reported.
    pub version: String,
}

impl SimConfig {
    /// One node `pve`; storages `local-lvm` (LVM-thin: links) and `thick`
    /// (LVM: full clones only); templates 9000 `debian-desktop` on
    /// `local-lvm` and 9001 `windows-desktop` on `thick`; the token given.
    pub fn new(token_id: &str, secret: &str) -> SimConfig {
        SimConfig {
            nodes: vec!["pve".into()],
            tokens: vec![SimToken {
                id: token_id.into(),
                secret: secret.into(),
                privileges: Privileges::All,
            }],
            users: Vec::new(),
            storages: vec![
                SimStorage {
                    id: "local-lvm".into(),
                    kind: "lvmthin".into(),
                    linked_clones: true,
                    shared: false,
                },
                SimStorage {
                    id: "thick".into(),
                    kind: "lvm".into(),
                    linked_clones: false,
                    shared: false,
                },
            ],
            vms: vec![
                SimSeedVm {
                    vmid: 9000,
                    node: "pve".into(),
                    name: "debian-desktop".into(),
                    storage: "local-lvm".into(),
                    template: true,
                },
                SimSeedVm {
                    vmid: 9001,
                    node: "pve".into(),
                    name: "windows-desktop".into(),
                    storage: "thick".into(),
                    template: true,
                },
            ],
            timings: SimTimings::realistic(),
            faults: FaultConfig::default(),
            unauthorized_delay: Duration::from_secs(3),
            version: "8.3.2".into(),
        }
    }
}

/// A request the simulator received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Order of arrival.
    pub seq: u64,
    /// Method.
    pub method: String,
    /// API path below `/api2/json`, decoded.
    pub path: String,
    /// Query parameters.
    pub query: Vec<(String, String)>,
    /// Body parameters (form or JSON).
    pub body: Vec<(String, String)>,
    /// `token`, `ticket` or `none`.
    pub auth: String,
    /// The answer's status.
    pub status: u16,
    /// The answer's `data` for a 2xx.
    pub data: Option<Value>,
    /// The fault injected, if any.
    pub fault: Option<FaultKind>,
}

/// What `GET /sim/state` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimState {
    /// Every VM.
    pub vms: Vec<SimVm>,
    /// Tasks still running.
    pub running_tasks: Vec<String>,
    /// Tasks in all.
    pub tasks: usize,
    /// Faults injected so far.
    pub faults_injected: u64,
    /// API requests so far.
    pub requests: u64,
}

/// The TLS identity: a CA and a server certificate it signed (like
/// `pve-root-ca.pem` and `pve-ssl.pem`).
#[derive(Debug, Clone)]
pub struct SimTls {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub cert_pem: String,
    /// The server key (PEM).
    pub key_pem: String,
}

impl SimTls {
    /// A fresh CA and a server certificate for `names` (plus localhost,
    /// 127.0.0.1 and ::1).
    pub fn generate(names: &[String]) -> Result<SimTls, rcgen::Error> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "daas-pve-sim CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut all = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for n in names {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
        let mut params = rcgen::CertificateParams::new(all)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "daas-pve-sim");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(SimTls {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn server_config(&self) -> Result<(Arc<rustls::ServerConfig>, Fingerprint), SimStartError> {
        let certs: Vec<_> = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| SimStartError::Tls(e.to_string()))?;
        let first = certs
            .first()
            .ok_or_else(|| SimStartError::Tls("no certificate".into()))?;
        let fingerprint = Fingerprint::of_der(first.as_ref());
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| SimStartError::Tls(e.to_string()))?
            .ok_or_else(|| SimStartError::Tls("no private key".into()))?;
        let mut sc = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SimStartError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| SimStartError::Tls(e.to_string()))?;
        // pveproxy speaks HTTP/1.1 only (and puts messages in the status line).
        sc.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok((Arc::new(sc), fingerprint))
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimStartError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A running simulator.
pub struct Simulator {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    tls: SimTls,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts serving on `listen` (port 0 picks one) with `tls`.
    pub async fn start(
        config: SimConfig,
        listen: SocketAddr,
        tls: SimTls,
    ) -> Result<Simulator, SimStartError> {
        let (server_config, fingerprint) = tls.server_config()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| SimStartError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimStartError::Bind {
                addr: listen,
                source,
            })?;
        let shared = Arc::new(Shared::new(config, fingerprint.to_string()));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (stop, stopped) = watch::channel(false);
        let join = tokio::spawn(serve(listener, server_config, app, stopped));
        info!(%addr, %fingerprint, "Proxmox VE simulator listening");
        Ok(Simulator {
            addr,
            fingerprint,
            tls,
            shared,
            stop,
            join,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (what a client is configured with).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server certificate's SHA-256 fingerprint (to pin).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The CA certificate (PEM), for CA-verified clients.
    pub fn ca_pem(&self) -> &str {
        &self.tls.ca_pem
    }

    /// The state now.
    pub fn state(&self) -> SimState {
        state_of(&self.shared)
    }

    /// Every API request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.world().requests.clone()
    }

    /// Adds a scripted fault.
    pub fn inject(&self, fault: ScriptedFault) {
        self.shared.world().scripted.push(fault);
    }

    /// Changes the fault rate (the kinds stay those configured).
    pub fn set_fault_rate(&self, rate: f64) {
        self.shared.world().fault_rate = rate;
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }
}

fn state_of(sh: &Shared) -> SimState {
    let w = sh.world();
    let mut running: Vec<String> = w
        .tasks
        .values()
        .filter(|t| t.status == "running" && t.kind != "vncproxy")
        .map(|t| t.upid.clone())
        .collect();
    running.sort();
    SimState {
        vms: w.vms.values().cloned().collect(),
        running_tasks: running,
        tasks: w.tasks.len(),
        faults_injected: w.faults_injected,
        requests: w.request_count,
    }
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut stopped: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let app = app.clone();
        let mut stop_conn = stopped.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        debug!(%peer, "TLS handshake failed");
                        return;
                    }
                };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop_conn.changed() => {}
            }
        });
    }
}

// ---- HTTP ----

const MAX_POST: usize = 64 * 1024;

fn reply(status: u16, reason: &str, body: Option<Value>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match &body {
        Some(b) => Response::new(Body::from(b.to_string())),
        None => Response::new(Body::empty()),
    };
    *resp.status_mut() = status;
    if body.is_some() {
        resp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
    }
    // PVE puts the message in the status line (first line only).
    let line: String = reason
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if Some(line.as_str()) != status.canonical_reason() && !line.is_empty() {
        if let Ok(rp) = hyper::ext::ReasonPhrase::try_from(line.into_bytes()) {
            resp.extensions_mut().insert(rp);
        }
    }
    resp
}

fn ok_reply(data: Value, total: Option<u64>) -> Response {
    let mut body = json!({ "data": data });
    if let Some(t) = total {
        body["total"] = json!(t);
    }
    reply(200, "OK", Some(body))
}

fn error_reply(status: u16, message: &str) -> Response {
    let msg = format!("{}\n", message.trim_end());
    reply(status, message, Some(json!({"data": null, "message": msg})))
}

fn params_reply(errors: &BTreeMap<String, String>) -> Response {
    reply(
        400,
        "Parameter verification failed.",
        Some(
            json!({"data": null, "errors": errors, "message": "Parameter verification failed.\n"}),
        ),
    )
}

fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `application/x-www-form-urlencoded` (also query strings).
fn parse_form(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Some(out)
}

fn parse_json_body(b: &[u8]) -> Option<Vec<(String, String)>> {
    let v: Value = serde_json::from_slice(b).ok()?;
    let obj = v.as_object()?;
    Some(
        obj.iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect(),
    )
}

enum Auth {
    Token(api::Caller),
    Ticket(api::Caller, String),
    None,
}

fn authenticate(sh: &Shared, headers: &HeaderMap) -> Result<Auth, &'static str> {
    if let Some(cookie) = headers.get("cookie").and_then(|c| c.to_str().ok()) {
        for part in cookie.split(';') {
            if let Some(t) = part.trim().strip_prefix("PVEAuthCookie=") {
                let t = percent_decode(t, false).unwrap_or_default();
                let w = sh.world();
                return match w.tickets.get(&t) {
                    Some(TicketSession { user, csrf }) => Ok(Auth::Ticket(
                        api::Caller {
                            user: user.clone(),
                            privileges: Privileges::All,
                        },
                        csrf.clone(),
                    )),
                    None => Err("invalid PVE ticket"),
                };
            }
        }
    }
    if let Some(a) = headers.get("authorization").and_then(|a| a.to_str().ok()) {
        let Some(rest) = a.strip_prefix("PVEAPIToken=") else {
            return Err("No ticket");
        };
        let Some((id, secret)) = rest.split_once('=') else {
            return Err("no tokenid specified");
        };
        let tok = sh
            .config
            .tokens
            .iter()
            .find(|t| t.id == id && constant_eq(t.secret.as_bytes(), secret.as_bytes()));
        return match tok {
            Some(t) => Ok(Auth::Token(api::Caller {
                user: t.id.clone(),
                privileges: t.privileges.clone(),
            })),
            None => Err("invalid token value!"),
        };
    }
    Ok(Auth::None)
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let raw_path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let body = match axum::body::to_bytes(body, MAX_POST).await {
        Ok(b) => b,
        Err(_) => return error_reply(413, "request too large"),
    };
    if let Some(rest) = raw_path.strip_prefix("/sim/") {
        return sim_endpoint(&sh, &method, rest, &parts.headers, &body);
    }
    let Some(api_path) = raw_path.strip_prefix("/api2/json") else {
        return error_reply(501, "no such uri");
    };
    let segs: Option<Vec<String>> = api_path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let Some(segs) = segs else {
        return error_reply(400, "bad request");
    };
    let path = format!("/{}", segs.join("/"));
    let Some(query_pairs) = parse_form(&query) else {
        return error_reply(400, "bad request");
    };
    let ctype = parts
        .headers
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .unwrap_or("");
    let body_pairs = if body.is_empty() {
        Some(Vec::new())
    } else if ctype.starts_with("application/json") {
        parse_json_body(&body)
    } else {
        std::str::from_utf8(&body).ok().and_then(parse_form)
    };
    let Some(body_pairs) = body_pairs else {
        return error_reply(400, "bad request");
    };
    if !body_pairs.is_empty() && (method == "GET" || method == "DELETE") {
        return error_reply(501, &format!("Unexpected content for method '{method}'"));
    }

    let seq = {
        let mut w = sh.world();
        w.request_count += 1;
        let seq = w.request_count;
        w.requests.push(RecordedRequest {
            seq,
            method: method.clone(),
            path: path.clone(),
            query: query_pairs.clone(),
            body: body_pairs.clone(),
            auth: "none".into(),
            status: 0,
            data: None,
            fault: None,
        });
        if w.requests.len() > 100_000 {
            w.requests.remove(0);
        }
        seq
    };
    let (resp, auth, data, fault) = api_call(
        &sh,
        &method,
        &segs,
        &path,
        &parts.headers,
        query_pairs,
        body_pairs,
    )
    .await;
    let mut w = sh.world();
    if let Some(r) = w.requests.iter_mut().rev().find(|r| r.seq == seq) {
        r.status = resp.status().as_u16();
        r.auth = auth.into();
        r.data = data;
        r.fault = fault;
    }
    resp
}

#[allow(clippy::too_many_arguments)]
async fn api_call(
    sh: &Arc<Shared>,
    method: &str,
    segs: &[String],
    path: &str,
    headers: &HeaderMap,
    query: Vec<(String, String)>,
    body: Vec<(String, String)>,
) -> (Response, &'static str, Option<Value>, Option<FaultKind>) {
    let t = &sh.config.timings;
    if !t.latency.is_zero() {
        tokio::time::sleep(t.latency).await;
    }
    let fault = sh.pick_fault(method, path);
    match fault {
        Some(FaultKind::Refused595) => {
            return (reply(595, "Connection refused", None), "none", None, fault)
        }
        Some(FaultKind::Timeout596) => {
            return (
                reply(596, "Connection timed out", None),
                "none",
                None,
                fault,
            )
        }
        Some(FaultKind::Hang) => tokio::time::sleep(sh.config.faults.hang).await,
        _ => {}
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in query.into_iter().chain(body) {
        params.insert(k, v);
    }
    let seg_refs: Vec<&str> = segs.iter().map(String::as_str).collect();

    // The login is the one call without credentials.
    if method == "POST" && seg_refs == ["access", "ticket"] {
        let user = params.get("username").cloned().unwrap_or_default();
        let pass = params.get("password").cloned().unwrap_or_default();
        let userid = match (user.contains('@'), params.get("realm")) {
            (false, Some(r)) => format!("{user}@{r}"),
            _ => user,
        };
        let ok = sh
            .config
            .users
            .iter()
            .any(|u| u.userid == userid && constant_eq(u.password.as_bytes(), pass.as_bytes()));
        if !ok {
            tokio::time::sleep(sh.config.unauthorized_delay).await;
            return (
                reply(401, "authentication failure", None),
                "none",
                None,
                fault,
            );
        }
        let ticket = format!(
            "PVE:{userid}:{:08X}::{}",
            world::now_secs(),
            sh.random_hex(64)
        );
        let csrf = format!("{:08X}:{}", world::now_secs(), sh.random_hex(43));
        sh.world().tickets.insert(
            ticket.clone(),
            TicketSession {
                user: userid.clone(),
                csrf: csrf.clone(),
            },
        );
        let data = json!({"username": userid, "ticket": ticket, "CSRFPreventionToken": csrf,
                          "cap": {"vms": {"VM.Allocate": 1}}});
        return (ok_reply(data.clone(), None), "none", Some(data), fault);
    }

    let (caller, auth_kind) = match authenticate(sh, headers) {
        Ok(Auth::Token(c)) => (c, "token"),
        Ok(Auth::Ticket(c, csrf)) => {
            if method != "GET" {
                let sent = headers
                    .get("csrfpreventiontoken")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if !constant_eq(sent.as_bytes(), csrf.as_bytes()) {
                    tokio::time::sleep(sh.config.unauthorized_delay).await;
                    return (
                        reply(401, "Permission denied - invalid csrf token", None),
                        "ticket",
                        None,
                        fault,
                    );
                }
            }
            (c, "ticket")
        }
        Ok(Auth::None) => {
            tokio::time::sleep(sh.config.unauthorized_delay).await;
            return (reply(401, "No ticket", None), "none", None, fault);
        }
        Err(msg) => {
            tokio::time::sleep(sh.config.unauthorized_delay).await;
            return (reply(401, msg, None), "none", None, fault);
        }
    };
    // Path parameters, as PVE merges them.
    match seg_refs.as_slice() {
        ["nodes", node, "qemu", vmid, rest @ ..] => {
            params.insert("node".into(), (*node).into());
            params.insert("vmid".into(), (*vmid).into());
            if let ["snapshot", snap, ..] = rest {
                params.insert("snapname".into(), (*snap).into());
            }
        }
        ["nodes", node, "tasks", upid, ..] => {
            params.insert("node".into(), (*node).into());
            params.insert("upid".into(), (*upid).into());
        }
        ["nodes", node, ..] => {
            params.insert("node".into(), (*node).into());
        }
        _ => {}
    }
    let inject_task = fault == Some(FaultKind::TaskFail);
    let result = api::dispatch(sh, &caller, method, &seg_refs, &params, inject_task).await;
    let (resp, data) = match result {
        Ok(api::Answer { data, total }) => (ok_reply(data.clone(), total), Some(data)),
        Err(api::Fail::Params(errors)) => (params_reply(&errors), None),
        Err(api::Fail::Error(e)) => (error_reply(e.status, &e.message), None),
    };
    if fault == Some(FaultKind::Lost596) {
        return (
            reply(596, "Connection timed out", None),
            auth_kind,
            None,
            fault,
        );
    }
    (resp, auth_kind, data, fault)
}

#[derive(Deserialize)]
struct FaultRequest {
    #[serde(default)]
    rate: Option<f64>,
    #[serde(flatten)]
    scripted: Option<ScriptedFault>,
}

fn sim_endpoint(
    sh: &Shared,
    method: &str,
    what: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    match authenticate(sh, headers) {
        Ok(Auth::Token(_)) | Ok(Auth::Ticket(..)) => {}
        _ => return reply(401, "No ticket", None),
    }
    match (method, what) {
        ("GET", "state") => {
            let s = state_of(sh);
            reply(200, "OK", Some(serde_json::to_value(s).unwrap_or_default()))
        }
        ("GET", "requests") => {
            let r = sh.world().requests.clone();
            reply(200, "OK", Some(serde_json::to_value(r).unwrap_or_default()))
        }
        ("POST", "faults") => match serde_json::from_slice::<FaultRequest>(body) {
            Ok(f) => {
                let mut w = sh.world();
                if let Some(r) = f.rate {
                    w.fault_rate = r.clamp(0.0, 1.0);
                }
                if let Some(s) = f.scripted {
                    w.scripted.push(s);
                }
                reply(200, "OK", Some(json!({"ok": true})))
            }
            Err(e) => error_reply(400, &format!("bad fault: {e}")),
        },
        _ => error_reply(404, "no such simulator endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        assert_eq!(
            parse_form("a=1&b=x%3Ay+z&c").unwrap(),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x:y z".to_string()),
                ("c".to_string(), String::new())
            ]
        );
        assert!(parse_form("a=%zz").is_none());
        assert!(parse_form("a=%C3").is_none());
        assert!(parse_form("a=%").is_none());
        assert_eq!(
            parse_json_body(br#"{"full":true,"newid":101,"name":"x"}"#).unwrap(),
            vec![
                ("full".to_string(), "1".to_string()),
                ("name".to_string(), "x".to_string()),
                ("newid".to_string(), "101".to_string())
            ]
        );
        assert!(parse_json_body(b"[1]").is_none());
    }

    #[test]
    fn fault_kinds_parse() {
        assert_eq!("595".parse::<FaultKind>().unwrap(), FaultKind::Refused595);
        assert_eq!("task".parse::<FaultKind>().unwrap(), FaultKind::TaskFail);
        assert!("nope".parse::<FaultKind>().is_err());
        let f: ScriptedFault = serde_json::from_str(r#"{"path":"/clone","kind":"lost"}"#).unwrap();
        assert_eq!(f.count, 1);
        assert!(f.matches("POST", "/nodes/pve/qemu/9000/clone"));
    }
}
