//! kill -9 of the agent in a burst of writes: the hosts file is the old one
//! or the new one, never torn, and the agent starts again from it.

use std::time::Duration;

use hyper::http::Method;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn kill_9_during_a_burst_never_tears_the_hosts_file() {
    if !have("dnsmasq", "kill_9") {
        return;
    }
    let dir = tempdir();
    let dnsmasq = IdleDnsmasq::start(dir.path()).await;
    let text = config_text(
        dir.path(),
        "subnet = \"10.213.0.0/16\"\nrange_start = \"10.213.0.1\"\nrange_end = \"10.213.255.254\"\nbatch_delay_ms = 0",
        &dnsmasq.config(),
        "",
    );
    let config = write_config(dir.path(), &text);
    let hosts = dir.path().join("state/dnsmasq-hosts");
    for round in 0..3u32 {
        let agent = spawn_agent(dir.path(), &config, None).await;
        let sock = dir.path().join("agent.sock");
        // what survives from the last round is what the agent serves
        let (_, before) = call(&sock, Method::GET, "/v1/leases", None).await;
        let on_disk =
            daas_agent::hostsfile::parse(&std::fs::read_to_string(&hosts).unwrap()).unwrap();
        assert_eq!(before["items"].as_array().unwrap().len(), on_disk.len());

        let mut burst = tokio::task::JoinSet::new();
        for w in 0..8u32 {
            let sock = sock.clone();
            burst.spawn(async move {
                for i in 0..10_000u32 {
                    let mac = format!(
                        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                        round,
                        w,
                        i / 256 % 256,
                        i % 256
                    );
                    let body = json!({"mac": mac, "hostname": format!("r{round}w{w}i{i}")});
                    let stream = match tokio::net::UnixStream::connect(&sock).await {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    if send(
                        stream,
                        Method::POST,
                        "/v1/leases",
                        Some(body.to_string().into_bytes()),
                        "application/json",
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                    if i % 3 == 0 {
                        let Ok(stream) = tokio::net::UnixStream::connect(&sock).await else {
                            return;
                        };
                        if send(
                            stream,
                            Method::DELETE,
                            &format!("/v1/leases/{mac}"),
                            None,
                            "",
                        )
                        .await
                        .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(400 + u64::from(round) * 150)).await;
        agent.signal(nix::sys::signal::Signal::SIGKILL);
        drop(agent);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while burst.join_next().await.is_some() {}
        })
        .await;
        burst.abort_all();

        let text = std::fs::read_to_string(&hosts).unwrap();
        assert!(
            text.starts_with(daas_agent::hostsfile::HEADER),
            "round {round}: header missing"
        );
        assert!(text.ends_with('\n'), "round {round}: torn last line");
        for (n, line) in text.lines().enumerate().skip(1) {
            daas_agent::hostsfile::parse_line(line)
                .unwrap_or_else(|e| panic!("round {round} line {}: {e}: {line:?}", n + 1));
        }
        let leases = daas_agent::hostsfile::parse(&text).unwrap();
        assert!(
            leases.len() > on_disk.len(),
            "round {round}: the burst wrote nothing"
        );
        let range = daas_agent::Config::from_toml(&text_config(&config), &config)
            .unwrap()
            .range()
            .unwrap();
        daas_agent::leases::LeaseTable::from_leases(range, leases).expect("no duplicates");
    }
    // a last, clean start from the file of the last crash
    let agent = spawn_agent(dir.path(), &config, None).await;
    let (st, _) = call(
        &dir.path().join("agent.sock"),
        Method::GET,
        "/v1/status",
        None,
    )
    .await;
    assert!(st.is_success());
    drop(agent);
}

fn text_config(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}
