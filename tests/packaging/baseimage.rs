//! The reference baseimage (image/baseimage/build, issue 5), built by the
//! script in the test run and used for real:
//!
//! - `baseimage_docker_image_works`: the Docker image; a container of it on
//!   a network of its own, the guest-proxy answers `hello`, `info` and an
//!   `exec` over real `ssh` (the forced command of the appliance's key),
//!   and its Xvnc lets us in by VNC authentication with the password read
//!   from the guest (RFB handshake up to ServerInit).
//! - `baseimage_qcow2_boots_under_qemu`: the qcow2; `qemu-img check`, then
//!   booted under QEMU (TCG) with the SSH and VNC ports forwarded to
//!   loopback: the guest-proxy answers over `ssh` once sshd made its host
//!   keys (sealed image), systemd reaches `running`, the desktop is up.
//!
//! Both need root and Debian's mirror once (the root file systems are
//! cached in DAAS_TEST_CACHE, the images by the hash of their inputs). The
//! appliance's key here is a test key kept in the cache, so that the
//! images stay cached between runs.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use daas_guest_proxy_wire::message::{Exec, ExecResult, Info, InfoResult, Ready, ReadyResult};
use daas_guest_proxy_wire::{decode_result, ClientCodec, Incoming, Op, Stream};

use super::{apt_install, cache_dir, free_port, is_root, log, repo, run, skip, tail, Vm};

/// The test's "appliance key": made once per cache directory.
fn test_key() -> Result<PathBuf> {
    let dir = cache_dir();
    fs::create_dir_all(&dir)?;
    let key = dir.join("baseimage-test-key");
    run(Command::new("flock")
        .arg(dir.join("baseimage-test-key.lock"))
        .args([
            "sh",
            "-c",
            "[ -s \"$1\" ] || ssh-keygen -q -t ed25519 -N '' -C daas-baseimage-test -f \"$1\"",
            "sh",
        ])
        .arg(&key))?;
    Ok(key)
}

/// Runs image/baseimage/build with `args`; returns its `KIND VALUE` line.
fn build(kind: &str, key: &Path, extra: &[&str]) -> Result<String> {
    let t = Instant::now();
    let out = run(Command::new(repo().join("image/baseimage/build"))
        .arg(format!("--{kind}"))
        .arg("--authorized-key-file")
        .arg(key.with_extension("pub"))
        .args(extra)
        .env("DAAS_IMAGE_CACHE", cache_dir())
        .stderr(Stdio::inherit()))
    .context("image/baseimage/build failed")?;
    let value = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{kind} ")))
        .with_context(|| format!("image/baseimage/build printed no `{kind} ...` line: {out:?}"))?
        .trim()
        .to_owned();
    log(&format!(
        "baseimage {kind} built in {:.0?}: {value}",
        t.elapsed()
    ));
    Ok(value)
}

/// A guest-proxy session over the system `ssh` client (the forced command
/// runs the proxy whatever we ask for).
struct ProxySession {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Vec<u8>>,
    codec: ClientCodec,
    stderr: PathBuf,
}

impl ProxySession {
    fn open(key: &Path, host: &str, port: u16, stderr: PathBuf) -> Result<Self> {
        let mut child = Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-p",
                &port.to_string(),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                &format!("root@{host}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .context("cannot run ssh")?;
        let stdin = child.stdin.take().context("ssh stdin")?;
        let mut stdout = child.stdout.take().context("ssh stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            stdin,
            rx,
            codec: ClientCodec::new(),
            stderr,
        };
        match s.next(Duration::from_secs(30))? {
            Incoming::Hello(h) => {
                ensure!(h.program == "daas-guest-proxy", "hello from {h:?}");
            }
            other => bail!("the proxy's first frame is not a hello: {other:?}"),
        }
        Ok(s)
    }

    fn next(&mut self, within: Duration) -> Result<Incoming> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.codec.next_incoming()? {
                return Ok(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.codec.feed(&b),
                Err(_) => bail!(
                    "no answer from the guest-proxy over ssh within {within:?}; ssh said: {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default().trim()
                ),
            }
        }
    }

    /// One request: its result and its stdout.
    fn call<O: Op>(&mut self, op: O) -> Result<(O::Output, Vec<u8>)> {
        let (id, bytes) = self.codec.request(op)?;
        self.stdin.write_all(&bytes)?;
        self.stdin.flush()?;
        let mut out = Vec::new();
        loop {
            match self.next(Duration::from_secs(60))? {
                Incoming::Data {
                    id: i,
                    stream: Stream::Stdout,
                    data,
                } if i == id => out.extend_from_slice(&data),
                Incoming::Result { id: i, result } if i == id => {
                    return Ok((decode_result::<O>(result)?, out));
                }
                Incoming::Error { id: i, error } if i == Some(id) || i.is_none() => {
                    bail!("{} failed: {:?}: {}", O::NAME, error.code, error.message)
                }
                _ => {}
            }
        }
    }

    fn exec(&mut self, argv: &[&str]) -> Result<String> {
        let (r, out): (ExecResult, _) = self.call(Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: Some(30_000),
            ..Default::default()
        })?;
        let out = String::from_utf8_lossy(&out).into_owned();
        ensure!(
            r.exit_code == Some(0),
            "exec {argv:?}: {r:?}, output {out:?}"
        );
        Ok(out)
    }
}

impl Drop for ProxySession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a session, retrying while the guest boots (sshd not up yet, or
/// making its host keys); `gone` says why waiting longer is pointless.
fn open_session(
    key: &Path,
    host: &str,
    port: u16,
    within: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<ProxySession> {
    let t = Instant::now();
    let dir = tempfile::tempdir()?;
    loop {
        if let Some(why) = gone() {
            bail!("no guest-proxy over ssh to {host}:{port}: {why}");
        }
        match ProxySession::open(key, host, port, dir.path().join("ssh.err")) {
            Ok(s) => {
                log(&format!(
                    "guest-proxy hello over ssh to {host}:{port} after {:.0?}",
                    t.elapsed()
                ));
                return Ok(s);
            }
            Err(e) if t.elapsed() < within => {
                let _ = e;
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e.context(format!("no guest-proxy over ssh within {within:?}"))),
        }
    }
}

/// The RFB handshake up to the desktop: the server's version and ours, its
/// security types (only VNC authentication, 2, is accepted here), the
/// DES challenge answered with `password`, ClientInit and ServerInit.
/// Returns the desktop's size.
fn rfb_login(addr: SocketAddr, password: &str) -> Result<(u16, u16)> {
    use des::cipher::generic_array::GenericArray;
    use des::cipher::{BlockEncrypt, KeyInit};

    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut version = [0u8; 12];
    s.read_exact(&mut version)
        .context("no RFB version from the VNC server")?;
    ensure!(
        version.starts_with(b"RFB 003.") && version[11] == b'\n',
        "not an RFB server: {:?}",
        String::from_utf8_lossy(&version)
    );
    s.write_all(b"RFB 003.008\n")?;
    let mut n = [0u8; 1];
    s.read_exact(&mut n)?;
    ensure!(n[0] > 0, "the VNC server refused the connection");
    let mut types = vec![0u8; usize::from(n[0])];
    s.read_exact(&mut types)?;
    ensure!(
        types == [2],
        "the desktop's VNC server offers security types {types:?}, expected only VNC authentication (2)"
    );
    s.write_all(&[2])?;
    let mut challenge = [0u8; 16];
    s.read_exact(&mut challenge)?;
    // RFB's DES: the password (8 bytes, zero-padded) with each key byte's
    // bits reversed.
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.as_bytes()) {
        *k = b.reverse_bits();
    }
    let des = des::Des::new(GenericArray::from_slice(&key));
    for half in challenge.chunks_exact_mut(8) {
        des.encrypt_block(GenericArray::from_mut_slice(half));
    }
    s.write_all(&challenge)?;
    let mut result = [0u8; 4];
    s.read_exact(&mut result)?;
    ensure!(
        result == [0; 4],
        "VNC authentication with the guest's password failed (SecurityResult {result:?})"
    );
    s.write_all(&[1])?; // ClientInit: shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init).context("no ServerInit")?;
    Ok((
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    ))
}

/// Checks of a running guest that both image kinds share.
fn check_guest(s: &mut ProxySession, vnc: SocketAddr) -> Result<()> {
    let (info, _): (InfoResult, _) = s.call(Info {})?;
    log(&format!(
        "info: {} {:?}, kernel {:?}, displays {:?}",
        info.os.pretty_name.as_deref().unwrap_or("?"),
        info.os.version_id,
        info.kernel,
        info.displays
    ));
    ensure!(
        info.os.id.as_deref() == Some("debian") && info.os.version_id.as_deref() == Some("12"),
        "not Debian 12: {:?}",
        info.os
    );
    let marker = s.exec(&["cat", "/etc/daas-baseimage"])?;
    ensure!(
        marker.contains("guest_proxy=daas-guest-proxy"),
        "/etc/daas-baseimage: {marker:?}"
    );
    let whoami = s.exec(&["id", "-un"])?;
    ensure!(whoami.trim() == "root", "the proxy runs as {whoami:?}");
    // Sealed: this instance made its own host keys and machine identity.
    let keys = s.exec(&["sh", "-c", "ls /etc/ssh/ssh_host_*_key.pub"])?;
    ensure!(
        keys.contains("ssh_host_ed25519_key.pub"),
        "host keys: {keys}"
    );

    // The desktop: Xvnc on :0 (the proxy sees the display) and port 5900.
    let t = Instant::now();
    loop {
        let (info, _): (InfoResult, _) = s.call(Info {})?;
        if info
            .displays
            .iter()
            .any(|d| d.display == ":0" && d.user.as_deref() == Some("daas"))
        {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "no display :0 of user daas after 60 s: {:?}; processes: {}",
            info.displays,
            s.exec(&["ps", "-ef"]).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let pw = s.exec(&["cat", "/var/lib/daas-desktop/vnc-password"])?;
    ensure!(pw.trim().len() == 8, "the VNC password file: {pw:?}");
    let (w, h) = rfb_login(vnc, pw.trim())?;
    ensure!(
        (w, h) == (1280, 800),
        "the desktop is {w}x{h}, not 1280x800"
    );
    log(&format!(
        "VNC at {vnc}: logged in with the guest's password, desktop {w}x{h}"
    ));
    Ok(())
}

fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

/// The container and network of the test, removed when dropped.
struct DockerThings {
    container: String,
    network: String,
}

impl Drop for DockerThings {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.container]);
        let _ = docker(&["network", "rm", &self.network]);
    }
}

#[test]
fn baseimage_docker_image_works() -> Result<()> {
    if !is_root() {
        skip("baseimage_docker_image_works needs root (debootstrap, chroot, Docker); run tests/run as root");
        return Ok(());
    }
    apt_install(&[
        ("debootstrap", "debootstrap"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ])?;
    ensure!(
        Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "the Docker engine does not answer at /var/run/docker.sock: this test needs docker.io \
         and a running dockerd, which tests/run installs and starts"
    );
    let key = test_key()?;
    let tag = build("docker", &key, &[])?;
    let labels = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &tag,
    ])?;
    ensure!(
        labels.contains("\"org.daas.sealed\":\"true\"")
            && labels.contains("\"org.daas.reference\":\"baseimage\""),
        "labels of {tag}: {labels}"
    );

    let name = format!("daas-baseimage-test-{}", std::process::id());
    let things = DockerThings {
        container: name.clone(),
        network: name.clone(),
    };
    // An internal network of its own: reachable from the host (which has
    // an address on every bridge), with no route out.
    docker(&[
        "network",
        "create",
        "--internal",
        "--label",
        "org.daas.test=baseimage",
        &things.network,
    ])?;
    let t = Instant::now();
    docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        &things.container,
        "--network",
        &things.network,
        "--label",
        "org.daas.test=baseimage",
        &tag,
    ])?;
    let ip = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &things.container,
    ])?;
    let ip = ip.trim().to_owned();
    ensure!(!ip.is_empty(), "the container has no address");
    let result = (|| -> Result<()> {
        let container = things.container.clone();
        let mut s = open_session(&key, &ip, 22, Duration::from_secs(60), || {
            let running = docker(&["inspect", "--format", "{{.State.Running}}", &container]);
            match running {
                Ok(r) if r.trim() == "true" => None,
                other => Some(format!("the container is not running: {other:?}")),
            }
        })?;
        check_guest(&mut s, SocketAddr::new(ip.parse()?, 5900))?;
        let (ready, _): (ReadyResult, _) = s.call(Ready {})?;
        ensure!(ready.ready, "ready: {ready:?}");
        Ok(())
    })();
    if result.is_err() {
        let logs = run(Command::new("docker")
            .args(["logs", "--tail", "50", &things.container])
            .stderr(Stdio::piped()))
        .unwrap_or_default();
        eprintln!("--- container log ---\n{logs}");
    }
    result?;
    log(&format!(
        "container of the reference baseimage checked in {:.0?}",
        t.elapsed()
    ));
    Ok(())
}

#[test]
fn baseimage_qcow2_boots_under_qemu() -> Result<()> {
    if !is_root() {
        skip("baseimage_qcow2_boots_under_qemu needs root (debootstrap, chroot, image files owned by root); run tests/run as root");
        return Ok(());
    }
    apt_install(&[
        ("debootstrap", "debootstrap"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mcopy", "mtools"),
        ("mkfs.vfat", "dosfstools"),
        ("syslinux", "syslinux"),
        ("/usr/lib/SYSLINUX/gptmbr.bin", "syslinux-common"),
        ("sfdisk", "fdisk"),
        ("ssh", "openssh-client"),
    ])?;
    let key = test_key()?;
    let work = tempfile::Builder::new()
        .prefix("daas-baseimage-test.")
        .tempdir_in("/var/tmp")?;
    let w = work.path();
    let out = w.join("out");
    let qcow2 = PathBuf::from(build(
        "qcow2",
        &key,
        &["--out", out.to_str().unwrap_or_default()],
    )?);
    ensure!(
        qcow2.exists(),
        "the build printed {qcow2:?}, which is not there"
    );
    run(Command::new("qemu-img").arg("check").arg(&qcow2))?;
    let info: serde_json::Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2))?)?;
    ensure!(info["format"] == "qcow2", "qemu-img info: {info}");
    log(&format!(
        "qcow2: {} MiB, a {} MiB disk",
        fs::metadata(&qcow2)?.len() >> 20,
        info["virtual-size"].as_u64().unwrap_or_default() >> 20
    ));

    // A disk on top of the image, as a clone of a template (the image
    // stays as built).
    let disk = w.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&qcow2)
        .arg(&disk))?;
    let ssh_port = free_port()?;
    let vnc_port = free_port()?;
    let serial = w.join("serial.log");
    let t = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{vnc_port}-:5900"
        ))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let mut vm = Vm { child, serial };
    let result = (|| -> Result<()> {
        let mut s = open_session(
            &key,
            "127.0.0.1",
            ssh_port,
            Duration::from_secs(300),
            || vm.exited().map(|st| format!("QEMU exited ({st})")),
        )?;
        log(&format!(
            "booted under TCG: guest-proxy after {:.0?}",
            t.elapsed()
        ));
        // systemd finished booting: nothing failed.
        let t_ready = Instant::now();
        loop {
            let (ready, _): (ReadyResult, _) = s.call(Ready {})?;
            if ready.ready {
                ensure!(
                    ready.state == "running",
                    "systemd is {}: {}",
                    ready.state,
                    s.exec(&["systemctl", "--failed", "--no-pager"])
                        .unwrap_or_default()
                );
                break;
            }
            ensure!(
                t_ready.elapsed() < Duration::from_secs(120),
                "systemd is still {} after 120 s",
                ready.state
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        check_guest(&mut s, SocketAddr::from(([127, 0, 0, 1], vnc_port)))?;
        let ip = s.exec(&["ip", "-4", "-o", "addr", "show", "scope", "global"])?;
        ensure!(ip.contains("inet "), "no DHCP address: {ip}");
        let mid = s.exec(&["cat", "/etc/machine-id"])?;
        ensure!(mid.trim().len() == 32, "machine-id {mid:?}");
        Ok(())
    })();
    if result.is_err() {
        eprintln!("--- console ---\n{}", tail(&vm.serial(), 120));
    }
    result?;
    log(&format!(
        "the qcow2 booted and answered in {:.0?}",
        t.elapsed()
    ));
    Ok(())
}
