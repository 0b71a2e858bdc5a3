//! The Proxmox VE backend against the simulator (`daas_proxmox::sim`): a
//! real HTTPS server on a loopback port, started by each test in the test
//! process, with realistic task durations scaled down, locks, linked-clone
//! rules, live snapshots and injectable faults. The appliance is the real
//! binary, talking to it over TLS with a pinned fingerprint and a token
//! file, exactly as it talks to Proxmox VE.
//!
//! The simulator's VMs have no guest inside: these tests run with
//! `guest = false`, so an App instance is the resumed VM (the path up to
//! the guest-proxy is the production one; the guest-proxy step itself is
//! covered by tests/it/guest.rs against a real sshd). The instance's
//! address comes from the simulated QEMU guest agent.
//!
//! Every test ends by deleting what it made and asserting that the
//! simulator holds only its two templates, unlocked, and that every request
//! the appliance sent would be accepted by Proxmox VE's API schema.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use daas_proxmox::sim::{
    FaultConfig, FaultKind, Privileges, SimConfig, SimState, SimTimings, SimTls, SimToken,
    Simulator,
};
use serde_json::{json, Value};

use crate::harness::*;

#[path = "../../proxmox/tests/it/schema.rs"]
#[allow(dead_code, unreachable_pub)]
mod pve_schema;

const TOKEN_ID: &str = "daas@pve!appliance";
const TEMPLATES: [u32; 2] = [9000, 9001];

/// A simulator and the files the appliance needs to reach it.
struct Sim {
    sim: Simulator,
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Sim {
    async fn start(scale: f64, f: impl FnOnce(&mut SimConfig)) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let secret = format!("{:032x}", rand::random::<u128>());
        let token_file = dir.path().join("pve.token");
        std::fs::write(&token_file, format!("{TOKEN_ID}={secret}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = SimConfig::new(TOKEN_ID, &secret);
        c.timings = SimTimings::realistic().scaled(scale);
        c.unauthorized_delay = Duration::from_millis(50);
        f(&mut c);
        let tls = SimTls::generate(&[]).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sim = Simulator::start(c, addr, tls).await.unwrap();
        Sim {
            sim,
            dir,
            token_file,
        }
    }

    /// The appliance's config for this simulator.
    fn config(&self, extra: &str) -> String {
        format!(
            "[limits]\nenvironments_per_user = 20\ninstances_per_user = 20\n\
             [jobs]\nworkers = 16\nmax_attempts = 6\nretry_backoff_ms = 100\n\
             [backends.proxmox]\nenabled = true\nurl = \"{}\"\ntoken_file = \"{}\"\n\
             fingerprint = \"{}\"\nnode = \"pve\"\nguest = false\nguest_timeout_secs = 10\n\
             poll_initial_ms = 20\npoll_max_ms = 200\nshutdown_timeout_secs = 5\n{extra}",
            self.sim.url(),
            self.token_file.display(),
            self.sim.fingerprint()
        )
    }

    fn state(&self) -> SimState {
        self.sim.state()
    }

    /// Only the templates are left, unlocked, and no task runs.
    async fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.state();
            let ids: BTreeSet<u32> = st.vms.iter().map(|v| v.vmid).collect();
            let locked: Vec<_> = st.vms.iter().filter(|v| v.lock.is_some()).collect();
            let tasks: Vec<_> = st
                .running_tasks
                .iter()
                .filter(|t| !t.contains(":vncproxy:"))
                .collect();
            if ids == TEMPLATES.into_iter().collect() && locked.is_empty() && tasks.is_empty() {
                for v in &st.vms {
                    assert!(v.snapshots.is_empty(), "template {} has snapshots", v.vmid);
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VMs leaked in the simulator: {ids:?}, locked {:?}, tasks {tasks:?}",
                locked.iter().map(|v| (v.vmid, &v.lock)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every request the appliance sent passes Proxmox VE's API schema.
    fn assert_schema(&self) {
        let schema = pve_schema::schema();
        let mut problems = Vec::new();
        let reqs = self.sim.requests();
        for r in &reqs {
            let params: Vec<(String, String)> =
                r.query.iter().chain(r.body.iter()).cloned().collect();
            problems.extend(schema.check_request(&r.method, &r.path, &params));
        }
        assert!(!reqs.is_empty());
        assert!(
            problems.is_empty(),
            "requests a real Proxmox VE would refuse:\n{}",
            problems.join("\n")
        );
    }
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
    let j = wait_job_long(c, b["job"]["id"].as_str().unwrap()).await;
    (oid(&b), j)
}

async fn make_ok(c: &Client, path: &str, body: Value) -> String {
    let (id, j) = make(c, path, body).await;
    assert_eq!(j["state"], "succeeded", "{path}: {j}");
    id
}

async fn wait_job_long(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, j) = c.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(s, 200, "{j}");
        if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {j}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn logs(c: &Client, job: &Value) -> String {
    let (_, l) = c
        .get(&format!(
            "/api/v1/jobs/{}/logs",
            job["id"].as_str().unwrap()
        ))
        .await;
    l.to_string()
}

/// Deletes an object, retrying while a fault or a lock gets in the way.
async fn delete_ok(c: &Client, phase: &str, id: &str) {
    for _ in 0..10 {
        let (s, b) = c.delete(&format!("/api/v1/{phase}/{id}")).await;
        if s == 404 {
            return;
        }
        assert_eq!(s, 202, "delete {phase} {id}: {b}");
        let j = wait_job_long(c, b["job"]["id"].as_str().unwrap()).await;
        if j["state"] == "succeeded" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("could not delete {phase} {id}");
}

async fn open(c: &Client, app: &str) -> (String, Value) {
    let (s, o) = c.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    assert_eq!(s, 202, "{o}");
    let iid = o["instance"]["id"].as_str().unwrap().to_owned();
    let j = wait_job_long(c, o["job"]["id"].as_str().unwrap()).await;
    (iid, j)
}

async fn stop(c: &Client, iid: &str) {
    let (s, b) = c.post_empty(&format!("/api/v1/instances/{iid}/stop")).await;
    assert_eq!(s, 202, "{b}");
    let j = wait_job_long(c, b["job"]["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "succeeded", "{j}");
}

/// The simulator's VM named for an object.
fn vm_of(st: &SimState, object_id: &str) -> Option<daas_proxmox::sim::SimVm> {
    let name = format!("daas-{object_id}");
    st.vms
        .iter()
        .find(|v| v.config.get("name") == Some(&name))
        .cloned()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Baseimage (from template 9000) → Environment → Deployment.
async fn chain(c: &Client, live: bool) -> (String, String, String) {
    let base = make_ok(
        c,
        "/api/v1/baseimages",
        json!({"name": "Debian", "backend": "proxmox", "spec": {"source": "9000"}}),
    )
    .await;
    let env = make_ok(
        c,
        &format!("/api/v1/baseimages/{base}/environments"),
        json!({"name": "Env", "spec": {"resources": {"cpus": 3, "memory_mib": 3072}}}),
    )
    .await;
    let dep = make_ok(
        c,
        &format!("/api/v1/environments/{env}/deployments"),
        json!({"name": "Dep", "spec": {"live": live}}),
    )
    .await;
    (base, env, dep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_whole_lifecycle_against_the_simulator() {
    let sim = Sim::start(0.1, |_| {}).await;
    let d = Daemon::start(&sim.config(""), false);
    let admin = d.admin().await;
    let (s, b) = admin.get("/api/v1/backends").await;
    assert_eq!(s, 200);
    assert!(b.to_string().contains("proxmox"), "{b}");

    let (base, env, dep) = chain(&admin, true).await;
    let st = sim.state();
    // The Baseimage is a template made from a clone of 9000.
    let bvm = vm_of(&st, &base).expect("the Baseimage's VM");
    assert!(bvm.template, "the Baseimage is a template");
    assert!(bvm.config["tags"].contains("baseimage"), "{:?}", bvm.config);
    // The Environment: a linked clone with a fixed MAC, cores, memory, the
    // root snapshot, and the Deployment's live snapshot.
    let evm = vm_of(&st, &env).expect("the Environment's VM");
    assert_eq!(evm.linked_from, Some(bvm.vmid), "a linked clone");
    assert_eq!(evm.config["cores"], "3");
    assert_eq!(evm.config["memory"], "3072");
    let net0 = evm.config["net0"].clone();
    assert!(net0.contains("bridge=vmbr1"), "{net0}");
    let mac = net0
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("virtio=")
        .to_owned();
    assert!(
        u8::from_str_radix(&mac[..2], 16).unwrap() & 0x03 == 0x02,
        "a locally administered MAC: {mac}"
    );
    assert!(
        evm.snapshots.contains_key("daasroot"),
        "{:?}",
        evm.snapshots
    );
    let snap = evm
        .snapshots
        .iter()
        .find(|(n, _)| n.starts_with('d') && *n != "daasroot")
        .map(|(n, s)| (n.clone(), s.clone()))
        .expect("the Deployment's snapshot");
    assert!(snap.1.vmstate, "a live snapshot");
    assert!(!evm.running, "the VM does not run after the snapshot");

    // A shared App, opened by a user: the VM resumes from the snapshot.
    let app = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "XTerm", "shared": true, "spec": {"command": ["xterm"]}}),
    )
    .await;
    let user = d.user(&admin, "alice").await;
    let (iid, j) = open(&user, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    let l = logs(&user, &j).await;
    assert!(
        l.contains("rolled back") && l.contains("guest step skipped"),
        "{l}"
    );
    let (_, i) = user.get(&format!("/api/v1/instances/{iid}")).await;
    assert_eq!(i["state"], "running", "{i}");
    let evm = vm_of(&sim.state(), &env).unwrap();
    assert!(evm.running);
    assert_eq!(evm.parent.as_deref(), Some(snap.0.as_str()));
    // The instance's tag is written off the open's path.
    wait_for("the instance's tag", || {
        vm_of(&sim.state(), &env).is_some_and(|v| v.config["tags"].contains(&format!("i-{iid}")))
    })
    .await;
    let (s, t) = user
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(s, 200, "{t}");
    // A second instance of the same Deployment's VM is refused cleanly.
    let bob = d.user(&admin, "bob").await;
    let (_, j2) = open(&bob, &app).await;
    assert_eq!(j2["state"], "failed", "{j2}");
    assert!(
        j2["error"]
            .as_str()
            .unwrap_or("")
            .contains("one instance at a time"),
        "{j2}"
    );
    assert!(
        vm_of(&sim.state(), &env).unwrap().running,
        "alice's instance stays"
    );
    stop(&user, &iid).await;
    let evm = vm_of(&sim.state(), &env).unwrap();
    assert!(!evm.running);
    assert!(
        !evm.config["tags"].contains("i-"),
        "{:?}",
        evm.config["tags"]
    );
    // Again: the rollback is repeatable.
    let (iid2, j) = open(&bob, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    stop(&bob, &iid2).await;

    // An offline Deployment: the rollback starts the VM.
    let dep2 = make_ok(
        &admin,
        &format!("/api/v1/environments/{env}/deployments"),
        json!({"name": "Offline", "spec": {"live": false}}),
    )
    .await;
    let app2 = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep2}/apps"),
        json!({"name": "Offline app", "shared": true, "spec": {"command": ["xterm"]}}),
    )
    .await;
    let (iid3, j) = open(&user, &app2).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(logs(&user, &j).await.contains("started"));
    assert!(vm_of(&sim.state(), &env).unwrap().running);
    stop(&user, &iid3).await;

    // A template on storage that cannot link: a full clone.
    let wbase = make_ok(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Windows", "backend": "proxmox", "spec": {"source": "9001"}}),
    )
    .await;
    let wvm = vm_of(&sim.state(), &wbase).unwrap();
    assert_eq!(wvm.linked_from, None, "a full clone");
    assert!(wvm.template);

    // The inventory knows every VM as ours: no orphans.
    let (s, o) = admin.get("/api/v1/admin/orphans").await;
    if s == 200 {
        assert!(!o.to_string().contains("proxmox"), "{o}");
    }

    for (p, id) in [
        ("apps", &app2),
        ("apps", &app),
        ("deployments", &dep2),
        ("deployments", &dep),
        ("environments", &env),
        ("baseimages", &base),
        ("baseimages", &wbase),
    ] {
        delete_ok(&admin, p, id).await;
    }
    sim.assert_clean().await;
    sim.assert_schema();
    assert!(d.terminate(), "the appliance stops cleanly");
    drop(sim.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_faults_end_every_operation_done_or_undone() {
    let sim = Sim::start(0.05, |c| {
        c.faults = FaultConfig {
            rate: 0.12,
            seed: 11,
            kinds: vec![
                FaultKind::Refused595,
                FaultKind::Timeout596,
                FaultKind::Lost596,
                FaultKind::TaskFail,
            ],
            hang: Duration::from_secs(1),
        };
    })
    .await;
    let d = Daemon::start(&sim.config(""), false);
    let admin = d.admin().await;
    let mut made: Vec<(&str, String)> = Vec::new();
    let mut outcomes = Vec::new();
    for round in 0..3 {
        let (bid, j) = make(
            &admin,
            "/api/v1/baseimages",
            json!({"name": format!("B{round}"), "backend": "proxmox", "spec": {"source": "9000"}}),
        )
        .await;
        outcomes.push(j["state"].as_str().unwrap().to_owned());
        made.push(("baseimages", bid.clone()));
        if j["state"] != "succeeded" {
            continue;
        }
        let (eid, j) = make(
            &admin,
            &format!("/api/v1/baseimages/{bid}/environments"),
            json!({"name": format!("E{round}")}),
        )
        .await;
        outcomes.push(j["state"].as_str().unwrap().to_owned());
        made.push(("environments", eid.clone()));
        if j["state"] != "succeeded" {
            continue;
        }
        let (did, j) = make(
            &admin,
            &format!("/api/v1/environments/{eid}/deployments"),
            json!({"name": format!("D{round}"), "spec": {"live": round % 2 == 0}}),
        )
        .await;
        outcomes.push(j["state"].as_str().unwrap().to_owned());
        made.push(("deployments", did.clone()));
        if j["state"] != "succeeded" {
            continue;
        }
        let (aid, j) = make(
            &admin,
            &format!("/api/v1/deployments/{did}/apps"),
            json!({"name": format!("A{round}"), "spec": {"command": ["xterm"]}}),
        )
        .await;
        outcomes.push(j["state"].as_str().unwrap().to_owned());
        made.push(("apps", aid.clone()));
        if j["state"] != "succeeded" {
            continue;
        }
        for _ in 0..2 {
            let (iid, j) = open(&admin, &aid).await;
            outcomes.push(j["state"].as_str().unwrap().to_owned());
            let (_, i) = admin.get(&format!("/api/v1/instances/{iid}")).await;
            if j["state"] == "succeeded" {
                assert_eq!(i["state"], "running", "{i}");
                let (s, b) = admin
                    .post_empty(&format!("/api/v1/instances/{iid}/stop"))
                    .await;
                assert_eq!(s, 202, "{b}");
                let j = wait_job_long(&admin, b["job"]["id"].as_str().unwrap()).await;
                outcomes.push(j["state"].as_str().unwrap().to_owned());
            } else {
                // A failed start is undone: the instance is not running.
                assert_ne!(i["state"], "running", "{i}");
            }
        }
    }
    let st = sim.state();
    eprintln!(
        "faults injected: {} of {} requests; job outcomes: {outcomes:?}",
        st.faults_injected, st.requests
    );
    assert!(st.faults_injected > 0, "no fault was injected");
    for o in &outcomes {
        assert!(o == "succeeded" || o == "failed", "{o}");
    }
    // Everything is deleted with the faults off: nothing leaked.
    sim.sim.set_fault_rate(0.0);
    for (p, id) in made.iter().rev() {
        delete_ok(&admin, p, id).await;
    }
    sim.assert_clean().await;
    sim.assert_schema();
    assert!(d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_bad_input_gives_clean_job_errors() {
    let sim = Sim::start(0.1, |c| {
        c.timings.clone = Duration::from_secs(20);
        c.tokens.push(SimToken {
            id: "weak@pve!weaktoken".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            privileges: Privileges::Only(
                ["VM.Audit", "Datastore.Audit"]
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
        });
    })
    .await;
    let d = Daemon::start(&sim.config(""), false);
    let admin = d.admin().await;
    // No such template.
    let (_, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Missing", "backend": "proxmox", "spec": {"source": "4242"}}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("no VM 4242"), "{j}");
    // Not a VMID.
    let (_, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Nonsense", "backend": "proxmox", "spec": {"source": "../9000"}}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("spec.source"), "{j}");
    // A locked source: the clone the test starts itself holds 9000's
    // target locked for 20 s; cloning from that VM is refused as locked.
    let client = daas_proxmox::Client::new(daas_proxmox::ClientConfig::new(
        sim.sim.url(),
        daas_proxmox::Credentials::Token(
            daas_proxmox::ApiToken::from_file(&sim.token_file, None).unwrap(),
        ),
        daas_proxmox::TlsTrust::Fingerprint(sim.sim.fingerprint()),
    ))
    .unwrap();
    let task = client
        .clone_vm(&daas_proxmox::CloneRequest {
            node: "pve".into(),
            vmid: 9000,
            newid: 777,
            name: Some("held".into()),
            mode: daas_proxmox::CloneMode::Linked,
            target: None,
            description: None,
            pool: None,
        })
        .await
        .unwrap();
    wait_for("VM 777 locked", || {
        sim.state()
            .vms
            .iter()
            .any(|v| v.vmid == 777 && v.lock.as_deref() == Some("clone"))
    })
    .await;
    let (lid, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Locked", "backend": "proxmox", "spec": {"source": "777"}}),
    )
    .await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("locked"), "{j}");
    assert!(
        logs(&admin, &j).await.contains("retrying"),
        "a lock is retried first"
    );
    task.wait().await.unwrap();
    client
        .destroy_vm("pve", 777)
        .await
        .unwrap()
        .unwrap()
        .wait()
        .await
        .unwrap();
    delete_ok(&admin, "baseimages", &lid).await;
    assert!(d.terminate());

    // A token without the privileges: a clear error, nothing made.
    let weak = sim.dir.path().join("weak.token");
    std::fs::write(
        &weak,
        "weak@pve!weaktoken=0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::set_permissions(&weak, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = sim.config("").replace(
        &sim.token_file.display().to_string(),
        &weak.display().to_string(),
    );
    let d = Daemon::start(&cfg, false);
    let admin = d.admin().await;
    let (bid, j) = make(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Weak", "backend": "proxmox", "spec": {"source": "9000"}}),
    )
    .await;
    assert_eq!(j["state"], "failed");
    let e = j["error"].as_str().unwrap();
    assert!(e.contains("privilege") && e.contains("VM.Clone"), "{e}");
    // The process is up and answers.
    let (s, _) = admin.get("/api/v1/me").await;
    assert_eq!(s, 200);
    delete_ok(&admin, "baseimages", &bid).await;
    assert!(d.terminate());
    sim.assert_clean().await;
    sim.assert_schema();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_warm_pool_serves_an_open_with_no_task() {
    let sim = Sim::start(0.1, |_| {}).await;
    let d = Daemon::start(&sim.config("warm_pool = 1\n"), false);
    let admin = d.admin().await;
    let (base, env, dep) = chain(&admin, true).await;
    let app = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "Warm", "shared": true, "spec": {"command": ["xterm"]}}),
    )
    .await;
    let warm = |sim: &Sim| {
        vm_of(&sim.state(), &env).is_some_and(|v| {
            v.running
                && v.lock.is_none()
                && v.config.get("tags").is_some_and(|t| t.contains("warm"))
        })
    };
    wait_for("the warm instance", || warm(&sim)).await;
    // Settle: the pool marks the VM warm as its last step.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sim.sim.requests().len();
    let t = Instant::now();
    let (iid, j) = open(&admin, &app).await;
    let took = t.elapsed();
    assert_eq!(j["state"], "succeeded", "{j}");
    let l = logs(&admin, &j).await;
    assert!(l.contains("warm instance"), "{l}");
    let during: Vec<_> = sim.sim.requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        !during.iter().any(|r| r.starts_with("POST")),
        "the open made tasks: {during:?}"
    );
    eprintln!("warm open: {took:?}, requests meanwhile: {during:?}");
    // The instance is marked on the VM (in the background).
    wait_for("the instance's tag", || {
        vm_of(&sim.state(), &env).is_some_and(|v| v.config["tags"].contains(&format!("i-{iid}")))
    })
    .await;
    // After use it is refilled.
    stop(&admin, &iid).await;
    wait_for("the refill", || warm(&sim)).await;

    // A crash: the warm VM is adopted by the next start, and serves.
    let (dir, config) = d.kill9();
    let d = Daemon::spawn(dir, config, false);
    let admin = d.admin().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = sim.sim.requests().len();
    let (iid, j) = open(&admin, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(
        !sim.sim.requests()[before..]
            .iter()
            .any(|r| r.method == "POST"),
        "the adopted warm instance served"
    );
    stop(&admin, &iid).await;
    wait_for("the refill", || warm(&sim)).await;

    // Shutdown drains the pool; the next start refills it.
    let (dir, config) = {
        let c = d.config.clone();
        let ok;
        let dir;
        {
            let mut d = d;
            dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
            ok = d.terminate();
        }
        assert!(ok);
        (dir, c)
    };
    let v = vm_of(&sim.state(), &env).unwrap();
    assert!(!v.running, "drained at shutdown");
    assert!(!v.config["tags"].contains("warm"), "{:?}", v.config["tags"]);
    let d = Daemon::spawn(dir, config, false);
    let admin = d.admin().await;
    wait_for("the refill after a restart", || warm(&sim)).await;

    // Deleting the App drains its warm VM.
    delete_ok(&admin, "apps", &app).await;
    let v = vm_of(&sim.state(), &env).unwrap();
    assert!(!v.running && !v.config["tags"].contains("warm"), "{v:?}");
    for (p, id) in [
        ("deployments", &dep),
        ("environments", &env),
        ("baseimages", &base),
    ] {
        delete_ok(&admin, p, id).await;
    }
    assert!(d.terminate());
    sim.assert_clean().await;
    sim.assert_schema();
}

/// The backend against a real Proxmox VE, when one is named:
/// `DAAS_TEST_PVE_URL`, `DAAS_TEST_PVE_TOKEN_FILE`,
/// `DAAS_TEST_PVE_FINGERPRINT`, `DAAS_TEST_PVE_TEMPLATE` (a template VMID
/// with a guest VNC server), `DAAS_TEST_PVE_NODE` (default `pve`),
/// `DAAS_TEST_PVE_BRIDGE` (default `vmbr0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_real_cluster_opt_in() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(url), Some(token), Some(fp), Some(template)) = (
        var("DAAS_TEST_PVE_URL"),
        var("DAAS_TEST_PVE_TOKEN_FILE"),
        var("DAAS_TEST_PVE_FINGERPRINT"),
        var("DAAS_TEST_PVE_TEMPLATE"),
    ) else {
        eprintln!(
            "\n!!! SKIPPED pve_real_cluster_opt_in: set DAAS_TEST_PVE_URL, DAAS_TEST_PVE_TOKEN_FILE, \
             DAAS_TEST_PVE_FINGERPRINT and DAAS_TEST_PVE_TEMPLATE to run the backend against a real Proxmox VE\n"
        );
        return;
    };
    let node = var("DAAS_TEST_PVE_NODE").unwrap_or_else(|| "pve".into());
    let bridge = var("DAAS_TEST_PVE_BRIDGE").unwrap_or_else(|| "vmbr0".into());
    let cfg = format!(
        "[jobs]\nmax_attempts = 6\n[backends.proxmox]\nenabled = true\nurl = \"{url}\"\n\
         token_file = \"{token}\"\nfingerprint = \"{fp}\"\nnode = \"{node}\"\nbridge = \"{bridge}\"\n\
         guest = false\nguest_timeout_secs = 180\n"
    );
    let d = Daemon::start(&cfg, false);
    let admin = d.admin().await;
    let base = make_ok(
        &admin,
        "/api/v1/baseimages",
        json!({"name": "Real", "backend": "proxmox", "spec": {"source": template}}),
    )
    .await;
    let env = make_ok(
        &admin,
        &format!("/api/v1/baseimages/{base}/environments"),
        json!({"name": "Env"}),
    )
    .await;
    let dep = make_ok(
        &admin,
        &format!("/api/v1/environments/{env}/deployments"),
        json!({"name": "Dep", "spec": {"live": false}}),
    )
    .await;
    let app = make_ok(
        &admin,
        &format!("/api/v1/deployments/{dep}/apps"),
        json!({"name": "App", "spec": {"command": ["xterm"]}}),
    )
    .await;
    let (iid, j) = open(&admin, &app).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    stop(&admin, &iid).await;
    for (p, id) in [
        ("apps", &app),
        ("deployments", &dep),
        ("environments", &env),
        ("baseimages", &base),
    ] {
        delete_ok(&admin, p, id).await;
    }
    assert!(d.terminate());
}
