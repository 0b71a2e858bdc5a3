//! The lease API over the unix socket: good and bad input, conflicts,
//! concurrency, converge, and the hosts file as the truth.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use hyper::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

const LEASES: &str =
    "subnet = \"10.213.0.0/24\"\nrange_start = \"10.213.0.1\"\nrange_end = \"10.213.0.254\"";

async fn start(dir: &std::path::Path, dnsmasq: &IdleDnsmasq) -> InProcess {
    let text = config_text(dir, LEASES, &dnsmasq.config(), "");
    InProcess::start(parse_config(dir, &text)).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn allocate_release_list_and_bad_input() {
    if !have("dnsmasq", "allocate_release_list_and_bad_input") {
        return;
    }
    let dir = tempdir();
    let dnsmasq = IdleDnsmasq::start(dir.path()).await;
    let agent = start(dir.path(), &dnsmasq).await;
    let s = &agent.socket;
    let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let (st, v) = call(
        s,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac":"52:54:00:00:00:01","hostname":"desk-1"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(
        v,
        json!({"mac":"52:54:00:00:00:01","ip":"10.213.0.1","hostname":"desk-1"})
    );
    // the same request again: 200, same lease
    let (st, v2) = call(
        s,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac":"52:54:00:00:00:01","hostname":"desk-1"})),
    )
    .await;
    assert_eq!((st, &v2), (StatusCode::OK, &v));
    let (st, v) = call(
        s,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac":"52:54:00:00:00:02","hostname":"desk-2","ip":"10.213.0.200"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["ip"], "10.213.0.200");

    // on disk before the answer
    let text = std::fs::read_to_string(dir.path().join("state/dnsmasq-hosts")).unwrap();
    assert!(
        text.contains("52:54:00:00:00:01,10.213.0.1,desk-1\n"),
        "{text}"
    );
    assert!(
        text.contains("52:54:00:00:00:02,10.213.0.200,desk-2\n"),
        "{text}"
    );

    for (body, status, want) in [
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","ip":"10.213.0.200"}),
            409,
            "address_in_use",
        ),
        (
            json!({"mac":"52:54:00:00:00:01","hostname":"desk-9"}),
            409,
            "mac_in_use",
        ),
        (
            json!({"mac":"52:54:00:00:00:01","hostname":"desk-1","ip":"10.213.0.7"}),
            409,
            "mac_in_use",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"desk-1"}),
            409,
            "hostname_in_use",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","ip":"10.213.0.255"}),
            422,
            "out_of_range",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","ip":"10.213.0.0"}),
            422,
            "out_of_range",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","ip":"192.0.2.1"}),
            422,
            "out_of_range",
        ),
        (
            json!({"mac":"52:54:00:00:00:0","hostname":"d3"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"01:00:5e:00:00:01","hostname":"d3"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"00:00:00:00:00:00","hostname":"d3"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d_3"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"45m"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"a".repeat(64)}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"dé"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","ip":"10.213.0.300"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","ip":"::1"}),
            400,
            "invalid_request",
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3","extra":true}),
            400,
            "invalid_request",
        ),
        (json!({"mac":"52:54:00:00:00:03"}), 400, "invalid_request"),
        (json!([1, 2]), 400, "invalid_request"),
        (
            json!("52:54:00:00:00:03,10.213.0.9,x\n52:54:00:00:00:04"),
            400,
            "invalid_request",
        ),
    ] {
        let (st, v) = call(s, Method::POST, "/v1/leases", Some(body.clone())).await;
        assert_eq!((st.as_u16(), code(&v)), (status, want), "{body} -> {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // not JSON, invalid UTF-8, wrong content type, too large
    for (body, ctype, status) in [
        (b"{\"mac\":".to_vec(), "application/json", 400),
        (vec![0xff, 0xfe, b'{'], "application/json", 400),
        (
            b"{\"mac\":\"52:54:00:00:00:03\",\"hostname\":\"\xed\xa0\x80\"}".to_vec(),
            "application/json",
            400,
        ),
        (
            json!({"mac":"52:54:00:00:00:03","hostname":"d3"})
                .to_string()
                .into_bytes(),
            "text/plain",
            400,
        ),
        (vec![b' '; 3 << 20], "application/json", 413),
    ] {
        let (st, v) = call_raw(s, Method::POST, "/v1/leases", body, ctype).await;
        assert_eq!(st.as_u16(), status, "{v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    // release: bad MAC, unknown MAC, path traversal
    for (path, status, want) in [
        ("/v1/leases/52:54:00:00:00:0", 400, "invalid_request"),
        ("/v1/leases/..%2F..%2Fetc%2Fpasswd", 400, "invalid_request"),
        ("/v1/leases/52:54:00:00:00:99", 404, "not_found"),
        ("/v1/nothing", 404, "not_found"),
    ] {
        let (st, v) = call(s, Method::DELETE, path, None).await;
        assert_eq!((st.as_u16(), code(&v)), (status, want), "{path} -> {v}");
    }
    let (st, _) = call(s, Method::PATCH, "/v1/leases", None).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    let (st, v) = call(s, Method::DELETE, "/v1/leases/52-54-00-00-00-01", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ip"], "10.213.0.1");
    let (_, v) = call(s, Method::GET, "/v1/leases", None).await;
    assert_eq!(
        v,
        json!({"items":[{"mac":"52:54:00:00:00:02","ip":"10.213.0.200","hostname":"desk-2"}]})
    );

    // nothing that was refused reached the file
    let text = std::fs::read_to_string(dir.path().join("state/dnsmasq-hosts")).unwrap();
    let leases = daas_agent::hostsfile::parse(&text).unwrap();
    assert_eq!(leases.len(), 1);

    let (st, v) = call(s, Method::GET, "/v1/status", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["dnsmasq"]["state"], "running", "{v}");
    assert_eq!(v["dnsmasq"]["mode"], "external");
    assert_eq!(v["leases"]["count"], 1);
    assert_eq!(v["leases"]["free"], 253);
    assert!(v["dnsmasq"]["reloads"].as_u64().unwrap() >= 3);
    assert_eq!(v["join"], Value::Null);
    let (st, v) = call(s, Method::GET, "/v1/facts", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(v["cpu"]["count"].as_u64().unwrap() >= 1);
    assert!(v["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["disks"][0]["path"], dir.path().display().to_string());
    assert_eq!(v["instances"], json!({"running":1,"source":"leases"}));
    assert!(
        v["versions"]["dnsmasq"]
            .as_str()
            .is_some_and(|d| d.starts_with('2')),
        "{v}"
    );
    agent.shutdown().await;
    assert!(!dir.path().join("agent.sock").exists());
}

#[tokio::test]
async fn concurrent_allocations_never_share_an_address_and_share_writes() {
    if !have("dnsmasq", "concurrent_allocations") {
        return;
    }
    let dir = tempdir();
    let dnsmasq = IdleDnsmasq::start(dir.path()).await;
    let agent = start(dir.path(), &dnsmasq).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let s = agent.socket.clone();
        tasks.spawn(async move {
            let mac = format!("52:54:00:01:{:02x}:{:02x}", i / 256, i % 256);
            let (st, v) = call(
                &s,
                Method::POST,
                "/v1/leases",
                Some(json!({"mac": mac, "hostname": format!("c{i}")})),
            )
            .await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
            v["ip"].as_str().unwrap().to_owned()
        });
    }
    let mut ips = HashSet::new();
    while let Some(ip) = tasks.join_next().await {
        assert!(ips.insert(ip.unwrap()), "an address was handed out twice");
    }
    assert_eq!(ips.len(), 200);
    // 54 left; the 55th fails cleanly
    for i in 0..54u32 {
        let (st, _) = call(
            &agent.socket,
            Method::POST,
            "/v1/leases",
            Some(json!({"mac": format!("52:54:00:02:00:{i:02x}"), "hostname": format!("f{i}")})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let (st, v) = call(
        &agent.socket,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac":"52:54:00:03:00:00","hostname":"full"})),
    )
    .await;
    assert_eq!((st.as_u16(), code(&v)), (409, "pool_exhausted"));

    let text = std::fs::read_to_string(dir.path().join("state/dnsmasq-hosts")).unwrap();
    let leases = daas_agent::hostsfile::parse(&text).unwrap();
    assert_eq!(leases.len(), 254);
    let (_, v) = call(&agent.socket, Method::GET, "/v1/status", None).await;
    let writes = v["leases"]["writes"].as_u64().unwrap();
    let reloads = v["dnsmasq"]["reloads"].as_u64().unwrap();
    assert_eq!(writes, reloads, "one reload per write");
    assert!(
        writes < 254,
        "changes in a burst share writes: {writes} writes for 254 changes"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn converge_replaces_the_set_all_or_nothing_and_survives_a_restart() {
    if !have("dnsmasq", "converge") {
        return;
    }
    let dir = tempdir();
    let dnsmasq = IdleDnsmasq::start(dir.path()).await;
    let agent = start(dir.path(), &dnsmasq).await;
    let s = agent.socket.clone();
    for i in 1..=3 {
        let (st, _) = call(
            &s,
            Method::POST,
            "/v1/leases",
            Some(json!({"mac": format!("52:54:00:00:00:0{i}"), "hostname": format!("h{i}")})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let desired = json!({"leases":[
        {"mac":"52:54:00:00:00:01","ip":"10.213.0.1","hostname":"h1"},
        {"mac":"52:54:00:00:00:02","ip":"10.213.0.50","hostname":"h2"},
        {"mac":"52:54:00:00:00:04","ip":"10.213.0.51","hostname":"h4"}
    ]});
    let (st, v) = call(&s, Method::PUT, "/v1/leases", Some(desired.clone())).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["added"].as_u64(),
            v["removed"].as_u64(),
            v["changed"].as_u64(),
            v["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    for (bad, status) in [
        (
            json!({"leases":[{"mac":"52:54:00:00:00:01","ip":"10.213.0.1","hostname":"a"},{"mac":"52:54:00:00:00:01","ip":"10.213.0.2","hostname":"b"}]}),
            400,
        ),
        (
            json!({"leases":[{"mac":"52:54:00:00:00:01","ip":"10.213.0.1","hostname":"a"},{"mac":"52:54:00:00:00:02","ip":"10.213.0.1","hostname":"b"}]}),
            400,
        ),
        (
            json!({"leases":[{"mac":"52:54:00:00:00:01","ip":"10.214.0.1","hostname":"a"}]}),
            422,
        ),
        (
            json!({"leases":[{"mac":"52:54:00:00:00:01","ip":"10.213.0.1"}]}),
            400,
        ),
        (json!({"leases":{}}), 400),
    ] {
        let (st, v) = call(&s, Method::PUT, "/v1/leases", Some(bad.clone())).await;
        assert_eq!(st.as_u16(), status, "{bad} -> {v}");
    }
    let (_, now) = call(&s, Method::GET, "/v1/leases", None).await;
    assert_eq!(now["items"], desired["leases"]);
    agent.shutdown().await;

    // the file is the truth: a new agent reads it back
    let agent = start(dir.path(), &dnsmasq).await;
    let (_, again) = call(&agent.socket, Method::GET, "/v1/leases", None).await;
    assert_eq!(again, now);
    agent.shutdown().await;

    // a hand-edited, broken file stops the agent with the line
    std::fs::write(
        dir.path().join("state/dnsmasq-hosts"),
        "# x\n52:54:00:00:00:01,10.213.0.1,h1\n52:54:00:00:00:02,10.213.0.1,h2\n",
    )
    .unwrap();
    let text = config_text(dir.path(), LEASES, &dnsmasq.config(), "");
    let err = daas_agent::util::chain(
        &daas_agent::Agent::build(parse_config(dir.path(), &text))
            .await
            .err()
            .unwrap(),
    );
    assert!(err.contains("address 10.213.0.1 is given twice"), "{err}");
    std::fs::write(
        dir.path().join("state/dnsmasq-hosts"),
        "52:54:00:00:00:01,10.213.0.1\n",
    )
    .unwrap();
    let err = daas_agent::util::chain(
        &daas_agent::Agent::build(parse_config(dir.path(), &text))
            .await
            .err()
            .unwrap(),
    );
    assert!(err.contains("line 1: expected MAC,IP,hostname"), "{err}");
}

#[tokio::test]
async fn without_dnsmasq_changes_are_stored_and_the_error_says_so() {
    let dir = tempdir();
    let text = config_text(
        dir.path(),
        LEASES,
        &format!("pid_file = \"{}/none.pid\"", dir.path().display()),
        "",
    );
    let agent = InProcess::start(parse_config(dir.path(), &text)).await;
    let (st, v) = call(
        &agent.socket,
        Method::POST,
        "/v1/leases",
        Some(json!({"mac":"52:54:00:00:00:01","hostname":"x"})),
    )
    .await;
    assert_eq!((st.as_u16(), code(&v)), (503, "dnsmasq_unavailable"), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("stored") && msg.contains("cannot read pid file"),
        "{msg}"
    );
    assert_eq!(v["error"]["dnsmasq"]["state"], "not_running");
    let (_, list) = call(&agent.socket, Method::GET, "/v1/leases", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // a second agent on the same state dir is refused
    let err = daas_agent::util::chain(
        &daas_agent::Agent::build(parse_config(dir.path(), &text))
            .await
            .err()
            .unwrap(),
    );
    assert!(err.contains("another daas-agent"), "{err}");
    agent.shutdown().await;
}
