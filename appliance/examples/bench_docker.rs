//! The Docker backend's benchmarks, against the real engine, over HTTP
//! against an in-process appliance whose demo catalogue runs on Docker:
//!
//! 1. From `POST /api/v1/apps/{id}/open` to a connectable container desktop
//!    (instance `running`: its Xvnc answered), image present, 10 runs; side
//!    by side with the reference, a bare `docker run` of the same image
//!    running the same Xvnc, timed until its VNC banner (same engine, same
//!    moment).
//! 2. 50 App containers (10 users × 5 Apps) opened at once, then stopped at
//!    once; afterwards nothing labelled with the run's scope may be left.
//!
//! As root (the Docker socket), with dockerd running:
//!
//!     cargo run --release -p daas-appliance --example bench_docker [-- IMAGE]
//!
//! IMAGE defaults to what image/docker-desktop/build.sh prints (it builds
//! the image if needed). Figures: docs/docker.md.

use std::process::Command;
use std::time::{Duration, Instant};

use daas_appliance::{config::Config, Appliance, Options};
use serde_json::{json, Value};

struct Http {
    c: reqwest::Client,
    base: String,
}

impl Http {
    async fn login(base: &str, user: &str, pw: &str) -> Http {
        let c = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap();
        let r = c
            .post(format!("{base}/api/v1/session"))
            .json(&json!({"username": user, "password": pw}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        Http {
            c,
            base: base.to_owned(),
        }
    }

    async fn get(&self, p: &str) -> Value {
        self.c
            .get(format!("{}{p}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, p: &str, body: Option<Value>) -> Value {
        let mut r = self
            .c
            .post(format!("{}{p}", self.base))
            .header("Origin", &self.base);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap().json().await.unwrap()
    }

    async fn job(&self, id: &str) -> Value {
        loop {
            let j = self.get(&format!("/api/v1/jobs/{id}")).await;
            if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Opens an app; returns the instance id and the time to `running`.
    async fn open(&self, app: &str) -> (String, Duration) {
        let t = Instant::now();
        let v = self.post(&format!("/api/v1/apps/{app}/open"), None).await;
        let iid = v["instance"]["id"].as_str().unwrap().to_owned();
        loop {
            let i = self.get(&format!("/api/v1/instances/{iid}")).await;
            match i["state"].as_str().unwrap() {
                "running" => return (iid, t.elapsed()),
                "starting" => tokio::time::sleep(Duration::from_millis(2)).await,
                s => panic!("instance {s}: {i}"),
            }
        }
    }

    async fn stop(&self, iid: &str) {
        let v = self
            .post(&format!("/api/v1/instances/{iid}/stop"), None)
            .await;
        let id = v["job"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("stop {iid}: {v}"));
        let j = self.job(id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
}

fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The reference: `docker run` of the image with the same Xvnc, until its
/// VNC banner answers on the container's address.
async fn reference_open(image: &str, net: &str) -> Duration {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let id = docker(&[
        "run", "-d", "--network", net, "--user", "1000:1000", "--read-only", "--tmpfs",
        "/tmp:size=64m,mode=1777", "--init", image, "sh", "-c",
        "Xvnc :1 -geometry 1280x800 -depth 24 -rfbport 5900 -SecurityTypes None -nolisten tcp & sleep 0.3; DISPLAY=:1 exec xterm",
    ]);
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &id,
    ]);
    assert!(!ip.is_empty(), "the reference container has no address");
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect((ip.as_str(), 5900)).await {
            let mut b = [0u8; 12];
            if s.read_exact(&mut b).await.is_ok() && b.starts_with(b"RFB ") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = t.elapsed();
    docker(&["rm", "-f", &id]);
    e
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n & 1 == 0 {
        (v[n / 2 - 1] + v[n / 2]) / 2
    } else {
        v[n / 2]
    }
}

#[tokio::main]
async fn main() {
    let image = std::env::args().nth(1).unwrap_or_else(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../image/docker-desktop/build.sh"
        );
        let o = Command::new("bash").arg(script).output().unwrap();
        assert!(o.status.success(), "image/docker-desktop/build.sh failed");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    });
    let dir = tempfile::tempdir().unwrap();
    let scope = format!("bench-{}", std::process::id());
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = \"off\"\n[paths]\nstate_dir = \"{}\"\n\
         [limits]\ninstances_per_user = 8\n\
         [backends.docker]\nenabled = true\nscope = \"{scope}\"\ndemo_image = \"{image}\"\n\
         [demo]\nbackend = \"docker\"\n",
        dir.path().join("state").display()
    );
    // The admin first: the demo catalogue is seeded as the first admin, so
    // the benchmark may add Apps to its Deployment.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let store = daas_appliance::store::Store::open(&dir.path().join("state/daas.db")).unwrap();
    let hash = daas_appliance::auth::hash_password("bench-password").unwrap();
    store
        .create_user("bench", daas_appliance::model::Role::Admin, &hash)
        .unwrap();
    let cfg = Config::from_toml(&text, std::path::Path::new("bench.toml")).unwrap();
    let workers = cfg.jobs.workers;
    let app = Appliance::build(
        cfg,
        Options {
            demo: true,
            announce: false,
        },
    )
    .await
    .unwrap();
    let base = app.url();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let admin = Http::login(&base, "bench", "bench-password").await;
    let xterm = loop {
        let v = admin.get("/api/v1/apps").await;
        if let Some(a) = v["items"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == "XTerm"))
        {
            break a["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // 1. Open -> connectable, one at a time, beside the reference.
    let net = format!("{scope}-ref");
    docker(&["network", "create", "--internal", &net]);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let (iid, t) = admin.open(&xterm).await;
        ours.push(t);
        admin.stop(&iid).await;
        theirs.push(reference_open(&image, &net).await);
    }
    docker(&["network", "rm", &net]);
    let (o, r) = (median(&mut ours), median(&mut theirs));
    println!("## Open -> connectable container desktop (image present, 10 runs each)\n");
    println!("| | min | median | max |");
    println!("|---|---:|---:|---:|");
    println!(
        "| appliance (HTTP open -> instance running) | {:.0} ms | {:.0} ms | {:.0} ms |",
        ms(ours[0]),
        ms(o),
        ms(ours[9])
    );
    println!(
        "| reference (`docker run` -> VNC banner) | {:.0} ms | {:.0} ms | {:.0} ms |",
        ms(theirs[0]),
        ms(r),
        ms(theirs[9])
    );
    println!(
        "\nratio appliance/reference (median): {:.2}; target: median <= 1000 ms: {}\n",
        o.as_secs_f64() / r.as_secs_f64(),
        if o <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );

    // 2. 50 at once: 10 users x 5 apps.
    let deps = admin.get("/api/v1/deployments").await;
    let dep = deps["items"][0]["id"].as_str().unwrap().to_owned();
    let mut apps = vec![xterm.clone()];
    for i in 1..5 {
        let v = admin
            .post(
                &format!("/api/v1/deployments/{dep}/apps"),
                Some(json!({"name": format!("XTerm {i}"), "shared": true,
                    "spec": {"command": ["xterm"], "resources": {"memory_mib": 256, "pids": 128}}})),
            )
            .await;
        let id = v["job"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("app {i}: {v}"));
        let j = admin.job(id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        apps.push(v["object"]["id"].as_str().unwrap().to_owned());
    }
    let mut users = Vec::new();
    for u in 0..10 {
        let name = format!("user{u}");
        store
            .create_user(&name, daas_appliance::model::Role::User, &hash)
            .unwrap();
        users.push(Http::login(&base, &name, "bench-password").await);
    }
    let users = std::sync::Arc::new(users);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for u in 0..10 {
        for a in &apps {
            let users = users.clone();
            let a = a.clone();
            tasks.push(tokio::spawn(async move { users[u].open(&a).await }));
        }
    }
    let mut opened = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (iid, d) = t.await.unwrap();
        opened.push((i / 5, iid, d));
    }
    let all_open = t.elapsed();
    let mut lat: Vec<Duration> = opened.iter().map(|o| o.2).collect();
    lat.sort();
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=org.daas.appliance={scope}"),
    ])
    .lines()
    .count();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (u, iid, _) in opened {
        let users = users.clone();
        tasks.push(tokio::spawn(async move { users[u].stop(&iid).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all_stopped = t.elapsed();
    let f = format!("label=org.daas.appliance={scope}");
    let left_c = docker(&["ps", "-aq", "--filter", &f]).lines().count();
    let left_n = docker(&["network", "ls", "-q", "--filter", &f])
        .lines()
        .count();
    println!("## 50 App containers (10 users x 5 apps) opened and stopped at once ({workers} job workers)\n");
    println!("| opened | running containers | all running after | open p50 | open p95 | all stopped after | containers left | networks left |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {running} | {:.1} s | {:.0} ms | {:.0} ms | {:.1} s | {left_c} | {left_n} |",
        lat.len(),
        all_open.as_secs_f64(),
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 95 / 100]),
        all_stopped.as_secs_f64()
    );
    println!(
        "\nall clean: {}",
        if left_c == 0 && left_n == 0 && running == 50 {
            "yes"
        } else {
            "NO"
        }
    );
    stop.cancel();
    let _ = server.await;
    // The catalogue's images stay with the state dir's scope; remove them.
    for id in docker(&["images", "-q", "--filter", &f]).lines() {
        docker(&["rmi", "-f", id]);
    }
}
