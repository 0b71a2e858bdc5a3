//! Packaging and the appliance image (issue 9), with the real tools:
//!
//! - `packaged_config_matches_configs`: the config the package installs is
//!   `configs/appliance.toml` but for the listen address.
//! - `lintian_is_clean`: lintian on the three packages (overrides explained
//!   in packaging/README.md).
//! - `debs_install_remove_purge_in_a_chroot`: tests/packaging/chroot-test.sh
//!   in a fresh debootstrap chroot: dependencies, files, user, conffiles,
//!   `systemd-analyze verify`, `check-config`, `--version`, remove keeps the
//!   state, purge leaves nothing; and the image's first-boot script.
//! - `appliance_image_boots_under_qemu`: builds the image, boots it under
//!   QEMU (TCG) with a seed disk, `/readyz` answers 200, the admin logs in,
//!   a demo desktop starts (bubblewrap and Xvnc under the hardened unit),
//!   survives `systemctl restart daas-appliance`, the agent runs dnsmasq,
//!   no unit failed, the root file system grew to the disk.
//!
//! - `baseimage::*`: the reference baseimage (image/baseimage/build) as a
//!   Docker image and as a qcow2 booted under QEMU; see baseimage.rs.
//!
//! They need root; without it, or without a tool that cannot be installed,
//! they print a loud SKIP and pass. Debian's mirror is needed once: the
//! debootstrap results are cached in /var/cache/daas-test (DAAS_TEST_CACHE),
//! and so is the image, by the hash of its inputs.

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

mod baseimage;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("DAAS_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/daas-test"))
}

fn skip(why: &str) {
    eprintln!();
    eprintln!("************************************************************");
    eprintln!("SKIP (packaging test): {why}");
    eprintln!("************************************************************");
    eprintln!();
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn log(msg: &str) {
    eprintln!("[packaging] {msg}");
}

/// Runs a command; on failure the error carries its output.
fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Runs a command with its output passed through (shown when the test fails).
fn run_shown(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    ensure!(st.success(), "{shown} failed ({st})");
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs missing Debian packages of the build host (the tests need root anyway).
fn apt_install(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .filter(|(probe, _)| {
            if probe.starts_with('/') {
                !Path::new(probe).exists()
            } else {
                !have(probe)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!("installing {}", missing.join(" ")));
    let install = |update: bool| -> Result<String> {
        if update {
            run(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update", "-qq"]))?;
        }
        run(Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install(false).or_else(|_| install(true))?;
    Ok(())
}

/// cargo-deb, installed from crates.io when missing (once per machine).
fn ensure_cargo_deb() -> Result<()> {
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if ok(Command::new("cargo").args(["deb", "--version"])) {
        return Ok(());
    }
    fs::create_dir_all(cache_dir())?;
    let lock = cache_dir().join("cargo-deb-install.lock");
    run_shown(Command::new("flock").arg(&lock).args([
        "sh",
        "-c",
        "cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet",
    ]))
    .context("cargo install cargo-deb")
}

/// Builds the three packages into a directory of this test's own: one build
/// at a time, then a copy, so that parallel tests never read a .deb that
/// another is rewriting. The profile is DAAS_TEST_PKG_PROFILE: `dev` by
/// default (the binaries the test run built already, stripped: seconds, not
/// a release build of the workspace), `release` for the packages as shipped.
fn pkg_profile() -> String {
    std::env::var("DAAS_TEST_PKG_PROFILE").unwrap_or_else(|_| "dev".to_owned())
}

fn build_debs(out: &Path) -> Result<()> {
    ensure_cargo_deb()?;
    apt_install(&[("dpkg-shlibdeps", "dpkg-dev")])?;
    fs::create_dir_all(cache_dir())?;
    let shared = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("debian-test");
    let t = Instant::now();
    run_shown(
        Command::new("flock")
            .arg(cache_dir().join("build-debs.lock"))
            .arg("sh")
            .arg("-c")
            .arg(r#"rm -rf "$2" && "$1" --profile "$4" "$2" >&2 && mkdir -p "$3" && cp "$2"/*.deb "$3"/"#)
            .arg("sh")
            .arg(repo().join("packaging/build-debs.sh"))
            .arg(&shared)
            .arg(out)
            .arg(pkg_profile()),
    )?;
    log(&format!(
        "packages ({}) built in {:.0?}",
        pkg_profile(),
        t.elapsed()
    ));
    Ok(())
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    v.sort();
    ensure!(
        v.len() == 3,
        "expected 3 packages in {}, found {v:?}",
        dir.display()
    );
    Ok(v)
}

/// The meaningful lines of a TOML file: no comments, no blank lines.
fn toml_lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn packaged_config_matches_configs() {
    let shipped = fs::read_to_string(repo().join("configs/appliance.toml")).unwrap();
    let packaged =
        fs::read_to_string(repo().join("packaging/deb/daas-appliance/appliance.toml")).unwrap();
    let mut want = toml_lines(&shipped);
    let listen = want
        .iter()
        .position(|l| l.starts_with("listen ="))
        .expect("configs/appliance.toml has [server] listen");
    want[listen] = r#"listen = "0.0.0.0:8443""#.to_owned();
    assert_eq!(
        toml_lines(&packaged),
        want,
        "packaging/deb/daas-appliance/appliance.toml must be configs/appliance.toml with \
         listen = \"0.0.0.0:8443\": run packaging/deb/daas-appliance/update-config.sh"
    );
}

/// `Key=value` settings of a unit file (the last one of each key wins, as
/// in systemd, except that an empty value resets a list).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn unit_value<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The hardening that would break the local backend's bubblewrap sandboxes
/// is not there, and what the docs promise is.
#[test]
fn units_keep_what_bubblewrap_needs() {
    let app = fs::read_to_string(repo().join("packaging/systemd/daas-appliance.service")).unwrap();
    let s = unit_settings(&app);
    for (k, v) in [
        ("Type", "notify"),
        ("WatchdogSec", "30s"),
        ("Restart", "on-failure"),
        ("User", "daas"),
        ("StateDirectory", "daas"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallArchitectures", "native"),
        ("LockPersonality", "yes"),
        ("KillMode", "process"),
    ] {
        assert_eq!(unit_value(&s, k), Some(v), "daas-appliance.service: {k}");
    }
    // bwrap mounts a new /proc in a user namespace: nothing may cover /proc.
    // ProtectHostname's seccomp filter refuses sethostname() in the session's
    // own uts namespace too (bwrap --hostname).
    for k in [
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "PrivateUsers",
        "ProtectHostname",
    ] {
        assert!(
            !matches!(unit_value(&s, k), Some("yes" | "true" | "1")),
            "daas-appliance.service: {k}=yes breaks bubblewrap (packaging/README.md)"
        );
    }
    assert_ne!(
        unit_value(&s, "ProcSubset"),
        Some("pid"),
        "ProcSubset=pid breaks bubblewrap"
    );
    let ns = unit_value(&s, "RestrictNamespaces").unwrap_or("no");
    for needed in ["user", "mnt", "pid", "ipc", "uts", "net"] {
        assert!(
            ns == "no" || ns.split_whitespace().any(|n| n == needed),
            "RestrictNamespaces={ns} refuses {needed}, which bubblewrap needs"
        );
    }
    let af = unit_value(&s, "RestrictAddressFamilies").unwrap_or_default();
    assert!(
        af.contains("AF_NETLINK"),
        "bwrap sets up the session's loopback over netlink: {af}"
    );
    let filter = unit_value(&s, "SystemCallFilter").unwrap_or_default();
    assert!(
        !filter.contains("@mount") && !filter.contains("@system-service"),
        "bwrap needs mount and sethostname: {filter}"
    );

    let agent = fs::read_to_string(repo().join("packaging/systemd/daas-agent.service")).unwrap();
    let s = unit_settings(&agent);
    assert_eq!(unit_value(&s, "Type"), Some("notify"));
    assert_eq!(unit_value(&s, "StateDirectory"), Some("daas-agent"));
    let caps: Vec<&str> = unit_value(&s, "CapabilityBoundingSet")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let mut sorted = caps.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "CAP_CHOWN",
            "CAP_KILL",
            "CAP_NET_ADMIN",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID"
        ],
        "daas-agent.service: the capabilities (each explained in packaging/README.md)"
    );
    assert_ne!(
        unit_value(&s, "ProtectProc"),
        Some("invisible"),
        "the agent reads /proc/<pid>/comm of dnsmasq"
    );
}

#[test]
fn lintian_is_clean() -> Result<()> {
    if !is_root() {
        skip("lintian_is_clean needs root (it installs lintian and builds the packages); run tests/run as root");
        return Ok(());
    }
    apt_install(&[("lintian", "lintian")])?;
    let dir = tempfile::tempdir()?;
    build_debs(dir.path())?;
    let debs = debs_in(dir.path())?;
    let t = Instant::now();
    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--no-tag-display-limit",
        ])
        .args(&debs)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    log(&format!(
        "lintian ({:.0?}):\n{text}{}",
        t.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    ));
    ensure!(
        out.status.success(),
        "lintian reports errors or warnings (fix them, or override them with a reason: packaging/README.md)"
    );
    Ok(())
}

#[test]
fn debs_install_remove_purge_in_a_chroot() -> Result<()> {
    if !is_root() {
        skip("debs_install_remove_purge_in_a_chroot needs root (debootstrap, chroot); run tests/run as root");
        return Ok(());
    }
    apt_install(&[("debootstrap", "debootstrap"), ("zstd", "zstd")])?;
    let dir = tempfile::tempdir()?;
    build_debs(dir.path())?;
    let t = Instant::now();
    run_shown(
        Command::new("bash")
            .arg(repo().join("tests/packaging/chroot-test.sh"))
            .arg(dir.path())
            .arg(repo().join("image/appliance/rootfs/usr/lib/daas-image/firstboot"))
            .env("DAAS_TEST_CACHE", cache_dir()),
    )?;
    log(&format!("chroot test passed in {:.0?}", t.elapsed()));
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A QEMU process, killed (by its own pid) when dropped.
struct Vm {
    child: Child,
    serial: PathBuf,
}

impl Vm {
    fn serial(&self) -> String {
        fs::read_to_string(&self.serial)
            .map(|s| s.replace('\r', ""))
            .unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Ssh {
    port: u16,
    key: PathBuf,
}

impl Ssh {
    fn cmd(&self, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-i",
            self.key.to_str().unwrap_or_default(),
            "-p",
            &self.port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "root@127.0.0.1",
            script,
        ]);
        c
    }

    fn run(&self, script: &str) -> Result<String> {
        run(&mut self.cmd(script))
    }
}

async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    vm: &mut Vm,
    limit: Duration,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if let Some(st) = vm.exited() {
            bail!("QEMU exited ({st}); console:\n{}", tail(&vm.serial(), 80));
        }
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == reqwest::StatusCode::OK {
                return Ok(t.elapsed());
            }
        }
        if t.elapsed() > limit {
            bail!(
                "/readyz did not answer 200 within {limit:?}; console:\n{}",
                tail(&vm.serial(), 120)
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn instance_state(http: &reqwest::Client, base: &str, id: &str) -> Result<String> {
    let v: serde_json::Value = http
        .get(format!("{base}/api/v1/instances/{id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appliance_image_boots_under_qemu() -> Result<()> {
    if !is_root() {
        skip("appliance_image_boots_under_qemu needs root (debootstrap, chroot, image files owned by root); run tests/run as root");
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
        ("zstd", "zstd"),
        ("ssh", "openssh-client"),
        ("curl", "curl"),
    ])?;
    let work = tempfile::Builder::new()
        .prefix("daas-image-test.")
        .tempdir_in("/var/tmp")?;
    let w = work.path();
    let debs = w.join("debs");
    build_debs(&debs)?;

    // The image, as an installer builds it (cached by the hash of its
    // inputs); only the qcow2, to spare the disk a 1.5 GiB raw copy.
    let t = Instant::now();
    let out = run(Command::new(repo().join("image/build-appliance-image.sh"))
        .args(["--format", "qcow2", "--debs"])
        .arg(&debs)
        .arg("--out")
        .arg(w.join("out"))
        .env("DAAS_IMAGE_CACHE", cache_dir())
        .stderr(Stdio::inherit()))?;
    let qcow2 = PathBuf::from(out.trim().lines().last().unwrap_or_default());
    ensure!(
        qcow2.exists() && qcow2.extension().is_some_and(|e| e == "qcow2"),
        "the image build printed {out:?}, not the qcow2's path"
    );
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2))?;
    let info: serde_json::Value = serde_json::from_str(&info)?;
    let virtual_mib = info["virtual-size"].as_u64().unwrap_or_default() >> 20;
    let qcow2_mib = fs::metadata(&qcow2)?.len() >> 20;
    log(&format!(
        "image built in {:.0?}: qcow2 {qcow2_mib} MiB (a {virtual_mib} MiB disk)",
        t.elapsed()
    ));

    // A 6 GiB disk on top of the qcow2 (so the image stays as built, and
    // the root file system has room to grow), and a seed disk.
    let disk = w.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&qcow2)
        .arg(&disk)
        .arg("6G"))?;
    let key = w.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "daas-test", "-f"])
        .arg(&key))?;
    let pubkey = fs::read_to_string(key.with_extension("pub"))?;
    let admin_pw = "image-test-admin-passphrase";
    let seed = w.join("daas-seed.toml");
    fs::write(
        &seed,
        format!(
            "# test seed\nhostname = \"daas-test\"\nadmin_password = \"{admin_pw}\"\n\
             root_authorized_keys = [\"{}\"]\ndemo = true\n",
            pubkey.trim()
        ),
    )?;
    let seed_img = w.join("seed.img");
    run(Command::new("mkfs.vfat")
        .args(["-n", "DAAS-SEED", "-C"])
        .arg(&seed_img)
        .arg("2048"))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&seed_img)
        .arg(&seed)
        .arg("::/daas-seed.toml")
        .env("MTOOLS_SKIP_CHECK", "1"))?;

    let https = free_port()?;
    let ssh_port = free_port()?;
    let serial = w.join("serial.log");
    let t_boot = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
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
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed_img.display()
        ))
        .args(["-netdev"])
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{https}-:8443,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
        ))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let mut vm = Vm { child, serial };
    let base = format!("https://127.0.0.1:{https}");
    // Only this test's VM behind a loopback port: its self-signed
    // certificate is accepted (the fingerprint is checked below).
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()?;

    let ready = wait_ready(&http, &base, &mut vm, Duration::from_secs(600)).await?;
    log(&format!("booted under TCG: /readyz 200 after {ready:.0?}"));
    let ssh = Ssh {
        port: ssh_port,
        key,
    };
    let result = check_running_image(&http, &base, &mut vm, &ssh, admin_pw).await;
    if result.is_err() {
        let journal = ssh
            .run("journalctl -b --no-pager -n 200 -u daas-appliance -u daas-agent -u daas-firstboot; systemctl --failed --no-pager")
            .unwrap_or_else(|e| format!("(no journal over SSH: {e})"));
        eprintln!(
            "--- console ---\n{}\n--- journal ---\n{journal}",
            tail(&vm.serial(), 150)
        );
    }
    result?;
    log(&format!(
        "image test done in {:.0?} after boot",
        t_boot.elapsed()
    ));
    Ok(())
}

async fn check_running_image(
    http: &reqwest::Client,
    base: &str,
    vm: &mut Vm,
    ssh: &Ssh,
    admin_pw: &str,
) -> Result<()> {
    // The first boot printed the portal and its login on the console.
    let console = vm.serial();
    ensure!(
        console.contains("Portal login:  user admin, password image-test-admin-passphrase"),
        "the first boot did not print the admin login; console:\n{}",
        tail(&console, 80)
    );

    // Log in as the seed's admin.
    let r = http
        .post(format!("{base}/api/v1/session"))
        .json(&serde_json::json!({"username": "admin", "password": admin_pw}))
        .send()
        .await?;
    ensure!(
        r.status().is_success(),
        "login: {} {}",
        r.status(),
        r.text().await?
    );
    let me: serde_json::Value = http
        .get(format!("{base}/api/v1/me"))
        .send()
        .await?
        .json()
        .await?;
    log(&format!("logged in: {me}"));

    // The demo catalogue (seed: demo = true) is seeded on the first start.
    let t = Instant::now();
    let app_id = loop {
        let apps: serde_json::Value = http
            .get(format!("{base}/api/v1/apps"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(id) = apps["items"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a["id"].as_str())
        {
            break id.to_owned();
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "no demo app after 300 s: {apps}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    };

    // A desktop session: bubblewrap and Xvnc under the hardened unit.
    let r = http
        .post(format!("{base}/api/v1/apps/{app_id}/open"))
        .header("origin", base)
        .send()
        .await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    ensure!(
        status.as_u16() == 202 || status.is_success(),
        "open: {status} {body}"
    );
    let inst = body["instance"]["id"]
        .as_str()
        .context("no instance id")?
        .to_owned();
    let t = Instant::now();
    loop {
        let s = instance_state(http, base, &inst).await?;
        match s.as_str() {
            "running" => break,
            "failed" | "lost" | "stopped" => {
                let job = body["job"]["id"].as_str().unwrap_or_default();
                let logs = http
                    .get(format!("{base}/api/v1/jobs/{job}/logs"))
                    .send()
                    .await?
                    .text()
                    .await?;
                bail!("the demo desktop is {s}; job log: {logs}");
            }
            _ => {}
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "the demo desktop is still {s} after 300 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    log(&format!("demo desktop running after {:.0?}", t.elapsed()));

    // On the machine (sshd makes its host keys on the first start: slow
    // under TCG): every unit fine, the agent's dnsmasq up, / grown.
    let t = Instant::now();
    while let Err(e) = ssh.run("true") {
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "no SSH after 300 s: {e}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let failed = ssh.run("systemctl --failed --no-legend --plain --no-pager")?;
    ensure!(failed.trim().is_empty(), "failed units: {failed}");
    let active = ssh.run("systemctl is-active daas-appliance daas-agent daas-firstboot")?;
    ensure!(active.lines().all(|l| l == "active"), "services: {active}");
    let dnsmasq = ssh.run("pgrep -a -x dnsmasq || true")?;
    ensure!(
        dnsmasq.contains("--interface=daas0"),
        "the agent's managed dnsmasq is not running: {dnsmasq:?}; {}",
        ssh.run("journalctl -b --no-pager -u daas-agent | tail -n 30")
            .unwrap_or_default()
    );
    let converged = ssh.run(
        "journalctl -b --no-pager -u daas-appliance | grep -c 'agent leases converged' || true",
    )?;
    ensure!(
        converged.trim() != "0",
        "the appliance did not reach the agent's socket: {}",
        ssh.run("journalctl -b --no-pager -u daas-appliance | grep -i agent | tail -n 5")
            .unwrap_or_default()
    );
    let root_size = ssh.run("findmnt -bno SIZE /")?;
    let root_size: u64 = root_size.trim().parse().context("findmnt SIZE")?;
    ensure!(
        root_size > 5 << 30,
        "/ did not grow to the 6 GiB disk: {root_size} bytes"
    );
    let sec = ssh.run("systemd-analyze security daas-appliance.service daas-agent.service --no-pager | tail -n 2; echo; systemd-analyze security --no-pager | grep -E 'daas'")?;
    log(&format!("systemd-analyze security:\n{sec}"));
    let boot = ssh.run("systemd-analyze time; systemd-analyze blame --no-pager | head -n 8")?;
    log(&format!("boot (guest clock):\n{boot}"));

    // The TLS certificate on the console banner is the one served.
    let fp = ssh.run("openssl x509 -noout -fingerprint -sha256 -in /var/lib/daas/tls/cert.pem | sed 's/^[^=]*=//'")?;
    let issue = ssh.run("cat /run/issue.d/50-daas.issue")?;
    ensure!(
        issue.contains(fp.trim()),
        "the banner lacks the fingerprint {fp}: {issue}"
    );

    // A restart of the appliance (an upgrade, the watchdog) keeps the desktop.
    let before = ssh.run("systemctl show -p MainPID --value daas-appliance")?;
    ssh.run("systemctl restart daas-appliance")?;
    let after = ssh.run("systemctl show -p MainPID --value daas-appliance")?;
    ensure!(
        before != after,
        "the appliance did not restart ({before} -> {after})"
    );
    wait_ready(http, base, vm, Duration::from_secs(180)).await?;
    let t = Instant::now();
    loop {
        // A restart ends the login session only if sessions are in memory;
        // log in again if needed.
        let s = match instance_state(http, base, &inst).await {
            Ok(s) => s,
            Err(_) => {
                http.post(format!("{base}/api/v1/session"))
                    .json(&serde_json::json!({"username": "admin", "password": admin_pw}))
                    .send()
                    .await?
                    .error_for_status()?;
                instance_state(http, base, &inst).await?
            }
        };
        if s == "running" {
            // Still running after the reconciler looked at it?
            if t.elapsed() > Duration::from_secs(10) {
                break;
            }
        } else {
            bail!("after a restart of the appliance the desktop is {s}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let xvnc = ssh.run("pgrep -c -x Xvnc || true")?;
    ensure!(xvnc.trim() != "0", "no Xvnc after the restart");
    log("the desktop survived a restart of the appliance (KillMode=process, adopted)");

    // Stopping it ends its sandbox.
    let r = http
        .post(format!("{base}/api/v1/instances/{inst}/stop"))
        .header("origin", base)
        .send()
        .await?;
    ensure!(r.status().is_success(), "stop: {}", r.status());
    let t = Instant::now();
    loop {
        if instance_state(http, base, &inst).await? == "stopped" {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "the desktop did not stop"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Last, so that everything above is checked whatever this finds: as a
    // browser logs in to the portal, over HTTP/2 (the appliance's TLS offers
    // h2, and browsers take it), with the page's Origin.
    let body = serde_json::json!({"username": "admin", "password": admin_pw}).to_string();
    let browser = run(Command::new("curl").args([
        "-sk",
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        "-H",
        &format!("origin: {base}"),
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        &format!("{base}/api/v1/session"),
    ]))?;
    ensure!(
        browser.trim() == "2 200",
        "a browser's login (HTTP/2, Origin {base}) answers {browser:?}, not \"2 200\": under \
         HTTP/2 a request has no Host header, only its authority, so the Origin check must \
         take the authority (check_origin in appliance/src/web/mod.rs)"
    );
    let _ = std::io::stderr().flush();
    Ok(())
}
