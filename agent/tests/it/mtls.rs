//! The mutual-TLS API: the appliance's client certificate is accepted;
//! another node's (same CA), one of another CA, and none are refused.

use daas_agent::state::{JoinRecord, Joined, StateDir};
use daas_agent_api::identity::{node_dns_name, APPLIANCE_CLIENT_NAME};
use daas_agent_api::{Fingerprint, NodeSecret};

use crate::harness::*;

#[tokio::test]
async fn only_the_appliance_certificate_of_the_node_ca_is_accepted() {
    let dir = tempdir();
    let pki = Pki::new("DaaS node CA");
    let node_id = "n1".parse().unwrap();
    let node_key = rcgen::KeyPair::generate().unwrap();
    let node_cert = pki.issue(&node_dns_name(&node_id), &node_key);

    // the state `daas-agent join` leaves
    let state = StateDir::new(dir.path().join("state"));
    state.ensure().unwrap();
    state.save_key(&node_key.serialize_pem()).unwrap();
    state
        .save_join(&Joined {
            record: JoinRecord {
                node_id,
                node_name: "node-a".parse().unwrap(),
                // nothing listens there: heartbeats fail and are retried
                appliance_url: "https://127.0.0.1:9".into(),
                appliance_fingerprint: Fingerprint::of_der(b"none"),
                heartbeat_interval_secs: 1,
                joined_at: 0,
            },
            key_pem: node_key.serialize_pem(),
            cert_pem: node_cert,
            ca_pem: pki.ca_pem(),
            secret: NodeSecret::new("secret").unwrap(),
        })
        .unwrap();
    let mut text = config_text(
        dir.path(),
        "",
        &format!("pid_file = \"{}/none.pid\"", dir.path().display()),
        "",
    );
    text = text.replace("tls_listen = \"off\"", "tls_listen = \"127.0.0.1:0\"");
    let agent = InProcess::start(parse_config(dir.path(), &text)).await;
    let addr = agent.tls_addr.expect("joined: mutual TLS listens");
    let server_name = "n1.nodes.daas.internal";

    let appliance_key = rcgen::KeyPair::generate().unwrap();
    let appliance_cert = pki.issue(APPLIANCE_CLIENT_NAME, &appliance_key);
    let appliance_key = appliance_key.serialize_pem();
    let (st, v) = tls_get(
        addr,
        &pki.ca_pem(),
        server_name,
        Some((&appliance_cert, &appliance_key)),
        "/v1/status",
    )
    .await
    .expect("the appliance is accepted");
    assert!(st.is_success(), "{v}");
    assert_eq!(v["join"]["node_id"], "n1");

    // another node of the same CA
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other_cert = pki.issue("n2.nodes.daas.internal", &other_key);
    let r = tls_get(
        addr,
        &pki.ca_pem(),
        server_name,
        Some((&other_cert, &other_key.serialize_pem())),
        "/v1/status",
    )
    .await;
    assert!(r.is_err(), "another node's certificate was accepted: {r:?}");
    // the node's own certificate
    let r = tls_get(
        addr,
        &pki.ca_pem(),
        server_name,
        Some((
            &pki.issue(server_name, &node_key),
            &node_key.serialize_pem(),
        )),
        "/v1/leases",
    )
    .await;
    assert!(r.is_err(), "a node certificate was accepted: {r:?}");
    // the appliance's name, but another CA
    let rogue = Pki::new("rogue CA");
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let rogue_cert = rogue.issue(APPLIANCE_CLIENT_NAME, &rogue_key);
    let r = tls_get(
        addr,
        &pki.ca_pem(),
        server_name,
        Some((&rogue_cert, &rogue_key.serialize_pem())),
        "/v1/status",
    )
    .await;
    assert!(
        r.is_err(),
        "a certificate of another CA was accepted: {r:?}"
    );
    // no certificate
    let r = tls_get(addr, &pki.ca_pem(), server_name, None, "/v1/status").await;
    assert!(
        r.is_err(),
        "a client without certificate was accepted: {r:?}"
    );

    // the server is still up for the appliance
    let (st, _) = tls_get(
        addr,
        &pki.ca_pem(),
        server_name,
        Some((&appliance_cert, &appliance_key)),
        "/v1/facts",
    )
    .await
    .unwrap();
    assert!(st.is_success());
    // the failing heartbeats show in the status
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, v) = call(&agent.socket, hyper::http::Method::GET, "/v1/status", None).await;
    let hb = &v["join"]["heartbeat"];
    assert!(hb["consecutive_failures"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        hb["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{v}"
    );
    agent.shutdown().await;
}
