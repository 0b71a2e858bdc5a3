//! Opt-in: the client against a real Proxmox VE.
//!
//! - `DAAS_TEST_PVE_URL`: `https://pve1.example:8006`
//! - `DAAS_TEST_PVE_TOKEN_FILE`: `USER@REALM!TOKENID=SECRET`, mode 600
//! - `DAAS_TEST_PVE_FINGERPRINT` (pin) or `DAAS_TEST_PVE_CA_FILE` (CA PEM)
//! - `DAAS_TEST_PVE_NODE`: the node (default: the first)
//! - `DAAS_TEST_PVE_TEMPLATE`: a template VMID to clone; without it only
//!   reads run. The clone is named `daas-test-<pid>` and deleted at the end.

use std::time::Duration;

use daas_proxmox::*;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::test]
async fn against_a_real_proxmox_ve() {
    let (Some(url), Some(token_file)) = (env("DAAS_TEST_PVE_URL"), env("DAAS_TEST_PVE_TOKEN_FILE"))
    else {
        eprintln!(
            "\n*** SKIPPED against_a_real_proxmox_ve: set DAAS_TEST_PVE_URL and \
             DAAS_TEST_PVE_TOKEN_FILE (and DAAS_TEST_PVE_FINGERPRINT or DAAS_TEST_PVE_CA_FILE) \
             to run the client against a real Proxmox VE ***\n"
        );
        return;
    };
    let token = ApiToken::from_file(token_file.as_ref(), None).expect("token file");
    let tls = match (
        env("DAAS_TEST_PVE_FINGERPRINT"),
        env("DAAS_TEST_PVE_CA_FILE"),
    ) {
        (Some(fp), _) => TlsTrust::Fingerprint(fp.parse().expect("DAAS_TEST_PVE_FINGERPRINT")),
        (None, Some(ca)) => TlsTrust::CaPem(std::fs::read_to_string(ca).expect("CA file")),
        (None, None) => panic!("set DAAS_TEST_PVE_FINGERPRINT or DAAS_TEST_PVE_CA_FILE"),
    };
    let c = Client::new(ClientConfig::new(url, Credentials::Token(token), tls)).expect("client");
    let version = c.version().await.expect("version");
    eprintln!("Proxmox VE {}", version.version);
    let nodes = c.nodes().await.expect("nodes");
    let node = env("DAAS_TEST_PVE_NODE").unwrap_or_else(|| nodes[0].node.clone());
    let vms = c.vms().await.expect("cluster resources");
    eprintln!("{} VMs visible", vms.len());
    let storages = c.storages(&node).await.expect("storages");
    for s in &storages {
        eprintln!(
            "storage {} ({}): linked clones {}",
            s.storage,
            s.kind,
            s.can_linked_clone()
        );
    }
    let free = c.next_vmid().await.expect("nextid");
    assert!(c.vmid_is_free(free).await.expect("nextid?vmid"));

    let Some(template) = env("DAAS_TEST_PVE_TEMPLATE") else {
        eprintln!("DAAS_TEST_PVE_TEMPLATE unset: read-only checks done");
        return;
    };
    let template: Vmid = template.parse().expect("DAAS_TEST_PVE_TEMPLATE");
    let name = format!("daas-test-{}", std::process::id());
    let vmids = VmidAllocator::new(c.clone());
    let (vmid, _) = vmids
        .create(|newid| {
            let c = c.clone();
            let node = node.clone();
            let name = name.clone();
            async move {
                let mut req = CloneRequest {
                    node,
                    vmid: template,
                    newid,
                    name: Some(name),
                    mode: CloneMode::Linked,
                    target: None,
                    description: Some("daas-proxmox test; safe to delete".into()),
                    pool: None,
                };
                match c.clone_vm(&req).await {
                    Err(e) if e.kind() == ErrorKind::LinkedCloneUnsupported => {
                        req.mode = CloneMode::Full { storage: None };
                        c.clone_vm(&req).await?.wait().await
                    }
                    other => other?.wait().await,
                }
            }
        })
        .await
        .expect("clone");
    let result = async {
        c.update_vm_config(
            &node,
            vmid,
            &ConfigUpdate {
                cores: Some(1),
                memory_mib: Some(512),
                tags: Some(vec!["daas-test".into()]),
                ..ConfigUpdate::default()
            },
        )
        .await?;
        let cfg = c.vm_config(&node, vmid).await?;
        assert_eq!(cfg.memory, Some(512));
        c.create_snapshot(&node, vmid, "daas-test", false, None)
            .await?
            .wait()
            .await?;
        let snaps = c.snapshots(&node, vmid).await?;
        assert!(snaps.iter().any(|s| s.name == "daas-test"));
        c.rollback(&node, vmid, "daas-test", false)
            .await?
            .wait()
            .await?;
        Ok::<_, PveError>(())
    }
    .await;
    // Always clean up.
    if let Ok(st) = c.vm_status(&node, vmid).await {
        if st.is_running() {
            if let Ok(t) = c.stop_vm(&node, vmid).await {
                let _ = t.wait_for(Duration::from_secs(120)).await;
            }
        }
    }
    if let Some(t) = c.destroy_vm(&node, vmid).await.expect("destroy") {
        t.wait().await.expect("destroy task");
    }
    result.expect("flow against the real Proxmox VE");
}
