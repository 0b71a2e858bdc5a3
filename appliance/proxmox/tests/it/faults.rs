//! Faults at a fixed rate across whole flows: every operation ends done or
//! cleanly reported, and after the cleanup nothing is left behind.

use std::time::{Duration, Instant};

use daas_proxmox::sim::FaultKind;
use daas_proxmox::*;

use crate::harness::*;

const FLOWS: usize = 6;
const PREFIX: &str = "flt-";

/// One Environment → Deployment → App → delete flow. Returns the steps
/// done, or the step that failed and its error.
async fn flow(
    c: Client,
    vmids: VmidAllocator,
    i: usize,
) -> Result<usize, (&'static str, PveError)> {
    let name = format!("{PREFIX}{i}");
    let mut done = 0;
    macro_rules! step {
        ($what:expr, $e:expr) => {{
            let r = $e.await.map_err(|e| ($what, e))?;
            done += 1;
            r
        }};
    }
    let vmid = step!("clone", new_env_vm(&c, &vmids, &name));
    let mac = MacAddr([0xBC, 0x24, 0x11, 0x55, 0, u8::try_from(i).unwrap()]);
    step!(
        "config",
        c.update_vm_config(
            NODE,
            vmid,
            &ConfigUpdate {
                cores: Some(2),
                memory_mib: Some(2048),
                net0: Some(NetDevice::virtio(mac, "vmbr0")),
                tags: Some(vec!["daas-test".into()]),
                ..ConfigUpdate::default()
            },
        )
    );
    step!("snapshot root", async {
        c.create_snapshot(NODE, vmid, "root", false, None)
            .await?
            .wait()
            .await
    });
    step!("start", async {
        c.start_vm(NODE, vmid).await?.wait().await
    });
    step!("live snapshot", async {
        c.create_snapshot(NODE, vmid, "live", true, None)
            .await?
            .wait()
            .await
    });
    step!("stop", async { c.stop_vm(NODE, vmid).await?.wait().await });
    step!("rollback", async {
        c.rollback(NODE, vmid, "live", false).await?.wait().await
    });
    let st = step!("status", c.vm_status(NODE, vmid));
    if !st.is_running() {
        return Err((
            "rollback",
            PveError::Config("a live rollback must leave the VM running".into()),
        ));
    }
    step!("stop again", async {
        c.stop_vm(NODE, vmid).await?.wait().await
    });
    step!("delete", async {
        match c.destroy_vm(NODE, vmid).await? {
            Some(t) => t.wait().await.map(|_| ()),
            None => Ok(()),
        }
    });
    Ok(done)
}

/// The kinds of failure a flow may end with under injected faults.
fn clean(e: &PveError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::Other
            | ErrorKind::Locked
            | ErrorKind::LockTimeout
            | ErrorKind::NotFound
            | ErrorKind::AlreadyExists
    ) && !e.to_string().is_empty()
}

/// Removes every VM of ours (found by name, as the backend's inventory
/// does), with the faults still on; bounded in rounds and time.
async fn cleanup(env: &Env, c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..40 {
        let ours: Vec<Vmid> = match c.vms().await {
            Ok(v) => v
                .into_iter()
                .filter(|v| v.name.as_deref().is_some_and(|n| n.starts_with(PREFIX)))
                .map(|v| v.id())
                .collect(),
            Err(_) => continue,
        };
        if ours.is_empty() {
            return;
        }
        for vmid in ours {
            // Errors are expected (faults, tasks still holding locks).
            let _ = remove_vm(c, vmid).await;
        }
        assert!(Instant::now() < deadline, "cleanup did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = env;
    }
    panic!("cleanup did not converge in 40 rounds");
}

#[tokio::test]
async fn faults_at_a_fixed_rate_across_whole_flows() {
    let env = Env::start_with(|c| {
        c.faults.rate = 0.12;
        c.faults.seed = 7;
        c.faults.kinds = vec![
            FaultKind::Refused595,
            FaultKind::Timeout596,
            FaultKind::Lost596,
            FaultKind::TaskFail,
            FaultKind::Hang,
        ];
        c.faults.hang = Duration::from_millis(900);
    })
    .await;
    let c = env.client_with(|c| c.request_timeout = Duration::from_millis(600));
    let vmids = VmidAllocator::new(c.clone());
    let mut joins = Vec::new();
    for i in 0..FLOWS {
        joins.push(tokio::spawn(flow(c.clone(), vmids.clone(), i)));
    }
    let mut completed = 0;
    let mut reported = Vec::new();
    for j in joins {
        match j.await.expect("no flow panics") {
            Ok(_) => completed += 1,
            Err((step, e)) => {
                assert!(clean(&e), "{step}: not a clean failure: {e:?}");
                reported.push(format!("{step}: {e}"));
            }
        }
    }
    eprintln!(
        "fault flows: {completed} completed, {} reported: {reported:#?}",
        reported.len()
    );
    assert_eq!(completed + reported.len(), FLOWS);
    let state = env.sim.state();
    assert!(state.faults_injected > 0, "no fault was injected");

    // A hung call goes on in the simulator once its hang ends, though the
    // client gave up on it: let those land before looking.
    let hang = Duration::from_millis(900) + Duration::from_millis(300);
    tokio::time::sleep(hang).await;
    env.settle().await;
    cleanup(&env, &c).await;
    // The cleanup ran with faults on: its own hung calls may land late.
    env.sim.set_fault_rate(0.0);
    tokio::time::sleep(hang).await;
    env.settle().await;
    cleanup(&env, &c).await;
    env.settle().await;
    let state = env.sim.state();
    let left: Vec<_> = state
        .vms
        .iter()
        .filter(|v| v.vmid != TEMPLATE && v.vmid != THICK_TEMPLATE)
        .map(|v| (v.vmid, v.config.get("name").cloned()))
        .collect();
    assert!(left.is_empty(), "VMs leaked: {left:?}");
    assert!(state.vms.iter().all(|v| v.lock.is_none() && !v.running));
    assert!(state.running_tasks.is_empty());
    env.finish().await;
}

#[tokio::test]
async fn the_state_endpoint_shows_the_same_over_http() {
    let env = Env::start().await;
    let c = env.client();
    let vmids = VmidAllocator::new(c.clone());
    let vmid = new_env_vm(&c, &vmids, "seen").await.unwrap();
    // /sim/state and /sim/requests are outside /api2 and need the token.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let url = format!("{}/sim/state", env.sim.url());
    let anon = http.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let state: serde_json::Value = http
        .get(&url)
        .header(
            "Authorization",
            format!("PVEAPIToken={TOKEN_ID}={}", env.secret),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vms = state["vms"].as_array().unwrap();
    assert!(vms
        .iter()
        .any(|v| v["vmid"] == vmid && v["config"]["name"] == "seen"));
    let faults = http
        .post(format!("{}/sim/faults", env.sim.url()))
        .header(
            "Authorization",
            format!("PVEAPIToken={TOKEN_ID}={}", env.secret),
        )
        .json(&serde_json::json!({"method": "GET", "path": "/version", "kind": "595", "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 200);
    c.version().await.unwrap();
    assert_eq!(env.count_requests("GET", "/version"), 2);
    remove_vm(&c, vmid).await.unwrap();
    env.finish().await;
}
