//! Starts the real `daas-appliance` binary on port 0 in a temporary state
//! directory and talks to it over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_daas-appliance");
pub const ADMIN_PW: &str = "admin-password-1";

/// A temporary state directory the session user can traverse.
pub fn state_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("daas-it-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    d
}

/// Writes a config; lines of `extra` before its first table header go into
/// `[server]`, the rest is appended.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("appliance.toml");
    let split = extra
        .find("\n[")
        .map(|i| i + 1)
        .unwrap_or(if extra.starts_with('[') {
            0
        } else {
            extra.len()
        });
    let (server, tables) = extra.split_at(split);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = \"off\"\n{server}\n[paths]\nstate_dir = \"{}\"\n[reconciler]\ninterval_secs = 1\n{tables}",
        dir.join("state").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs a CLI command with the config; returns (success, stdout, stderr).
pub fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        let _ = c.stdin.take().unwrap().write_all(s.as_bytes());
    }
    drop(c.stdin.take());
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running appliance.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub url: String,
    pub child: Option<Child>,
}

impl Daemon {
    /// A fresh state dir with an admin, started.
    pub fn start(extra: &str, demo: bool) -> Daemon {
        let dir = state_dir();
        let config = write_config(dir.path(), extra);
        let (ok, _, err) = cli(
            &config,
            &[
                "user",
                "add",
                "admin",
                "--role",
                "admin",
                "--password-stdin",
            ],
            Some(ADMIN_PW),
        );
        assert!(ok, "user add: {err}");
        Daemon::spawn(dir, config, demo)
    }

    /// Starts the binary on an existing state dir.
    pub fn spawn(dir: tempfile::TempDir, config: PathBuf, demo: bool) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config).arg("serve");
        if demo {
            cmd.arg("--demo");
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let err = child.stderr.take().unwrap();
        let log = dir.path().join("daemon.log");
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{l}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    if let Some(u) = l.strip_prefix("DaaS appliance listening on ") {
                        break u.trim().to_owned();
                    }
                }
                Err(_) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        let log = std::fs::read_to_string(dir.path().join("daemon.log"))
                            .unwrap_or_default();
                        panic!("the appliance exited ({st}) before listening: {log}");
                    }
                    assert!(Instant::now() < deadline, "the appliance did not start");
                }
            }
        };
        Daemon {
            dir,
            config,
            url,
            child: Some(child),
        }
    }

    /// SIGKILL, keeping the state dir.
    pub fn kill9(mut self) -> (tempfile::TempDir, PathBuf) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.config.clone())
    }

    /// SIGTERM and wait; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let c = self.child.take().unwrap();
        terminate(c)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    pub async fn admin(&self) -> Client {
        let c = self.client();
        c.login("admin", ADMIN_PW).await;
        c
    }

    /// Creates a user through the API and returns a client logged in as them.
    pub async fn user(&self, admin: &Client, name: &str) -> Client {
        let (s, b) = admin
            .post(
                "/api/v1/users",
                json!({ "name": name, "role": "user", "password": "user-password-1" }),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let c = self.client();
        c.login(name, "user-password-1").await;
        c
    }
}

fn terminate(mut c: Child) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return st.success();
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

/// An HTTP client with a cookie jar that sends our Origin on writes.
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub origin: Option<String>,
    pub token: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .cookie_store(true)
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            origin: Some(base.to_owned()),
            token: None,
        }
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(o) = &self.origin {
            r = r.header("Origin", o);
        }
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = r.send().await.unwrap();
        let s = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::POST, path)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn raw(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.req(m, path)
    }

    pub async fn login(&self, name: &str, pw: &str) {
        let (s, b) = self
            .post(
                "/api/v1/session",
                json!({ "username": name, "password": pw }),
            )
            .await;
        assert_eq!(s, 200, "login {name}: {b}");
    }

    /// Waits for a job to end; returns its final JSON.
    pub async fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, j) = self.get(&format!("/api/v1/jobs/{id}")).await;
            assert_eq!(s, 200, "{j}");
            if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {j}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for a job to succeed.
    pub async fn job_ok(&self, body: &Value) -> Value {
        let id = body["job"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job in {body}"));
        let j = self.wait_job(id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        j
    }
}

/// Instance ids whose sandbox (bwrap) processes run under this state dir.
pub fn sessions_under(dir: &Path) -> Vec<String> {
    let needle = format!("{}/state/local/instances/", dir.to_string_lossy());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).into_owned();
        if !cmd.starts_with("bwrap") {
            continue;
        }
        // Skip zombies.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
        {
            continue;
        }
        if let Some(rest) = cmd.split(&needle).nth(1) {
            let id: String = rest.chars().take_while(|c| *c != '/').collect();
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// Pids of every sandbox process under this state dir.
pub fn session_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("bwrap") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}
