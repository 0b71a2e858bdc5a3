//! The REST API's contract, auth and bad input.

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn service_endpoints() {
    let d = Daemon::start("", false);
    let c = d.client();
    assert_eq!(c.get("/healthz").await.0, 200);
    let (s, b) = c.get("/readyz").await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ready")));
    let r = c
        .http
        .get(format!("{}/metrics", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE daas_http_responses_total counter"),
        "{text}"
    );
    assert!(text.contains("daas_build_info{version="), "{text}");
    let (s, doc) = c.get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn login_logout_and_cookie_attributes() {
    let d = Daemon::start("", false);
    let c = d.client();
    assert_eq!(c.get("/api/v1/me").await.0, 401);
    let r = c
        .http
        .post(format!("{}/api/v1/session", d.url))
        .json(&json!({"username": "admin", "password": ADMIN_PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: no Secure flag: {cookie}"
    );
    let (s, me) = c.get("/api/v1/me").await;
    assert_eq!(
        (s, me["name"].as_str(), me["role"].as_str()),
        (200, Some("admin"), Some("admin"))
    );
    assert_eq!(c.delete("/api/v1/session").await.0, 204);
    assert_eq!(c.get("/api/v1/me").await.0, 401);
}

#[tokio::test]
async fn wrong_passwords_are_throttled() {
    let d = Daemon::start("[auth]\nlogin_max_failures = 3\n", false);
    let c = d.client();
    for _ in 0..3 {
        let (s, b) = c
            .post(
                "/api/v1/session",
                json!({"username": "admin", "password": "nope-nope"}),
            )
            .await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(b["error"]["code"], "unauthorized");
    }
    let r = c
        .raw(reqwest::Method::POST, "/api/v1/session")
        .await
        .json(&json!({"username": "admin", "password": ADMIN_PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "even the right password waits out the window"
    );
    assert!(r.headers().contains_key("retry-after"));
    // Unknown users cost the same and are throttled too.
    let (s, _) = c
        .post(
            "/api/v1/session",
            json!({"username": "ghost", "password": "x"}),
        )
        .await;
    assert_eq!(s, 429);
}

#[tokio::test]
async fn bad_input_is_refused_cleanly() {
    let d = Daemon::start("max_body_bytes = 65536\n", false);
    let c = d.admin().await;
    let post_raw = |body: &'static str, ct: &'static str| {
        let r = c
            .http
            .post(format!("{}/api/v1/baseimages", d.url))
            .header("Origin", &d.url);
        let r = if ct.is_empty() {
            r
        } else {
            r.header("Content-Type", ct)
        };
        c.send(r.body(body))
    };
    let (s, b) = post_raw("{\"name\": ", "application/json").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_json")),
        "{b}"
    );
    let (s, b) = post_raw("{\"name\": 5}", "application/json").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("invalid")),
        "{b}"
    );
    let (s, b) = post_raw("{\"name\": \"x\", \"colour\": \"red\"}", "application/json").await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("colour"),
        "{b}"
    );
    let (s, _) = post_raw("{\"name\": \"x\"}", "text/plain").await;
    assert_eq!(s, 415);
    let (s, b) = post_raw("\u{0}\u{1}", "application/json").await;
    assert_eq!(s, 400, "{b}");
    // Over the limit, yet small enough that the whole body is sent before
    // the answer comes (a larger one may see the connection closed first).
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(100 << 10));
    let (s, b) = c
        .send(
            c.http
                .post(format!("{}/api/v1/baseimages", d.url))
                .header("Origin", &d.url)
                .header("Content-Type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{b}"
    );
    let (s, b) = c
        .post("/api/v1/baseimages", json!({"name": "\u{7}bell"}))
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = c.get("/api/v1/nope").await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, b) = c.send(c.http.put(format!("{}/api/v1/me", d.url))).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (s, _) = c.get("/api/v1/instances/..%2F..%2Fetc").await;
    assert_eq!(s, 404);
    let (s, _) = c.get("/api/v1/jobs/' OR 1=1 --").await;
    assert_eq!(s, 404);
    // The daemon is still up and the store intact.
    assert_eq!(c.get("/readyz").await.0, 200);
    let (_, list) = c.get("/api/v1/baseimages").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn cookie_writes_need_our_origin_but_tokens_do_not() {
    let d = Daemon::start("", false);
    let mut c = d.admin().await;
    c.origin = None;
    let (s, b) = c.post("/api/v1/tokens", json!({"name": "t"})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("bad_origin")),
        "{b}"
    );
    c.origin = Some("https://evil.example".into());
    assert_eq!(c.post("/api/v1/tokens", json!({"name": "t"})).await.0, 403);
    c.origin = Some(d.url.clone());
    let (s, b) = c
        .post(
            "/api/v1/tokens",
            json!({"name": "ci", "expires_in_days": 1}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let secret = b["secret"].as_str().unwrap().to_owned();
    let id = b["token"]["id"].as_str().unwrap().to_owned();
    let (s, list) = c.get("/api/v1/tokens").await;
    assert_eq!(s, 200);
    assert!(
        !list.to_string().contains(&secret),
        "the secret is shown only once"
    );
    let mut t = Client::new(&d.url);
    t.origin = None;
    t.token = Some(secret.clone());
    let (s, me) = t.get("/api/v1/me").await;
    assert_eq!((s, me["name"].as_str()), (200, Some("admin")));
    assert_eq!(
        t.post("/api/v1/tokens", json!({"name": "from-token"}))
            .await
            .0,
        201
    );
    assert_eq!(c.delete(&format!("/api/v1/tokens/{id}")).await.0, 204);
    assert_eq!(t.get("/api/v1/me").await.0, 401);
    t.token = Some("daas_forged".into());
    assert_eq!(t.get("/api/v1/me").await.0, 401);
}

#[tokio::test]
async fn users_admin_and_disable() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let bob = d.user(&admin, "bob").await;
    let (s, _) = bob.get("/api/v1/users").await;
    assert_eq!(s, 403);
    let (s, b) = bob
        .post(
            "/api/v1/users",
            json!({"name": "eve", "role": "admin", "password": "whatever-1"}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = admin
        .post(
            "/api/v1/users",
            json!({"name": "bob", "role": "user", "password": "whatever-1"}),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, b) = admin
        .post(
            "/api/v1/users",
            json!({"name": "carl", "role": "user", "password": "short"}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = admin
        .post(
            "/api/v1/users",
            json!({"name": "bad name", "role": "user", "password": "long-enough"}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    let (_, users) = admin.get("/api/v1/users").await;
    let bob_id = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, me) = admin.get("/api/v1/me").await;
    let admin_id = me["id"].as_str().unwrap();
    let (s, _) = admin
        .post_empty(&format!("/api/v1/users/{admin_id}/disable"))
        .await;
    assert_eq!(s, 409, "cannot disable yourself");
    assert_eq!(bob.get("/api/v1/me").await.0, 200);
    let (s, u) = admin
        .post_empty(&format!("/api/v1/users/{bob_id}/disable"))
        .await;
    assert_eq!((s, u["disabled"].as_bool()), (200, Some(true)));
    assert_eq!(
        bob.get("/api/v1/me").await.0,
        401,
        "disabling ends the sessions"
    );
    let (s, b) = d
        .client()
        .post(
            "/api/v1/session",
            json!({"username": "bob", "password": "user-password-1"}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(
        admin
            .post_empty(&format!("/api/v1/users/{bob_id}/enable"))
            .await
            .0,
        200
    );
    // Password reset by the admin; bob then changes it himself.
    assert_eq!(
        admin
            .post(
                &format!("/api/v1/users/{bob_id}/password"),
                json!({"password": "reset-password-1"})
            )
            .await
            .0,
        204
    );
    let bob = d.client();
    bob.login("bob", "reset-password-1").await;
    let (s, _) = bob
        .post(
            &format!("/api/v1/users/{bob_id}/password"),
            json!({"password": "bobs-own-pw", "current_password": "wrong"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = bob
        .post(
            &format!("/api/v1/users/{admin_id}/password"),
            json!({"password": "taking-over"}),
        )
        .await;
    assert_eq!(s, 403, "users cannot reset others' passwords");
    let (s, _) = bob
        .post(
            &format!("/api/v1/users/{bob_id}/password"),
            json!({"password": "bobs-own-pw", "current_password": "reset-password-1"}),
        )
        .await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn another_users_ids_are_not_found() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let (s, b) = admin
        .post("/api/v1/baseimages", json!({"name": "Base", "spec": {}}))
        .await;
    assert_eq!(s, 202, "{b}");
    admin.job_ok(&b).await;
    let base = b["object"]["id"].as_str().unwrap().to_owned();
    let ann = d.user(&admin, "ann").await;
    let bob = d.user(&admin, "bob").await;
    let (s, e) = ann
        .post(
            &format!("/api/v1/baseimages/{base}/environments"),
            json!({"name": "Ann's"}),
        )
        .await;
    assert_eq!(s, 202, "{e}");
    ann.job_ok(&e).await;
    let env = e["object"]["id"].as_str().unwrap().to_owned();
    let job = e["job"]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/environments/{env}"),
        format!("/api/v1/jobs/{job}"),
        format!("/api/v1/jobs/{job}/logs"),
    ] {
        let (s, b) = bob.get(&path).await;
        assert_eq!(s, 404, "{path}: {b}");
        assert!(!b.to_string().contains("Ann's"), "no leak: {b}");
    }
    let (s, _) = bob
        .post(
            &format!("/api/v1/environments/{env}/deployments"),
            json!({"name": "steal"}),
        )
        .await;
    assert_eq!(s, 404, "nothing a user made is cloned to another user");
    let (s, _) = bob.delete(&format!("/api/v1/environments/{env}")).await;
    assert_eq!(s, 404);
    // The environment is untouched.
    let (s, v) = ann.get(&format!("/api/v1/environments/{env}")).await;
    assert_eq!((s, v["subphase"].as_str()), (200, Some("ready")));
    let (_, list) = bob.get("/api/v1/environments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let _: Value = list;
}

#[tokio::test]
async fn tls_by_default_with_a_self_signed_certificate() {
    let dir = state_dir();
    let cfg = dir.path().join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[paths]\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let (ok, _, err) = cli(
        &cfg,
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(ADMIN_PW),
    );
    assert!(ok, "{err}");
    let d = Daemon::spawn(dir, cfg, false);
    assert!(d.url.starts_with("https://"), "{}", d.url);
    let key = d.dir.path().join("state/tls/key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let c = d.client();
    // As a browser does: HTTP/2 (offered by ALPN), with the page's Origin;
    // HTTP/2 requests carry no Host header, only their authority.
    let r = c
        .http
        .post(format!("{}/api/v1/session", d.url))
        .header("Origin", &d.url)
        .json(&json!({"username": "admin", "password": ADMIN_PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "Secure under TLS: {cookie}");
    // A cookie write from our page is taken; from another site it is not.
    let (s, b) = c
        .post(
            "/api/v1/tokens",
            json!({"name": "h2", "expires_in_days": 1}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mut evil = d.client();
    evil.http = c.http.clone();
    evil.origin = Some("https://evil.example".into());
    let (s, b) = evil
        .post(
            "/api/v1/tokens",
            json!({"name": "h2", "expires_in_days": 1}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("bad_origin")),
        "{b}"
    );
    // Plain HTTP to the TLS port gets nothing useful.
    let plain = reqwest::get(d.url.replace("https://", "http://") + "/healthz").await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
}

#[tokio::test]
async fn orphans_are_listed_and_removed_by_admins() {
    let d = Daemon::start("", false);
    let admin = d.admin().await;
    let stray = d
        .dir
        .path()
        .join("state/local/objects/0badc0de-0000-4000-8000-000000000000");
    std::fs::create_dir_all(stray.join("home")).unwrap();
    let mut found = Value::Null;
    for _ in 0..50 {
        let (s, o) = admin.get("/api/v1/admin/orphans").await;
        assert_eq!(s, 200);
        if o["items"].as_array().is_some_and(|v| !v.is_empty()) {
            found = o;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let item = &found["items"][0];
    assert_eq!(
        (item["what"].as_str(), item["backend"].as_str()),
        (Some("object"), Some("local")),
        "{found}"
    );
    let bob = d.user(&admin, "bob").await;
    assert_eq!(bob.get("/api/v1/admin/orphans").await.0, 403);
    let path = format!(
        "/api/v1/admin/orphans/local/object/{}",
        item["id"].as_str().unwrap()
    );
    assert_eq!(bob.delete(&path).await.0, 403);
    assert_eq!(admin.delete(&path).await.0, 204);
    assert!(!stray.exists());
    assert_eq!(admin.delete(&path).await.0, 404);
}
