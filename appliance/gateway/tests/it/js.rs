//! Runs the guacamole-common-js tests (`tests/js`, `node --test`) against the
//! `tunnel_server` example: the real browser client library over a real
//! WebSocket. Installs the npm packages (`npm ci`, from the committed lock
//! file) when they are missing. Skips with a loud message only where Node is
//! not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `target/<profile>/examples/tunnel_server`, built if `cargo test` did not
/// build it (as with `--test it`).
fn tunnel_server() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("examples").join("tunnel_server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "daas-gateway", "--example", "tunnel_server"])
            .status()
            .expect("running cargo build");
        assert!(
            status.success(),
            "building the tunnel_server example failed"
        );
    }
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

#[test]
fn guacamole_common_js_against_the_tunnel() {
    if !have("node") || !have("npm") {
        eprintln!("\n!!!!!!!! SKIP: Node.js/npm are not installed; the guacamole-common-js tests did not run !!!!!!!!\n");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !dir.join("node_modules/guacamole-common-js").exists()
        || !dir.join("node_modules/ws").exists()
    {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("running npm ci");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "tunnel.test.js"])
        .env("DAAS_TUNNEL_SERVER", tunnel_server())
        .current_dir(&dir)
        .output()
        .expect("running node --test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "guacamole-common-js tests failed");
}
