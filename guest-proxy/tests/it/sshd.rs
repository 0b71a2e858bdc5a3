//! The proxy as the forced command of a real OpenSSH sshd, driven by the
//! system ssh client, as the appliance drives it.

use std::path::Path;
use std::time::Duration;

use daas_guest_proxy_wire::message::{Exec, Info, Ping};
use daas_guest_proxy_wire::{ErrorCode, PROTOCOL_VERSION};

use crate::harness::{pseudo_random, put_args, sha256_hex, Msg, Proxy};
use crate::support::{eventually, pid_alive, temp_files, Sshd, BIN};

fn setup(what: &str) -> Option<(Sshd, tempfile::TempDir)> {
    let tree = tempfile::Builder::new()
        .prefix("gp-tree-")
        .tempdir()
        .unwrap();
    let sshd = Sshd::start(
        what,
        &format!("{BIN} serve --allowed-tree {}", tree.path().display()),
    )?;
    Some((sshd, tree))
}

#[test]
fn a_session_through_sshd() {
    let Some((sshd, tree_dir)) = setup("sshd session") else {
        return;
    };
    let tree = tree_dir.path().to_path_buf();
    let mut p = Proxy::start(sshd.ssh("aes128-gcm@openssh.com"));
    assert_eq!(p.hello.protocol, PROTOCOL_VERSION);
    p.call(Ping {}).unwrap();
    let info = p.call(Info {}).unwrap();
    assert!(!info.hostname.is_empty());
    let r = p.call_reply(Exec {
        argv: vec!["sh".into(), "-c".into(), "echo $USER; id -u".into()],
        ..Default::default()
    });
    assert_eq!(r.result::<Exec>().unwrap().exit_code, Some(0));
    assert_eq!(String::from_utf8(r.stdout).unwrap(), "root\n0\n");

    let data = pseudo_random(5 << 20, 42);
    let path = tree.join("payload.bin").display().to_string();
    let put = p.put_file(put_args(&path, &data), &data).unwrap();
    assert_eq!(put.sha256, sha256_hex(&data));
    let (back, got) = p.get_file(&path).unwrap();
    assert_eq!(got.sha256, sha256_hex(&data));
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
    // the allowed tree holds through ssh too
    assert_eq!(
        p.get_file("/etc/hostname").unwrap_err().code,
        ErrorCode::PathRejected
    );
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("ssh exits when we hang up");
    assert!(status.success(), "{status:?}");
}

#[test]
fn killing_ssh_mid_transfer_leaves_no_partial_file() {
    let Some((sshd, tree_dir)) = setup("sshd dropped connection") else {
        return;
    };
    let tree = tree_dir.path().to_path_buf();
    let mut p = Proxy::start(sshd.ssh("chacha20-poly1305@openssh.com"));
    // a command that must die with the session
    let id = p.send(Exec {
        argv: vec!["sh".into(), "-c".into(), "sleep 120 & echo $!; wait".into()],
        ..Default::default()
    });
    let bg = loop {
        match p.next(Duration::from_secs(10)) {
            Msg::In(daas_guest_proxy_wire::Incoming::Data { id: i, data, .. }) if i == id => {
                break String::from_utf8(data)
                    .unwrap()
                    .trim()
                    .parse::<u32>()
                    .unwrap();
            }
            _ => continue,
        }
    };
    let data = pseudo_random(8 << 20, 9);
    let target = tree.join("big.bin");
    let up = p.send(put_args(&target.display().to_string(), &data));
    for chunk in data[..3 << 20].chunks(256 * 1024) {
        p.data(up, daas_guest_proxy_wire::Stream::File, chunk);
    }
    p.call(Ping {}).unwrap();
    assert_eq!(temp_files(&tree).len(), 1, "the upload is under way");
    p.child.kill().unwrap();
    let _ = p.child.wait();
    assert!(
        eventually(Duration::from_secs(15), || temp_files(&tree).is_empty()),
        "temporary file left: {:?}",
        temp_files(&tree)
    );
    assert!(!target.exists(), "no partial target file");
    assert!(
        eventually(Duration::from_secs(10), || !pid_alive(bg)),
        "command outlived the session"
    );
    assert!(Path::new(&tree).read_dir().unwrap().next().is_none());
}

#[test]
fn bad_input_through_sshd() {
    let Some((sshd, _tree_dir)) = setup("sshd bad input") else {
        return;
    };
    let mut p = Proxy::start(sshd.ssh("aes128-gcm@openssh.com"));
    p.send_raw(
        &daas_guest_proxy_wire::Frame::Control(b"{oops".to_vec())
            .encode()
            .unwrap(),
    );
    match p.next(Duration::from_secs(10)) {
        Msg::In(daas_guest_proxy_wire::Incoming::Error { id: None, error }) => {
            assert_eq!(error.code, ErrorCode::BadMessage)
        }
        other => panic!("{other:?}"),
    }
    p.call(Ping {}).unwrap();
    p.send_raw(b"\x7f\xff\xff\xff\x01");
    match p.next(Duration::from_secs(10)) {
        Msg::In(daas_guest_proxy_wire::Incoming::Error { id: None, error }) => {
            assert_eq!(error.code, ErrorCode::BadFrame)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.next(Duration::from_secs(10)), Msg::Eof));
    let status = p.wait_exit(Duration::from_secs(10)).expect("ssh exits");
    assert_eq!(
        status.code(),
        Some(2),
        "ssh passes the proxy's exit status on"
    );
}
