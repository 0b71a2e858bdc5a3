//! The command line: config checks, users, tokens, backups.

use crate::harness::*;

#[test]
fn check_config_names_key_file_and_line() {
    let dir = state_dir();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[server]\nlisten = \"127.0.0.1:8443\"\n\n[gateway]\nengin = \"builtin\"\n",
    )
    .unwrap();
    let (ok, _, err) = cli(&p, &["check-config"], None);
    assert!(!ok);
    assert!(err.contains(&format!("{}:5:", p.display())), "{err}");
    assert!(err.contains("engin"), "{err}");
    std::fs::write(
        &p,
        "[gateway]\nengine = \"guacd\"\nguacd = \"127.0.0.1:4822\"\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&p, &["check-config"], None);
    assert!(ok, "{err}");
    assert!(out.contains("OK"));
    let (ok, _, err) = cli(&dir.path().join("missing.toml"), &["check-config"], None);
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn version_and_help() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "check-config", "user", "token", "db"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn users_tokens_and_backup() {
    let dir = state_dir();
    let cfg = write_config(dir.path(), "");
    let (ok, out, err) = cli(
        &cfg,
        &[
            "user",
            "add",
            "root1",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("first-password\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("created root1 (admin)"));
    let (ok, _, err) = cli(
        &cfg,
        &["user", "add", "root1", "--role", "user", "--password-stdin"],
        Some("first-password\n"),
    );
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = cli(
        &cfg,
        &["user", "add", "x", "--role", "user", "--password-stdin"],
        Some("short\n"),
    );
    assert!(!ok && err.contains("at least"), "{err}");
    let (ok, _, err) = cli(
        &cfg,
        &["user", "add", "x", "--role", "root", "--password-stdin"],
        Some("long-enough\n"),
    );
    assert!(!ok && err.contains("root"), "{err}");
    let (ok, _, _) = cli(
        &cfg,
        &["user", "add", "bob", "--role", "user", "--password-stdin"],
        Some("bob-password\n"),
    );
    assert!(ok);
    let (_, out, _) = cli(&cfg, &["user", "list"], None);
    assert!(
        out.contains("bob\tuser\tactive") && out.contains("root1\tadmin\tactive"),
        "{out}"
    );
    let (ok, _, err) = cli(&cfg, &["user", "disable", "root1"], None);
    assert!(!ok && err.contains("last admin"), "{err}");
    assert!(cli(&cfg, &["user", "disable", "bob"], None).0);
    assert!(cli(&cfg, &["user", "list"], None)
        .1
        .contains("bob\tuser\tdisabled"));
    assert!(cli(&cfg, &["user", "enable", "bob"], None).0);
    assert!(
        cli(
            &cfg,
            &["user", "passwd", "bob", "--password-stdin"],
            Some("new-bob-password\n")
        )
        .0
    );
    let (ok, _, err) = cli(
        &cfg,
        &["user", "passwd", "nobody-here", "--password-stdin"],
        Some("whatever-pw\n"),
    );
    assert!(!ok && err.contains("no user"), "{err}");
    let (ok, tok, err) = cli(
        &cfg,
        &["token", "create", "--user", "bob", "--name", "ci"],
        None,
    );
    assert!(ok, "{err}");
    assert!(tok.trim().starts_with("daas_"));
    let dest = dir.path().join("backup.db");
    let (ok, _, err) = cli(&cfg, &["db", "backup", dest.to_str().unwrap()], None);
    assert!(ok, "{err}");
    // The backup is a working store with the same users.
    let c2 = dir.path().join("restored.toml");
    std::fs::write(&c2, format!("[store]\npath = \"{}\"\n", dest.display())).unwrap();
    let (_, out, _) = cli(&c2, &["user", "list"], None);
    assert!(out.contains("bob") && out.contains("root1"), "{out}");
}

#[tokio::test]
async fn cli_changes_reach_the_running_daemon() {
    let d = Daemon::start("", false);
    let (ok, tok, _) = cli(&d.config, &["token", "create", "--user", "admin"], None);
    assert!(ok);
    let mut c = d.client();
    c.token = Some(tok.trim().to_owned());
    assert_eq!(c.get("/api/v1/me").await.0, 200);
}
