//! Real parts the tests start: a namespace sandbox for operations that
//! change the system, an Xvnc display, an OpenSSH sshd.
#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::Proxy;

pub const BIN: &str = env!("CARGO_BIN_EXE_daas-guest-proxy");

/// The proxy binary over pipes, `serve` with extra arguments.
pub fn local(args: &[&str]) -> Proxy {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(args);
    Proxy::start(cmd)
}

pub fn skip(what: &str, why: &str) {
    eprintln!("\n*** SKIPPED {what}: {why} ***\n");
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A private mount and UTS namespace in which `/etc` and `/home` are copies
/// and `/run` is empty, so `set_hostname`, `ensure_user`, keyboard
/// persistence, `ready` and `shutdown` act for real without touching the
/// machine. Tools in `fakebin` come first on `PATH`.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub fakebin: PathBuf,
    pub systemd: bool,
}

impl Sandbox {
    pub fn new(what: &str) -> Option<Self> {
        if !run_ok(Command::new("unshare").args(["--mount", "--uts", "true"])) {
            skip(
                what,
                "cannot create mount/UTS namespaces here (needs root and unshare)",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        assert!(run_ok(
            Command::new("cp").args(["-a", "/etc"]).arg(r.join("etc"))
        ));
        std::fs::create_dir(r.join("home")).unwrap();
        let fakebin = r.join("fakebin");
        std::fs::create_dir(&fakebin).unwrap();
        Some(Self {
            dir,
            fakebin,
            systemd: false,
        })
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    pub fn fake_tool(&self, name: &str, body: &str) {
        write_script(&self.fakebin.join(name), body);
    }

    /// A proxy inside the sandbox.
    pub fn proxy(&self) -> Proxy {
        let script = r#"set -e
mount --bind "$SB/etc" /etc
mount --bind "$SB/home" /home
mount -t tmpfs tmpfs /run
if [ -n "$SB_SYSTEMD" ]; then mkdir -p /run/systemd/system; fi
exec "$BIN" serve
"#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .env("SB", self.dir.path())
        .env("BIN", BIN)
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                self.fakebin.display()
            ),
        );
        if self.systemd {
            cmd.env("SB_SYSTEMD", "1");
        }
        Proxy::start(cmd)
    }
}

/// A TigerVNC Xvnc server on a free display.
pub struct Xvnc {
    child: Child,
    pub display: String,
    _dir: tempfile::TempDir,
}

impl Xvnc {
    pub fn start(what: &str) -> Option<Self> {
        let Some(xvnc) = ["/usr/bin/Xvnc", "/usr/local/bin/Xvnc"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            skip(what, "Xvnc (tigervnc-standalone-server) is not installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let base = 300 + std::process::id() % 400;
        for n in base..base + 50 {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                || Path::new(&format!("/tmp/.X{n}-lock")).exists()
            {
                continue;
            }
            let mut child = Command::new(xvnc)
                .arg(format!(":{n}"))
                .args([
                    "-SecurityTypes",
                    "None",
                    "-rfbport",
                    "-1",
                    "-geometry",
                    "1280x800",
                ])
                .arg("-rfbunixpath")
                .arg(dir.path().join("vnc.sock"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start Xvnc");
            let sock = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if sock.exists() {
                    return Some(Self {
                        child,
                        display: format!(":{n}"),
                        _dir: dir,
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start Xvnc on any display");
    }
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real OpenSSH server on 127.0.0.1 whose only key forces `command`.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Sshd {
    /// `command` is the forced command of the client key.
    pub fn start(what: &str, command: &str) -> Option<Self> {
        if !Path::new("/usr/sbin/sshd").exists() || !Path::new("/usr/bin/ssh").exists() {
            skip(
                what,
                "OpenSSH (openssh-server, openssh-client) is not installed",
            );
            return None;
        }
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        // sshd's StrictModes checks every directory up to `/`, so not /tmp.
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("sshd-")
            .tempdir_in(&base)
            .unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        for name in ["hostkey", "client"] {
            assert!(run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                    .arg(d.join(name))
            ));
        }
        let client_pub = std::fs::read_to_string(d.join("client.pub")).unwrap();
        let keys = d.join("authorized_keys");
        std::fs::write(
            &keys,
            format!("command=\"{command}\",restrict {}", client_pub.trim()) + "\n",
        )
        .unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {hk}\n\
                 AuthorizedKeysFile {keys}\n\
                 PidFile none\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 UsePAM no\n\
                 StrictModes yes\n\
                 Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr\n\
                 LogLevel ERROR\n",
                hk = d.join("hostkey").display(),
                keys = keys.display(),
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(d.join("hostkey.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", host_pub.trim()) + "\n",
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .arg("-p")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            thread::sleep(Duration::from_millis(20));
        }
        Some(Self { child, port, dir })
    }

    /// An ssh client command to the server (the host key pinned).
    pub fn ssh(&self, cipher: &str) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.args(["-F", "/dev/null", "-T", "-i"])
            .arg(d.join("client"))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
            ])
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
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("root@127.0.0.1");
        cmd
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` for up to `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie has exited; only a live process counts.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Temporary files the proxy leaves in `dir` (there should be none).
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(".daas-put."))
                .collect()
        })
        .unwrap_or_default()
}
