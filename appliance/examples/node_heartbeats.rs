//! Benchmark: 1,000 nodes' heartbeats handled by the appliance, measured as
//! the appliance process's CPU (utime + stime from `/proc/<pid>/stat`).
//!
//! The appliance runs as a child process (this example, re-executed with
//! `--appliance CONFIG`), with TLS on (self-signed) and the production
//! settings (`[nodes] heartbeat_interval_secs = 5`). The simulated agents
//! join through `POST /api/v1/nodes/join` with one-time tokens (real CSRs,
//! signed by the node CA), then each sends a `daas-agent-api` `Heartbeat`
//! over HTTPS with its node secret every interval, spread evenly: 1,000
//! nodes at 5 s is 200 heartbeats/s.
//!
//! Two phases, 30 s each (after one interval of warm-up), side by side with
//! the idle appliance as the reference:
//! - `keep-alive`: connections are reused, as the real agent does (one
//!   kept-alive HTTP/1.1 connection per node);
//! - `new-connection`: every heartbeat opens its own TLS connection: the
//!   worst case, e.g. every agent reconnecting after an appliance restart.
//!
//! Run: `cargo run --release -p daas-appliance --example node_heartbeats [-- NODES INTERVAL_SECS WINDOW_SECS]`
//! Target: at most 5% of one core for 1,000 nodes.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daas_agent_api::facts::{
    CpuFacts, DiskFacts, InstanceFacts, InstanceSource, LoadAverage, MemoryFacts, Versions,
};
use daas_agent_api::status::{DnsmasqMode, DnsmasqState, DnsmasqStatus};
use daas_agent_api::{Heartbeat, JoinRequest, JoinResponse, NodeFacts};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--appliance") {
        return run_appliance(&args[2]);
    }
    let nodes: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let interval: u64 = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let window: u64 = args.get(3).map_or(Ok(30), |s| s.parse())?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(nodes, interval, window))
}

/// The child: the appliance itself, nothing else in the process.
fn run_appliance(config: &str) -> anyhow::Result<()> {
    let cfg = daas_appliance::config::Config::from_file(std::path::Path::new(config))?;
    daas_appliance::init_logging(&cfg.log);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let app = daas_appliance::Appliance::build(
                cfg,
                daas_appliance::Options {
                    demo: false,
                    announce: true,
                },
            )
            .await?;
            let stop = app.shutdown_token();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
            });
            app.run_until_stopped().await?;
            Ok(())
        })
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces): state is field 3,
    // utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn facts() -> NodeFacts {
    NodeFacts {
        hostname: "sim-node".into(),
        cpu: CpuFacts {
            count: 32,
            model: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into(),
        },
        memory: MemoryFacts {
            total_bytes: 256 << 30,
            available_bytes: 200 << 30,
        },
        disks: vec![DiskFacts {
            path: "/var/lib/vz".into(),
            total_bytes: 4 << 40,
            free_bytes: 3 << 40,
            available_bytes: 3 << 40,
            error: None,
        }],
        load: LoadAverage {
            one: 1.5,
            five: 1.2,
            fifteen: 1.0,
        },
        uptime_secs: 86_400,
        instances: InstanceFacts {
            running: 12,
            source: InstanceSource::Leases,
        },
        versions: Versions {
            agent: "0.1.0".into(),
            api: 1,
            kernel: "6.1.0-27-amd64".into(),
            dnsmasq: Some("2.90".into()),
        },
    }
}

struct Phase {
    name: &'static str,
    ok: u64,
    failed: u64,
    secs: f64,
    cpu_pct: f64,
}

async fn measure(
    pid: u32,
    window: u64,
    ok: &AtomicU64,
    failed: &AtomicU64,
) -> anyhow::Result<(u64, u64, f64, f64)> {
    let (o0, f0) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let c0 = cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let c1 = cpu_ticks(pid)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (c1 - c0) as f64 / clk_tck() / secs * 100.0;
    Ok((
        ok.load(Ordering::Relaxed) - o0,
        failed.load(Ordering::Relaxed) - f0,
        secs,
        cpu,
    ))
}

async fn bench(nodes: usize, interval: u64, window: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let config = dir.path().join("appliance.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[paths]\nstate_dir = \"{}\"\n[nodes]\nheartbeat_interval_secs = {interval}\n[backends.local]\nenabled = false\n[log]\nlevel = \"warn\"\n",
            state.display()
        ),
    )?;
    // Tokens, as `daas-appliance node token` makes them.
    let cfg = daas_appliance::config::Config::from_file(&config)?;
    std::fs::create_dir_all(&state)?;
    let fp: daas_agent_api::Fingerprint =
        daas_appliance::web::serve::certificate_fingerprint(&cfg)?.parse()?;
    let store = daas_appliance::store::Store::open(&cfg.store_path())?;
    let svc = daas_appliance::nodes::Nodes::new(store, cfg.nodes.clone(), &state, Some(fp));
    let tokens: Vec<_> = (0..nodes)
        .map(|_| svc.create_token(Some(60), None).map(|t| t.token))
        .collect::<Result<_, _>>()?;
    drop(svc);

    let mut child = Command::new(std::env::current_exe()?)
        .arg("--appliance")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let url = loop {
        let mut l = String::new();
        if out.read_line(&mut l)? == 0 {
            anyhow::bail!("the appliance exited before listening");
        }
        if let Some(u) = l.trim().strip_prefix("DaaS appliance listening on ") {
            break u.to_owned();
        }
    };
    let result = run(pid, &url, tokens, interval, window).await;
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    result
}

async fn run(
    pid: u32,
    url: &str,
    tokens: Vec<daas_agent_api::JoinToken>,
    interval: u64,
    window: u64,
) -> anyhow::Result<()> {
    let nodes = tokens.len();
    // Idle reference first.
    let idle = measure(pid, window.min(10), &AtomicU64::new(0), &AtomicU64::new(0)).await?;

    // Join every node (16 at a time).
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?;
    let t0 = Instant::now();
    let joined = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (client, url, joined, sem) =
            (client.clone(), url.to_owned(), joined.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("sim-{i}"));
            let csr_pem = p.serialize_request(&key).expect("csr").pem().expect("pem");
            let req = JoinRequest {
                api_version: daas_agent_api::API_VERSION,
                token,
                node_name: format!("sim-{i}").parse().expect("name"),
                csr_pem,
                facts: facts(),
                api_listen: None,
            };
            let r = client
                .post(format!("{url}/api/v1/nodes/join"))
                .json(&req)
                .send()
                .await
                .expect("join");
            assert_eq!(r.status().as_u16(), 201, "join");
            let resp: JoinResponse = r.json().await.expect("join answer");
            joined.lock().await.push(resp);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let joined = std::mem::take(&mut *joined.lock().await);
    let join_secs = t0.elapsed().as_secs_f64();

    let mut phases = vec![Phase {
        name: "idle (reference)",
        ok: 0,
        failed: 0,
        secs: idle.2,
        cpu_pct: idle.3,
    }];
    for (name, reuse) in [("keep-alive", true), ("new-connection", false)] {
        let mut b = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .http1_only();
        if !reuse {
            b = b.pool_max_idle_per_host(0);
        }
        let client = b.build()?;
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + u64::from(!reuse);
        for (i, node) in joined.iter().enumerate() {
            let (client, url, ok, failed, stop) = (
                client.clone(),
                url.to_owned(),
                ok.clone(),
                failed.clone(),
                stop.clone(),
            );
            let (id, secret) = (node.node_id.clone(), node.node_secret.clone());
            // Evenly spread phases over the interval.
            let offset = Duration::from_secs(interval) * u32::try_from(i)? / u32::try_from(nodes)?;
            tokio::spawn(async move {
                let path = format!("{url}{}", daas_agent_api::paths::appliance_heartbeat(&id));
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + offset,
                    Duration::from_secs(interval),
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    seq += 1;
                    let hb = Heartbeat {
                        node_id: id.clone(),
                        agent_started_at: started,
                        sequence: seq,
                        sent_at: started,
                        facts: facts(),
                        instances: vec![],
                        dnsmasq: DnsmasqStatus {
                            mode: DnsmasqMode::External,
                            state: DnsmasqState::Running,
                            pid: Some(1234),
                            last_exit: None,
                            stderr: None,
                            restarts: 0,
                            reloads: 7,
                            message: None,
                        },
                    };
                    let r = client
                        .post(&path)
                        .bearer_auth(secret.expose())
                        .json(&hb)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // Warm up for one interval, then measure.
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let (o, f, secs, cpu) = measure(pid, window, &ok, &failed).await?;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
        phases.push(Phase {
            name,
            ok: o,
            failed: f,
            secs,
            cpu_pct: cpu,
        });
    }

    println!(
        "{nodes} simulated nodes, heartbeat every {interval} s ({:.0}/s expected); joined in {join_secs:.1} s",
        nodes as f64 / interval as f64
    );
    println!("| phase | heartbeats ok | failed | heartbeats/s | appliance CPU, % of one core | target ≤ 5% |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for p in &phases {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {} |",
            p.name,
            p.ok,
            p.failed,
            p.ok as f64 / p.secs,
            p.cpu_pct,
            if p.name.starts_with("idle") {
                "-".to_owned()
            } else if p.cpu_pct <= 5.0 {
                format!("met ({:.1}x headroom)", 5.0 / p.cpu_pct.max(0.01))
            } else {
                "MISSED".to_owned()
            }
        );
    }
    Ok(())
}
