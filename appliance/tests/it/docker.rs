//! The Docker backend against a real Docker Engine (Debian's `docker.io`,
//! started by tests/run) and a real desktop image built from a local rootfs
//! (image/docker-desktop/build.sh, cached under /var/cache/daas-test).
//!
//! Every test runs its appliance with its own `scope` and checks by label,
//! at its end, that nothing of it is left: no container, network or image.
//! Tests share the engine under a shared lock; the one that stops and
//! restarts dockerd takes it exclusively (and always starts dockerd again).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::tunnel::{open_ws, read_until, ticket};

const SOCKET: &str = "/var/run/docker.sock";
const LOCK: &str = "/var/cache/daas-test/docker-tests.lock";

fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

fn engine_answers() -> bool {
    Path::new(SOCKET).exists() && docker(&["version", "--format", "{{.Server.Version}}"]).0
}

/// Starts dockerd as tests/run does (detached, logging to
/// /var/log/dockerd.log) and waits for it to answer.
fn start_dockerd() -> bool {
    // Through a shell that exits at once: dockerd is nobody's child here,
    // as when tests/run starts it, and outlives this test.
    let spawned = Command::new("sh")
        .args([
            "-c",
            "setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !spawned {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if engine_answers() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn dockerd_pid() -> Option<i32> {
    std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stops dockerd (SIGTERM) and waits until it is gone.
fn stop_dockerd() {
    let Some(pid) = dockerd_pid() else { return };
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                !st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        eprintln!("dockerd ignored SIGTERM for 60 s: SIGKILL");
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(!alive(pid), "dockerd did not stop");
}

/// The engine and the desktop image, or `None` (and a loud message) where
/// this machine truly cannot run Docker.
fn engine_and_image() -> Option<String> {
    if !engine_answers() {
        let root = nix::unistd::Uid::effective().is_root();
        if !(root && start_dockerd()) {
            eprintln!(
                "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: no Docker engine at {SOCKET}, and dockerd cannot be started here\n\
                 !!! (run the suite as root through tests/run, which installs docker.io)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return None;
        }
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../image/docker-desktop/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run image/docker-desktop/build.sh");
    assert!(out.status.success(), "the desktop image could not be built");
    let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!tag.is_empty());
    Some(tag)
}

/// A lock over the engine: shared by tests that use it, exclusive for the
/// test that restarts it.
struct EngineLock {
    _file: std::fs::File,
}

impl EngineLock {
    fn take(exclusive: bool) -> EngineLock {
        std::fs::create_dir_all("/var/cache/daas-test").unwrap();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap();
        let how = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        #[allow(deprecated)]
        nix::fcntl::flock(f.as_raw_fd(), how).unwrap();
        EngineLock { _file: f }
    }
}

/// Restores dockerd when a test that stopped it ends, even by panic.
struct RestoreEngine;

impl Drop for RestoreEngine {
    fn drop(&mut self) {
        if !engine_answers() {
            assert!(start_dockerd(), "could not start dockerd again");
        }
    }
}

fn scope() -> String {
    format!("it-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn config(scope: &str, extra: &str) -> String {
    format!(
        "[backends.docker]\nenabled = true\nscope = \"{scope}\"\nstart_timeout_secs = 30\n{extra}"
    )
}

/// Everything labelled with `scope` that is still there.
fn leftovers(scope: &str) -> Vec<String> {
    let f = format!("label=org.daas.appliance={scope}");
    let mut out = Vec::new();
    for args in [
        vec![
            "ps",
            "-a",
            "--filter",
            &f,
            "--format",
            "container {{.Names}}",
        ],
        vec![
            "network",
            "ls",
            "--filter",
            &f,
            "--format",
            "network {{.Name}}",
        ],
        vec![
            "images",
            "-a",
            "--filter",
            &f,
            "--format",
            "image {{.ID}} {{.Repository}}",
        ],
    ] {
        let (ok, text) = docker(&args);
        assert!(ok, "docker {args:?}: {text}");
        out.extend(text.lines().map(str::to_owned).filter(|l| !l.is_empty()));
    }
    out
}

fn oid(v: &Value) -> String {
    v["object"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no object in {v}"))
        .to_owned()
}

async fn make(c: &Client, path: &str, body: Value) -> (String, Value) {
    let (s, b) = c.post(path, body).await;
    assert_eq!(s, 202, "{path}: {b}");
    let j = c.wait_job(b["job"]["id"].as_str().unwrap()).await;
    (oid(&b), j)
}

async fn make_ok(c: &Client, path: &str, body: Value) -> String {
    let (id, j) = make(c, path, body).await;
    assert_eq!(j["state"], "succeeded", "{path}: {j}");
    id
}

async fn delete_ok(c: &Client, phase: &str, id: &str) {
    let (s, b) = c.delete(&format!("/api/v1/{phase}/{id}")).await;
    assert_eq!(s, 202, "delete {phase} {id}: {b}");
    c.job_ok(&b).await;
}

/// Baseimage → Environment → Deployment, quickly, as `c` (an admin).
async fn chain(c: &Client, image: &str) -> (String, String, String) {
    let base = make_ok(
        c,
        "/api/v1/baseimages",
        json!({"name": "Desktop", "backend": "docker", "spec": {"source": image}}),
    )
    .await;
    let env = make_ok(
        c,
        &format!("/api/v1/baseimages/{base}/environments"),
        json!({"name": "Env"}),
    )
    .await;
    let dep = make_ok(
        c,
        &format!("/api/v1/environments/{env}/deployments"),
        json!({"name": "Dep"}),
    )
    .await;
    (base, env, dep)
}

async fn open(c: &Client, app: &str) -> (String, Value) {
    let (s, o) = c.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    assert_eq!(s, 202, "{o}");
    let iid = o["instance"]["id"].as_str().unwrap().to_owned();
    let j = c.wait_job(o["job"]["id"].as_str().unwrap()).await;
    (iid, j)
}

async fn stop(c: &Client, iid: &str) {
    let (s, b) = c.post_empty(&format!("/api/v1/instances/{iid}/stop")).await;
    assert_eq!(s, 202, "{b}");
    c.job_ok(&b).await;
}

async fn wait_instance(c: &Client, iid: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, i) = c.get(&format!("/api/v1/instances/{iid}")).await;
        if states.contains(&i["state"].as_str().unwrap_or("")) {
            return i;
        }
        assert!(Instant::now() < deadline, "instance stays {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn inspect(name: &str) -> Value {
    let (ok, text) = docker(&["inspect", name]);
    assert!(ok, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_whole_lifecycle_shows_the_desktop_and_leaves_nothing() {
    let Some(image) = engine_and_image() else {
        return;
    };
    let _lock = EngineLock::take(false);
    let scope = scope();
    let d = Daemon::start(&config(&scope, ""), false);
    let admin = d.admin().await;
    let (s, b) = admin.get("/api/v1/backends").await;
    assert_eq!(s, 200);
    assert!(b.to_string().contains("docker"), "{b}");

    // Baseimage: an admin's script runs as root and is committed.
    let base = make_ok(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Desktop", "backend": "docker", "spec": {
            "source": image,
            "config_auto": [{"name": "bake", "run": "echo baked > /etc/daas-baked && id -u"}]
        }}),
    )
    .await;
    // Environment with a configuration desktop whose changes are committed.
    let (s, e) = admin
        .post(
            &format!("/api/v1/baseimages/{base}/environments"),
            json!({"name": "Env", "spec": {"interactive": true}}),
        )
        .await;
    assert_eq!(s, 202, "{e}");
    admin.job_ok(&e).await;
    let env = oid(&e);
    let (s, o) = admin
        .post_empty(&format!("/api/v1/environments/{env}/open"))
        .await;
    assert_eq!(s, 202, "{o}");
    admin.job_ok(&o).await;
    let cfg_iid = o["instance"]["id"].as_str().unwrap().to_owned();
    let (ok, out) = docker(&[
        "exec",
        &format!("daas-inst-{cfg_iid}"),
        "sh",
        "-c",
        "echo by-hand > /home/daas/by-hand.txt",
    ]);
    assert!(ok, "{out}");
    stop(&admin, &cfg_iid).await;
    let (s, f) = admin
        .post_empty(&format!("/api/v1/environments/{env}/finalize"))
        .await;
    assert_eq!(s, 202, "{f}");
    admin.job_ok(&f).await;

    // Deployment: a user script runs as the desktop user and sees the
    // configuration desktop's change.
    let (dep, j) = make(
        &admin,
        &format!("/api/v1/environments/{env}/deployments"),
        json!({"name": "Dep", "spec": {"config_auto": [{"name": "configure",
            "run": "cat by-hand.txt && echo deployed > $HOME/dep.txt && id -u"}]}}),
    )
    .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let (_, logs) = admin
        .get(&format!("/api/v1/jobs/{}/logs", j["id"].as_str().unwrap()))
        .await;
    let logs = logs.to_string();
    assert!(logs.contains("by-hand") && logs.contains("1000"), "{logs}");

    // App with limits.
    let app = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "XTerm", "shared": true, "spec": {
            "command": ["xterm", "-fa", "DejaVu Sans Mono"],
            "resources": {"cpus": 1, "memory_mib": 256, "pids": 200}
        }}),
    )
    .await;
    let user = d.user(&admin, "alice").await;
    let (iid, j) = open(&user, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");

    // The container is what the design says.
    let c = inspect(&format!("daas-inst-{iid}"));
    let h = &c["HostConfig"];
    assert_eq!(h["ReadonlyRootfs"], true, "{h}");
    assert_eq!(h["Privileged"], false);
    assert_eq!(h["Memory"], 256u64 << 20);
    assert_eq!(h["PidsLimit"], 200);
    assert_eq!(h["NanoCpus"], 1_000_000_000u64);
    assert_eq!(h["CapDrop"], json!(["ALL"]));
    assert_eq!(c["Config"]["User"], "1000:1000");
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["org.daas.instance"], iid.as_str());
    assert_eq!(labels["org.daas.object"], app.as_str());
    let (_, me) = user.get("/api/v1/me").await;
    let uid = me["id"].as_str().or(me["user"]["id"].as_str()).unwrap();
    assert_eq!(labels["org.daas.owner"], uid);
    let net = format!("daas-user-{uid}");
    let n = inspect(&net);
    assert_eq!(n["Internal"], true, "{n}");
    let (ok, out) = docker(&[
        "exec",
        &format!("daas-inst-{iid}"),
        "sh",
        "-c",
        "cat $HOME/dep.txt /etc/daas-baked; touch /etc/x 2>/dev/null && echo writable; true",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("deployed") && out.contains("baked"), "{out}");
    assert!(!out.contains("writable"), "the root is read-only: {out}");

    // The tunnel shows the desktop.
    let t = ticket(&user, &iid).await;
    let (mut ws, _) = open_ws(
        &d,
        &t,
        "&GUAC_WIDTH=800&GUAC_HEIGHT=600&GUAC_IMAGE=image/png",
    )
    .await;
    let (text, closed) = read_until(&mut ws, |s| {
        s.contains("4.size,1.0,") && (s.contains("3.img,") || s.contains("4.rect,"))
    })
    .await;
    assert!(closed.is_none(), "{text}");
    assert!(
        text.contains("4.size,1.0,"),
        "{}",
        &text[..200.min(text.len())]
    );
    drop(ws);

    stop(&user, &iid).await;
    let (ok, _) = docker(&["inspect", &format!("daas-inst-{iid}")]);
    assert!(!ok, "the container is removed");
    let (ok, _) = docker(&["network", "inspect", &net]);
    assert!(!ok, "the user's last container took its network along");

    delete_ok(&admin, "apps", &app).await;
    delete_ok(&admin, "deployments", &dep).await;
    delete_ok(&admin, "environments", &env).await;
    delete_ok(&admin, "baseimages", &base).await;
    assert_eq!(leftovers(&scope), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_bad_input_and_failing_apps_are_clean_job_errors() {
    let Some(image) = engine_and_image() else {
        return;
    };
    let _lock = EngineLock::take(false);
    let scope = scope();
    let d = Daemon::start(&config(&scope, ""), false);
    let admin = d.admin().await;

    // A missing image, and none at all.
    let (b1, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Nope", "backend": "docker", "spec": {"source": "daas-nope/missing:1"}}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("not on the Docker engine"),
        "{j}"
    );
    let (b2, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "None", "backend": "docker"}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("spec.source"), "{j}");
    // A failing script fails its job and leaves no build container.
    let (b3, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Bad script", "backend": "docker", "spec": {"source": image,
            "config_auto": [{"name": "fails", "run": "echo trying; exit 7"}]}}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("exit code 7"), "{j}");
    for b in [&b1, &b2, &b3] {
        delete_ok(&admin, "baseimages", b).await;
    }

    let (base, env, dep) = chain(&admin, &image).await;
    // A program the image does not have.
    let (a0, j) = make(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "Missing", "spec": {"command": ["no-such-program-here"]}}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["error"].as_str().unwrap().contains("not in the image"),
        "{j}"
    );
    delete_ok(&admin, "apps", &a0).await;

    // A container that exits at once.
    let quits = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "Quits", "spec": {"command": ["sh", "-c", "echo giving up >&2; exit 3"]}}),
    )
    .await;
    let (iid, j) = open(&admin, &quits).await;
    if j["state"] == "failed" {
        assert!(j["error"].as_str().unwrap().contains("code 3"), "{j}");
    } else {
        let i = wait_instance(&admin, &iid, &["failed"]).await;
        assert!(i["error"].as_str().unwrap().contains("code 3"), "{i}");
    }
    // An app killed for memory.
    let hog = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "Hog", "spec": {
            "command": ["sh", "-c", "sleep 1; a=x; while :; do a=$a$a; done"],
            "resources": {"memory_mib": 64}}}),
    )
    .await;
    let (iid, j) = open(&admin, &hog).await;
    let why = if j["state"] == "failed" {
        j["error"].to_string()
    } else {
        wait_instance(&admin, &iid, &["failed"]).await["error"].to_string()
    };
    assert!(why.contains("memory"), "{why}");
    // Both ended instances were cleaned up by the backend.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (_, out) = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=org.daas.appliance={scope}"),
            "-q",
        ]);
        if out.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in [&quits, &hog] {
        delete_ok(&admin, "apps", a).await;
    }
    delete_ok(&admin, "deployments", &dep).await;
    delete_ok(&admin, "environments", &env).await;
    delete_ok(&admin, "baseimages", &base).await;
    assert_eq!(leftovers(&scope), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_down_or_restarted_mid_job() {
    let Some(image) = engine_and_image() else {
        return;
    };
    let _lock = EngineLock::take(true);
    let _restore = RestoreEngine;
    let scope = scope();
    let d = Daemon::start(
        &config(&scope, "[jobs]\nmax_attempts = 4\nretry_backoff_ms = 500\n"),
        false,
    );
    let admin = d.admin().await;
    let base = make_ok(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Desktop", "backend": "docker", "spec": {"source": image}}),
    )
    .await;
    let env = make_ok(
        &admin,
        &format!("/api/v1/baseimages/{base}/environments"),
        json!({"name": "Env"}),
    )
    .await;

    // Restarted in the middle of a script: the job ends cleanly, and
    // succeeds at once or on retry.
    let (s, b) = admin
        .post(
            &format!("/api/v1/environments/{env}/deployments"),
            json!({"name": "Dep", "spec": {"config_auto": [
                {"name": "slow", "run": "echo started; sleep 3; echo done > $HOME/done.txt"}]}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let dep = oid(&b);
    let job = b["job"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, l) = admin.get(&format!("/api/v1/jobs/{job}/logs")).await;
        if l.to_string().contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "the script did not start: {l}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_dockerd();
    assert!(start_dockerd(), "dockerd did not come back");
    let j = admin.wait_job(&job).await;
    if j["state"] != "succeeded" {
        assert_eq!(j["state"], "failed", "{j}");
        let e = j["error"].as_str().unwrap();
        assert!(e.contains("Docker engine") || e.contains("script"), "{j}");
        let (s, r) = admin
            .post_empty(&format!("/api/v1/deployments/{dep}/retry"))
            .await;
        assert_eq!(s, 202, "{r}");
        admin.job_ok(&r).await;
    }
    let app = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "XTerm", "spec": {"command": ["xterm"]}}),
    )
    .await;

    // The engine down: opening fails with a clean error, the appliance
    // stays up, and works again once the engine is back.
    stop_dockerd();
    let (iid, j) = open(&admin, &app).await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("unreachable"), "{j}");
    let (s, _) = admin.get("/healthz").await;
    assert_eq!(s, 200);
    let i = wait_instance(&admin, &iid, &["failed", "stopped"]).await;
    assert_ne!(i["state"], "running");
    assert!(start_dockerd(), "dockerd did not come back");
    let (iid, j) = open(&admin, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    // A restart kills running containers: the instance ends, and is cleaned.
    stop_dockerd();
    assert!(start_dockerd(), "dockerd did not come back");
    let i = wait_instance(&admin, &iid, &["failed", "stopped", "lost"]).await;
    assert_ne!(i["state"], "running");

    delete_ok(&admin, "apps", &app).await;
    delete_ok(&admin, "deployments", &dep).await;
    delete_ok(&admin, "environments", &env).await;
    delete_ok(&admin, "baseimages", &base).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = leftovers(&scope);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_demo_catalogue_by_config_switch() {
    let Some(image) = engine_and_image() else {
        return;
    };
    let _lock = EngineLock::take(false);
    let scope = scope();
    let d = Daemon::start(
        &config(
            &scope,
            &format!("demo_image = \"{image}\"\n[demo]\nbackend = \"docker\"\n"),
        ),
        true,
    );
    let admin = d.admin().await;
    let user = d.user(&admin, "bob").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let app = loop {
        let (_, a) = user.get("/api/v1/apps").await;
        if let Some(x) = a["items"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "XTerm"))
        {
            break x["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no demo app: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, o) = admin.get(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(o["backend"], "docker", "{o}");
    let (iid, j) = open(&user, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let (ok, _) = docker(&["inspect", &format!("daas-inst-{iid}")]);
    assert!(ok, "the demo app runs as a container");
    stop(&user, &iid).await;
    // The catalogue stays; removing it leaves nothing of this appliance.
    // The seeding may still be trying the apps the image lacks (X Clock,
    // X Eyes: created, failed, deleted): wait until the deployment is free.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, objs) = admin.get("/api/v1/apps").await;
        for a in objs["items"].as_array().unwrap() {
            delete_ok(&admin, "apps", a["id"].as_str().unwrap()).await;
        }
        let (_, l) = admin.get("/api/v1/deployments").await;
        let dep = l["items"][0]["id"].as_str().unwrap().to_owned();
        let (s, b) = admin.delete(&format!("/api/v1/deployments/{dep}")).await;
        if s == 202 {
            admin.job_ok(&b).await;
            break;
        }
        assert_eq!(s, 409, "{b}");
        assert!(
            Instant::now() < deadline,
            "the deployment stays in use: {b}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for phase in ["environments", "baseimages"] {
        let (_, l) = admin.get(&format!("/api/v1/{phase}")).await;
        for o in l["items"].as_array().unwrap() {
            delete_ok(&admin, phase, o["id"].as_str().unwrap()).await;
        }
    }
    assert_eq!(leftovers(&scope), Vec::<String>::new());
}
