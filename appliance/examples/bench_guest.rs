//! The instance channel's speed: the appliance's SSH client (russh, the
//! `guest` module) against a real OpenSSH sshd on loopback whose forced
//! command is `daas-guest-proxy serve`, beside the same session driven
//! through the OpenSSH `ssh` client (the reference) in the same run.
//! Run as root (sshd), with the proxy binary to measure:
//!
//!     cargo build --release -p daas-guest-proxy
//!     cargo run --release -p daas-appliance --example bench_guest -- \
//!         target/release/daas-guest-proxy [DEST_DIR]
//!
//! `DEST_DIR` (default: a directory under /var/tmp) is where uploads land.
//! Prints a table: `ping` on an open session (median and p99 of 1000),
//! `exec true` on an open session (median of 100) and on a new connection
//! (median of 20), `put_file` of 100 MiB (best of 3).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daas_appliance::guest::ssh::{ApplianceKey, SshConnector, SshTimeouts};
use daas_appliance::guest::{CommandConnector, Connector, MemoryPins, Session};
use daas_guest_proxy_wire::message::{Exec, Ping, PutFile};
use sha2::Digest as _;

const PUT_SIZE: usize = 100 << 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let proxy = PathBuf::from(
        args.next()
            .expect("usage: bench_guest PROXY_BINARY [DEST_DIR]"),
    );
    let proxy = std::fs::canonicalize(&proxy).expect("the proxy binary");
    let work = tempfile::Builder::new()
        .prefix("bench-guest-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dest = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().join("dest"));
    std::fs::create_dir_all(&dest).unwrap();
    let dest = std::fs::canonicalize(&dest).unwrap();
    let d = work.path();
    let key = ApplianceKey::load_or_create(d).unwrap();
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("hostkey"))
        .status()
        .unwrap()
        .success());
    std::fs::write(
        d.join("authorized_keys"),
        format!("restrict {}\n", key.public_openssh()),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
             ForceCommand {proxy} serve --allowed-tree {dest}\nPidFile none\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n\
             LogLevel ERROR\n",
            d = d.display(),
            proxy = proxy.display(),
            dest = dest.display(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .arg("-p")
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sshd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let ours = SshConnector {
        addr: format!("127.0.0.1:{port}"),
        user: "root".into(),
        subject: "bench".into(),
        key: key.clone(),
        pins: Arc::new(MemoryPins::default()),
        timeouts: SshTimeouts::default(),
    };
    let reference = CommandConnector {
        argv: [
            "/usr/bin/ssh",
            "-F",
            "/dev/null",
            "-T",
            "-i",
            &key.path().display().to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "Ciphers=aes128-gcm@openssh.com",
            "-o",
            "Compression=no",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &port.to_string(),
            "root@127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        hello_timeout: Duration::from_secs(10),
    };

    let content: Vec<u8> = (0..PUT_SIZE)
        .map(|i| i.wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    let sha = hex::encode(sha2::Sha256::digest(&content));

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let s_ours = ours.connect().await.expect("connect (russh)");
    let s_ref = reference.connect().await.expect("connect (ssh)");

    let (p50, p99) = pings(&s_ours, 1000).await;
    let (r50, _) = pings(&s_ref, 1000).await;
    rows.push(row(
        "ping on an open session (median of 1000)",
        p50,
        r50,
        "≤ 1 ms",
    ));
    rows.push((
        "ping, p99".into(),
        format!("{:.3} ms", p99.as_secs_f64() * 1e3),
        String::new(),
        String::new(),
    ));
    let e = execs(&s_ours, 100).await;
    let re = execs(&s_ref, 100).await;
    rows.push(row(
        "exec true on an open session (median of 100)",
        e,
        re,
        "≤ 20 ms",
    ));
    let mut fresh = Vec::new();
    let mut fresh_ref = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let s = ours.connect().await.unwrap();
        exec_true(&s).await;
        fresh.push(t.elapsed());
        drop(s);
        let t = Instant::now();
        let s = reference.connect().await.unwrap();
        exec_true(&s).await;
        fresh_ref.push(t.elapsed());
    }
    rows.push(row(
        "connect + hello + exec true (median of 20)",
        median(&mut fresh),
        median(&mut fresh_ref),
        "",
    ));
    let ours_put = put(&s_ours, &dest, &content, &sha).await;
    let ref_put = put(&s_ref, &dest, &content, &sha).await;
    rows.push((
        "put_file 100 MiB (sha256, fsync, rename; best of 3)".into(),
        format!("{ours_put:.0} MiB/s"),
        format!("{ref_put:.0} MiB/s"),
        format!("{:.2}× (target ≥ 100 MiB/s)", ours_put / ref_put),
    ));

    println!("\n| figure | appliance (russh) | reference (OpenSSH ssh client) | ratio / target |");
    println!("| --- | --- | --- | --- |");
    for (a, b, c, d) in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    drop(s_ours);
    drop(s_ref);
    let _ = sshd.kill();
    let _ = sshd.wait();
}

fn row(
    name: &str,
    ours: Duration,
    reference: Duration,
    target: &str,
) -> (String, String, String, String) {
    (
        name.into(),
        format!("{:.3} ms", ours.as_secs_f64() * 1e3),
        format!("{:.3} ms", reference.as_secs_f64() * 1e3),
        format!(
            "{:.2}×{}",
            ours.as_secs_f64() / reference.as_secs_f64(),
            if target.is_empty() {
                String::new()
            } else {
                format!(" (target {target})")
            }
        ),
    )
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn pings(s: &Session, n: usize) -> (Duration, Duration) {
    for _ in 0..20 {
        s.call(Ping {}).await.unwrap();
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        s.call(Ping {}).await.unwrap();
        t.push(t0.elapsed());
    }
    t.sort();
    (t[n / 2], t[n * 99 / 100])
}

async fn exec_true(s: &Session) {
    let r = s
        .call(Exec {
            argv: vec!["true".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(0));
}

async fn execs(s: &Session, n: usize) -> Duration {
    exec_true(s).await;
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        exec_true(s).await;
        t.push(t0.elapsed());
    }
    median(&mut t)
}

async fn put(s: &Session, dest: &Path, content: &[u8], sha: &str) -> f64 {
    let mut best = 0f64;
    for i in 0..3 {
        let path = dest.join(format!("put-{i}.bin"));
        let t0 = Instant::now();
        s.put_file(
            PutFile {
                path: path.display().to_string(),
                size: content.len() as u64,
                sha256: sha.to_owned(),
                ..Default::default()
            },
            content,
        )
        .await
        .unwrap();
        let mibs = (content.len() as f64 / (1 << 20) as f64) / t0.elapsed().as_secs_f64();
        best = best.max(mibs);
        let _ = std::fs::remove_file(&path);
    }
    best
}
