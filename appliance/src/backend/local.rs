//! The local backend, the embedded default: each instance is a TigerVNC
//! `Xvnc` session with the app, sandboxed by bubblewrap, in its own home.
//!
//! | phase | artefact |
//! | --- | --- |
//! | Baseimage | `objects/<id>/home`: a skeleton home, plus the desktop profile (window manager) |
//! | Environment | a copy of the Baseimage's home for one user |
//! | Deployment | a copy of the Environment's home, with the app configured |
//! | App | nothing of its own: it names the Deployment and a command |
//! | instance | `instances/<id>/`: a fresh copy of the Deployment's home (App), or the object's own home (ConfigInteractive), and `run/vnc.sock` |
//!
//! Invariants:
//! - Everything lives under `<state_dir>/local`; directories are named by
//!   object and instance ids, so `inventory` needs no other record.
//! - New artefacts are built in a temporary directory and renamed into
//!   place: a crash never leaves a half-copied home under its final name.
//! - A session runs as the appliance's own user, or as `run_as` when the
//!   appliance runs as root; never as root. It sees `/usr` and `/etc` read
//!   only, its home, a private `/tmp`, and no network unless configured.
//! - The display is a unix socket in a directory only the session user and
//!   the appliance can enter; the gateway connects there with no password.
//! - `stop` kills the session's whole process tree (its pid namespace) and
//!   removes the instance directory; it works from the instance id alone.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    Backend, BackendError, BackendEvent, Capabilities, EventSender, Inventory, Orphan,
    StartRequest, Started,
};
use crate::config::{self, Geometry, Network};
use crate::jobs::JobLog;
use crate::model::*;

const HOME_IN_SANDBOX: &str = "/home/daas";
const RUN_IN_SANDBOX: &str = "/run/daas";
/// The display number inside each sandbox (private /tmp and, with no
/// network, private abstract sockets); with the host network each session
/// gets its own.
const PRIVATE_DISPLAY: u32 = 1;

/// The local backend.
pub struct LocalBackend {
    cfg: config::LocalBackend,
    tcp: bool,
    root: PathBuf,
    run_as: Option<(Uid, Gid)>,
    events: EventSender,
    displays: Mutex<BTreeSet<u32>>,
    watched: Arc<Mutex<HashMap<String, u32>>>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct InstanceRef {
    pid: u32,
    display: u32,
    dir: PathBuf,
}

impl LocalBackend {
    /// A backend keeping its state under `state_dir/local`. With `tcp`, each
    /// display listens on a loopback TCP port with a VNC password (for guacd,
    /// which cannot reach unix sockets) and sessions share the host's
    /// network; otherwise on a unix socket only the appliance can enter.
    pub fn new(
        cfg: config::LocalBackend,
        state_dir: &Path,
        events: EventSender,
        tcp: bool,
    ) -> Result<LocalBackend, BackendError> {
        let run_as = if Uid::effective().is_root() {
            let u = User::from_name(&cfg.run_as)
                .map_err(|e| {
                    BackendError::failed_with(format!("cannot look up user {:?}", cfg.run_as), e)
                })?
                .ok_or_else(|| {
                    BackendError::failed(format!(
                        "[backends.local] run_as: user {:?} does not exist",
                        cfg.run_as
                    ))
                })?;
            if u.uid.is_root() {
                return Err(BackendError::failed(
                    "[backends.local] run_as must not be root: sessions never run as root",
                ));
            }
            Some((u.uid, u.gid))
        } else {
            None
        };
        let root = state_dir.join("local");
        for d in [root.clone(), root.join("objects"), root.join("instances")] {
            std::fs::create_dir_all(&d).map_err(|e| {
                BackendError::failed_with(format!("cannot create {}", d.display()), e)
            })?;
            // Traversable, not listable, by the session user.
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).map_err(|e| {
                BackendError::failed_with(format!("cannot chmod {}", d.display()), e)
            })?;
        }
        Ok(LocalBackend {
            cfg,
            tcp,
            root,
            run_as,
            events,
            displays: Mutex::new(BTreeSet::new()),
            watched: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn object_dir(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(safe_id(id))
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.root.join("instances").join(safe_id(id))
    }

    fn chown_tree(&self, path: &Path) -> Result<(), BackendError> {
        let Some((uid, gid)) = self.run_as else {
            return Ok(());
        };
        walk(path, &mut |p| {
            std::os::unix::fs::lchown(p, Some(uid.as_raw()), Some(gid.as_raw()))
        })
        .map_err(|e| BackendError::failed_with(format!("cannot chown {}", path.display()), e))
    }

    /// The common bubblewrap arguments of a sandbox with `home` and `run`.
    fn sandbox(&self, home: &Path, run: &Path, hostname: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.cfg.bwrap);
        c.args([
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]);
        if self.private_network() {
            c.arg("--unshare-net");
        }
        c.args(["--new-session", "--ro-bind", "/usr", "/usr"]);
        for top in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
            let p = Path::new("/").join(top);
            match std::fs::read_link(&p) {
                Ok(target) => {
                    c.arg("--symlink").arg(target).arg(&p);
                }
                Err(_) if p.is_dir() => {
                    c.arg("--ro-bind").arg(&p).arg(&p);
                }
                Err(_) => {}
            }
        }
        c.args([
            "--ro-bind",
            "/etc",
            "/etc",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/var",
            "--dir",
            "/var/tmp",
            "--tmpfs",
            "/run",
        ]);
        c.arg("--bind").arg(home).arg(HOME_IN_SANDBOX);
        c.arg("--bind").arg(run).arg(RUN_IN_SANDBOX);
        c.args([
            "--clearenv",
            "--setenv",
            "HOME",
            HOME_IN_SANDBOX,
            "--setenv",
            "USER",
            "daas",
        ]);
        c.args([
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "LANG",
            "C.UTF-8",
        ]);
        c.args(["--hostname", hostname, "--chdir", HOME_IN_SANDBOX]);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        c.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
        c.stdin(Stdio::null()).kill_on_drop(false);
        c
    }

    /// Sessions get their own network namespace unless configured for the
    /// host's, or their display must be reachable over loopback TCP.
    fn private_network(&self) -> bool {
        self.cfg.network == Network::None && !self.tcp
    }

    fn alloc_display(&self) -> u32 {
        if self.private_network() {
            return PRIVATE_DISPLAY;
        }
        // Sessions on the host's network share the abstract X socket
        // namespace with every X server of the host (and of other
        // appliances): take a number no one holds.
        let mut d = self.displays.lock().unwrap_or_else(|p| p.into_inner());
        let start = 100 + std::process::id() % 800;
        let n = (0..900)
            .map(|i| 100 + (start - 100 + i) % 900)
            .find(|n| !d.contains(n) && display_free(*n))
            .unwrap_or(start);
        d.insert(n);
        n
    }

    fn free_display(&self, n: u32) {
        self.displays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&n);
    }

    /// Kills a session's process tree and removes its directory.
    async fn kill_session(&self, instance_id: &str) -> Result<(), BackendError> {
        let dir = self.instance_dir(instance_id);
        if let Some(pid) = session_pid(&dir) {
            terminate_tree(pid).await;
        }
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(instance_id);
        if dir.exists() {
            remove_tree(&dir).await?;
        }
        Ok(())
    }

    fn watch(&self, instance_id: String, mut child: tokio::process::Child) {
        let events = self.events.clone();
        let watched = self.watched.clone();
        if let Some(pid) = child.id() {
            watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(instance_id.clone(), pid);
        }
        tokio::spawn(async move {
            let status = child.wait().await;
            let still_ours = watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&instance_id)
                .is_some();
            if !still_ours {
                return; // stopped on purpose
            }
            let (reason, failed) = match status {
                Ok(s) if s.success() => ("the app exited".to_owned(), false),
                Ok(s) => (format!("the session ended ({s})"), true),
                Err(e) => (format!("the session was lost: {e}"), true),
            };
            let _ = events.send(BackendEvent::InstanceExited {
                instance_id,
                reason,
                failed,
            });
        });
    }

    /// Re-attaches watchers to sessions that outlived an appliance restart.
    fn adopt(&self, instance_id: &str, pid: u32) {
        {
            let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            if w.contains_key(instance_id) {
                return;
            }
            w.insert(instance_id.to_owned(), pid);
        }
        let events = self.events.clone();
        let watched = self.watched.clone();
        let id = instance_id.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&id)
                {
                    return;
                }
                if !pid_alive(pid) {
                    watched
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    let _ = events.send(BackendEvent::InstanceExited {
                        instance_id: id,
                        reason: "the session ended".into(),
                        failed: false,
                    });
                    return;
                }
            }
        });
    }

    fn geometry(&self, object: &Object) -> Geometry {
        object
            .spec
            .geometry
            .as_deref()
            .and_then(|g| g.parse().ok())
            .unwrap_or(self.cfg.geometry)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            linked_clone: false,
            live_snapshot: false,
            vm: false,
            container: true,
            resize: true,
            clipboard: true,
        }
    }

    async fn check(&self) -> Result<(), BackendError> {
        for (key, bin) in [("xvnc", &self.cfg.xvnc), ("bwrap", &self.cfg.bwrap)] {
            if find_program(bin).is_none() {
                return Err(BackendError::failed(format!(
                    "[backends.local] {key}: {bin:?} is not installed (Debian: apt-get install {})",
                    if key == "xvnc" {
                        "tigervnc-standalone-server"
                    } else {
                        "bubblewrap"
                    }
                )));
            }
        }
        // A real sandbox, as the session user, proves namespaces and
        // permissions work before anyone waits on a desktop.
        let probe = self.root.join("instances").join(".probe");
        let _ = std::fs::remove_dir_all(&probe);
        let home = probe.join("home");
        let run = probe.join("run");
        for d in [&probe, &home, &run] {
            std::fs::create_dir_all(d).map_err(|e| {
                BackendError::failed_with(format!("cannot create {}", d.display()), e)
            })?;
        }
        self.chown_tree(&probe)?;
        let out = self
            .sandbox(&home, &run, "daas-probe")
            .args(["--", "/bin/sh", "-c", "echo ok"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| BackendError::failed_with(format!("cannot run {}", self.cfg.bwrap), e))?;
        let _ = std::fs::remove_dir_all(&probe);
        if !out.status.success() {
            let who = self
                .run_as
                .map(|_| format!(" as user {:?}", self.cfg.run_as))
                .unwrap_or_default();
            return Err(BackendError::failed(format!(
                "the session sandbox does not work{who} ({}): {}; the state directory and its parents must be traversable by that user, and unprivileged user namespaces must be enabled",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    async fn create(
        &self,
        object: &Object,
        parent: Option<&Object>,
        log: &JobLog,
    ) -> Result<serde_json::Value, BackendError> {
        if object.phase == Phase::App {
            let cmd = object
                .spec
                .command
                .first()
                .ok_or_else(|| BackendError::failed("the app has no command"))?;
            let path = find_program(cmd).ok_or_else(|| {
                BackendError::failed(format!(
                    "the app's program {cmd:?} is not installed on this node"
                ))
            })?;
            log.info(&format!("app command found at {}", path.display()));
            return Ok(serde_json::json!({ "deployment": object.parent_id }));
        }
        let dest = self.object_dir(&object.id);
        if dest.join("home").is_dir() {
            log.info("the home already exists (resumed)");
            return Ok(serde_json::json!({ "dir": dest }));
        }
        let source = match (object.phase, parent) {
            (Phase::Baseimage, _) => self.cfg.skeleton.clone(),
            (_, Some(p)) => self.object_dir(&p.id).join("home"),
            (_, None) => return Err(BackendError::failed("the object has no parent")),
        };
        log.info(&format!("copying {} into a new home", source.display()));
        let tmp = self
            .root
            .join("objects")
            .join(format!(".tmp-{}", safe_id(&object.id)));
        let _ = remove_tree(&tmp).await;
        std::fs::create_dir_all(&tmp)
            .map_err(|e| BackendError::failed_with("cannot create the object directory", e))?;
        let src = source.clone();
        let home = tmp.join("home");
        let copied = tokio::task::spawn_blocking(move || copy_tree(&src, &home))
            .await
            .map_err(|e| BackendError::failed_with("copy task failed", e))?;
        let n = copied.map_err(|e| {
            BackendError::failed_with(format!("cannot copy {}", source.display()), e)
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| BackendError::failed_with("cannot chmod", e))?;
        self.chown_tree(&tmp.join("home"))?;
        std::fs::rename(&tmp, &dest)
            .map_err(|e| BackendError::failed_with("cannot move the new home into place", e))?;
        log.info(&format!("home ready ({n} entries)"));
        Ok(serde_json::json!({ "dir": dest }))
    }

    async fn run_script(
        &self,
        object: &Object,
        script: &Script,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), BackendError> {
        let dir = self.object_dir(&object.id);
        let home = dir.join("home");
        if !home.is_dir() {
            return Err(BackendError::NotFound(format!("the home of {}", object.id)));
        }
        let run = dir.join("run");
        std::fs::create_dir_all(&run)
            .map_err(|e| BackendError::failed_with("cannot create run dir", e))?;
        self.chown_tree(&run)?;
        let mut cmd = self.sandbox(&home, &run, "daas-config");
        cmd.args(["--", "/bin/sh", "-c", &script.run])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| BackendError::failed_with("cannot start the script sandbox", e))?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let pump = |r: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
                    level: &'static str| {
            let log = log.clone();
            async move {
                let Some(r) = r else { return };
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    log.line(level, &l);
                }
            }
        };
        let pumps = futures_util::future::join(
            pump(out.map(|o| Box::new(o) as _), "info"),
            pump(err.map(|e| Box::new(e) as _), "warn"),
        );
        let timeout = Duration::from_secs(u64::from(script.timeout_secs));
        let waited = tokio::select! {
            r = async { let (_, s) = tokio::join!(pumps, child.wait()); s } => Some(r),
            _ = tokio::time::sleep(timeout) => None,
            _ = cancel.cancelled() => {
                let _ = child.kill().await;
                return Err(BackendError::Cancelled);
            }
        };
        match waited {
            None => {
                let _ = child.kill().await;
                Err(BackendError::failed(format!(
                    "script {:?} timed out after {} s",
                    script.name, script.timeout_secs
                )))
            }
            Some(Ok(s)) if s.success() => Ok(()),
            Some(Ok(s)) => Err(BackendError::failed(format!(
                "script {:?} failed ({s})",
                script.name
            ))),
            Some(Err(e)) => Err(BackendError::failed_with("cannot wait for the script", e)),
        }
    }

    async fn finalize(
        &self,
        object: &Object,
        log: &JobLog,
    ) -> Result<serde_json::Value, BackendError> {
        if object.phase == Phase::App {
            return Ok(object.backend_ref.clone());
        }
        let dir = self.object_dir(&object.id);
        if !dir.join("home").is_dir() {
            return Err(BackendError::NotFound(format!("the home of {}", object.id)));
        }
        let _ = std::fs::remove_dir_all(dir.join("run"));
        std::fs::write(dir.join("sealed"), now().to_string())
            .map_err(|e| BackendError::failed_with("cannot write the seal", e))?;
        log.info("sealed: the home is now the read-only source of what is made from it");
        Ok(serde_json::json!({ "dir": dir, "sealed": true }))
    }

    async fn delete(&self, object: &Object, log: &JobLog) -> Result<(), BackendError> {
        let dir = self.object_dir(&object.id);
        if dir.exists() {
            remove_tree(&dir).await?;
            log.info(&format!("removed {}", dir.display()));
        }
        Ok(())
    }

    async fn start(&self, req: StartRequest<'_>, log: &JobLog) -> Result<Started, BackendError> {
        let inst = req.instance;
        // A start cut off by a crash may have left a session: start afresh.
        self.kill_session(&inst.id).await?;
        let dir = self.instance_dir(&inst.id);
        let run = dir.join("run");
        std::fs::create_dir_all(&run)
            .map_err(|e| BackendError::failed_with("cannot create the instance directory", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| BackendError::failed_with("cannot chmod", e))?;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| BackendError::failed_with("cannot chmod", e))?;

        let (home, command, wm) = match (req.object.phase, inst.purpose) {
            (Phase::App, _) => {
                let dep = req
                    .parent
                    .ok_or_else(|| BackendError::failed("the app has no deployment"))?;
                let src = self.object_dir(&dep.id).join("home");
                let home = dir.join("home");
                let s = src.clone();
                let h = home.clone();
                tokio::task::spawn_blocking(move || copy_tree(&s, &h))
                    .await
                    .map_err(|e| BackendError::failed_with("copy task failed", e))?
                    .map_err(|e| {
                        BackendError::failed_with(format!("cannot copy {}", src.display()), e)
                    })?;
                (home, req.object.spec.command.clone(), None)
            }
            (_, Purpose::Configure) => {
                let home = self.object_dir(&req.object.id).join("home");
                if !home.is_dir() {
                    return Err(BackendError::NotFound(format!(
                        "the home of {}",
                        req.object.id
                    )));
                }
                (
                    home,
                    vec!["xterm".to_owned()],
                    req.object.spec.window_manager.clone(),
                )
            }
            (p, Purpose::Run) => {
                return Err(BackendError::failed(format!(
                    "a {p} is not run, only configured"
                )));
            }
        };
        if command.is_empty() {
            return Err(BackendError::failed("nothing to run: the command is empty"));
        }
        self.chown_tree(&dir)?;

        let display = self.alloc_display();
        let geometry = self.geometry(req.object);
        let listen = if self.tcp {
            let port =
                free_port().map_err(|e| BackendError::unavailable("no free loopback port", e))?;
            let password = random_password();
            let pw_file = run.join("passwd");
            std::fs::write(&pw_file, daas_rfb::vnc_password_file(&password))
                .and_then(|_| {
                    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(|e| BackendError::failed_with("cannot write the VNC password file", e))?;
            self.chown_tree(&pw_file)?;
            Listen::Tcp { port, password }
        } else {
            Listen::Unix
        };
        let script = session_script(
            &self.cfg.xvnc,
            display,
            geometry,
            &req.object.name,
            wm.as_deref(),
            &command,
            &listen,
        );
        std::fs::write(run.join("session.sh"), script)
            .map_err(|e| BackendError::failed_with("cannot write the session script", e))?;
        let log_file = std::fs::File::create(dir.join("session.log"))
            .map_err(|e| BackendError::failed_with("cannot create the session log", e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| BackendError::failed_with("cannot create the session log", e))?;
        let hostname = format!("daas-{}", &safe_id(&inst.id)[..8.min(inst.id.len())]);
        let mut cmd = self.sandbox(&home, &run, &hostname);
        cmd.args(["--", "/bin/sh", &format!("{RUN_IN_SANDBOX}/session.sh")])
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            BackendError::failed_with(format!("cannot start {}", self.cfg.bwrap), e)
        })?;
        let pid = child.id().unwrap_or(0);
        std::fs::write(dir.join("pid"), pid.to_string())
            .map_err(|e| BackendError::failed_with("cannot record the session pid", e))?;
        log.info(&format!(
            "session started (pid {pid}, {geometry}); waiting for its display"
        ));

        let sock = run.join("vnc.sock");
        let target = match &listen {
            Listen::Unix => Target::Unix {
                path: sock.to_string_lossy().into_owned(),
            },
            Listen::Tcp { port, .. } => Target::Tcp {
                host: "127.0.0.1".into(),
                port: *port,
            },
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.start_timeout_secs);
        let mut child = child;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.free_display(display);
                let tail = tail_file(&dir.join("session.log"), 2048);
                let _ = remove_tree(&dir).await;
                return Err(BackendError::failed(format!(
                    "the session exited during start ({status}): {tail}"
                )));
            }
            if vnc_ready(&target).await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                self.free_display(display);
                let tail = tail_file(&dir.join("session.log"), 2048);
                let _ = child.start_kill();
                self.kill_session(&inst.id).await?;
                return Err(BackendError::Unavailable {
                    message: format!(
                        "the display did not come up within {} s: {tail}",
                        self.cfg.start_timeout_secs
                    ),
                    source: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        log.info("display ready");
        self.watch(inst.id.clone(), child);
        Ok(Started {
            backend_ref: serde_json::to_value(InstanceRef {
                pid,
                display,
                dir: dir.clone(),
            })
            .unwrap_or_default(),
            connection: Connection {
                protocol: Protocol::Vnc,
                target,
                password: match listen {
                    Listen::Tcp { password, .. } => Some(password),
                    Listen::Unix => None,
                },
                username: None,
            },
        })
    }

    async fn stop(&self, instance: &Instance, log: &JobLog) -> Result<(), BackendError> {
        if let Ok(r) = serde_json::from_value::<InstanceRef>(instance.backend_ref.clone()) {
            if !self.private_network() {
                self.free_display(r.display);
            }
        }
        self.kill_session(&instance.id).await?;
        log.info("session stopped and its files removed");
        Ok(())
    }

    async fn inventory(&self) -> Result<Inventory, BackendError> {
        let mut inv = Inventory::default();
        for (sub, set) in [
            ("objects", &mut inv.objects),
            ("instances", &mut inv.instances),
        ] {
            let rd = match std::fs::read_dir(self.root.join(sub)) {
                Ok(rd) => rd,
                Err(e) => {
                    return Err(BackendError::unavailable(
                        "cannot list the local backend",
                        e,
                    ))
                }
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if sub == "instances" {
                    match session_pid(&e.path()) {
                        Some(pid) => {
                            self.adopt(&name, pid);
                            set.insert(name);
                        }
                        None => {
                            // A dead session's leftovers: count it so the
                            // reconciler can clean it up.
                            set.insert(format!("{name}#dead"));
                        }
                    }
                } else {
                    set.insert(name);
                }
            }
        }
        Ok(inv)
    }

    async fn remove_orphan(&self, orphan: &Orphan) -> Result<(), BackendError> {
        let id = orphan.id.trim_end_matches("#dead");
        match orphan.what {
            "instance" => self.kill_session(id).await,
            "object" => {
                let d = self.object_dir(id);
                if d.exists() {
                    remove_tree(&d).await?;
                }
                Ok(())
            }
            w => Err(BackendError::failed(format!("unknown orphan kind {w}"))),
        }
    }
}

/// Ids become directory names: keep only what a UUID can hold.
fn safe_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// Where a session's VNC server listens.
enum Listen {
    /// `run/vnc.sock`, no password (only the appliance can enter the directory).
    Unix,
    /// 127.0.0.1:port with a VNC password (for guacd).
    Tcp {
        /// The port.
        port: u16,
        /// The password (8 characters: VNC authentication uses 8).
        password: String,
    },
}

fn session_script(
    xvnc: &str,
    display: u32,
    g: Geometry,
    name: &str,
    wm: Option<&[String]>,
    command: &[String],
    listen: &Listen,
) -> String {
    let listen_args = match listen {
        Listen::Unix => format!(
            "-SecurityTypes None -rfbunixpath {RUN_IN_SANDBOX}/vnc.sock -rfbunixmode 0600 -rfbport -1"
        ),
        Listen::Tcp { port, .. } => format!(
            "-SecurityTypes VncAuth -PasswordFile {RUN_IN_SANDBOX}/passwd -rfbport {port} -localhost"
        ),
    };
    let wm_line = match wm {
        Some(w) if !w.is_empty() => format!("{} &\n", shell_words(w)),
        _ => String::new(),
    };
    format!(
        r#"# Generated by daas-appliance: one desktop session.
{xvnc} :{display} -geometry {w}x{h} -depth 24 {listen_args} -nolisten tcp \
  -desktop {name} -AlwaysShared -AcceptSetDesktopSize &
xpid=$!
i=0
while [ ! -S /tmp/.X11-unix/X{display} ]; do
  i=$((i+1))
  if [ $i -gt 1000 ] || ! kill -0 $xpid 2>/dev/null; then echo "Xvnc did not start" >&2; exit 97; fi
  sleep 0.01
done
export DISPLAY=:{display}
if [ -f "$HOME/.Xresources" ] && command -v xrdb >/dev/null; then xrdb -merge "$HOME/.Xresources"; fi
{wm_line}{cmd}
status=$?
kill $xpid 2>/dev/null
exit $status
"#,
        xvnc = shell_quote(xvnc),
        w = g.width,
        h = g.height,
        name = shell_quote(name),
        cmd = shell_words(command),
    )
}

/// Quotes a word for /bin/sh.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn shell_words(w: &[String]) -> String {
    w.iter()
        .map(|s| shell_quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether a VNC server answers on the socket with its version banner.
async fn vnc_ready(target: &Target) -> bool {
    use tokio::io::AsyncReadExt;
    let mut banner = [0u8; 12];
    let wait = Duration::from_millis(200);
    let read = Duration::from_millis(500);
    let got = match target {
        Target::Unix { path } => {
            match tokio::time::timeout(wait, tokio::net::UnixStream::connect(path)).await {
                Ok(Ok(mut s)) => tokio::time::timeout(read, s.read_exact(&mut banner)).await,
                _ => return false,
            }
        }
        Target::Tcp { host, port } => {
            match tokio::time::timeout(wait, tokio::net::TcpStream::connect((host.as_str(), *port)))
                .await
            {
                Ok(Ok(mut s)) => tokio::time::timeout(read, s.read_exact(&mut banner)).await,
                _ => return false,
            }
        }
    };
    matches!(got, Ok(Ok(_)) if banner.starts_with(b"RFB "))
}

/// Whether no X server holds display `n` on this host's network namespace
/// (its abstract socket `@/tmp/.X11-unix/X<n>`).
fn display_free(n: u32) -> bool {
    use std::os::linux::net::SocketAddrExt;
    let Ok(addr) =
        std::os::unix::net::SocketAddr::from_abstract_name(format!("/tmp/.X11-unix/X{n}"))
    else {
        return false;
    };
    std::os::unix::net::UnixListener::bind_addr(&addr).is_ok()
        && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut r = rand::rngs::OsRng;
    (0..8)
        .map(|_| char::from(CHARS[r.gen_range(0..CHARS.len())]))
        .collect()
}

fn session_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Only a bwrap whose arguments name this directory is ours: pids are reused.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let dir_s = dir.to_string_lossy();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_bwrap = args.first().is_some_and(|a| a.ends_with(b"bwrap"));
    let names_dir = args
        .iter()
        .any(|a| String::from_utf8_lossy(a).starts_with(dir_s.as_ref()));
    (is_bwrap && names_dir && pid_alive(pid)).then_some(pid)
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(p), None).is_err() {
        return false;
    }
    // A zombie is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn descendants(pid: u32, out: &mut Vec<u32>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for c in s.split_whitespace().filter_map(|c| c.parse().ok()) {
            if !out.contains(&c) {
                out.push(c);
                descendants(c, out);
            }
        }
    }
}

/// SIGTERM to the session's tree, then SIGKILL to what is left.
async fn terminate_tree(pid: u32) {
    let mut tree = vec![pid];
    descendants(pid, &mut tree);
    debug!(pid, procs = tree.len(), "stopping a session");
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        for p in &tree {
            if let Ok(p) = i32::try_from(*p) {
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
        for _ in 0..50 {
            if !tree.iter().any(|p| pid_alive(*p)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    warn!(pid, "session processes outlived SIGKILL");
}

async fn remove_tree(p: &Path) -> Result<(), BackendError> {
    let p2 = p.to_owned();
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&p2) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
    .map_err(|e| BackendError::failed_with("remove task failed", e))?
    .map_err(|e| BackendError::failed_with(format!("cannot remove {}", p.display()), e))
}

fn walk(p: &Path, f: &mut dyn FnMut(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    f(p)?;
    let m = std::fs::symlink_metadata(p)?;
    if m.is_dir() {
        for e in std::fs::read_dir(p)? {
            walk(&e?.path(), f)?;
        }
    }
    Ok(())
}

/// Copies a tree without following symlinks, keeping modes (not owners;
/// those are set for the session user afterwards). Returns the entry count.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<u64> {
    let m = std::fs::symlink_metadata(src)?;
    let ft = m.file_type();
    let mut n = 1;
    if ft.is_dir() {
        std::fs::create_dir(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            n += copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        std::fs::copy(src, dst)?;
    }
    // Sockets, fifos and devices are not part of a home worth copying.
    Ok(n)
}

fn tail_file(p: &Path, max: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let start = buf.len().saturating_sub(max);
        s = String::from_utf8_lossy(&buf[start..]).into_owned();
    }
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let keep = lines.len().saturating_sub(6);
    lines[keep..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_safe() {
        assert_eq!(shell_quote("xterm"), "xterm");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn ids_cannot_escape_the_tree() {
        assert_eq!(safe_id("../../etc"), "etc");
        assert_eq!(safe_id("5f0c-1a"), "5f0c-1a");
    }

    #[test]
    fn copy_tree_keeps_modes_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), b"x").unwrap();
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let n = copy_tree(&src, &d.path().join("dst")).unwrap();
        assert_eq!(n, 4);
        let m = std::fs::metadata(d.path().join("dst/sub/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(d.path().join("dst/link")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
    }

    #[test]
    fn session_script_quotes_the_command() {
        let s = session_script(
            "Xvnc",
            1,
            Geometry {
                width: 800,
                height: 600,
            },
            "My app",
            None,
            &["xterm".into(), "-e".into(), "echo 'hi'; id".into()],
            &Listen::Unix,
        );
        assert!(s.contains(r"xterm -e 'echo '\''hi'\''; id'"), "{s}");
        assert!(s.contains("-desktop 'My app'"));
    }
}
