//! kill -9 in the middle of jobs; an unwritable state directory.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn a_job_cut_off_by_kill9_completes_after_restart() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let (s, b) = admin
        .post(
            "/api/v1/baseimages",
            json!({"name": "crashy", "spec": {"config_auto": [
                {"name": "slow", "run": "echo start; sleep 2; echo $((`cat $HOME/runs 2>/dev/null || echo 0` + 1)) > $HOME/runs"}
            ]}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let job = b["job"]["id"].as_str().unwrap().to_owned();
    let obj = b["object"]["id"].as_str().unwrap().to_owned();
    // Wait until the script runs, then kill -9.
    for _ in 0..200 {
        let (_, l) = admin.get(&format!("/api/v1/jobs/{job}/logs")).await;
        if l.to_string().contains("\"start\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (dir, config) = d.kill9();
    let d = Daemon::spawn(dir, config, false);
    let admin = d.admin().await;
    let j = admin.wait_job(&job).await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert!(j["attempts"].as_u64().unwrap() >= 2, "{j}");
    let (_, o) = admin.get(&format!("/api/v1/baseimages/{obj}")).await;
    assert_eq!(
        (o["subphase"].as_str(), o["status"].as_str()),
        (Some("ready"), Some("idle")),
        "{o}"
    );
    let (_, logs) = admin.get(&format!("/api/v1/jobs/{job}/logs")).await;
    assert!(logs.to_string().contains("restarted"), "{logs}");
}

#[tokio::test]
async fn an_instance_start_cut_off_by_kill9_leaves_no_orphans() {
    let d = Daemon::start("", true);
    let admin = d.admin().await;
    let mut app = None;
    for _ in 0..200 {
        let (_, a) = admin.get("/api/v1/apps").await;
        if let Some(x) = a["items"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "XTerm"))
        {
            app = Some(x["id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = app.expect("demo app");
    // A running instance that must survive, and one cut off while starting.
    let (_, b) = admin.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    admin.job_ok(&b).await;
    let survivor = b["instance"]["id"].as_str().unwrap().to_owned();
    let zoe = d.user(&admin, "zoe").await;
    let (_, z) = zoe.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    let cut = z["instance"]["id"].as_str().unwrap().to_owned();
    let (dir, config) = d.kill9();
    let before = sessions_under(dir.path());
    assert!(!before.is_empty());
    let d = Daemon::spawn(dir, config, false);
    let admin = d.admin().await;
    let zoe = d.client();
    zoe.login("zoe", "user-password-1").await;
    let j = zoe.wait_job(z["job"]["id"].as_str().unwrap()).await;
    // The cut-off start is resumed (a fresh session) or undone: never half.
    let (_, i) = zoe.get(&format!("/api/v1/instances/{cut}")).await;
    match j["state"].as_str().unwrap() {
        "succeeded" => assert_eq!(i["state"], "running", "{i}"),
        _ => assert!(
            ["failed", "stopped"].contains(&i["state"].as_str().unwrap()),
            "{i}"
        ),
    }
    let (_, s) = admin.get(&format!("/api/v1/instances/{survivor}")).await;
    assert_eq!(
        s["state"], "running",
        "sessions outlive an appliance restart: {s}"
    );
    // Exactly the live instances have processes.
    let (_, all) = admin.get("/api/v1/instances?all=true&active=true").await;
    let live = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "running")
        .count();
    assert_eq!(
        sessions_under(d.dir.path()).len(),
        live,
        "no orphan sessions: {all}"
    );
    for iid in [&survivor, &cut] {
        let who = if *iid == survivor { &admin } else { &zoe };
        let (_, i) = who.get(&format!("/api/v1/instances/{iid}")).await;
        if i["state"] == "running" {
            let (s, b) = who
                .post_empty(&format!("/api/v1/instances/{iid}/stop"))
                .await;
            assert_eq!(s, 202, "{b}");
            who.job_ok(&b).await;
        }
    }
    assert!(sessions_under(d.dir.path()).is_empty());
    let _: Value = all;
}

#[tokio::test]
async fn a_session_killed_behind_our_back_becomes_lost() {
    let d = Daemon::start("", true);
    let admin = d.admin().await;
    let mut app = None;
    for _ in 0..200 {
        let (_, a) = admin.get("/api/v1/apps").await;
        if let Some(x) = a["items"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "XTerm"))
        {
            app = Some(x["id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, b) = admin
        .post_empty(&format!("/api/v1/apps/{}/open", app.unwrap()))
        .await;
    admin.job_ok(&b).await;
    let iid = b["instance"]["id"].as_str().unwrap().to_owned();
    // Someone removes the instance's directory and kills it with SIGKILL.
    for pid in session_pids(d.dir.path()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut state = String::new();
    for _ in 0..150 {
        let (_, i) = admin.get(&format!("/api/v1/instances/{iid}")).await;
        state = i["state"].as_str().unwrap().to_owned();
        if state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ["failed", "stopped", "lost"].contains(&state.as_str()),
        "{state}"
    );
}

#[test]
fn an_unusable_state_dir_is_a_clear_error_at_start() {
    let dir = state_dir();
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = \"off\"\n[paths]\nstate_dir = \"/etc/hostname/state\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state directory /etc/hostname/state is not usable"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    assert_eq!(admin.get("/readyz").await.0, 200);
    assert!(d.terminate(), "exit status 0 after SIGTERM");
}
