//! `install`, `uninstall`, `seal` on a rootfs directory (`--root`), and the
//! command line itself.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use crate::support::BIN;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKXyXOyqUmzBt8ZG7yEqfz3TsKF0CDkT0uv5ikj5LZR appliance@daas";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(root: &Path, path: &str, content: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A small Debian-like rootfs.
fn rootfs() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\nsvc:x:100:100::/nonexistent:/usr/sbin/nologin\n");
    write(r, "etc/group", "root:x:0:\nalice:x:1000:\n");
    write(
        r,
        "etc/ssh/sshd_config",
        "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n",
    );
    write(r, "etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
    write(
        r,
        "etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 AAAA host\n",
    );
    write(r, "etc/ssh/ssh_host_rsa_key", "PRIVATE\n");
    write(r, "etc/ssh/moduli", "keep me\n");
    write(r, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    write(
        r,
        "var/lib/dbus/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    write(r, "var/lib/systemd/random-seed", "seed");
    write(r, "var/lib/dhcp/dhclient.eth0.leases", "lease {}\n");
    write(r, "var/log/syslog", "lots of lines\n");
    write(r, "var/log/syslog.1", "old\n");
    write(r, "var/log/syslog.2.gz", "older\n");
    write(r, "var/log/apt/history.log", "apt\n");
    write(r, "var/log/journal/abc/system.journal", "journal\n");
    write(r, "root/.bash_history", "secret command\n");
    write(r, "root/.profile", "keep\n");
    write(r, "home/alice/.bash_history", "alice's secrets\n");
    write(r, "home/alice/.python_history", "import this\n");
    write(r, "home/alice/notes.txt", "keep\n");
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(r.join("usr/local")).unwrap();
    t
}

/// Every path under `root` with its type, mode, owner and content.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let desc = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out);
                format!("dir {:o} {}", m.mode() & 0o7777, m.uid())
            } else {
                format!(
                    "file {:o} {} {}",
                    m.mode() & 0o7777,
                    m.uid(),
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn install_then_uninstall_restores_the_rootfs_exactly() {
    let t = rootfs();
    let r = t.path();
    let root = r.to_str().unwrap();
    let before = snapshot(r);

    let o = run(&["install", "--root", root, "--authorized-key", KEY]);
    assert!(o.status.success(), "{}", text(&o));
    let bin = r.join("usr/local/bin/daas-guest-proxy");
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(BIN).unwrap());
    assert_eq!(std::fs::metadata(&bin).unwrap().mode() & 0o777, 0o755);
    let line = format!("command=\"/usr/local/bin/daas-guest-proxy serve\",restrict {KEY}\n");
    let keys = r.join("root/.ssh/authorized_keys");
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), line);
    assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(r.join("root/.ssh")).unwrap().mode() & 0o777,
        0o700
    );
    let dropin =
        std::fs::read_to_string(r.join("etc/ssh/sshd_config.d/daas-guest-proxy.conf")).unwrap();
    assert!(dropin.contains("PubkeyAuthentication yes\n"));
    assert!(dropin.contains("PermitRootLogin prohibit-password\n"));
    let unit =
        std::fs::read_to_string(r.join("etc/systemd/system/daas-guest-proxy-hostkeys.service"))
            .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ssh-keygen -A"));
    assert_eq!(
        std::fs::read_link(
            r.join("etc/systemd/system/multi-user.target.wants/daas-guest-proxy-hostkeys.service")
        )
        .unwrap(),
        Path::new("/etc/systemd/system/daas-guest-proxy-hostkeys.service")
    );
    assert!(r
        .join("var/lib/daas-guest-proxy/install-manifest.json")
        .is_file());

    // again: nothing doubles
    let o = run(&["install", "--root", root, "--authorized-key", KEY]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), line);
    assert!(text(&o).contains("already has the key"));

    // a second user, with an allowed tree
    let o = run(&[
        "install",
        "--root",
        root,
        "--authorized-key",
        KEY,
        "--user",
        "alice",
        "--allowed-tree",
        "/home/alice",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let akeys = r.join("home/alice/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&akeys).unwrap(),
        format!("command=\"/usr/local/bin/daas-guest-proxy serve --allowed-tree /home/alice\",restrict {KEY}\n")
    );
    assert_eq!(std::fs::metadata(&akeys).unwrap().uid(), 1000);
    assert_eq!(
        std::fs::metadata(r.join("home/alice/.ssh")).unwrap().uid(),
        1000
    );

    // a pre-existing authorized_keys keeps its other lines
    let o = run(&["uninstall", "--root", root]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(snapshot(r), before, "uninstall reverses install exactly");

    write(r, "root/.ssh/authorized_keys", "ssh-rsa AAAAB3 admin\n");
    std::fs::set_permissions(r.join("root/.ssh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let with_keys = snapshot(r);
    assert!(run(&["install", "--root", root, "--authorized-key", KEY])
        .status
        .success());
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        format!("ssh-rsa AAAAB3 admin\n{line}")
    );
    assert!(run(&["uninstall", "--root", root]).status.success());
    assert_eq!(snapshot(r), with_keys);

    let o = run(&["uninstall", "--root", root]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("nothing to uninstall"), "{}", text(&o));
}

#[test]
fn install_refuses_bad_input() {
    let t = rootfs();
    let root = t.path().to_str().unwrap();
    let before = snapshot(t.path());
    let cases: &[(&[&str], i32, &str)] = &[
        (&["install", "--root", root], 2, "needs --authorized-key"),
        (
            &["install", "--root", root, "--authorized-key", "not a key"],
            1,
            "authorized_key",
        ),
        (
            &[
                "install",
                "--root",
                root,
                "--authorized-key",
                "command=\"sh\" ssh-ed25519 AAAA",
            ],
            1,
            "unknown key type",
        ),
        (
            &[
                "install",
                "--root",
                root,
                "--authorized-key",
                "ssh-ed25519 AAAA\nssh-rsa BBBB",
            ],
            1,
            "one line",
        ),
        (
            &[
                "install",
                "--root",
                root,
                "--authorized-key",
                KEY,
                "--user",
                "mallory",
            ],
            1,
            "does not exist",
        ),
        (
            &[
                "install",
                "--root",
                root,
                "--authorized-key",
                KEY,
                "--allowed-tree",
                "/a b",
            ],
            1,
            "allowed-tree",
        ),
        (
            &[
                "install",
                "--root",
                "/no/such/root",
                "--authorized-key",
                KEY,
            ],
            1,
            "root",
        ),
        (
            &[
                "install",
                "--root",
                root,
                "--authorized-key",
                KEY,
                "--bogus",
            ],
            2,
            "unknown argument",
        ),
        (
            &["install", "--root", root, "--authorized-key"],
            2,
            "needs a value",
        ),
        (&["seal", "--root", root, "--root", root], 2, "given twice"),
        (&["frobnicate"], 2, "unknown command"),
        (&[], 2, "Usage"),
    ];
    for (args, code, needle) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
    assert_eq!(snapshot(t.path()), before, "failed installs change nothing");

    // an absolute symlink in the rootfs must not lead to the build host
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(t.path().join("etc/ssh")).unwrap();
    symlink(outside.path(), t.path().join("etc/ssh")).unwrap();
    let o = run(&["install", "--root", root, "--authorized-key", KEY]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("outside the root"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn seal_removes_identity_logs_and_histories() {
    let t = rootfs();
    let r = t.path();
    let root = r.to_str().unwrap();
    assert!(run(&["install", "--root", root, "--authorized-key", KEY])
        .status
        .success());
    // a log symlink pointing out of the rootfs is not followed
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "precious\n").unwrap();
    symlink(outside.path().join("precious"), r.join("var/log/evil")).unwrap();

    let o = run(&["seal", "--root", root]);
    assert!(o.status.success(), "{}", text(&o));
    for gone in [
        "etc/ssh/ssh_host_ed25519_key",
        "etc/ssh/ssh_host_ed25519_key.pub",
        "etc/ssh/ssh_host_rsa_key",
        "var/lib/dbus/machine-id",
        "var/lib/systemd/random-seed",
        "var/lib/dhcp/dhclient.eth0.leases",
        "var/log/syslog.1",
        "var/log/syslog.2.gz",
        "var/log/journal/abc/system.journal",
        "root/.bash_history",
        "home/alice/.bash_history",
        "home/alice/.python_history",
    ] {
        assert!(
            std::fs::symlink_metadata(r.join(gone)).is_err(),
            "{gone} survived"
        );
    }
    assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
    assert_eq!(std::fs::read(r.join("var/log/syslog")).unwrap(), b"");
    assert_eq!(
        std::fs::read(r.join("var/log/apt/history.log")).unwrap(),
        b""
    );
    for kept in [
        "etc/ssh/moduli",
        "root/.profile",
        "home/alice/notes.txt",
        "usr/local/bin/daas-guest-proxy",
    ] {
        assert!(r.join(kept).exists(), "{kept} was removed");
    }
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "precious\n"
    );
    // the forced-command key stays: the appliance needs it in every clone
    assert!(r.join("root/.ssh/authorized_keys").exists());
    // sealing twice is harmless
    assert!(run(&["seal", "--root", root]).status.success());
}

/// A minimal rootfs (debootstrap's minbase, a container): no
/// `/var/lib/dbus`, `/var/lib/systemd` or `/var/lib/dhcp` to clean.
#[test]
fn seal_a_rootfs_without_dbus_or_systemd() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    write(r, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    write(r, "etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
    write(r, "var/log/dpkg.log", "lines\n");
    let o = run(&["seal", "--root", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
    assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert_eq!(std::fs::read(r.join("var/log/dpkg.log")).unwrap(), b"");
    assert!(!r.join("var/lib/dbus").exists(), "seal created directories");
}

#[test]
fn version_and_help() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        format!(
            "daas-guest-proxy {} (protocol 1)\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let o = run(args);
        assert!(o.status.success());
        assert!(String::from_utf8(o.stdout).unwrap().contains("Usage:"));
    }
    for cmd in ["serve", "install", "uninstall", "seal"] {
        let o = run(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}");
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.starts_with(&format!("daas-guest-proxy {cmd}")), "{out}");
    }
    let o = run(&["serve", "--allowed-tree", "/no/such/dir"]);
    assert_eq!(o.status.code(), Some(2));
}
