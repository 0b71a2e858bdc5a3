//! Token and ticket authentication, privileges.

use std::collections::BTreeSet;

use daas_proxmox::sim::Privileges;
use daas_proxmox::*;

use crate::harness::*;

#[tokio::test]
async fn token_auth_reads_the_cluster() {
    let env = Env::start().await;
    let c = env.client();
    let v = c.version().await.unwrap();
    assert_eq!(v.version, "8.3.2");
    assert_eq!(v.release.as_deref(), Some("8.3"));
    let nodes = c.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node, NODE);
    assert_eq!(
        nodes[0].ssl_fingerprint.as_deref(),
        Some(env.sim.fingerprint().to_string().as_str())
    );
    let vms = c.vms().await.unwrap();
    assert!(vms.iter().any(|v| v.id() == TEMPLATE && v.template));
    let storages = c.storages(NODE).await.unwrap();
    let lvm = storages.iter().find(|s| s.storage == "local-lvm").unwrap();
    assert!(lvm.can_linked_clone() && lvm.holds_images());
    let thick = storages.iter().find(|s| s.storage == "thick").unwrap();
    assert!(!thick.can_linked_clone());
    assert!(env.sim.requests().iter().all(|r| r.auth == "token"));
    env.finish().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_401() {
    let env = Env::start().await;
    let wrong = env.dir.path().join("wrong.token");
    write_private(&wrong, &format!("{TOKEN_ID}=not-the-secret"));
    let c = env.client_with(|c| {
        c.credentials = Credentials::Token(ApiToken::from_file(&wrong, None).unwrap());
    });
    let e = c.version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("invalid token value!"), "{e}");
    // Not retried: a 401 is an answer.
    assert_eq!(env.count_requests("GET", "/version"), 1);
    // Nor does the secret show in the error.
    assert!(!format!("{e:?}").contains("not-the-secret"));

    let unknown = env.dir.path().join("unknown.token");
    write_private(&unknown, &format!("other@pve!tok={}", env.secret));
    let c = env.client_with(|c| {
        c.credentials = Credentials::Token(ApiToken::from_file(&unknown, None).unwrap());
    });
    assert_eq!(c.nodes().await.unwrap_err().kind(), ErrorKind::Unauthorized);
    env.finish().await;
}

#[tokio::test]
async fn a_token_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start().await;
    std::fs::set_permissions(&env.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = ApiToken::from_file(&env.token_file, None).unwrap_err();
    assert!(matches!(e, AuthError::InsecureFile { .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&env.token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.client().version().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn ticket_auth_for_what_only_root_may_do() {
    let env = Env::start().await;
    let pw = env.dir.path().join("root.pw");
    write_private(&pw, ROOT_PASSWORD);
    let root = env.client_with(|c| {
        c.credentials = Credentials::password_from_file("root@pam", &pw).unwrap();
    });
    let token = env.client();
    let vmids = VmidAllocator::new(token.clone());
    let vmid = new_env_vm(&token, &vmids, "args-test").await.unwrap();

    // `args` may only be set by root@pam: the token is refused...
    let update = ConfigUpdate {
        args: Some("-no-reboot".into()),
        ..ConfigUpdate::default()
    };
    let e = token
        .update_vm_config(NODE, vmid, &update)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains("only root can set 'args' config"),
        "{e}"
    );
    // ...the ticket login works, reads and writes (with the CSRF token).
    root.update_vm_config(NODE, vmid, &update).await.unwrap();
    let cfg = root.vm_config(NODE, vmid).await.unwrap();
    assert_eq!(cfg.raw["args"], "-no-reboot");
    root.stop_vm(NODE, vmid)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let tickets: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.auth == "ticket")
        .collect();
    assert!(tickets.len() >= 3, "{tickets:?}");
    // One login served every call.
    assert_eq!(env.count_requests("POST", "/access/ticket"), 1);

    let bad = env.dir.path().join("bad.pw");
    write_private(&bad, "wrong");
    let c = env.client_with(|c| {
        c.credentials = Credentials::password_from_file("root@pam", &bad).unwrap();
    });
    let e = c.version().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("authentication failure"), "{e}");

    remove_vm(&token, vmid).await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_missing_privilege_is_403() {
    let env = Env::start_with(|c| {
        c.tokens.push(daas_proxmox::sim::SimToken {
            id: "audit@pve!ro".into(),
            secret: "read-only-secret".into(),
            privileges: Privileges::Only(BTreeSet::from(["VM.Audit".to_owned()])),
        });
    })
    .await;
    let ro = env.dir.path().join("ro.token");
    write_private(&ro, "audit@pve!ro=read-only-secret");
    let c = env.client_with(|c| {
        c.credentials = Credentials::Token(ApiToken::from_file(&ro, None).unwrap());
    });
    // Reading works...
    c.vm_config(NODE, TEMPLATE).await.unwrap();
    // ...cloning does not.
    let e = c.clone_vm(&linked(150, "nope")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string()
            .contains("Permission check failed (/vms/9000, VM.Clone)"),
        "{e}"
    );
    let e = c.destroy_vm(NODE, TEMPLATE).await.unwrap_err();
    assert!(e.to_string().contains("VM.Allocate"), "{e}");
    assert_eq!(env.made_vms(), Vec::<Vmid>::new());
    env.finish().await;
}
