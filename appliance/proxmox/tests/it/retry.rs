//! Retries: reads and repeatable writes on 595/596/hangs; never a call
//! that creates.

use std::time::Duration;

use daas_proxmox::sim::{FaultKind, ScriptedFault};
use daas_proxmox::*;

use crate::harness::*;

fn fault(method: &str, path: &str, kind: FaultKind, count: u32) -> ScriptedFault {
    ScriptedFault {
        method: Some(method.into()),
        path: path.into(),
        kind,
        count,
    }
}

#[tokio::test]
async fn reads_are_retried_on_595_and_596() {
    let env = Env::start().await;
    let c = env.client();
    env.sim
        .inject(fault("GET", "/status/current", FaultKind::Refused595, 1));
    env.sim
        .inject(fault("GET", "/status/current", FaultKind::Timeout596, 1));
    let st = c.vm_status(NODE, TEMPLATE).await.unwrap();
    assert!(st.template);
    assert_eq!(env.count_requests("GET", "/status/current"), 3);

    // More faults than tries: a clean Unavailable.
    env.sim
        .inject(fault("GET", "/version", FaultKind::Refused595, 10));
    let e = c.version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("595"), "{e}");
    assert_eq!(env.count_requests("GET", "/version"), 4);

    // Config writes are repeatable: retried too.
    let vmids = VmidAllocator::new(c.clone());
    let vmid = new_env_vm(&c, &vmids, "retry-put").await.unwrap();
    env.sim
        .inject(fault("PUT", "/config", FaultKind::Lost596, 1));
    c.update_vm_config(
        NODE,
        vmid,
        &ConfigUpdate {
            cores: Some(3),
            ..ConfigUpdate::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.vm_config(NODE, vmid).await.unwrap().cores, Some(3));
    assert_eq!(env.count_requests("PUT", "/config"), 2);
    remove_vm(&c, vmid).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_hanging_read_times_out_and_is_retried() {
    let env = Env::start_with(|c| c.faults.hang = Duration::from_millis(1500)).await;
    let c = env.client_with(|c| c.request_timeout = Duration::from_millis(500));
    env.sim
        .inject(fault("GET", "/cluster/resources", FaultKind::Hang, 1));
    let vms = c.vms().await.unwrap();
    assert!(!vms.is_empty());
    assert_eq!(env.count_requests("GET", "/cluster/resources"), 2);
    env.finish().await;
}

#[tokio::test]
async fn calls_that_create_are_never_retried() {
    let env = Env::start().await;
    let c = env.client();

    // Refused before it was applied: reported, not repeated, nothing made.
    env.sim
        .inject(fault("POST", "/clone", FaultKind::Timeout596, 1));
    let e = c.clone_vm(&linked(700, "no-retry")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert_eq!(env.count_requests("POST", "/clone"), 1);
    env.settle().await;
    assert!(env.made_vms().is_empty());

    // Applied, answer lost: still reported, not repeated; the VM exists
    // and the caller finds it by its name (our mark) to reconcile.
    env.sim
        .inject(fault("POST", "/clone", FaultKind::Lost596, 1));
    let e = c.clone_vm(&linked(701, "lost-answer")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert_eq!(env.count_requests("POST", "/clone"), 2);
    env.settle().await;
    let found = c
        .vms()
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.name.as_deref() == Some("lost-answer"))
        .expect("the clone whose answer was lost");
    assert_eq!(found.id(), 701);
    remove_vm(&c, 701).await.unwrap();

    // Snapshots and starts: the same.
    let vmids = VmidAllocator::new(c.clone());
    let vmid = new_env_vm(&c, &vmids, "once").await.unwrap();
    env.sim
        .inject(fault("POST", "/snapshot", FaultKind::Refused595, 1));
    assert!(c
        .create_snapshot(NODE, vmid, "s1", false, None)
        .await
        .is_err());
    assert_eq!(env.count_requests("POST", "/snapshot"), 1);
    env.sim
        .inject(fault("POST", "/status/start", FaultKind::Refused595, 1));
    assert!(c.start_vm(NODE, vmid).await.is_err());
    assert_eq!(env.count_requests("POST", "/status/start"), 1);
    // Stop is repeatable: retried.
    env.sim
        .inject(fault("POST", "/status/stop", FaultKind::Refused595, 1));
    c.stop_vm(NODE, vmid).await.unwrap().wait().await.unwrap();
    assert_eq!(env.count_requests("POST", "/status/stop"), 2);
    // A lost delete answer: retried; the repeat's task finds the VM gone
    // or locked for destruction, and the VM ends gone either way.
    env.sim.inject(fault(
        "DELETE",
        &format!("/qemu/{vmid}"),
        FaultKind::Lost596,
        1,
    ));
    match c.destroy_vm(NODE, vmid).await.unwrap() {
        None => {}
        Some(t) => {
            if let Err(e) = t.wait().await {
                assert!(
                    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Locked),
                    "{e}"
                );
            }
        }
    }
    env.settle().await;
    assert!(env.made_vms().is_empty());
    env.finish().await;
}

#[tokio::test]
async fn task_polling_rides_out_faults() {
    let env = Env::start().await;
    let c = env.client();
    env.sim
        .inject(fault("GET", "/tasks/", FaultKind::Refused595, 3));
    let vmids = VmidAllocator::new(c.clone());
    let vmid = new_env_vm(&c, &vmids, "polled").await.unwrap();
    remove_vm(&c, vmid).await.unwrap();
    env.finish().await;
}
