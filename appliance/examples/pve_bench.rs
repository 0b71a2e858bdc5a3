//! Benchmark of the Proxmox VE backend against the simulator: N Apps opened
//! at once with every task taking 1 s, and the warm pool's Open →
//! connectable time. A benchmark, not a test: it prints figures.
//!
//! ```sh
//! export CARGO_TARGET_DIR=...   # as for the build
//! cargo build --release -p daas-appliance --bin daas-appliance --example pve_bench
//! $CARGO_TARGET_DIR/release/examples/pve_bench [N] [TASK_SECS] [SETUP_LIMIT] [WARM_SAMPLE]
//! ```
//!
//! Phases (the appliance is the real binary, the simulator runs in this
//! process on a loopback port):
//! 1. setup: a Baseimage, N Environments, N live Deployments, N Apps, all
//!    asked for at once, `tasks_per_node = SETUP_LIMIT`;
//! 2. N Apps opened at once with that limit, then with `tasks_per_node = N`
//!    (after a restart): total time to the last connectable instance
//!    against the critical path (`ceil(N / limit)` rollbacks of
//!    fork + TASK_SECS), and the appliance's CPU time per App;
//! 3. warm pool on: WARM_SAMPLE Apps warmed, then opened one by one:
//!    Open → connectable (job done and a connect ticket issued).
//!
//! It also checks that no task failed with a lock timeout
//! (`can't lock file ... got timeout`) and that every job succeeded.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use daas_proxmox::sim::{SimConfig, SimTimings, SimTls, Simulator};
use serde_json::{json, Value};

const TOKEN_ID: &str = "daas@pve!appliance";

/// Job status reads the benchmark made (they cost the appliance CPU too).
static POLLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .cookie_store(true)
                .pool_max_idle_per_host(256)
                .build()
                .expect("http client"),
        }
    }

    async fn call(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(m, format!("{}{}", self.base, path))
            .header("Origin", &self.base);
        if let Some(b) = body {
            r = r.json(&b);
        }
        match r.send().await {
            Ok(resp) => {
                let s = resp.status().as_u16();
                let t = resp.text().await.unwrap_or_default();
                (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn wait_job(&self, id: &str, poll: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            POLLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (s, j) = self.get(&format!("/api/v1/jobs/{id}")).await;
            if s == 200
                && ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or(""))
            {
                return Ok(j);
            }
            if Instant::now() > deadline {
                bail!("job {id} did not end");
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Makes an object; returns its id once its job succeeded.
    async fn make(&self, path: &str, body: Value) -> anyhow::Result<String> {
        let (s, b) = self.post(path, body).await;
        if s != 202 {
            bail!("{path}: {s} {b}");
        }
        let j = self
            .wait_job(
                b["job"]["id"].as_str().unwrap_or(""),
                Duration::from_millis(200),
            )
            .await?;
        if j["state"] != "succeeded" {
            bail!("{path}: {j}");
        }
        Ok(b["object"]["id"].as_str().unwrap_or("").to_owned())
    }

    /// Opens an App; returns (instance id, time to connectable).
    async fn open(&self, app: &str, poll: Duration) -> anyhow::Result<(String, Duration)> {
        let t = Instant::now();
        let (s, o) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/apps/{app}/open"),
                None,
            )
            .await;
        if s != 202 {
            bail!("open {app}: {s} {o}");
        }
        let iid = o["instance"]["id"].as_str().unwrap_or("").to_owned();
        let j = self
            .wait_job(o["job"]["id"].as_str().unwrap_or(""), poll)
            .await?;
        if j["state"] != "succeeded" {
            bail!("open {app}: {j}");
        }
        let (s, c) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/instances/{iid}/connect"),
                None,
            )
            .await;
        if s != 200 || c["ticket"].as_str().is_none() {
            bail!("connect {iid}: {s} {c}");
        }
        Ok((iid, t.elapsed()))
    }

    async fn stop(&self, iid: &str) -> anyhow::Result<()> {
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/instances/{iid}/stop"),
                None,
            )
            .await;
        if s != 202 {
            bail!("stop {iid}: {s} {b}");
        }
        let j = self
            .wait_job(
                b["job"]["id"].as_str().unwrap_or(""),
                Duration::from_millis(100),
            )
            .await?;
        if j["state"] != "succeeded" {
            bail!("stop {iid}: {j}");
        }
        Ok(())
    }
}

struct Appliance {
    child: Child,
    url: String,
}

impl Appliance {
    fn start(bin: &Path, config: &Path) -> anyhow::Result<Appliance> {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start daas-appliance")?;
        let out = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(out).lines();
        let url = loop {
            let Some(l) = lines.next() else {
                bail!("the appliance exited before listening");
            };
            let l = l?;
            if let Some(u) = l.strip_prefix("DaaS appliance listening on ") {
                break u.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Appliance { child, url })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of a process, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let rest = st.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the name.
    let total = ticks(11) + ticks(12);
    let hz = 100u64;
    Duration::from_millis(total * 1000 / hz)
}

fn config(
    dir: &Path,
    sim: &Simulator,
    token: &Path,
    n: usize,
    limit: usize,
    warm: bool,
) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!("appliance-{limit}-{warm}.toml"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = \"off\"\n\
         [paths]\nstate_dir = \"{state}\"\n\
         [limits]\nenvironments_per_user = {envs}\ninstances_per_user = {envs}\n\
         [jobs]\nworkers = {workers}\nmax_attempts = 3\n\
         [reconciler]\ninterval_secs = 30\n\
         [backends.local]\nenabled = false\n\
         [backends.proxmox]\nenabled = true\nurl = \"{url}\"\ntoken_file = \"{token}\"\n\
         fingerprint = \"{fp}\"\nnode = \"pve\"\nguest = false\ntasks_per_node = {limit}\n\
         poll_initial_ms = 20\npoll_max_ms = 100\nwarm_pool = {wp}\nwarm_pool_max = {envs}\n",
        state = dir.join("state").display(),
        envs = n + 10,
        workers = (n + 8).min(256),
        url = sim.url(),
        token = token.display(),
        fp = sim.fingerprint(),
        wp = u32::from(warm),
    );
    std::fs::write(&p, text)?;
    Ok(p)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Lock timeouts in any task the simulator ran.
fn lock_timeouts(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.ends_with("/status") && r.path.contains("/tasks/"))
        .filter(|r| {
            r.data
                .as_ref()
                .and_then(|d| d["exitstatus"].as_str())
                .is_some_and(|e| e.contains("got timeout"))
        })
        .count()
}

async fn open_all(
    api: &Api,
    apps: &[String],
) -> anyhow::Result<(Duration, Vec<Duration>, Vec<String>)> {
    let t = Instant::now();
    let mut joins = Vec::new();
    for a in apps {
        let api = Api {
            base: api.base.clone(),
            http: api.http.clone(),
        };
        let a = a.clone();
        joins.push(tokio::spawn(async move {
            api.open(&a, Duration::from_millis(20)).await
        }));
    }
    let mut times = Vec::new();
    let mut iids = Vec::new();
    for j in joins {
        let (iid, d) = j.await??;
        times.push(d);
        iids.push(iid);
    }
    Ok((t.elapsed(), times, iids))
}

async fn stop_all(api: &Api, iids: &[String]) -> anyhow::Result<()> {
    let mut joins = Vec::new();
    for i in iids {
        let api = Api {
            base: api.base.clone(),
            http: api.http.clone(),
        };
        let i = i.clone();
        joins.push(tokio::spawn(async move { api.stop(&i).await }));
    }
    for j in joins {
        j.await??;
    }
    Ok(())
}

/// The appliance's CPU per job status read: `count` reads of a finished
/// job, 16 at a time.
async fn poll_cost(api: &Api, pid: u32, job: &str, count: u64) -> Duration {
    let cpu0 = cpu_time(pid);
    let per = count / 16 + 1;
    let mut joins = Vec::new();
    for _ in 0..16 {
        let api = Api {
            base: api.base.clone(),
            http: api.http.clone(),
        };
        let job = job.to_owned();
        joins.push(tokio::spawn(async move {
            for _ in 0..per {
                api.get(&format!("/api/v1/jobs/{job}")).await;
            }
        }));
    }
    for j in joins {
        let _ = j.await;
    }
    cpu_time(pid).saturating_sub(cpu0) / u32::try_from(per * 16).unwrap_or(1)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    // Nearest rank on a sorted list.
    let last = v.len().saturating_sub(1);
    let i = (0..=last)
        .find(|i| *i as f64 >= last as f64 * p - 0.5)
        .unwrap_or(last);
    v.get(i).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let int = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let n: usize = int(1, 100).max(1);
    let task = Duration::from_secs_f64(
        args.get(2)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0),
    );
    let setup_limit: usize = int(3, 16).max(1);
    let warm_sample: usize = int(4, 20).min(n);
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("exe dir")?
        .join("daas-appliance");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build -p daas-appliance --bin daas-appliance first",
            bin.display()
        );
    }

    // The simulator: every task takes `task`.
    let dir = tempfile::tempdir()?;
    let secret = format!("{:032x}", rand::random::<u128>());
    let token = dir.path().join("pve.token");
    std::fs::write(&token, format!("{TOKEN_ID}={secret}\n"))?;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    let mut sc = SimConfig::new(TOKEN_ID, &secret);
    let mut t = SimTimings::realistic();
    for d in [
        &mut t.clone,
        &mut t.full_clone,
        &mut t.template,
        &mut t.snapshot,
        &mut t.snapshot_vmstate,
        &mut t.rollback,
        &mut t.start,
        &mut t.shutdown,
        &mut t.stop,
        &mut t.destroy,
    ] {
        *d = task;
    }
    t.storage_lock_hold = Duration::from_millis(100);
    sc.timings = t.clone();
    sc.unauthorized_delay = Duration::from_millis(10);
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let sim = Simulator::start(sc, addr, SimTls::generate(&[])?).await?;

    let cfg = config(dir.path(), &sim, &token, n, setup_limit, false)?;
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .args([
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().map(|mut s| s.write_all(b"bench-password-1"));
            c.wait()
        })?;
    if !out.success() {
        bail!("user add failed");
    }
    let app = Appliance::start(&bin, &cfg)?;
    let api = Api::new(&app.url);
    let (s, b) = api
        .post(
            "/api/v1/session",
            json!({"username": "admin", "password": "bench-password-1"}),
        )
        .await;
    if s != 200 {
        bail!("login: {s} {b}");
    }

    // 1. Setup, all at once.
    let t0 = Instant::now();
    let base = api
        .make(
            "/api/v1/baseimages",
            json!({"name": "Bench", "backend": "proxmox", "spec": {"source": "9000"}}),
        )
        .await?;
    let mut joins = Vec::new();
    for i in 0..n {
        let api = Api {
            base: api.base.clone(),
            http: api.http.clone(),
        };
        let base = base.clone();
        joins.push(tokio::spawn(async move {
            let env = api
                .make(
                    &format!("/api/v1/baseimages/{base}/environments"),
                    json!({"name": format!("E{i}")}),
                )
                .await?;
            let dep = api
                .make(
                    &format!("/api/v1/environments/{env}/deployments"),
                    json!({"name": format!("D{i}"), "spec": {"live": true}}),
                )
                .await?;
            api.make(
                &format!("/api/v1/deployments/{dep}/apps"),
                json!({"name": format!("A{i}"), "spec": {"command": ["xterm"]}}),
            )
            .await
        }));
    }
    let mut apps = Vec::new();
    for j in joins {
        apps.push(j.await??);
    }
    let setup = t0.elapsed();
    let setup_timeouts = lock_timeouts(&sim);
    eprintln!("setup: {n} Apps in {setup:.1?}");

    // 2a. N opens at once, with the setup's limit.
    let fork = t.fork;
    let cpu0 = cpu_time(app.pid());
    let p0 = POLLS.load(std::sync::atomic::Ordering::Relaxed);
    let (total_a, mut times_a, iids) = open_all(&api, &apps).await?;
    let cpu_a = cpu_time(app.pid()).saturating_sub(cpu0);
    let polls_a = POLLS.load(std::sync::atomic::Ordering::Relaxed) - p0;
    let waves_a = n.div_ceil(setup_limit);
    let crit_a = (fork + task) * u32::try_from(waves_a).unwrap_or(1);
    stop_all(&api, &iids).await?;

    // 2b. The same with tasks_per_node = N (a restart with that limit).
    app.stop();
    let cfg_b = config(dir.path(), &sim, &token, n, n, false)?;
    let app = Appliance::start(&bin, &cfg_b)?;
    let api = Api::new(&app.url);
    api.post(
        "/api/v1/session",
        json!({"username": "admin", "password": "bench-password-1"}),
    )
    .await;
    let cpu0 = cpu_time(app.pid());
    let p0 = POLLS.load(std::sync::atomic::Ordering::Relaxed);
    let (total_b, mut times_b, iids) = open_all(&api, &apps).await?;
    let cpu_b = cpu_time(app.pid()).saturating_sub(cpu0);
    let polls_b = POLLS.load(std::sync::atomic::Ordering::Relaxed) - p0;
    let crit_b = fork + task;
    stop_all(&api, &iids).await?;
    // What one job status read costs the appliance (to take the
    // benchmark's own polling out of the orchestration figure).
    let (_, jl) = api.get("/api/v1/jobs?limit=1").await;
    let some_job = jl["items"][0]["id"].as_str().unwrap_or("").to_owned();
    let per_poll = poll_cost(&api, app.pid(), &some_job, 5000).await;
    let open_timeouts = lock_timeouts(&sim) - setup_timeouts;

    // 3. Warm pool: the sample opened once (which makes them wanted), stopped
    //    (which refills them), then opened one by one.
    app.stop();
    let cfg_c = config(dir.path(), &sim, &token, n, n, true)?;
    let app = Appliance::start(&bin, &cfg_c)?;
    let api = Api::new(&app.url);
    api.post(
        "/api/v1/session",
        json!({"username": "admin", "password": "bench-password-1"}),
    )
    .await;
    let sample: Vec<String> = apps[..warm_sample].to_vec();
    let (_, _, iids) = open_all(&api, &sample).await?;
    stop_all(&api, &iids).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let warm = sim
            .state()
            .vms
            .iter()
            .filter(|v| {
                v.running
                    && v.lock.is_none()
                    && v.config.get("tags").is_some_and(|t| t.contains("warm"))
            })
            .count();
        if warm >= warm_sample {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {warm} of {warm_sample} warm");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sim.requests().len();
    let mut warm_times = Vec::new();
    let mut warm_iids = Vec::new();
    for a in &sample {
        let (iid, d) = api.open(a, Duration::from_millis(5)).await?;
        warm_times.push(d);
        warm_iids.push(iid);
    }
    let tasks_during_warm = sim.requests()[before..]
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    stop_all(&api, &warm_iids).await?;
    app.stop();

    let pr = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("\nProxmox VE backend against daas-pve-sim (every task {:.1} s, fork {} ms); load average {}", task.as_secs_f64(), fork.as_millis(), load_average());
    println!("| figure | value | goal |");
    println!("| --- | --- | --- |");
    println!("| setup: Baseimage + {n} Environments + {n} live Deployments + {n} Apps (tasks_per_node {setup_limit}) | {} | |", pr(setup));
    println!("| lock timeouts in tasks (setup / opens) | {setup_timeouts} / {open_timeouts} | 0 |");
    println!(
        "| one job status read by the benchmark costs the appliance | {:.0} µs | |",
        per_poll.as_secs_f64() * 1e6
    );
    for (label, limit, total, crit, cpu, polls, times) in [
        (
            "opens at once",
            setup_limit,
            total_a,
            crit_a,
            cpu_a,
            polls_a,
            &mut times_a,
        ),
        (
            "opens at once",
            n,
            total_b,
            crit_b,
            cpu_b,
            polls_b,
            &mut times_b,
        ),
    ] {
        let ratio = total.as_secs_f64() / crit.as_secs_f64();
        println!(
            "| {n} {label}, tasks_per_node {limit}: last connectable / critical path | {} / {} = {ratio:.3} | ≤ 1.10 |",
            pr(total),
            pr(crit)
        );
        println!(
            "| … per-App open → connectable: median / p95 | {} / {} | |",
            pr(pct(times, 0.5)),
            pr(pct(times, 0.95))
        );
        let per_app = cpu / u32::try_from(n).unwrap_or(1);
        let polling =
            per_poll * u32::try_from(polls).unwrap_or(u32::MAX) / u32::try_from(n).unwrap_or(1);
        println!(
            "| … appliance CPU per App: all / without the benchmark's {polls} job polls | {} / {} | ≤ 5 ms |",
            ms(per_app),
            ms(per_app.saturating_sub(polling))
        );
        println!(
            "| … wall time beyond the critical path, per App | {} | |",
            ms(total.saturating_sub(crit) / u32::try_from(n).unwrap_or(1))
        );
    }
    println!(
        "| warm pool: open → connectable, {warm_sample} Apps one by one: median / max | {} / {} | ≤ 100 ms |",
        ms(pct(&mut warm_times, 0.5)),
        ms(pct(&mut warm_times, 1.0))
    );
    println!(
        "| warm pool: API calls that start tasks during those opens | {tasks_during_warm} | 0 |"
    );
    Ok(())
}
