//! Typed errors: locked VMs, missing VMs, parameter validation, linked
//! clones the storage cannot make, failed tasks.

use std::time::Duration;

use daas_proxmox::sim::{FaultKind, ScriptedFault};
use daas_proxmox::*;

use crate::harness::*;

#[tokio::test]
async fn a_locked_vm_is_reported_as_locked() {
    // Long enough a live snapshot to act while it runs, even on a busy machine.
    let env = Env::start_with(|c| c.timings.snapshot_vmstate = Duration::from_millis(1500)).await;
    let c = env.client();
    // A clone in progress holds `lock: clone` on the new VM.
    let task = c.clone_vm(&linked(321, "locked-one")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(st) = c.vm_status(NODE, 321).await {
            if st.lock.as_deref() == Some("clone") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the clone never showed its lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Calls that check the config lock without waiting for the clone's
    // file lock are refused at once.
    let e = c.convert_to_template(NODE, 321).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("VM is locked (clone)"), "{e}");
    let e = c
        .clone_vm(&CloneRequest {
            vmid: 321,
            ..linked(322, "of-locked")
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    // A config change waits for the clone's file lock (PVE holds it for
    // the whole clone), then applies.
    c.update_vm_config(
        NODE,
        321,
        &ConfigUpdate {
            cores: Some(2),
            ..ConfigUpdate::default()
        },
    )
    .await
    .unwrap();
    task.wait().await.unwrap();

    // A live snapshot holds `lock: snapshot`.
    c.start_vm(NODE, 321).await.unwrap().wait().await.unwrap();
    let snap = c
        .create_snapshot(NODE, 321, "live", true, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = c
        .update_vm_config(
            NODE,
            321,
            &ConfigUpdate {
                cores: Some(2),
                ..ConfigUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("(snapshot)"), "{e}");
    // A task started meanwhile fails with the same reason.
    let e = c
        .stop_vm(NODE, 321)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    match &e {
        PveError::TaskFailed {
            exitstatus, kind, ..
        } => {
            assert_eq!(exitstatus, "VM is locked (snapshot)");
            assert_eq!(*kind, ErrorKind::Locked);
        }
        other => panic!("{other:?}"),
    }
    snap.wait().await.unwrap();
    // Once the task ended, the same call works.
    c.update_vm_config(
        NODE,
        321,
        &ConfigUpdate {
            cores: Some(2),
            ..ConfigUpdate::default()
        },
    )
    .await
    .unwrap();
    remove_vm(&c, 321).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_missing_vm_is_not_found() {
    let env = Env::start().await;
    let c = env.client();
    let e = c.vm_config(NODE, 4242).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string()
            .contains("Configuration file 'nodes/pve/qemu-server/4242.conf' does not exist"),
        "{e}"
    );
    assert_eq!(
        c.vm_status(NODE, 4242).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(c.destroy_vm(NODE, 4242).await.unwrap().is_none());
    // A rollback checks in its worker: the task fails with the same text.
    let e = c
        .rollback(NODE, 4242, "root", false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A snapshot that does not exist.
    let e = c
        .rollback(NODE, TEMPLATE, "nope", false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("you can't rollback if vm is a template"),
        "{e}"
    );
    env.finish().await;
}

#[tokio::test]
async fn validation_errors_come_per_field() {
    let env = Env::start().await;
    let c = env.client();
    let vmids = VmidAllocator::new(c.clone());
    let vmid = new_env_vm(&c, &vmids, "valid").await.unwrap();
    let bad = ConfigUpdate {
        name: Some("not_a_dns_name!".into()),
        cores: Some(0),
        memory_mib: Some(8),
        ..ConfigUpdate::default()
    };
    let e = c.update_vm_config(NODE, vmid, &bad).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
    let fields = e.field_errors().unwrap();
    assert_eq!(fields["cores"], "value must have a minimum value of 1");
    assert_eq!(
        fields["name"],
        "invalid format - value does not look like a valid DNS name"
    );
    assert!(
        fields["memory"].contains("minimum value of 16"),
        "{fields:?}"
    );
    assert!(
        e.to_string()
            .contains("cores: value must have a minimum value of 1"),
        "{e}"
    );
    // Nothing was applied.
    let cfg = c.vm_config(NODE, vmid).await.unwrap();
    assert_eq!(cfg.name.as_deref(), Some("valid"));
    // A snapshot name PVE refuses.
    let e = c
        .create_snapshot(NODE, vmid, "1-starts-with-a-digit", false, None)
        .await
        .unwrap_err();
    assert!(e.field_errors().unwrap().contains_key("snapname"), "{e}");
    remove_vm(&c, vmid).await.unwrap();
    // The schema check flags exactly these requests.
    env.finish_expecting(&[
        "cores=\"0\": value must have a minimum value of 1",
        "name=\"not_a_dns_name!\"",
        "memory=\"8\"",
        "snapname=\"1-starts-with-a-digit\"",
    ])
    .await;
}

#[tokio::test]
async fn linked_clones_need_a_template_on_storage_that_links() {
    let env = Env::start().await;
    let c = env.client();
    // The template on thick LVM cannot link.
    let mut req = linked(500, "thick-link");
    req.vmid = THICK_TEMPLATE;
    let e = c.clone_vm(&req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LinkedCloneUnsupported, "{e}");
    assert!(e.to_string().contains("thick:base-9001-disk-0"), "{e}");
    // A full clone works.
    req.mode = CloneMode::Full { storage: None };
    c.clone_vm(&req).await.unwrap().wait().await.unwrap();
    // A normal VM cannot be linked from either.
    let mut req2 = linked(501, "from-vm");
    req2.vmid = 500;
    let e = c.clone_vm(&req2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LinkedCloneUnsupported, "{e}");
    // An existing id is refused at once.
    let e = c.clone_vm(&linked(500, "dup")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    remove_vm(&c, 500).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_failed_task_reports_exitstatus_and_log() {
    let env = Env::start().await;
    let c = env.client();
    env.sim.inject(ScriptedFault {
        method: Some("POST".into()),
        path: "/clone".into(),
        kind: FaultKind::TaskFail,
        count: 1,
    });
    // HTTP 200 and a UPID, yet the clone failed.
    let task = c.clone_vm(&linked(600, "doomed")).await.unwrap();
    assert_eq!(task.upid().task_type, "qmclone");
    assert_eq!(task.upid().node, NODE);
    let e = task.wait().await.unwrap_err();
    match &e {
        PveError::TaskFailed {
            exitstatus,
            log_tail,
            kind,
            ..
        } => {
            assert!(exitstatus.starts_with("clone failed: "), "{exitstatus}");
            assert_eq!(
                log_tail.last().unwrap(),
                &format!("TASK ERROR: {exitstatus}")
            );
            assert_eq!(*kind, ErrorKind::Other);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        c.vm_config(NODE, 600).await.is_err(),
        "a failed clone leaves no VM"
    );

    // A task that fails on its own: starting a running VM.
    c.clone_vm(&linked(601, "twice"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    c.start_vm(NODE, 601).await.unwrap().wait().await.unwrap();
    let e = c
        .start_vm(NODE, 601)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        e.to_string().ends_with("failed: VM 601 already running"),
        "{e}"
    );
    // A shutdown the guest does not finish in time fails without forceStop
    // and succeeds with it.
    let e = c
        .shutdown_vm(NODE, 601, Some(Duration::ZERO), false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("VM quit/powerdown failed - got timeout"),
        "{e}"
    );
    c.shutdown_vm(NODE, 601, Some(Duration::ZERO), true)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(!c.vm_status(NODE, 601).await.unwrap().is_running());
    remove_vm(&c, 601).await.unwrap();

    // The log tail is the end of a long log.
    let upid = c
        .clone_vm(&linked(602, "logs"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
        .upid;
    let tail = c.task_log_tail(&upid, 1).await.unwrap();
    assert_eq!(tail, vec!["TASK OK".to_string()]);
    remove_vm(&c, 602).await.unwrap();
    env.finish().await;
}
