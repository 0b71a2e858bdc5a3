//! Benchmarks of `daas-guest-proxy` through a real sshd on loopback, each
//! beside a reference measured in the same run:
//!
//! | figure | reference |
//! | --- | --- |
//! | no-op request (`ping`) on an open session | one byte echoed by `cat` as the forced command (the SSH floor) |
//! | `exec true` on an open session | fork+exec of `true` by the benchmark itself |
//! | `put_file` / `get_file` of 100 MiB | 100 MiB through `cat > /dev/null` / `head -c` as the forced command |
//! | new session (ssh connect to hello) | ssh connect running `true` as the forced command |
//! | startup of the binary (`--version`, `serve` to hello and EOF) | `/bin/true` |
//! | size of the binary | |
//!
//! Build the static binary first, then run as root (sshd needs it):
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile release-small \
//!     -p daas-guest-proxy --target x86_64-unknown-linux-gnu
//! cargo run --release -p daas-guest-proxy --example bench -- \
//!     target/x86_64-unknown-linux-gnu/release-small/daas-guest-proxy
//! ```
//!
//! Optional second argument: the directory `put_file` writes to (default a
//! temporary directory under `/var/tmp`, on disk, so fsync is real).

#[path = "../tests/it/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daas_guest_proxy_wire::message::{Exec, GetFile, Ping};
use harness::{pseudo_random, put_args, Proxy};

const CIPHER: &str = "aes128-gcm@openssh.com";
const BULK: usize = 100 << 20;

struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// sshd with one client key per forced command.
    fn start(commands: &[(&str, &str)]) -> Sshd {
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd (run as root)");
        // StrictModes is off below: /var/tmp is world-writable (the tests
        // check sshd's strict modes; this measures speed).
        std::fs::create_dir_all("/var/tmp").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("gp-bench-sshd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let keygen = |name: &str| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(d.join(name))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen");
        };
        keygen("hostkey");
        let mut keys = String::new();
        for (name, cmd) in commands {
            keygen(name);
            let public = std::fs::read_to_string(d.join(format!("{name}.pub"))).unwrap();
            keys.push_str(&format!("command=\"{cmd}\",restrict {}\n", public.trim()));
        }
        std::fs::write(d.join("authorized_keys"), keys).unwrap();
        std::fs::set_permissions(
            d.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o600),
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
                "ListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nCiphers {CIPHER},chacha20-poly1305@openssh.com\n\
                 LogLevel ERROR\n",
                d.join("hostkey").display(),
                d.join("authorized_keys").display()
            ),
        )
        .unwrap();
        let host = std::fs::read_to_string(d.join("hostkey.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", host.trim()),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .arg("-p")
            .arg(port.to_string())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { child, port, dir }
    }

    fn ssh(&self, key: &str, cipher: &str) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T", "-i"])
            .arg(d.join(key))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                d.join("known_hosts").display()
            ))
            .args([
                "-o",
                &format!("Ciphers={cipher}"),
                "-o",
                "Compression=no",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("root@127.0.0.1");
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn mibs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn time_runs(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

struct Row {
    what: &'static str,
    ours: String,
    reference: String,
    ratio: String,
    target: &'static str,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().unwrap_or_else(|| {
        "target/x86_64-unknown-linux-gnu/release-small/daas-guest-proxy".into()
    }));
    let bin =
        std::fs::canonicalize(&bin).unwrap_or_else(|_| panic!("no binary at {}", bin.display()));
    let dest_parent = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dest = tempfile::Builder::new()
        .prefix("gp-bench-")
        .tempdir_in(&dest_parent)
        .unwrap();
    let mut rows = Vec::new();

    // --- size and startup
    let size = std::fs::metadata(&bin).unwrap().len();
    rows.push(Row {
        what: "binary size (static, stripped)",
        ours: format!("{:.2} MiB", size as f64 / (1 << 20) as f64),
        reference: String::new(),
        ratio: String::new(),
        target: "<= 3 MiB",
    });
    let spawn_wait = |cmd: &mut Command| {
        let ok = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let version = median(time_runs(300, || {
        spawn_wait(Command::new(&bin).arg("--version"))
    }));
    let serve = median(time_runs(300, || {
        spawn_wait(Command::new(&bin).arg("serve"))
    }));
    let truth = median(time_runs(300, || {
        spawn_wait(&mut Command::new("/bin/true"))
    }));
    rows.push(Row {
        what: "startup: --version (median of 300)",
        ours: ms(version),
        reference: format!("{} /bin/true", ms(truth)),
        ratio: format!("{:.2}x", version.as_secs_f64() / truth.as_secs_f64()),
        target: "<= 5 ms",
    });
    rows.push(Row {
        what: "startup: serve, hello, EOF, exit",
        ours: ms(serve),
        reference: format!("{} /bin/true", ms(truth)),
        ratio: format!("{:.2}x", serve.as_secs_f64() / truth.as_secs_f64()),
        target: "<= 5 ms",
    });

    // --- through sshd
    let serve_cmd = format!(
        "{} serve --allowed-tree {}",
        bin.display(),
        dest.path().display()
    );
    let sshd = Sshd::start(&[
        ("proxy", serve_cmd.as_str()),
        ("echo", "/bin/cat"),
        ("sink", "/bin/sh -c 'cat > /dev/null; echo done'"),
        ("source", &format!("/usr/bin/head -c {BULK} /dev/zero")),
        ("true", "/bin/true"),
    ]);

    // new session
    let connect = median(time_runs(15, || {
        let p = Proxy::start(sshd.ssh("proxy", CIPHER));
        drop(p);
    }));
    let connect_ref = median(time_runs(15, || {
        let ok = sshd
            .ssh("true", CIPHER)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }));
    rows.push(Row {
        what: "new session: ssh connect to hello",
        ours: ms(connect),
        reference: format!("{} ssh running true", ms(connect_ref)),
        ratio: format!("{:.2}x", connect.as_secs_f64() / connect_ref.as_secs_f64()),
        target: "",
    });

    let mut p = Proxy::start(sshd.ssh("proxy", CIPHER));
    for _ in 0..50 {
        p.call(Ping {}).unwrap();
    }
    let pings = time_runs(1000, || {
        p.call(Ping {}).unwrap();
    });
    let mut echo = sshd
        .ssh("echo", CIPHER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut ein, mut eout) = (echo.stdin.take().unwrap(), echo.stdout.take().unwrap());
    let mut byte = [0u8; 1];
    let echo_rt = time_runs(1000, || {
        ein.write_all(b"x").unwrap();
        ein.flush().unwrap();
        eout.read_exact(&mut byte).unwrap();
    });
    drop(ein);
    let _ = echo.wait();
    let (pm, em) = (median(pings.clone()), median(echo_rt));
    rows.push(Row {
        what: "ping on an open session (median of 1000)",
        ours: format!("{} (p99 {})", ms(pm), ms(p99(pings))),
        reference: format!("{} 1-byte echo", ms(em)),
        ratio: format!("{:.2}x", pm.as_secs_f64() / em.as_secs_f64()),
        target: "<= 1 ms",
    });

    let execs = time_runs(100, || {
        let r = p
            .call(Exec {
                argv: vec!["true".into()],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.exit_code, Some(0));
    });
    let local = median(time_runs(100, || spawn_wait(&mut Command::new("true"))));
    let em = median(execs.clone());
    rows.push(Row {
        what: "exec true on an open session (median of 100)",
        ours: format!("{} (p99 {})", ms(em), ms(p99(execs))),
        reference: format!("{} local fork+exec", ms(local)),
        ratio: format!("{:.2}x", em.as_secs_f64() / local.as_secs_f64()),
        target: "<= 20 ms",
    });

    // bulk
    let data = pseudo_random(BULK, 5);
    let path = dest.path().join("bulk.bin").display().to_string();
    let args = put_args(&path, &data);
    let t = Instant::now();
    p.put_file(args.clone(), &data).unwrap();
    let put = t.elapsed();
    let mut sink = sshd
        .ssh("sink", CIPHER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    {
        let mut sin = sink.stdin.take().unwrap();
        for chunk in data.chunks(256 * 1024) {
            sin.write_all(chunk).unwrap();
        }
    }
    let mut done = String::new();
    sink.stdout
        .take()
        .unwrap()
        .read_to_string(&mut done)
        .unwrap();
    let sink_t = t.elapsed();
    let _ = sink.wait();
    rows.push(Row {
        what: "put_file 100 MiB (sha256, fsync, rename)",
        ours: format!("{:.0} MiB/s", mibs(BULK, put)),
        reference: format!("{:.0} MiB/s cat > /dev/null", mibs(BULK, sink_t)),
        ratio: format!("{:.2}x", mibs(BULK, put) / mibs(BULK, sink_t)),
        target: ">= 100 MiB/s",
    });

    let t = Instant::now();
    let id = p.send(GetFile {
        path: path.clone(),
        max_size: None,
    });
    let reply = p.wait(id);
    let get = t.elapsed();
    assert_eq!(reply.file.len(), BULK);
    let mut source = sshd
        .ssh("source", CIPHER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let n = std::io::copy(&mut source.stdout.take().unwrap(), &mut std::io::sink()).unwrap();
    let source_t = t.elapsed();
    let _ = source.wait();
    assert_eq!(n, BULK as u64);
    rows.push(Row {
        what: "get_file 100 MiB (sha256)",
        ours: format!("{:.0} MiB/s", mibs(BULK, get)),
        reference: format!("{:.0} MiB/s head -c", mibs(BULK, source_t)),
        ratio: format!("{:.2}x", mibs(BULK, get) / mibs(BULK, source_t)),
        target: "",
    });
    drop(p);

    // the proxy alone, over pipes (no ssh): its own ceiling
    let mut local = Command::new(&bin);
    local.arg("serve");
    let mut p = Proxy::start(local);
    let t = Instant::now();
    p.put_file(args.clone(), &data).unwrap();
    let put_local = t.elapsed();
    let t = Instant::now();
    let id = p.send(GetFile {
        path: path.clone(),
        max_size: None,
    });
    assert_eq!(p.wait(id).file.len(), BULK);
    let get_local = t.elapsed();
    rows.push(Row {
        what: "put_file / get_file 100 MiB over pipes, no ssh",
        ours: format!(
            "{:.0} / {:.0} MiB/s",
            mibs(BULK, put_local),
            mibs(BULK, get_local)
        ),
        reference: String::new(),
        ratio: String::new(),
        target: "",
    });
    drop(p);

    // chacha20 for comparison
    let mut p = Proxy::start(sshd.ssh("proxy", "chacha20-poly1305@openssh.com"));
    let t = Instant::now();
    p.put_file(args, &data).unwrap();
    let put_chacha = t.elapsed();
    rows.push(Row {
        what: "put_file 100 MiB, chacha20-poly1305",
        ours: format!("{:.0} MiB/s", mibs(BULK, put_chacha)),
        reference: String::new(),
        ratio: String::new(),
        target: "",
    });
    drop(p);
    let _ = std::fs::remove_file(Path::new(&path));

    println!(
        "\ndaas-guest-proxy benchmarks ({} cores, cipher {CIPHER} unless said)\n",
        num_cpus()
    );
    println!("| figure | daas-guest-proxy | reference | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.ours, r.reference, r.ratio, r.target
        );
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
