//! From `POST /api/v1/apps/{id}/open` to a connectable local instance
//! (its VNC server answers), over HTTP against an in-process appliance
//! with the demo catalogue. Run as root or a user that can run bubblewrap:
//!
//!     cargo run --release -p daas-appliance --example bench_open
//!
//! Prints the median and spread of 10 opens (each stopped before the next).

use std::time::{Duration, Instant};

use daas_appliance::{config::Config, Appliance, Options};
use serde_json::Value;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(dir.path()).unwrap().permissions(),
        0o711,
    );
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = \"off\"\n[paths]\nstate_dir = \"{}\"\n",
        dir.path().join("state").display()
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("bench.toml")).unwrap();
    let app = Appliance::build(
        cfg,
        Options {
            demo: true,
            announce: false,
        },
    )
    .await
    .unwrap();
    let base = app.url();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    // The demo admin's password is printed on stdout; make our own admin instead.
    let store = daas_appliance::store::Store::open(&dir.path().join("state/daas.db")).unwrap();
    let hash = daas_appliance::auth::hash_password("bench-password").unwrap();
    store
        .create_user("bench", daas_appliance::model::Role::Admin, &hash)
        .unwrap();
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let r = http
        .post(format!("{base}/api/v1/session"))
        .json(&serde_json::json!({"username": "bench", "password": "bench-password"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let app_id = loop {
        let v: Value = http
            .get(format!("{base}/api/v1/apps"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(a) = v["items"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == "XTerm"))
        {
            break a["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let v: Value = http
            .post(format!("{base}/api/v1/apps/{app_id}/open"))
            .header("Origin", &base)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let iid = v["instance"]["id"].as_str().unwrap().to_owned();
        loop {
            let i: Value = http
                .get(format!("{base}/api/v1/instances/{iid}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match i["state"].as_str().unwrap() {
                "running" => break,
                "starting" => tokio::time::sleep(Duration::from_millis(2)).await,
                s => panic!("instance {s}: {i}"),
            }
        }
        times.push(t.elapsed());
        let v: Value = http
            .post(format!("{base}/api/v1/instances/{iid}/stop"))
            .header("Origin", &base)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job = v["job"]["id"].as_str().unwrap().to_owned();
        loop {
            let j: Value = http
                .get(format!("{base}/api/v1/jobs/{job}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if j["state"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("open -> connectable local instance (XTerm, Xvnc in bubblewrap), 10 runs:");
    println!("| min | median | max | target |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.0} ms | {:.0} ms | {:.0} ms | <= 500 ms median |",
        ms(times[0]),
        ms((times[4] + times[5]) / 2),
        ms(times[9])
    );
    stop.cancel();
    let _ = server.await;
}
