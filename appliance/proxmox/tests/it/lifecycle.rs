//! The VM approach end to end: clone, configure, snapshot (offline and
//! live), start, rollback, shutdown, stop, delete with purge; templates.

use std::time::Duration;

use daas_proxmox::*;

use crate::harness::*;

#[tokio::test]
async fn environment_deployment_app_lifecycle() {
    let env = Env::start().await;
    let c = env.client();
    let vmids = VmidAllocator::new(c.clone());

    // Environment: a linked clone with a fixed MAC, cores, memory, marks.
    let vmid = new_env_vm(&c, &vmids, "env-alice").await.unwrap();
    assert!((100..TEMPLATE).contains(&vmid));
    let cfg = c.vm_config(NODE, vmid).await.unwrap();
    assert_eq!(cfg.name.as_deref(), Some("env-alice"));
    assert!(cfg.lock.is_none());
    assert!(!cfg.template);
    assert!(cfg.raw["scsi0"]
        .as_str()
        .unwrap()
        .contains("base-9000-disk-0/"));
    let mac: MacAddr = "BC:24:11:AA:00:01".parse().unwrap();
    let update = ConfigUpdate {
        cores: Some(4),
        memory_mib: Some(4096),
        net0: Some(NetDevice::virtio(mac, "vmbr0")),
        tags: Some(vec!["daas".into(), "env-alice".into()]),
        description: Some("DaaS environment of alice".into()),
        agent: Some(true),
        digest: cfg.digest.clone(),
        ..ConfigUpdate::default()
    };
    c.update_vm_config(NODE, vmid, &update).await.unwrap();
    let cfg = c.vm_config(NODE, vmid).await.unwrap();
    assert_eq!(cfg.cores, Some(4));
    assert_eq!(cfg.memory, Some(4096));
    assert_eq!(cfg.net(0), Some(NetDevice::virtio(mac, "vmbr0")));
    assert_eq!(cfg.tags, vec!["daas", "env-alice"]);
    // A stale digest is refused.
    let e = c
        .update_vm_config(
            NODE,
            vmid,
            &ConfigUpdate {
                cores: Some(2),
                digest: update.digest.clone(),
                ..ConfigUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("detected modified configuration"),
        "{e}"
    );
    let res = c.vms().await.unwrap();
    let me = res.iter().find(|r| r.id() == vmid).unwrap();
    assert_eq!(me.tags, vec!["daas", "env-alice"]);
    assert_eq!(me.name.as_deref(), Some("env-alice"));

    // Root snapshot, offline: vmstate is ignored for a stopped VM.
    c.create_snapshot(NODE, vmid, "root", true, Some("environment root"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();

    // Deployment: start, then a live snapshot with RAM.
    c.start_vm(NODE, vmid).await.unwrap().wait().await.unwrap();
    assert!(c.vm_status(NODE, vmid).await.unwrap().is_running());
    let ifaces = c.guest_interfaces(NODE, vmid).await.unwrap();
    let eth0 = ifaces.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(eth0.mac.as_deref(), Some("bc:24:11:aa:00:01"));
    assert_eq!(eth0.addresses.len(), 1);
    let vnc = c.vnc_proxy(NODE, vmid).await.unwrap();
    assert!(vnc.port >= 5900);
    assert!(!format!("{vnc:?}").contains("PVEVNC"));
    c.create_snapshot(NODE, vmid, "deploy-live", true, None)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let snaps = c.snapshots(NODE, vmid).await.unwrap();
    let root = snaps.iter().find(|s| s.name == "root").unwrap();
    let live = snaps.iter().find(|s| s.name == "deploy-live").unwrap();
    let current = snaps.iter().find(|s| s.name == "current").unwrap();
    assert!(!root.vmstate, "a stopped VM has no RAM to save");
    assert!(live.vmstate);
    assert_eq!(live.parent.as_deref(), Some("root"));
    assert_eq!(current.parent.as_deref(), Some("deploy-live"));
    assert!(current.running);

    // Shutdown, then App: rollback to the live snapshot resumes the VM.
    c.shutdown_vm(NODE, vmid, Some(Duration::from_secs(30)), true)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(!c.vm_status(NODE, vmid).await.unwrap().is_running());
    c.rollback(NODE, vmid, "deploy-live", false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(
        c.vm_status(NODE, vmid).await.unwrap().is_running(),
        "a rollback to a snapshot with RAM leaves the VM running"
    );

    // A rollback of a running VM to an offline snapshot stops it, unless
    // asked to start.
    c.rollback(NODE, vmid, "root", false)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(!c.vm_status(NODE, vmid).await.unwrap().is_running());
    c.rollback(NODE, vmid, "root", true)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(c.vm_status(NODE, vmid).await.unwrap().is_running());
    let cfg = c.vm_config(NODE, vmid).await.unwrap();
    assert_eq!(cfg.parent.as_deref(), Some("root"));

    // Stop and delete with purge; a second delete finds nothing.
    c.stop_vm(NODE, vmid).await.unwrap().wait().await.unwrap();
    // Stopping a stopped VM is fine.
    c.stop_vm(NODE, vmid).await.unwrap().wait().await.unwrap();
    c.delete_snapshot(NODE, vmid, "deploy-live")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let t = c
        .destroy_vm(NODE, vmid)
        .await
        .unwrap()
        .expect("a VM to destroy");
    t.wait().await.unwrap();
    assert_eq!(
        c.vm_config(NODE, vmid).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(c.destroy_vm(NODE, vmid).await.unwrap().is_none());
    let deletes: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == format!("/nodes/pve/qemu/{vmid}"))
        .collect();
    assert!(deletes
        .iter()
        .all(|r| r.query.contains(&("purge".into(), "1".into()))
            && r.query
                .contains(&("destroy-unreferenced-disks".into(), "1".into()))));
    env.settle().await;
    assert_eq!(env.made_vms(), Vec::<Vmid>::new());
    env.finish().await;
}

#[tokio::test]
async fn baseimage_finalize_makes_a_template_to_link_from() {
    let env = Env::start().await;
    let c = env.client();
    let vmids = VmidAllocator::new(c.clone());

    // The thick template cannot link: fall back to a full clone onto
    // storage that can.
    let (vmid, mode) = vmids
        .clone_new(NODE, THICK_TEMPLATE, "base-win", Some("local-lvm"))
        .await
        .unwrap();
    assert_eq!(
        mode,
        CloneMode::Full {
            storage: Some("local-lvm".into())
        }
    );
    let cfg = c.vm_config(NODE, vmid).await.unwrap();
    assert!(cfg.raw["scsi0"]
        .as_str()
        .unwrap()
        .starts_with("local-lvm:vm-"));

    // Finalize: convert to a template.
    c.convert_to_template(NODE, vmid)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let cfg = c.vm_config(NODE, vmid).await.unwrap();
    assert!(cfg.template);
    let e = c
        .start_vm(NODE, vmid)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("you can't start a vm if it's a template"),
        "{e}"
    );
    let e = c.convert_to_template(NODE, vmid).await.unwrap_err();
    assert!(e.to_string().contains("template to a template"), "{e}");

    // An Environment links from it.
    let (env_vm, mode) = vmids
        .clone_new(NODE, vmid, "env-from-new-base", None)
        .await
        .unwrap();
    assert_eq!(mode, CloneMode::Linked);
    // The base cannot go while a linked clone uses it.
    let e = c
        .destroy_vm(NODE, vmid)
        .await
        .unwrap()
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("still in use"), "{e}");
    remove_vm(&c, env_vm).await.unwrap();
    remove_vm(&c, vmid).await.unwrap();
    env.settle().await;
    assert_eq!(env.made_vms(), Vec::<Vmid>::new());
    env.finish().await;
}
