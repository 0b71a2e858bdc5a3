//! Helpers: temp dirs, agent configs, an HTTP client over the unix socket
//! (and over TLS), network namespaces and processes cleaned up in `Drop`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The built agent binary.
pub(crate) fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_daas-agent")
}

/// A temp dir dnsmasq can read after dropping root (mode 0755).
pub(crate) fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("daas-agent-it")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A config in `dir`: socket, state, hosts file; TLS off; `extra` appended
/// (TOML tables) after the defaults given here.
pub(crate) fn config_text(dir: &Path, leases: &str, dnsmasq: &str, extra: &str) -> String {
    format!(
        r#"
[node]
name = "test-node"
state_dir = "{dir}/state"
storage_paths = ["{dir}"]

[api]
socket = "{dir}/agent.sock"
tls_listen = "off"

[leases]
{leases}

[dnsmasq]
{dnsmasq}

[log]
level = "debug"
{extra}
"#,
        dir = dir.display()
    )
}

pub(crate) fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn parse_config(dir: &Path, text: &str) -> daas_agent::Config {
    daas_agent::Config::from_toml(text, &dir.join("agent.toml")).unwrap()
}

/// One HTTP request over the agent's unix socket; the JSON answer.
pub(crate) async fn call(
    sock: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    send(
        stream,
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        "application/json",
    )
    .await
    .unwrap()
}

/// Like [`call`] with a raw body and content type.
pub(crate) async fn call_raw(
    sock: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (StatusCode, Value) {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    send(stream, method, path, Some(body), content_type)
        .await
        .unwrap()
}

/// One request on an established stream.
pub(crate) async fn send<S>(
    stream: S,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
) -> Result<(StatusCode, Value), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "agent");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, content_type);
    }
    let req = req
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 16 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((status, value))
}

/// Waits until `f` is true, or panics after `limit` with `what`.
pub(crate) async fn wait_until<F: FnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether this machine can make network namespaces; prints a loud SKIP if not.
pub(crate) fn can_netns(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("\n*** SKIP {test}: not root (network namespaces need root) ***\n");
        return false;
    }
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("\n*** SKIP {test}: `ip netns` is not available ***\n");
    }
    ok
}

/// Whether a program exists; prints a loud SKIP if not.
pub(crate) fn have(program: &str, test: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("\n*** SKIP {test}: {program} is not installed ***\n");
    }
    ok
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test process: `daas-t-<pid>-<n>`.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces, deleted (with every process in them killed) on drop.
pub(crate) struct Netns {
    pub(crate) names: Vec<String>,
}

impl Netns {
    pub(crate) fn new(n: usize) -> Netns {
        let base = unique("daas-t");
        let ns = Netns {
            names: (0..n).map(|i| format!("{base}-{i}")).collect(),
        };
        for name in &ns.names {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub(crate) struct Proc(pub Child);

impl Proc {
    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for it to exit, at most `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the built agent (`serve`), optionally inside network namespace
/// `netns`, with its log in `dir/agent.log`; waits for its socket.
pub(crate) async fn spawn_agent(dir: &Path, config: &Path, netns: Option<&str>) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, agent_bin()]);
            c
        }
        None => Command::new(agent_bin()),
    };
    cmd.arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = Proc(cmd.spawn().unwrap());
    let sock = dir.join("agent.sock");
    let log_path = dir.join("agent.log");
    let start = Instant::now();
    loop {
        if tokio::net::UnixStream::connect(&sock).await.is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!(
                "agent did not start; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// A dnsmasq that does nothing but exist (no DNS, no DHCP): an "external"
/// dnsmasq for the agent to SIGHUP. Killed on drop.
pub(crate) struct IdleDnsmasq {
    _proc: Proc,
    pub(crate) pid_file: PathBuf,
}

impl IdleDnsmasq {
    pub(crate) async fn start(dir: &Path) -> IdleDnsmasq {
        let pid_file = dir.join("dnsmasq.pid");
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--log-facility=-",
            ])
            .arg(format!("--pid-file={}", pid_file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proc = Proc(child);
        let p = pid_file.clone();
        wait_until(Duration::from_secs(5), "dnsmasq pid file", || {
            std::fs::read_to_string(&p)
                .map(|t| !t.trim().is_empty())
                .unwrap_or(false)
        })
        .await;
        IdleDnsmasq {
            _proc: proc,
            pid_file,
        }
    }

    /// The `[dnsmasq]` table for an agent that uses it.
    pub(crate) fn config(&self) -> String {
        format!("manage = false\npid_file = \"{}\"", self.pid_file.display())
    }
}

/// An in-process agent, stopped on drop.
pub(crate) struct InProcess {
    pub(crate) socket: PathBuf,
    pub(crate) tls_addr: Option<std::net::SocketAddr>,
    pub(crate) stop: tokio_util::sync::CancellationToken,
    pub(crate) task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    pub(crate) async fn start(config: daas_agent::Config) -> InProcess {
        let agent = daas_agent::Agent::build(config).await.unwrap();
        let socket = agent.socket_path().to_owned();
        let tls_addr = agent.tls_addr();
        let stop = agent.stop_handle();
        let task = tokio::spawn(async move {
            agent.run_until_stopped().await.unwrap();
        });
        InProcess {
            socket,
            tls_addr,
            stop,
            task: Some(task),
        }
    }

    pub(crate) async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A CA and certificates made with rcgen.
pub(crate) struct Pki {
    pub(crate) ca_cert: rcgen::Certificate,
    pub(crate) ca_key: rcgen::KeyPair,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        Pki { ca_cert, ca_key }
    }

    pub(crate) fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// A certificate for `key`, valid for DNS name `dns`, server and client auth.
    pub(crate) fn issue(&self, dns: &str, key: &impl rcgen::PublicKeyData) -> String {
        let mut params = rcgen::CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params
            .signed_by(key, &self.ca_cert, &self.ca_key)
            .unwrap()
            .pem()
    }

    /// What the appliance does at join: only the CSR's public key is used;
    /// the names are its own.
    pub(crate) fn sign_csr(&self, csr_pem: &str, dns: &str) -> Result<String, String> {
        let csr =
            rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        Ok(self.issue(dns, &csr.public_key))
    }
}

/// GET `path` over TLS to `addr`, trusting `ca_pem` for server name
/// `server_name`, with an optional client certificate.
pub(crate) async fn tls_get(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    server_name: &str,
    client: Option<(&str, &str)>,
    path: &str,
) -> Result<(StatusCode, Value), String> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in daas_agent::tls::certs_from_pem("ca", ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(daas_agent::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                daas_agent::tls::certs_from_pem("client", cert).unwrap(),
                daas_agent::tls::key_from_pem("client", key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        send(tls, Method::GET, path, None, ""),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
}
