//! dnsmasq for real: the agent (the built binary) manages dnsmasq inside a
//! network namespace joined by a veth pair to another namespace, where
//! `busybox udhcpc` asks for an address.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hyper::http::{Method, StatusCode};
use serde_json::json;

use crate::harness::*;

const MAC: &str = "52:54:00:5a:00:01";

/// Two namespaces: `srv` with `vs0` 10.213.7.1/24, `cli` with `vc0` (MAC
/// [`MAC`]), joined by a veth pair.
fn topology() -> Netns {
    let ns = Netns::new(2);
    let (srv, cli) = (&ns.names[0], &ns.names[1]);
    ip(&[
        "-n", srv, "link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", cli,
    ]);
    ip(&["-n", srv, "addr", "add", "10.213.7.1/24", "dev", "vs0"]);
    ip(&["-n", srv, "link", "set", "vs0", "up"]);
    ip(&["-n", cli, "link", "set", "vc0", "address", MAC]);
    ip(&["-n", cli, "link", "set", "vc0", "up"]);
    ns
}

/// Runs udhcpc once in `ns` on `vc0`; the address it was given, if any.
fn udhcpc(ns: &str, dir: &Path) -> Option<String> {
    let out_file = dir.join("udhcpc.ip");
    let _ = std::fs::remove_file(&out_file);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) echo \"$ip\" > {} ;; esac\nexit 0\n",
            out_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "udhcpc", "-i", "vc0", "-n", "-q", "-f", "-t", "4",
            "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script)
        .output()
        .unwrap();
    if !status.status.success() {
        return None;
    }
    std::fs::read_to_string(&out_file)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn managed_config(dir: &Path, interface: &str) -> String {
    config_text(
        dir,
        "subnet = \"10.213.7.0/24\"\nrange_start = \"10.213.7.100\"\nrange_end = \"10.213.7.150\"",
        &format!(
            "manage = true\ninterface = \"{interface}\"\nlease_time = \"2m\"\nlease_file = \"{}/dnsmasq.leases\"\nextra_args = [\"--log-dhcp\"]",
            dir.display()
        ),
        "",
    )
}

#[tokio::test]
async fn a_dhcp_client_gets_exactly_the_allocated_address_and_the_new_one_after_a_change() {
    if !can_netns("dhcp") || !have("dnsmasq", "dhcp") || !have("busybox", "dhcp") {
        return;
    }
    let ns = topology();
    let (srv, cli) = (ns.names[0].clone(), ns.names[1].clone());
    let dir = tempdir();
    let config = write_config(dir.path(), &managed_config(dir.path(), "vs0"));
    let mut agent = spawn_agent(dir.path(), &config, Some(&srv)).await;
    let sock = dir.path().join("agent.sock");
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    let (_, status) = call(&sock, Method::GET, "/v1/status", None).await;
    assert_eq!(status["dnsmasq"]["state"], "running", "{status}\n{}", log());
    assert_eq!(status["dnsmasq"]["mode"], "managed");

    // an unknown MAC gets nothing: the range is static
    assert_eq!(
        udhcpc(&cli, dir.path()),
        None,
        "a MAC without a lease got an address"
    );

    let (st, lease) = call(
        &sock,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac": MAC, "hostname": "desk-1"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{lease}");
    let first = lease["ip"].as_str().unwrap().to_owned();
    assert_eq!(first, "10.213.7.100");
    let got = udhcpc(&cli, dir.path());
    assert_eq!(
        got.as_deref(),
        Some(first.as_str()),
        "agent log:\n{}",
        log()
    );

    // release, then a different fixed address: after the reload, a new
    // request gets the new address
    let (st, _) = call(&sock, Method::DELETE, &format!("/v1/leases/{MAC}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, lease) = call(
        &sock,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac": MAC, "hostname": "desk-1", "ip": "10.213.7.142"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{lease}");
    let got = udhcpc(&cli, dir.path());
    assert_eq!(
        got.as_deref(),
        Some("10.213.7.142"),
        "agent log:\n{}",
        log()
    );

    let (_, status) = call(&sock, Method::GET, "/v1/status", None).await;
    assert!(
        status["dnsmasq"]["reloads"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert_eq!(status["dnsmasq"]["restarts"], 0, "{status}");

    // SIGTERM: the agent stops dnsmasq and exits 0
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = agent
        .wait_exit(Duration::from_secs(15))
        .expect("agent exits on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", log());
    let pids = Command::new("ip")
        .args(["netns", "pids", &srv])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pids.stdout).trim().is_empty(),
        "dnsmasq left running"
    );
}

#[tokio::test]
async fn a_broken_dnsmasq_setup_gives_its_exit_status_and_stderr() {
    if !can_netns("dhcp_broken") || !have("dnsmasq", "dhcp_broken") {
        return;
    }
    let ns = Netns::new(1);
    let dir = tempdir();
    let config = write_config(dir.path(), &managed_config(dir.path(), "nosuchif0"));
    let _agent = spawn_agent(dir.path(), &config, Some(&ns.names[0])).await;
    let sock = dir.path().join("agent.sock");

    let (_, status) = call(&sock, Method::GET, "/v1/status", None).await;
    let d = &status["dnsmasq"];
    assert!(
        d["state"] == "failed" || d["state"] == "starting",
        "{status}"
    );
    assert_eq!(d["last_exit"]["code"], 2, "{status}");
    assert!(
        d["stderr"]
            .as_str()
            .unwrap()
            .contains("unknown interface nosuchif0"),
        "{status}"
    );

    let (st, v) = call(
        &sock,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac": MAC, "hostname": "desk-1"})),
    )
    .await;
    assert_eq!(st.as_u16(), 503, "{v}");
    assert_eq!(v["error"]["code"], "dnsmasq_unavailable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("exit status 2") && msg.contains("unknown interface nosuchif0"),
        "{msg}"
    );
    assert_eq!(v["error"]["dnsmasq"]["last_exit"]["code"], 2);
    // the change is stored all the same
    let (_, list) = call(&sock, Method::GET, "/v1/leases", None).await;
    assert_eq!(list["items"][0]["mac"], MAC);
    // and the agent keeps trying, with a growing delay
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, status) = call(&sock, Method::GET, "/v1/status", None).await;
    assert!(
        status["dnsmasq"]["restarts"].as_u64().unwrap() >= 1,
        "{status}"
    );
}
