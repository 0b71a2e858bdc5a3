//! The whole lifecycle, subphases included, on the local backend, through
//! the API, with real Xvnc sessions.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::*;

fn id(v: &Value) -> String {
    v["object"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no object id in {v}"))
        .to_owned()
}

/// Opens an object or app and waits until its instance runs.
async fn open(c: &Client, path: &str) -> String {
    let (s, b) = c.post_empty(path).await;
    assert_eq!(s, 202, "{path}: {b}");
    let iid = b["instance"]["id"].as_str().unwrap().to_owned();
    assert!(b["job"]["id"].is_string(), "{b}");
    c.job_ok(&b).await;
    let (s, i) = c.get(&format!("/api/v1/instances/{iid}")).await;
    assert_eq!((s, i["state"].as_str()), (200, Some("running")), "{i}");
    iid
}

async fn stop(c: &Client, iid: &str) {
    let (s, b) = c.post_empty(&format!("/api/v1/instances/{iid}/stop")).await;
    assert_eq!(s, 202, "{b}");
    c.job_ok(&b).await;
    let (_, i) = c.get(&format!("/api/v1/instances/{iid}")).await;
    assert_eq!(i["state"], "stopped", "{i}");
}

#[tokio::test]
async fn whole_lifecycle_through_the_api() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;

    // Phase 0: a Baseimage with an automatic script, stopping for ConfigInteractive.
    let (s, b) = admin
        .post(
            "/api/v1/baseimages",
            json!({
                "name": "Desktop",
                "backend": "local",
                "spec": {
                    "config_auto": [{"name": "org settings", "run": "echo org > $HOME/org.txt && echo configured"}],
                    "interactive": true
                }
            }),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["object"]["subphase"], "create");
    let base = id(&b);
    let job = admin.job_ok(&b).await;
    assert_eq!(job["progress"], 100);
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "done"),
        "{job}"
    );
    let (_, logs) = admin
        .get(&format!(
            "/api/v1/jobs/{}/logs",
            job["id"].as_str().unwrap()
        ))
        .await;
    let text = logs.to_string();
    assert!(
        text.contains("configured"),
        "script output is in the job log: {text}"
    );
    let (_, o) = admin.get(&format!("/api/v1/baseimages/{base}")).await;
    assert_eq!(
        (o["subphase"].as_str(), o["status"].as_str()),
        (Some("config_interactive"), Some("idle"))
    );

    // Illegal moves are refused with clear errors.
    let (s, e) = admin
        .post(
            &format!("/api/v1/baseimages/{base}/environments"),
            json!({"name": "too early"}),
        )
        .await;
    assert_eq!(s, 409, "CloneTemplate needs a finalized baseimage: {e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("finalized"),
        "{e}"
    );
    let (s, _) = admin
        .post_empty(&format!("/api/v1/baseimages/{base}/retry"))
        .await;
    assert_eq!(s, 409, "only failed objects are retried");

    // ConfigInteractive: the owner opens the object's desktop.
    let iid = open(&admin, &format!("/api/v1/baseimages/{base}/open")).await;
    let (s, t) = admin
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["tunnel"], "/api/v1/tunnel");
    assert!(t["ticket"].as_str().unwrap().len() > 20);
    let (s, _) = admin
        .post_empty(&format!("/api/v1/baseimages/{base}/finalize"))
        .await;
    assert_eq!(
        s, 409,
        "finalize waits for the configuration desktop to stop"
    );
    stop(&admin, &iid).await;
    let (s, _) = admin
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(s, 409, "no ticket for a stopped instance");
    let (s, f) = admin
        .post_empty(&format!("/api/v1/baseimages/{base}/finalize"))
        .await;
    assert_eq!(s, 202, "{f}");
    admin.job_ok(&f).await;
    let (_, o) = admin.get(&format!("/api/v1/baseimages/{base}")).await;
    assert_eq!(o["subphase"], "ready");
    let (s, _) = admin
        .post_empty(&format!("/api/v1/baseimages/{base}/finalize"))
        .await;
    assert_eq!(s, 409, "a ready object is not finalized twice");
    let (s, _) = admin
        .post_empty(&format!("/api/v1/baseimages/{base}/open"))
        .await;
    assert_eq!(s, 409, "a sealed baseimage opens no configuration desktop");

    // Phase 1: a user's Environment (CloneTemplate); the limit is one.
    let ann = d.user(&admin, "ann").await;
    let (s, b) = ann
        .post("/api/v1/baseimages", json!({"name": "mine"}))
        .await;
    assert_eq!(s, 403, "only admins make baseimages: {b}");
    let (s, e) = ann
        .post(&format!("/api/v1/baseimages/{base}/environments"), json!({"name": "Ann's env", "spec": {"config_auto": [{"name": "git", "run": "test -f $HOME/org.txt && echo ann > $HOME/user.txt"}]}}))
        .await;
    assert_eq!(s, 202, "{e}");
    let env = id(&e);
    ann.job_ok(&e).await;
    let (s, e2) = ann
        .post(
            &format!("/api/v1/baseimages/{base}/environments"),
            json!({"name": "second"}),
        )
        .await;
    assert_eq!(s, 409, "environments_per_user = 1: {e2}");

    // Phase 2: a Deployment (CreateSnapshot) with interactive configuration.
    let (s, dep) = ann
        .post(
            &format!("/api/v1/environments/{env}/deployments"),
            json!({"name": "Editor", "spec": {"interactive": true}}),
        )
        .await;
    assert_eq!(s, 202, "{dep}");
    let dep_id = id(&dep);
    ann.job_ok(&dep).await;
    let cfg = open(&ann, &format!("/api/v1/deployments/{dep_id}/open")).await;
    stop(&ann, &cfg).await;
    let (_, f) = ann
        .post_empty(&format!("/api/v1/deployments/{dep_id}/finalize"))
        .await;
    ann.job_ok(&f).await;

    // Phase 3: an App (RunApp), opened, connected, reopened, stopped.
    let (s, bad) = ann
        .post(
            &format!("/api/v1/deployments/{dep_id}/apps"),
            json!({"name": "Term", "spec": {}}),
        )
        .await;
    assert_eq!(s, 422, "an app needs a command: {bad}");
    let (s, bad) = ann
        .post(
            &format!("/api/v1/deployments/{dep_id}/apps"),
            json!({"name": "Term", "shared": true, "spec": {"command": ["xterm"]}}),
        )
        .await;
    assert_eq!(s, 403, "only admins share apps: {bad}");
    let (s, a) = ann
        .post(
            &format!("/api/v1/deployments/{dep_id}/apps"),
            json!({"name": "Term", "spec": {"command": ["xterm"]}}),
        )
        .await;
    assert_eq!(s, 202, "{a}");
    let app = id(&a);
    ann.job_ok(&a).await;
    let (_, apps) = ann.get("/api/v1/apps").await;
    let listed: Vec<&str> = apps["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["Term"]);
    let iid = open(&ann, &format!("/api/v1/apps/{app}/open")).await;
    let (s, again) = ann.post_empty(&format!("/api/v1/apps/{app}/open")).await;
    assert_eq!(s, 202);
    assert_eq!(
        again["instance"]["id"],
        iid.as_str(),
        "opening again returns the running instance"
    );
    // The instance runs on a copy of the deployment home with both configurations.
    let inst_home = d
        .dir
        .path()
        .join("state/local/instances")
        .join(&iid)
        .join("home");
    assert_eq!(
        std::fs::read_to_string(inst_home.join("org.txt"))
            .unwrap()
            .trim(),
        "org"
    );
    assert_eq!(
        std::fs::read_to_string(inst_home.join("user.txt"))
            .unwrap()
            .trim(),
        "ann"
    );
    let (s, t1) = ann
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    let (_, t2) = ann
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(s, 200);
    assert_ne!(t1["ticket"], t2["ticket"], "each ticket is new");
    let (s, _) = admin
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(
        s, 404,
        "not even an admin gets a ticket to another user's desktop"
    );
    assert_eq!(sessions_under(d.dir.path()).len(), 1);
    stop(&ann, &iid).await;
    assert!(
        sessions_under(d.dir.path()).is_empty(),
        "stop ends every process"
    );
    assert!(!inst_home.exists(), "stop removes the instance's files");

    // Deleting runs child-first.
    let (s, _) = ann.delete(&format!("/api/v1/deployments/{dep_id}")).await;
    assert_eq!(s, 409, "the deployment has an app");
    let (s, del) = ann.delete(&format!("/api/v1/apps/{app}")).await;
    assert_eq!(s, 202);
    ann.job_ok(&del).await;
    assert_eq!(ann.get(&format!("/api/v1/apps/{app}")).await.0, 404);
}

#[tokio::test]
async fn demo_catalogue_opens_for_every_user() {
    let d = Daemon::start("", true);
    let admin = d.admin().await;
    let user = d.user(&admin, "zoe").await;
    let mut apps = Value::Null;
    for _ in 0..200 {
        let (s, a) = user.get("/api/v1/apps").await;
        assert_eq!(s, 200);
        if a["items"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x["name"] == "XTerm"))
        {
            apps = a;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = apps["items"]
        .as_array()
        .expect("the demo catalogue appears");
    let xterm = items.iter().find(|a| a["name"] == "XTerm").unwrap();
    assert!(xterm["instance"].is_null());
    let app = xterm["id"].as_str().unwrap();
    let iid = open(&user, &format!("/api/v1/apps/{app}/open")).await;
    let (_, apps) = user.get("/api/v1/apps").await;
    let x = apps["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "XTerm")
        .unwrap()
        .clone();
    assert_eq!(x["instance"]["id"], iid.as_str());
    let (s, t) = user
        .post_empty(&format!("/api/v1/instances/{iid}/connect"))
        .await;
    assert_eq!(s, 200, "{t}");
    // The admin's own instance of the same app is a different one.
    let admin_iid = open(&admin, &format!("/api/v1/apps/{app}/open")).await;
    assert_ne!(admin_iid, iid);
    stop(&user, &iid).await;
    stop(&admin, &admin_iid).await;
}

#[tokio::test]
async fn job_logs_stream_live_and_jobs_cancel() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let (s, b) = admin
        .post(
            "/api/v1/baseimages",
            json!({"name": "slow", "spec": {"config_auto": [
                {"name": "tick", "run": "for i in 1 2 3; do echo tick $i; sleep 0.3; done"},
                {"name": "long", "run": "echo long; sleep 30"}
            ]}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let job = b["job"]["id"].as_str().unwrap().to_owned();
    let ws_url = format!(
        "{}/api/v1/jobs/{job}/logs/stream",
        d.url.replace("http://", "ws://")
    );
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .unwrap();
    // Authenticate the WebSocket with an API token.
    let (_, t) = admin.post("/api/v1/tokens", json!({"name": "ws"})).await;
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", t["secret"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut lines = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "line" {
                lines.push(v["line"]["line"].as_str().unwrap().to_owned());
                if lines.iter().any(|l| l == "long") {
                    break;
                }
            }
        }
    }
    let ticks: Vec<&String> = lines.iter().filter(|l| l.starts_with("tick")).collect();
    assert_eq!(ticks.len(), 3, "{lines:?}");
    let (s, c) = admin
        .post_empty(&format!("/api/v1/jobs/{job}/cancel"))
        .await;
    assert_eq!(s, 202, "{c}");
    let end = admin.wait_job(&job).await;
    assert_eq!(end["state"], "cancelled", "{end}");
    // The stream ends with the job's final state.
    let mut finished = None;
    while let Some(Ok(m)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "finished" {
                finished = Some(v["state"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(finished.as_deref(), Some("cancelled"));
    let (_, o) = admin.get(&format!("/api/v1/baseimages/{}", id(&b))).await;
    assert_eq!(
        o["status"], "failed",
        "a cancelled create leaves the object for retry or delete: {o}"
    );
    let (s, _) = admin
        .post_empty(&format!("/api/v1/jobs/{job}/cancel"))
        .await;
    assert_eq!(s, 409, "an ended job cannot be cancelled");
    let (s, del) = admin
        .delete(&format!("/api/v1/baseimages/{}", id(&b)))
        .await;
    assert_eq!(s, 202, "{del}");
    admin.job_ok(&del).await;
}

#[tokio::test]
async fn a_failing_script_fails_the_job_and_retry_resumes() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let flag = d.dir.path().join("state/flag");
    let (s, b) = admin
        .post(
            "/api/v1/baseimages",
            json!({"name": "flaky", "spec": {"config_auto": [
                {"name": "needs flag", "run": "test -f $HOME/ok || { echo missing >&2; exit 3; }"}
            ]}}),
        )
        .await;
    assert_eq!(s, 202);
    let j = admin.wait_job(b["job"]["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("needs flag"), "{j}");
    let (_, o) = admin.get(&format!("/api/v1/baseimages/{}", id(&b))).await;
    assert_eq!(
        (o["status"].as_str(), o["subphase"].as_str()),
        (Some("failed"), Some("config_auto"))
    );
    assert!(o["error"].as_str().unwrap().contains("exit"), "{o}");
    let _ = flag;
    // Make the script pass and retry from the checkpoint.
    let home = d
        .dir
        .path()
        .join("state/local/objects")
        .join(id(&b))
        .join("home");
    std::fs::write(home.join("ok"), b"1").unwrap();
    let (s, r) = admin
        .post_empty(&format!("/api/v1/baseimages/{}/retry", id(&b)))
        .await;
    assert_eq!(s, 202, "{r}");
    admin.job_ok(&r).await;
    let (_, o) = admin.get(&format!("/api/v1/baseimages/{}", id(&b))).await;
    assert_eq!(
        (o["status"].as_str(), o["subphase"].as_str()),
        (Some("idle"), Some("ready"))
    );
}

#[tokio::test]
async fn an_app_whose_program_is_missing_fails_cleanly() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let (_, b) = admin.post("/api/v1/baseimages", json!({"name": "b"})).await;
    admin.job_ok(&b).await;
    let (_, e) = admin
        .post(
            &format!("/api/v1/baseimages/{}/environments", id(&b)),
            json!({"name": "e"}),
        )
        .await;
    admin.job_ok(&e).await;
    let (_, dep) = admin
        .post(
            &format!("/api/v1/environments/{}/deployments", id(&e)),
            json!({"name": "d"}),
        )
        .await;
    admin.job_ok(&dep).await;
    let (_, a) = admin
        .post(
            &format!("/api/v1/deployments/{}/apps", id(&dep)),
            json!({"name": "ghost", "spec": {"command": ["no-such-program-xyz"]}}),
        )
        .await;
    let j = admin.wait_job(a["job"]["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["error"].as_str().unwrap().contains("not installed"),
        "{j}"
    );
    // A failed app is not offered.
    let (_, apps) = admin.get("/api/v1/apps").await;
    assert!(apps["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn an_app_that_exits_at_once_ends_its_instance() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let (_, b) = admin.post("/api/v1/baseimages", json!({"name": "b"})).await;
    admin.job_ok(&b).await;
    let (_, e) = admin
        .post(
            &format!("/api/v1/baseimages/{}/environments", id(&b)),
            json!({"name": "e"}),
        )
        .await;
    admin.job_ok(&e).await;
    let (_, dep) = admin
        .post(
            &format!("/api/v1/environments/{}/deployments", id(&e)),
            json!({"name": "d"}),
        )
        .await;
    admin.job_ok(&dep).await;
    let (_, a) = admin
        .post(
            &format!("/api/v1/deployments/{}/apps", id(&dep)),
            json!({"name": "blink", "spec": {"command": ["sh", "-c", "sleep 1"]}}),
        )
        .await;
    admin.job_ok(&a).await;
    let iid = open(&admin, &format!("/api/v1/apps/{}/open", id(&a))).await;
    let mut state = String::new();
    for _ in 0..100 {
        let (_, i) = admin.get(&format!("/api/v1/instances/{iid}")).await;
        state = i["state"].as_str().unwrap().to_owned();
        if state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "stopped");
    for _ in 0..50 {
        if sessions_under(d.dir.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sessions_under(d.dir.path()).is_empty());
}
