//! Lease benchmark: 10,000 allocations and 10,000 releases through the
//! agent's API (HTTP over its unix socket), with every change on disk
//! before its answer, and the reloads of dnsmasq that took.
//!
//! ```text
//! cargo run --release -p daas-agent --example lease_bench [-- OPS CONCURRENCY]
//! ```
//! (defaults: 10000 64). The agent runs in-process in a temp dir; a real
//! `dnsmasq` (no DNS, no DHCP: it only receives the SIGHUPs) stands for the
//! system's, if installed. The same run also measures the reference: one
//! client at a time, so that every change pays its own write, fsync and
//! reload (what an agent without batching would do), on OPS/10 changes,
//! and prints the ratio. At the end the hosts file is checked: every line
//! parses and no address or MAC appears twice.
//!
//! Target: at least 1,000 operations per second, batched.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::http::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

struct Run {
    ops: u32,
    secs: f64,
    writes: u64,
    reloads: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        f64::from(self.ops) / self.secs
    }
}

async fn client(sock: &Path) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "agent");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 64 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn counters(sock: &Path) -> (u64, u64) {
    let (_, v) = request(&mut client(sock).await, Method::GET, "/v1/status", None).await;
    (
        v["leases"]["writes"].as_u64().unwrap_or(0),
        v["dnsmasq"]["reloads"].as_u64().unwrap_or(0),
    )
}

/// `ops` changes by `concurrency` clients, each on its own connection:
/// allocate (`release == false`) or release MACs `base..base+ops`.
async fn phase(sock: &Path, base: u32, ops: u32, concurrency: u32, release: bool) -> Run {
    let (w0, r0) = counters(sock).await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let sock = sock.to_owned();
        tasks.spawn(async move {
            let mut c = client(&sock).await;
            let mut i = worker;
            while i < ops {
                let n = base + i;
                let mac = format!(
                    "52:54:00:{:02x}:{:02x}:{:02x}",
                    n >> 16 & 0xff,
                    n >> 8 & 0xff,
                    n & 0xff
                );
                let (status, v) = if release {
                    request(&mut c, Method::DELETE, &format!("/v1/leases/{mac}"), None).await
                } else {
                    request(
                        &mut c,
                        Method::POST,
                        "/v1/leases",
                        Some(json!({"mac": mac, "hostname": format!("b{n}")})),
                    )
                    .await
                };
                assert!(status == 200 || status == 201, "{status} {v}");
                i += concurrency;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let (w1, r1) = counters(sock).await;
    Run {
        ops,
        secs,
        writes: w1 - w0,
        reloads: r1 - r0,
    }
}

fn check_file(path: &Path, expect: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let leases = daas_agent::hostsfile::parse(&text).expect("every line parses");
    assert_eq!(leases.len(), expect, "leases in the file");
    let macs: std::collections::HashSet<_> = leases.iter().map(|l| l.mac).collect();
    let ips: std::collections::HashSet<_> = leases.iter().map(|l| l.ip).collect();
    assert_eq!(
        (macs.len(), ips.len()),
        (expect, expect),
        "duplicates in the file"
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("OPS CONCURRENCY"))
        .collect();
    let ops = args.first().copied().unwrap_or(10_000);
    let concurrency = args.get(1).copied().unwrap_or(64).max(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let pid_file = d.join("dnsmasq.pid");
    let mut dnsmasq = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--log-facility=-",
        ])
        .arg(format!("--pid-file={}", pid_file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    match &dnsmasq {
        Some(_) => {
            let until = Instant::now() + Duration::from_secs(5);
            while !pid_file.exists() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        None => eprintln!("dnsmasq is not installed: changes are written, reloads are not counted"),
    }
    let text = format!(
        r#"
[node]
state_dir = "{d}/state"
storage_paths = ["{d}"]
[api]
socket = "{d}/agent.sock"
tls_listen = "off"
[leases]
subnet = "10.213.0.0/16"
range_start = "10.213.0.1"
range_end = "10.213.255.254"
[dnsmasq]
pid_file = "{pid}"
[log]
level = "warn"
"#,
        d = d.display(),
        pid = pid_file.display()
    );
    let config = daas_agent::Config::from_toml(&text, &d.join("agent.toml")).unwrap();
    let hosts = config.hosts_file();
    let agent = daas_agent::Agent::build(config).await.unwrap();
    let sock = agent.socket_path().to_owned();
    let stop = agent.stop_handle();
    let task = tokio::spawn(agent.run_until_stopped());

    let alloc = phase(&sock, 0, ops, concurrency, false).await;
    check_file(&hosts, ops as usize);
    let rel = phase(&sock, 0, ops, concurrency, true).await;
    check_file(&hosts, 0);
    let ref_ops = (ops / 10).max(1);
    let ref_alloc = phase(&sock, ops, ref_ops, 1, false).await;
    let ref_rel = phase(&sock, ops, ref_ops, 1, true).await;
    check_file(&hosts, 0);

    stop.cancel();
    task.await.unwrap().unwrap();
    if let Some(c) = dnsmasq.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }

    println!("lease_bench: {ops} allocations + {ops} releases, {concurrency} clients; reference: {ref_ops} + {ref_ops}, 1 client");
    println!(
        "{:<34} {:>8} {:>9} {:>10} {:>8} {:>8}",
        "phase", "ops", "secs", "ops/s", "writes", "reloads"
    );
    for (name, r) in [
        ("allocate (batched)", &alloc),
        ("release (batched)", &rel),
        ("allocate (reference, 1 client)", &ref_alloc),
        ("release (reference, 1 client)", &ref_rel),
    ] {
        println!(
            "{name:<34} {:>8} {:>9.3} {:>10.0} {:>8} {:>8}",
            r.ops,
            r.secs,
            r.rate(),
            r.writes,
            r.reloads
        );
    }
    let ours = f64::from(alloc.ops + rel.ops) / (alloc.secs + rel.secs);
    let reference = f64::from(ref_alloc.ops + ref_rel.ops) / (ref_alloc.secs + ref_rel.secs);
    println!(
        "batched: {ours:.0} ops/s ({:.1} changes per write on average); reference: {reference:.0} ops/s; ratio {:.1}x; target >= 1000 ops/s: {}",
        f64::from(alloc.ops + rel.ops) / ((alloc.writes + rel.writes).max(1) as f64),
        ours / reference,
        if ours >= 1000.0 { "met" } else { "NOT met" }
    );
}
