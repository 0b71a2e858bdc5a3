//! A simulator over TLS on a loopback port, a client pinned to it, and the
//! schema check of every request the client sent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use daas_proxmox::sim::{SimConfig, SimTimings, SimTls, SimUser, Simulator};
use daas_proxmox::*;

use crate::schema::schema;

pub(crate) const TOKEN_ID: &str = "daas@pve!appliance";
pub(crate) const ROOT_PASSWORD: &str = "r00t-pass";
pub(crate) const NODE: &str = "pve";
/// The template on storage that links.
pub(crate) const TEMPLATE: Vmid = 9000;
/// The template on storage that cannot link.
pub(crate) const THICK_TEMPLATE: Vmid = 9001;

/// Task durations of a fast real cluster, scaled down where it only costs
/// time: clones 300 ms, snapshots 200-400 ms, file-lock timeout 1 s.
pub(crate) fn test_timings() -> SimTimings {
    SimTimings {
        fork: Duration::from_millis(10),
        clone: Duration::from_millis(300),
        full_clone: Duration::from_millis(600),
        storage_lock_hold: Duration::from_millis(80),
        template: Duration::from_millis(200),
        snapshot: Duration::from_millis(200),
        snapshot_vmstate: Duration::from_millis(400),
        rollback: Duration::from_millis(300),
        start: Duration::from_millis(300),
        shutdown: Duration::from_millis(300),
        stop: Duration::from_millis(150),
        destroy: Duration::from_millis(200),
        lock_timeout: Duration::from_secs(1),
        latency: Duration::from_millis(2),
    }
}

pub(crate) struct Env {
    pub(crate) sim: Simulator,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) token_file: PathBuf,
    pub(crate) secret: String,
}

fn tls() -> &'static SimTls {
    static T: std::sync::OnceLock<SimTls> = std::sync::OnceLock::new();
    T.get_or_init(|| SimTls::generate(&[]).expect("certificate"))
}

impl Env {
    pub(crate) async fn start() -> Env {
        Env::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tune: impl FnOnce(&mut SimConfig)) -> Env {
        let secret = format!("{:032x}", rand::random::<u128>());
        let mut config = SimConfig::new(TOKEN_ID, &secret);
        config.timings = test_timings();
        config.unauthorized_delay = Duration::from_millis(50);
        config.users.push(SimUser {
            userid: "root@pam".into(),
            password: ROOT_PASSWORD.into(),
        });
        tune(&mut config);
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap(), tls().clone())
            .await
            .expect("simulator");
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("pve.token");
        write_private(&token_file, &format!("{TOKEN_ID}={secret}\n"));
        Env {
            sim,
            dir,
            token_file,
            secret,
        }
    }

    pub(crate) fn config(&self) -> ClientConfig {
        let token = ApiToken::from_file(&self.token_file, None).expect("token file");
        let mut c = ClientConfig::new(
            self.sim.url(),
            Credentials::Token(token),
            TlsTrust::Fingerprint(self.sim.fingerprint()),
        );
        c.connect_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_secs(3);
        c.retry = RetryPolicy {
            attempts: 4,
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        };
        c.poll = PollPolicy {
            initial: Duration::from_millis(40),
            max: Duration::from_millis(200),
            factor: 1.5,
        };
        c.task_timeout = Duration::from_secs(30);
        c
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.config()).expect("client")
    }

    pub(crate) fn client_with(&self, f: impl FnOnce(&mut ClientConfig)) -> Client {
        let mut c = self.config();
        f(&mut c);
        Client::new(c).expect("client")
    }

    /// Checks every request the simulator received against the API schema
    /// (and every successful answer against its `returns`), allowing only
    /// the problems named in `expected` (substrings), each of which must
    /// occur. Then stops the simulator.
    pub(crate) async fn finish_expecting(self, expected: &[&str]) {
        let schema = schema();
        let requests = self.sim.requests();
        assert!(!requests.is_empty(), "no request reached the simulator");
        let mut problems = Vec::new();
        for r in &requests {
            let params: Vec<(String, String)> =
                r.query.iter().chain(r.body.iter()).cloned().collect();
            problems.extend(schema.check_request(&r.method, &r.path, &params));
            if let Some(data) = &r.data {
                if (200..300).contains(&r.status) {
                    problems.extend(schema.check_answer(&r.method, &r.path, data));
                }
            }
        }
        let (allowed, unexpected): (Vec<_>, Vec<_>) = problems
            .iter()
            .partition(|p| expected.iter().any(|e| p.contains(e)));
        assert!(
            unexpected.is_empty(),
            "requests or answers a real Proxmox VE would not have (of {}):\n{}",
            requests.len(),
            unexpected
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        for e in expected {
            assert!(
                allowed.iter().any(|p| p.contains(e)),
                "the schema check did not flag {e:?}; it flagged: {allowed:?}"
            );
        }
        self.sim.shutdown().await;
    }

    /// [`Env::finish_expecting`] with no problem allowed.
    pub(crate) async fn finish(self) {
        self.finish_expecting(&[]).await;
    }

    /// Requests whose path contains `part` and whose method is `method`.
    pub(crate) fn count_requests(&self, method: &str, part: &str) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(part))
            .count()
    }

    /// Waits until no task runs in the simulator.
    pub(crate) async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.sim.state().running_tasks.is_empty() {
            assert!(
                Instant::now() < deadline,
                "tasks still running: {:?}",
                self.sim.state().running_tasks
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The VMIDs of VMs that are not the seeded templates.
    pub(crate) fn made_vms(&self) -> Vec<Vmid> {
        self.sim
            .state()
            .vms
            .iter()
            .filter(|v| v.vmid != TEMPLATE && v.vmid != THICK_TEMPLATE)
            .map(|v| v.vmid)
            .collect()
    }
}

pub(crate) fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub(crate) fn linked(newid: Vmid, name: &str) -> CloneRequest {
    CloneRequest {
        node: NODE.into(),
        vmid: TEMPLATE,
        newid,
        name: Some(name.into()),
        mode: CloneMode::Linked,
        target: None,
        description: None,
        pool: None,
    }
}

/// Clones the linkable template with a fresh VMID and waits.
pub(crate) async fn new_env_vm(
    client: &Client,
    vmids: &VmidAllocator,
    name: &str,
) -> Result<Vmid, PveError> {
    let client = client.clone();
    let name = name.to_owned();
    let (vmid, _) = vmids
        .create(move |newid| {
            let client = client.clone();
            let req = linked(newid, &name);
            async move { client.clone_vm(&req).await?.wait().await }
        })
        .await?;
    Ok(vmid)
}

/// Stops (if needed) and destroys a VM, waiting for both.
pub(crate) async fn remove_vm(client: &Client, vmid: Vmid) -> Result<(), PveError> {
    let st = match client.vm_status(NODE, vmid).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.is_running() {
        client.stop_vm(NODE, vmid).await?.wait().await?;
    }
    if let Some(t) = client.destroy_vm(NODE, vmid).await? {
        match t.wait().await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
