//! Nodes joining the appliance: one appliance (TLS on, self-signed) and
//! three real `daas-agent` processes on loopback. Join with one-time
//! tokens, heartbeats, a killed agent marked unavailable and back, removal,
//! bad tokens and heartbeats, and the appliance's agent client over the
//! unix socket and mutual TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// Heartbeat interval of the test appliance, and its window (3 missed).
const INTERVAL: u64 = 1;
const WINDOW: u64 = 3 * INTERVAL;

/// The `daas-agent` binary beside the appliance's, built once.
fn agent_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(BIN).parent().unwrap().to_owned();
            let bin = dir.join("daas-agent");
            let target = dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "daas-agent", "--bin", "daas-agent"])
                .env("CARGO_TARGET_DIR", target)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build -p daas-agent");
            assert!(st.success(), "cargo build -p daas-agent failed");
            assert!(bin.exists(), "{} missing after the build", bin.display());
            bin
        })
        .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One agent: its directory, config, TLS port and serving process.
struct Agent {
    dir: tempfile::TempDir,
    config: PathBuf,
    tls_port: u16,
    child: Option<Child>,
}

impl Agent {
    fn new(name: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("daas-it-agent-")
            .tempdir()
            .unwrap();
        let tls_port = free_port();
        let d = dir.path().display();
        let text = format!(
            r#"[node]
name = "{name}"
state_dir = "{d}/state"
storage_paths = ["{d}"]

[api]
socket = "{d}/agent.sock"
tls_listen = "127.0.0.1:{tls_port}"

[dnsmasq]
manage = false
pid_file = "{d}/dnsmasq.pid"

[heartbeat]
timeout_secs = 2
max_backoff_secs = 2

[log]
level = "info"
"#
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        Agent {
            dir,
            config,
            tls_port,
            child: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn join(&self, url: &str, token: &str) -> (bool, String) {
        let out = Command::new(agent_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["join", url])
            .env("DAAS_JOIN_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Starts `serve` and waits for its socket.
    fn serve(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(agent_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "agent did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("state/node").join(rel)).unwrap()
    }

    fn node_id(&self) -> String {
        let v: Value = serde_json::from_str(&self.read("node.json")).unwrap();
        v["node_id"].as_str().unwrap().to_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let mut c = c;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An appliance with TLS on (self-signed) and a 1 s heartbeat interval.
fn appliance(extra: &str) -> Daemon {
    let dir = state_dir();
    let config = dir.path().join("appliance.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[paths]\nstate_dir = \"{}\"\n[nodes]\nheartbeat_interval_secs = {INTERVAL}\nmissed_heartbeats = 3\n{extra}",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
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
    Daemon::spawn(dir, config, false)
}

async fn node(admin: &Client, id: &str) -> Value {
    let (s, n) = admin.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(s, 200, "{n}");
    n
}

/// Waits until `cond` holds for the node, up to `limit`; returns the time taken.
async fn wait_node(
    admin: &Client,
    id: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let n = node(admin, id).await;
        if cond(&n) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "node {id} not as expected after {limit:?}: {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn facts_json() -> Value {
    json!({
        "hostname": "forged", "cpu": {"count": 1, "model": ""},
        "memory": {"total_bytes": 1, "available_bytes": 1}, "disks": [],
        "load": {"one": 0.0, "five": 0.0, "fifteen": 0.0}, "uptime_secs": 1,
        "instances": {"running": 0, "source": "leases"},
        "versions": {"agent": "0", "api": 1, "kernel": "x", "dnsmasq": null}
    })
}

fn heartbeat_json(id: &str, seq: u64) -> Value {
    json!({
        "node_id": id, "agent_started_at": 4_000_000_000u64, "sequence": seq, "sent_at": 1,
        "facts": facts_json(), "instances": [],
        "dnsmasq": {"mode": "external", "state": "not_running", "pid": null, "restarts": 0, "reloads": 0}
    })
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "forger");
    p.serialize_request(&key).unwrap().pem().unwrap()
}

async fn join_raw(c: &Client, token: &str, name: &str) -> (u16, Value) {
    c.post(
        "/api/v1/nodes/join",
        json!({
            "api_version": 1, "token": token, "node_name": name, "csr_pem": csr(),
            "facts": facts_json(), "api_listen": null
        }),
    )
    .await
}

async fn heartbeat_raw(c: &Client, path_id: &str, body: Value, secret: &str) -> (u16, Value) {
    let r = c
        .raw(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{path_id}/heartbeat"),
        )
        .await
        .bearer_auth(secret)
        .json(&body);
    c.send(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_join_heartbeat_die_return_and_are_removed() {
    let agent_bin = tokio::task::spawn_blocking(agent_bin).await.unwrap();
    assert!(agent_bin.exists());
    let d = appliance("");
    assert!(d.url.starts_with("https://"), "{}", d.url);
    let admin = d.admin().await;

    // A token from the CLI carries the fingerprint the daemon serves.
    let (ok, out, err) = cli(&d.config, &["node", "token", "--ttl-minutes", "10"], None);
    assert!(ok, "node token: {err}");
    let cli_token = out.trim().to_owned();
    assert!(cli_token.starts_with("daas1."), "{cli_token}");
    let (s, t) = admin
        .post("/api/v1/nodes/tokens", json!({ "ttl_minutes": 10 }))
        .await;
    assert_eq!(s, 201, "{t}");
    let fp = t["fingerprint"].as_str().unwrap().to_owned();
    assert!(cli_token.ends_with(&fp), "{cli_token} vs {fp}");
    // Users may not make tokens.
    let user = d.user(&admin, "alice").await;
    let (s, _) = user.post("/api/v1/nodes/tokens", json!({})).await;
    assert_eq!(s, 403);
    let (s, _) = user.get("/api/v1/nodes").await;
    assert_eq!(s, 403);

    // Three agents join (two API tokens, one CLI token), then start serving.
    let mut agents: Vec<Agent> = (0..3).map(|i| Agent::new(&format!("node-{i}"))).collect();
    let mut tokens = vec![cli_token, t["token"].as_str().unwrap().to_owned()];
    let (s, t3) = admin.post("/api/v1/nodes/tokens", json!({})).await;
    assert_eq!(s, 201, "{t3}");
    tokens.push(t3["token"].as_str().unwrap().to_owned());
    for (a, tok) in agents.iter_mut().zip(&tokens) {
        let (ok, out) = a.join(&d.url, tok);
        assert!(ok, "join: {out}");
        a.serve();
    }
    let ids: Vec<String> = agents.iter().map(Agent::node_id).collect();
    // All three available, with facts from heartbeats (dnsmasq is in them).
    for (i, id) in ids.iter().enumerate() {
        wait_node(&admin, id, Duration::from_secs(15), |n| {
            n["state"] == "available" && n["facts"]["dnsmasq"].is_object()
        })
        .await;
        let n = node(&admin, id).await;
        assert_eq!(n["name"], format!("node-{i}"));
        assert_eq!(
            n["api_addr"],
            format!("127.0.0.1:{}", agents[i].tls_port),
            "{n}"
        );
    }
    let (s, list) = admin.get("/api/v1/nodes").await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");
    let (_, toks) = admin.get("/api/v1/nodes/tokens").await;
    assert!(
        toks["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["used_at"].is_i64()),
        "{toks}"
    );
    assert!(!toks
        .to_string()
        .contains(tokens[0].split('.').nth(2).unwrap()));

    // Kill one: unavailable within the heartbeat window (+ one sweep + slack).
    agents[0].kill9();
    let took = wait_node(&admin, &ids[0], Duration::from_secs(WINDOW + 8), |n| {
        n["state"] == "unavailable"
    })
    .await;
    eprintln!("killed agent marked unavailable after {took:?} (window {WINDOW} s)");
    let (_, placeable) = admin.get("/api/v1/nodes?placeable=true").await;
    let names: Vec<&str> = placeable["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&ids[0].as_str()), "{placeable}");
    assert_eq!(names.len(), 2, "{placeable}");
    // Restart it: available again.
    agents[0].serve();
    wait_node(&admin, &ids[0], Duration::from_secs(15), |n| {
        n["state"] == "available"
    })
    .await;

    // Remove one: visible as removed, out of placement, heartbeats refused.
    let (s, r) = admin.delete(&format!("/api/v1/nodes/{}", ids[1])).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "removed");
    let (s, _) = admin.delete(&format!("/api/v1/nodes/{}", ids[1])).await;
    assert_eq!(s, 404);
    let (_, placeable) = admin.get("/api/v1/nodes?placeable=true").await;
    let placed: Vec<&str> = placeable["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(placed.len(), 2, "{placeable}");
    assert!(!placed.contains(&ids[1].as_str()));
    let (_, all) = admin.get("/api/v1/nodes").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2, "{all}");
    let (_, all) = admin.get("/api/v1/nodes?removed=true").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");
    let secret1 = agents[1].read("node.secret").trim().to_owned();
    let anon = d.client();
    let (s, e) = heartbeat_raw(&anon, &ids[1], heartbeat_json(&ids[1], 1 << 40), &secret1).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_node")),
        "{e}"
    );
    // The agent itself sees the refusal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = local_status(&agents[1].socket()).await;
        let err = st["join"]["heartbeat"]["last_error"].as_str().unwrap_or("");
        if err.contains("unknown_node") {
            break;
        }
        assert!(Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node(&admin, &ids[1]).await["state"], "removed");

    // Bad heartbeats: wrong secret, another node's id, no secret, unknown id.
    let secret2 = agents[2].read("node.secret").trim().to_owned();
    let (s, e) = heartbeat_raw(
        &anon,
        &ids[2],
        heartbeat_json(&ids[2], 1 << 40),
        "wrong-secret",
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{e}"
    );
    let (s, e) = heartbeat_raw(&anon, &ids[0], heartbeat_json(&ids[0], 1 << 40), &secret2).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{e}"
    );
    let (s, e) = heartbeat_raw(&anon, &ids[2], heartbeat_json(&ids[0], 1 << 40), &secret2).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    let r = anon
        .raw(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{}/heartbeat", ids[2]),
        )
        .await
        .json(&heartbeat_json(&ids[2], 1 << 40));
    let (s, e) = anon.send(r).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{e}"
    );
    let (s, e) = heartbeat_raw(
        &anon,
        "no-such-node",
        heartbeat_json("no-such-node", 1),
        &secret2,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("unknown_node")),
        "{e}"
    );
    // A replayed (not growing) heartbeat is refused; the real one goes on.
    let mut replay = heartbeat_json(&ids[2], 5);
    replay["agent_started_at"] = json!(1);
    let (s, e) = heartbeat_raw(&anon, &ids[2], replay, &secret2).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    // A body of the wrong shape.
    let (s, _) = heartbeat_raw(&anon, &ids[2], json!({"node_id": 1}), &secret2).await;
    assert_eq!(s, 422);

    // Bad tokens: forged (right id, wrong secret), unknown, reused, expired:
    // one answer.
    let used = tokens[2].clone();
    let parts: Vec<&str> = used.split('.').collect();
    let forged = format!("daas1.{}.{}.{}", parts[1], "a".repeat(32), parts[3]);
    let unknown = format!("daas1.zzzzzzzz.{}.{}", "b".repeat(32), parts[3]);
    let (s, fresh) = admin.post("/api/v1/nodes/tokens", json!({})).await;
    assert_eq!(s, 201);
    let fresh_id = fresh["id"].as_str().unwrap().to_owned();
    {
        let db = rusqlite::Connection::open(d.dir.path().join("state/daas.db")).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.execute(
            "UPDATE join_tokens SET expires_at = 1 WHERE id = ?1",
            [&fresh_id],
        )
        .unwrap();
    }
    let expired = fresh["token"].as_str().unwrap().to_owned();
    let mut answers = Vec::new();
    for t in [&forged, &unknown, &used, &expired] {
        let (s, e) = join_raw(&anon, t, "node-x").await;
        answers.push((s, e.to_string()));
    }
    assert_eq!(answers[0].0, 401, "{answers:?}");
    assert!(answers[0].1.contains("invalid_token"), "{answers:?}");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // A forged secret did not use the token up; the expired one stays dead.
    let (_, toks) = admin.get("/api/v1/nodes/tokens").await;
    let row = toks["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == fresh_id)
        .unwrap()
        .clone();
    assert!(row["used_at"].is_i64(), "{row}");
    // A token is used once whatever happens: a bad CSR still uses it.
    let (_, t4) = admin.post("/api/v1/nodes/tokens", json!({})).await;
    let t4 = t4["token"].as_str().unwrap().to_owned();
    let r = anon
        .raw(reqwest::Method::POST, "/api/v1/nodes/join")
        .await
        .json(&json!({"api_version": 1, "token": t4, "node_name": "node-y",
            "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "facts": facts_json(), "api_listen": null}));
    let (s, e) = anon.send(r).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    let (s, e) = join_raw(&anon, &t4, "node-y").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("invalid_token")),
        "{e}"
    );
    // A live node's name is refused.
    let (_, t5) = admin.post("/api/v1/nodes/tokens", json!({})).await;
    let (s, e) = join_raw(&anon, t5["token"].as_str().unwrap(), "node-2").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("node_name_in_use")),
        "{e}"
    );
    // Garbage tokens are body errors, not a crash.
    for bad in ["", "daas1.x", "daas2.abcdefgh.xx.yy", "é"] {
        let (s, _) = join_raw(&anon, bad, "node-z").await;
        assert!(s == 400 || s == 422, "{bad}: {s}");
    }
    // The appliance still answers, and the live nodes are still there.
    assert_eq!(node(&admin, &ids[2]).await["state"], "available");

    // The appliance's agent client: unix socket, then mutual TLS with the
    // appliance's client certificate of the node CA.
    agent_client_checks(&d, &agents[2], &ids[2], &agents[0]).await;
}

async fn local_status(sock: &Path) -> Value {
    let c =
        daas_appliance::nodes::agent::AgentClient::unix(sock.to_owned(), Duration::from_secs(5));
    serde_json::to_value(c.status().await.unwrap()).unwrap()
}

async fn agent_client_checks(d: &Daemon, agent: &Agent, id: &str, other: &Agent) {
    use daas_appliance::nodes::agent::{AgentClient, AgentLeases, LeaseAllocator};
    let dir = tempfile::tempdir().unwrap();
    let store = daas_appliance::store::Store::open(&dir.path().join("s.db")).unwrap();
    let unix = AgentClient::unix(agent.socket(), Duration::from_secs(5));
    let leases = AgentLeases::new(unix.clone(), store.clone(), "");
    // A dnsmasq that serves nothing but re-reads the hosts file on SIGHUP,
    // found by the agent through its pid file (external mode).
    let dnsmasq = DnsmasqGuard(
        Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--port=0")
            .arg("--user=root")
            .arg(format!(
                "--pid-file={}/dnsmasq.pid",
                agent.dir.path().display()
            ))
            .arg(format!(
                "--dhcp-hostsfile={}/state/dnsmasq-hosts",
                agent.dir.path().display()
            ))
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq) must be installed"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.dir.path().join("dnsmasq.pid").exists() {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mac: daas_agent_api::MacAddr = "52:54:00:00:00:01".parse().unwrap();
    let host: daas_agent_api::Hostname = "desk-1".parse().unwrap();
    let ip = leases
        .allocate_lease(&mac, &host)
        .await
        .unwrap_or_else(|e| {
            // dnsmasq is not run here: the lease is stored, dnsmasq not told.
            panic!("{}", daas_appliance::jobs::error_chain(&e))
        });
    assert_eq!(leases.allocate_lease(&mac, &host).await.unwrap(), ip);
    assert_eq!(unix.leases().await.unwrap().len(), 1);
    // The agent drifts (a lease the appliance does not know); converge fixes it.
    let stray: daas_agent_api::MacAddr = "52:54:00:00:00:02".parse().unwrap();
    unix.allocate(&daas_agent_api::AllocateRequest {
        mac: stray,
        hostname: "stray".parse().unwrap(),
        ip: None,
    })
    .await
    .unwrap();
    let r = leases.converge().await.unwrap();
    assert_eq!((r.removed, r.unchanged), (1, 1), "{r:?}");
    assert_eq!(unix.leases().await.unwrap()[0].ip, ip);
    leases.release(&mac).await.unwrap();
    leases.release(&mac).await.unwrap();
    assert!(unix.leases().await.unwrap().is_empty());
    assert!(store.leases("").unwrap().is_empty());

    // Mutual TLS with the appliance's client certificate.
    let ca = daas_appliance::nodes::ca::NodeCa::load_or_create(&d.dir.path().join("state/nodes"))
        .unwrap();
    let (cert, key) = ca.appliance_client().unwrap();
    let node_id: daas_agent_api::NodeId = id.parse().unwrap();
    let addr = format!("127.0.0.1:{}", agent.tls_port);
    let tls = AgentClient::mtls(
        &addr,
        &node_id,
        ca.pem(),
        &cert,
        &key,
        Duration::from_secs(5),
    )
    .unwrap();
    let st = tls.status().await.unwrap();
    assert_eq!(st.join.unwrap().node_id, node_id);
    assert!(tls.facts().await.unwrap().cpu.count >= 1);
    // Another node's certificate as client certificate is refused.
    let other_cert = other.read("node.crt");
    let other_key = other.read("node.key");
    let forged = AgentClient::mtls(
        &addr,
        &node_id,
        ca.pem(),
        &other_cert,
        &other_key,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(forged.status().await.is_err());
    drop(dnsmasq);
}

struct DnsmasqGuard(Child);

impl Drop for DnsmasqGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
