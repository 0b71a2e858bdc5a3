//! The Docker backend: desktops as containers of a Docker Engine, reached
//! over its unix socket ([`api`]).
//!
//! | phase | artefact |
//! | --- | --- |
//! | Baseimage | image `daas/<id>:latest`, committed from a container of `spec.source` (a local image) |
//! | Environment | image committed from a container of the Baseimage's image, for one user |
//! | Deployment | image committed from a container of the Environment's image, after its ConfigAuto scripts |
//! | App | nothing of its own: it names the Deployment (its image) and a command |
//! | instance | container `daas-inst-<id>` from the image, on the user's network `daas-user-<user id>`, running Xvnc and the app |
//!
//! Invariants:
//! - Names derive from ids (`daas/<object id>`, `daas-build-<object id>`,
//!   `daas-inst-<instance id>`, `daas-user-<user id>`), so every step can be
//!   run again or undone from the id alone.
//! - Everything made carries the labels `org.daas.appliance` (this
//!   appliance's scope), `org.daas.kind`, `org.daas.object`,
//!   `org.daas.instance` and `org.daas.owner`; `inventory` lists by them
//!   and never touches what lacks them.
//! - ConfigAuto scripts run with `docker exec` in a build container
//!   (`daas-build-<id>`, no network), whose result is committed over the
//!   object's image; Baseimage scripts run as root, the others as `user`.
//! - Containers are never privileged. Desktops run as `user`, with every
//!   capability dropped, `no-new-privileges`, memory, CPU and process
//!   limits, a read-only root (unless the App asks for a writable one) and
//!   a tmpfs `/tmp` holding a fresh copy of the image's home.
//! - The display is Xvnc on port 5900 of the container's address on its
//!   user's internal network, with a random VNC password per instance.
//! - A per-user lock orders network creation, container creation and
//!   network removal, so a network is removed only with no container on it.

use super::safe_id;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hyper::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    Backend, BackendError, BackendEvent, Capabilities, EventSender, Inventory, Orphan,
    StartRequest, Started,
};
use crate::config::{self, Geometry};
use crate::jobs::JobLog;
use crate::model::*;

pub mod api;

use api::{enc, label_filter, Api, ApiError, Stream};

const L_APPLIANCE: &str = "org.daas.appliance";
const L_KIND: &str = "org.daas.kind";
const L_OBJECT: &str = "org.daas.object";
const L_INSTANCE: &str = "org.daas.instance";
const L_OWNER: &str = "org.daas.owner";
const L_SEALED: &str = "org.daas.sealed";
const VNC_PORT: u16 = 5900;
const DISPLAY: u32 = 1;

/// The Docker backend.
pub struct DockerBackend {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: config::DockerBackend,
    api: Api,
    scope: String,
    events: EventSender,
    /// Instances started and not stopped: an exit of theirs is an event.
    watched: Mutex<HashSet<String>>,
    /// Per-user locks over network and container creation and removal.
    user_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct InstanceRef {
    container: String,
    network: String,
    ip: String,
}

fn image_of(object_id: &str) -> String {
    format!("daas/{}:latest", safe_id(object_id))
}

fn build_name(object_id: &str) -> String {
    format!("daas-build-{}", safe_id(object_id))
}

fn container_name(instance_id: &str) -> String {
    format!("daas-inst-{}", safe_id(instance_id))
}

fn network_name(user_id: &str) -> String {
    format!("daas-user-{}", safe_id(user_id))
}

/// Maps an API error onto the backend's: an unreachable engine may come
/// back (retryable); what the engine refused will not.
fn err(what: impl Into<String>) -> impl FnOnce(ApiError) -> BackendError {
    let what = what.into();
    move |e| {
        if e.transient() {
            BackendError::unavailable(what, e)
        } else {
            BackendError::failed_with(what, e)
        }
    }
}

/// Treats 404 as "nothing there".
fn ok_if_missing(r: Result<Value, ApiError>) -> Result<(), ApiError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

impl DockerBackend {
    /// A backend on the engine at `cfg.socket`; its scope is the configured
    /// one or the one kept in `state_dir/docker/scope` (made once).
    pub fn new(
        cfg: config::DockerBackend,
        state_dir: &Path,
        events: EventSender,
    ) -> Result<DockerBackend, BackendError> {
        let scope = match &cfg.scope {
            Some(s) => s.clone(),
            None => {
                let dir = state_dir.join("docker");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    BackendError::failed_with(format!("cannot create {}", dir.display()), e)
                })?;
                let f = dir.join("scope");
                match std::fs::read_to_string(&f) {
                    Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
                    _ => {
                        let s = format!("a-{}", &new_id()[..8]);
                        std::fs::write(&f, &s).map_err(|e| {
                            BackendError::failed_with(format!("cannot write {}", f.display()), e)
                        })?;
                        s
                    }
                }
            }
        };
        let inner = Arc::new(Inner {
            api: Api::new(cfg.socket.clone()),
            cfg,
            scope,
            events,
            watched: Mutex::new(HashSet::new()),
            user_locks: Mutex::new(HashMap::new()),
        });
        tokio::spawn(watch_events(Arc::downgrade(&inner)));
        Ok(DockerBackend { inner })
    }

    /// This appliance's scope label value.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }
}

impl Inner {
    fn labels(&self, kind: &str, object: &str, instance: &str, owner: &str) -> Value {
        json!({
            L_APPLIANCE: self.scope,
            L_KIND: kind,
            L_OBJECT: object,
            L_INSTANCE: instance,
            L_OWNER: owner,
        })
    }

    fn scope_filter(&self) -> String {
        format!("{L_APPLIANCE}={}", self.scope)
    }

    fn user_lock(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.user_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_owned())
            .or_default()
            .clone()
    }

    async fn image_exists(&self, image: &str) -> Result<Option<Value>, BackendError> {
        match self.api.get(&format!("/images/{}/json", enc(image))).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(err(format!("cannot inspect the image {image}"))(e)),
        }
    }

    async fn remove_container(&self, name: &str) -> Result<(), BackendError> {
        ok_if_missing(
            self.api
                .delete(&format!("/containers/{}?force=true&v=true", enc(name)))
                .await,
        )
        .or_else(|e| {
            // A removal already under way is as good as done.
            if e.status() == Some(409) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(err(format!("cannot remove the container {name}")))
    }

    /// Creates a container; returns its id.
    async fn create_container(&self, name: &str, body: &Value) -> Result<String, ApiError> {
        let v = self
            .api
            .post(
                &format!("/containers/create?name={}", enc(name)),
                Some(body),
            )
            .await?;
        Ok(v["Id"].as_str().unwrap_or(name).to_owned())
    }

    /// A build container of an object's image: `sleep infinity` under an
    /// init, no network, for `docker exec` and `docker commit`.
    async fn start_build_container(
        &self,
        object: &Object,
        image: &str,
    ) -> Result<String, BackendError> {
        let name = build_name(&object.id);
        self.remove_container(&name).await?;
        let body = json!({
            "Image": image,
            "Entrypoint": ["sleep"],
            "Cmd": ["infinity"],
            "User": "0:0",
            "Labels": self.labels("build", &object.id, "", &object.owner_id),
            "HostConfig": {
                "NetworkMode": "none",
                "Init": true,
                "Privileged": false,
                "PidsLimit": 4096,
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
            },
        });
        self.create_container(&name, &body)
            .await
            .map_err(err(format!(
                "cannot create the build container from {image}"
            )))?;
        self.api
            .post(&format!("/containers/{name}/start"), None)
            .await
            .map_err(err("cannot start the build container"))?;
        Ok(name)
    }

    /// Commits a container over the object's image, with our labels.
    async fn commit(
        &self,
        container: &str,
        object_id: &str,
        owner: &str,
        sealed: bool,
    ) -> Result<String, BackendError> {
        let mut labels = self.labels("image", object_id, "", owner);
        if sealed {
            labels[L_SEALED] = json!("true");
        }
        let body = json!({
            "Labels": labels,
            "Entrypoint": ["/bin/sh"],
            "Cmd": [],
            "User": "",
        });
        let path = format!(
            "/commit?container={}&repo=daas/{}&tag=latest&pause=true",
            enc(container),
            safe_id(object_id)
        );
        let v = self
            .api
            .post(&path, Some(&body))
            .await
            .map_err(err("cannot commit the image"))?;
        Ok(v["Id"].as_str().unwrap_or_default().to_owned())
    }

    /// Runs `sh -c script` in a running container; lines go to `log`.
    async fn exec(
        &self,
        container: &str,
        user: &str,
        script: &str,
        log: &JobLog,
    ) -> Result<i64, BackendError> {
        let home = &self.cfg.home;
        let body = json!({
            "AttachStdout": true,
            "AttachStderr": true,
            "User": user,
            "WorkingDir": "/",
            "Env": [format!("HOME={home}"), "LANG=C.UTF-8"],
            "Cmd": ["/bin/sh", "-c", format!("cd \"$HOME\" 2>/dev/null || cd /; {script}")],
        });
        let v = self
            .api
            .post(&format!("/containers/{container}/exec"), Some(&body))
            .await
            .map_err(err("cannot create the exec"))?;
        let id = v["Id"]
            .as_str()
            .ok_or_else(|| BackendError::failed("the engine gave the exec no id"))?
            .to_owned();
        let out = self
            .api
            .stream(
                Method::POST,
                &format!("/exec/{id}/start"),
                Some(&json!({"Detach": false, "Tty": false})),
            )
            .await
            .map_err(err("cannot start the exec"))?;
        api::for_each_line(out, |s, l| match s {
            Stream::Stdout => log.info(l),
            Stream::Stderr => log.warn(l),
        })
        .await
        .map_err(err("the script's output stream broke"))?;
        let st = self
            .api
            .get(&format!("/exec/{id}/json"))
            .await
            .map_err(err("cannot read the script's exit status"))?;
        if st["Running"].as_bool() == Some(true) {
            return Err(BackendError::Unavailable {
                message: "the script's output ended while it still ran".into(),
                source: None,
            });
        }
        Ok(st["ExitCode"].as_i64().unwrap_or(-1))
    }

    /// Ensures the user's network (internal bridge, labelled).
    async fn ensure_network(&self, user: &str) -> Result<String, BackendError> {
        let name = network_name(user);
        match self.api.get(&format!("/networks/{name}")).await {
            Ok(_) => return Ok(name),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(err("cannot inspect the user's network")(e)),
        }
        let body = json!({
            "Name": name,
            "Driver": "bridge",
            "Internal": true,
            "CheckDuplicate": true,
            "Labels": self.labels("network", "", "", user),
            "Options": {"com.docker.network.bridge.enable_icc": "false"},
        });
        match self.api.post("/networks/create", Some(&body)).await {
            Ok(_) => Ok(name),
            Err(e) if e.status() == Some(409) => Ok(name),
            Err(e) => Err(err(format!("cannot create the network {name}"))(e)),
        }
    }

    /// Removes the user's network if no container of ours is on it.
    /// Called under the user's lock.
    async fn maybe_remove_network(&self, user: &str) -> Result<(), BackendError> {
        let filter = label_filter(
            &[
                self.scope_filter(),
                format!("{L_OWNER}={user}"),
                format!("{L_KIND}=instance"),
            ],
            &[],
        );
        let list = self
            .api
            .get(&format!("/containers/json?all=true&filters={filter}"))
            .await
            .map_err(err("cannot list containers"))?;
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            return Ok(());
        }
        let name = network_name(user);
        match self.api.delete(&format!("/networks/{name}")).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(404) | Some(403) | Some(409)) => Ok(()),
            Err(e) => Err(err(format!("cannot remove the network {name}"))(e)),
        }
    }

    /// Removes an instance's container (and, if it was the last, its
    /// user's network). Works from the id alone.
    async fn remove_instance(&self, instance_id: &str) -> Result<(), BackendError> {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(instance_id);
        let name = container_name(instance_id);
        let owner = match self.api.get(&format!("/containers/{name}/json")).await {
            Ok(v) => v["Config"]["Labels"][L_OWNER].as_str().map(str::to_owned),
            Err(e) if e.status() == Some(404) => None,
            Err(e) => return Err(err("cannot inspect the instance's container")(e)),
        };
        match owner {
            Some(owner) => {
                let lock = self.user_lock(&owner);
                let _g = lock.lock().await;
                self.remove_container(&name).await?;
                self.maybe_remove_network(&owner).await
            }
            None => self.remove_container(&name).await,
        }
    }

    /// Why a container ended, for people; and whether it was a failure.
    async fn exit_reason(&self, name: &str, limit_mib: Option<u64>) -> (String, bool) {
        let v = match self.api.get(&format!("/containers/{name}/json")).await {
            Ok(v) => v,
            Err(e) if e.status() == Some(404) => {
                return ("the container was removed".into(), true);
            }
            Err(_) => return ("the Docker engine went away".into(), true),
        };
        let st = &v["State"];
        let code = st["ExitCode"].as_i64().unwrap_or(-1);
        if st["OOMKilled"].as_bool() == Some(true) || code == 137 && limit_mib.is_some() {
            let limit = limit_mib
                .or_else(|| {
                    v["HostConfig"]["Memory"]
                        .as_u64()
                        .filter(|m| *m > 0)
                        .map(|m| m >> 20)
                })
                .map(|m| format!(" (limit {m} MiB)"))
                .unwrap_or_default();
            if st["OOMKilled"].as_bool() == Some(true) {
                return (
                    format!("the app was killed for lack of memory{limit}"),
                    true,
                );
            }
        }
        if code == 0 {
            return ("the app exited".into(), false);
        }
        let tail = self.log_tail(name).await;
        let err = st["Error"].as_str().unwrap_or_default();
        (
            format!(
                "the container exited with code {code}{}{}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(" ({err})")
                },
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ),
            true,
        )
    }

    async fn log_tail(&self, name: &str) -> String {
        let Ok(body) = self
            .api
            .stream(
                Method::GET,
                &format!("/containers/{name}/logs?stdout=true&stderr=true&tail=6"),
                None,
            )
            .await
        else {
            return String::new();
        };
        let mut lines = Vec::new();
        let _ = api::for_each_line(body, |_, l| {
            if !l.trim().is_empty() {
                lines.push(l.trim().to_owned());
            }
        })
        .await;
        lines.join(" | ").chars().take(1024).collect()
    }

    fn resources(&self, spec: &Spec) -> (Option<u64>, Option<u64>, Option<u64>) {
        let r = &spec.resources;
        let nz = |v: u32| (v > 0).then_some(u64::from(v));
        (
            r.memory_mib
                .map(u64::from)
                .or(nz(self.cfg.default_memory_mib)),
            r.cpus.map(u64::from).or(nz(self.cfg.default_cpus)),
            r.pids.map(u64::from).or(nz(self.cfg.default_pids)),
        )
    }

    /// Dangling images of ours, and networks with no container.
    async fn gc(&self) -> Result<(), BackendError> {
        let f = label_filter(&[self.scope_filter()], &[("dangling", "true")]);
        self.api
            .post(&format!("/images/prune?filters={f}"), None)
            .await
            .map_err(err("cannot prune images"))?;
        let f = label_filter(&[self.scope_filter(), format!("{L_KIND}=network")], &[]);
        let nets = self
            .api
            .get(&format!("/networks?filters={f}"))
            .await
            .map_err(err("cannot list networks"))?;
        for n in nets.as_array().into_iter().flatten() {
            if let Some(owner) = n["Labels"][L_OWNER].as_str() {
                let lock = self.user_lock(owner);
                let _g = lock.lock().await;
                self.maybe_remove_network(owner).await?;
            }
        }
        Ok(())
    }
}

/// Follows the engine's `die` events of our instance containers and reports
/// the watched ones as ended; reconnects when the engine comes back, and
/// then reports watched instances whose container is gone. Also runs the
/// periodic GC. Ends when the backend is dropped.
async fn watch_events(inner: std::sync::Weak<Inner>) {
    let mut last_gc = tokio::time::Instant::now();
    loop {
        let Some(me) = inner.upgrade() else { return };
        // Whatever died while we were not listening.
        let watched: Vec<String> = me
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for iid in watched {
            let name = container_name(&iid);
            let running = match me.api.get(&format!("/containers/{name}/json")).await {
                Ok(v) => v["State"]["Running"].as_bool().unwrap_or(false),
                Err(e) if e.status() == Some(404) => false,
                Err(_) => true, // engine down: try again later
            };
            if !running {
                report_exit(&me, &iid).await;
            }
        }
        let every = me.cfg.gc_interval_secs;
        if every > 0 && last_gc.elapsed() >= Duration::from_secs(every) {
            last_gc = tokio::time::Instant::now();
            if let Err(e) = me.gc().await {
                debug!(error = %e, "docker gc failed");
            }
        }
        let f = label_filter(
            &[me.scope_filter(), format!("{L_KIND}=instance")],
            &[("type", "container"), ("event", "die")],
        );
        let stream = me
            .api
            .stream(Method::GET, &format!("/events?filters={f}"), None)
            .await;
        let weak = Arc::downgrade(&me);
        drop(me);
        match stream {
            Ok(body) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let pump = api::for_each_json(body, move |ev| {
                    if let Some(iid) = ev["Actor"]["Attributes"][L_INSTANCE].as_str() {
                        let _ = tx.send(iid.to_owned());
                    }
                });
                let handle = async {
                    while let Some(iid) = rx.recv().await {
                        let Some(me) = weak.upgrade() else { return };
                        report_exit(&me, &iid).await;
                    }
                };
                let gc_tick = async {
                    loop {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        if weak.upgrade().is_none() {
                            return;
                        }
                        if last_gc.elapsed() >= Duration::from_secs(every.max(30)) && every > 0 {
                            return; // leave the stream to run the GC
                        }
                    }
                };
                tokio::select! {
                    _ = pump => {}
                    _ = handle => return,
                    _ = gc_tick => {}
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn report_exit(me: &Inner, iid: &str) {
    let was_watched = me
        .watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(iid);
    if !was_watched {
        return; // stopped on purpose, or never ours
    }
    let (reason, failed) = me.exit_reason(&container_name(iid), None).await;
    info!(instance_id = %iid, %reason, "container ended");
    let _ = me.events.send(BackendEvent::InstanceExited {
        instance_id: iid.to_owned(),
        reason,
        failed,
    });
}

/// The session a container runs: its positional arguments are the app's
/// command. Everything variable arrives in the environment.
fn session_script(g: Geometry, copy_home: Option<&str>, wm: bool) -> String {
    let copy = match copy_home {
        Some(src) => format!(
            "mkdir -p \"$HOME\" && if [ -d {src} ]; then cp -a {src}/. \"$HOME\"/ 2>/dev/null; fi\n",
            src = shell_quote(src)
        ),
        None => String::new(),
    };
    let wm_line = if wm {
        "if [ -n \"$DAAS_WM\" ]; then sh -c \"$DAAS_WM\" & fi\n"
    } else {
        ""
    };
    format!(
        r#"umask 077
{copy}printf "$DAAS_VNC_PASSWD" > /tmp/.daas-vncpasswd
unset DAAS_VNC_PASSWD
cd "$HOME" 2>/dev/null || cd /tmp
"$DAAS_XVNC" :{DISPLAY} -geometry {w}x{h} -depth 24 -rfbport {VNC_PORT} -SecurityTypes VncAuth \
  -PasswordFile /tmp/.daas-vncpasswd -nolisten tcp -desktop "$DAAS_NAME" -AlwaysShared -AcceptSetDesktopSize &
xpid=$!
i=0
while [ ! -S /tmp/.X11-unix/X{DISPLAY} ]; do
  i=$((i+1))
  if [ $i -gt 2000 ] || ! kill -0 $xpid 2>/dev/null; then echo "Xvnc did not start" >&2; exit 97; fi
  sleep 0.01
done
export DISPLAY=:{DISPLAY}
umask 022
{wm_line}"$@"
status=$?
kill $xpid 2>/dev/null
exit $status
"#,
        w = g.width,
        h = g.height,
    )
}

/// A VNC password file's bytes as `printf` octal escapes.
fn printf_escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
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

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut r = rand::rngs::OsRng;
    (0..8)
        .map(|_| char::from(CHARS[r.gen_range(0..CHARS.len())]))
        .collect()
}

/// Whether a VNC server answers at `ip:5900` with its banner.
async fn vnc_ready(ip: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let mut banner = [0u8; 12];
    match tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect((ip, VNC_PORT)),
    )
    .await
    {
        Ok(Ok(mut s)) => matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut banner)).await,
            Ok(Ok(_)) if banner.starts_with(b"RFB ")
        ),
        _ => false,
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            linked_clone: true, // image layers are shared
            live_snapshot: false,
            vm: false,
            container: true,
            resize: true,
            clipboard: true,
        }
    }

    async fn check(&self) -> Result<(), BackendError> {
        let me = &self.inner;
        let v = me.api.get("/version").await.map_err(|e| {
            BackendError::failed_with(
                format!(
                    "[backends.docker] socket: no Docker engine answers at {} (is dockerd running, and may this user use its socket?)",
                    me.cfg.socket.display()
                ),
                e,
            )
        })?;
        let api_version = v["ApiVersion"].as_str().unwrap_or("0");
        let parse = |s: &str| -> (u32, u32) {
            let mut it = s.split('.').map(|p| p.parse().unwrap_or(0));
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        };
        if parse(api_version) < (1, 41) {
            return Err(BackendError::failed(format!(
                "[backends.docker]: the engine speaks API {api_version}; 1.41 (Docker 20.10) or newer is needed"
            )));
        }
        info!(
            version = v["Version"].as_str().unwrap_or("?"),
            scope = %me.scope,
            "docker backend ready"
        );
        Ok(())
    }

    async fn create(
        &self,
        object: &Object,
        parent: Option<&Object>,
        log: &JobLog,
    ) -> Result<serde_json::Value, BackendError> {
        let me = &self.inner;
        if object.phase == Phase::App {
            let dep = parent.ok_or_else(|| BackendError::failed("the app has no deployment"))?;
            let image = image_of(&dep.id);
            if me.image_exists(&image).await?.is_none() {
                return Err(BackendError::NotFound(format!("the image {image}")));
            }
            let prog = object
                .spec
                .command
                .first()
                .ok_or_else(|| BackendError::failed("the app has no command"))?;
            // The program must be in the image: a one-off check container.
            let name = format!("daas-check-{}", safe_id(&object.id));
            me.remove_container(&name).await?;
            let body = json!({
                "Image": image,
                "Entrypoint": ["/bin/sh", "-c", "command -v \"$1\"", "sh"],
                "Cmd": [prog],
                "User": me.cfg.user,
                "Labels": me.labels("build", &object.id, "", &object.owner_id),
                "HostConfig": {"NetworkMode": "none", "Privileged": false},
            });
            me.create_container(&name, &body)
                .await
                .map_err(err("cannot create a check container"))?;
            let r = async {
                me.api
                    .post(&format!("/containers/{name}/start"), None)
                    .await?;
                me.api.post(&format!("/containers/{name}/wait"), None).await
            }
            .await;
            me.remove_container(&name).await?;
            let st = r.map_err(err("cannot run a check container"))?;
            if st["StatusCode"].as_i64() != Some(0) {
                return Err(BackendError::failed(format!(
                    "the app's program {prog:?} is not in the image {image}"
                )));
            }
            log.info(&format!("app command {prog:?} found in {image}"));
            return Ok(json!({ "deployment": dep.id, "image": image }));
        }
        let image = image_of(&object.id);
        if let Some(v) = me.image_exists(&image).await? {
            log.info(&format!("the image {image} already exists (resumed)"));
            return Ok(json!({ "image": image, "id": v["Id"] }));
        }
        let source = match (object.phase, parent) {
            (Phase::Baseimage, _) => object.spec.source.clone().ok_or_else(|| {
                BackendError::failed(
                    "a Docker Baseimage needs spec.source: the name of an image on the engine",
                )
            })?,
            (_, Some(p)) => image_of(&p.id),
            (_, None) => return Err(BackendError::failed("the object has no parent")),
        };
        if me.image_exists(&source).await?.is_none() {
            return Err(BackendError::failed(format!(
                "the image {source:?} is not on the Docker engine (build or load it there first; nothing is pulled)"
            )));
        }
        log.info(&format!("committing {image} from a container of {source}"));
        let name = build_name(&object.id);
        me.remove_container(&name).await?;
        let body = json!({
            "Image": source,
            "Entrypoint": ["/bin/true"],
            "Labels": me.labels("build", &object.id, "", &object.owner_id),
            "HostConfig": {"NetworkMode": "none", "Privileged": false},
        });
        me.create_container(&name, &body)
            .await
            .map_err(err(format!("cannot create a container of {source}")))?;
        let id = me.commit(&name, &object.id, &object.owner_id, false).await;
        me.remove_container(&name).await?;
        let id = id?;
        log.info(&format!("image {image} ready"));
        Ok(json!({ "image": image, "id": id }))
    }

    async fn run_script(
        &self,
        object: &Object,
        script: &Script,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), BackendError> {
        let me = &self.inner;
        let image = image_of(&object.id);
        if me.image_exists(&image).await?.is_none() {
            return Err(BackendError::NotFound(format!("the image {image}")));
        }
        let name = me.start_build_container(object, &image).await?;
        let user = if object.phase == Phase::Baseimage {
            "0:0".to_owned()
        } else {
            me.cfg.user.clone()
        };
        let timeout = Duration::from_secs(u64::from(script.timeout_secs));
        let r = tokio::select! {
            r = me.exec(&name, &user, &script.run, log) => r,
            _ = tokio::time::sleep(timeout) => Err(BackendError::failed(format!(
                "script {:?} timed out after {} s", script.name, script.timeout_secs
            ))),
            _ = cancel.cancelled() => Err(BackendError::Cancelled),
        };
        let r = match r {
            Ok(0) => {
                let _ = me.api.post(&format!("/containers/{name}/kill"), None).await;
                me.commit(&name, &object.id, &object.owner_id, false)
                    .await
                    .map(|_| ())
            }
            Ok(code) => Err(BackendError::failed(format!(
                "script {:?} failed (exit code {code})",
                script.name
            ))),
            Err(e) => Err(e),
        };
        let cleanup = me.remove_container(&name).await;
        r?;
        cleanup?;
        log.info("committed the script's changes");
        Ok(())
    }

    async fn finalize(
        &self,
        object: &Object,
        log: &JobLog,
    ) -> Result<serde_json::Value, BackendError> {
        let me = &self.inner;
        if object.phase == Phase::App {
            return Ok(object.backend_ref.clone());
        }
        let image = image_of(&object.id);
        let Some(v) = me.image_exists(&image).await? else {
            return Err(BackendError::NotFound(format!("the image {image}")));
        };
        if v["Config"]["Labels"][L_SEALED].as_str() == Some("true") {
            log.info("already sealed (resumed)");
            return Ok(json!({ "image": image, "id": v["Id"], "sealed": true }));
        }
        let name = me.start_build_container(object, &image).await?;
        let r = async {
            if object.phase == Phase::Baseimage {
                // What must not be shared by everything made from it.
                let code = me
                    .exec(
                        &name,
                        "0:0",
                        "rm -f /etc/machine-id /var/lib/dbus/machine-id /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; true",
                        log,
                    )
                    .await?;
                if code != 0 {
                    return Err(BackendError::failed("the seal script failed"));
                }
            }
            let _ = me
                .api
                .post(&format!("/containers/{name}/kill"), None)
                .await;
            me.commit(&name, &object.id, &object.owner_id, true).await
        }
        .await;
        let cleanup = me.remove_container(&name).await;
        let id = r?;
        cleanup?;
        log.info(&format!(
            "sealed: {image} is now the source of what is made from it"
        ));
        Ok(json!({ "image": image, "id": id, "sealed": true }))
    }

    async fn delete(&self, object: &Object, log: &JobLog) -> Result<(), BackendError> {
        let me = &self.inner;
        me.remove_container(&build_name(&object.id)).await?;
        if object.phase != Phase::App {
            let image = image_of(&object.id);
            // Containers of ended instances not yet cleaned up (an exit
            // being handled, an instance lost in an engine restart) still
            // hold the image: they are ours and dead, so they go first.
            let f = label_filter(
                &[me.scope_filter(), format!("{L_KIND}=instance")],
                &[("ancestor", &image), ("status", "exited")],
            );
            let dead = me
                .api
                .get(&format!("/containers/json?all=true&filters={f}"))
                .await
                .map_err(err("cannot list containers"))?;
            for c in dead.as_array().into_iter().flatten() {
                if let Some(iid) = c["Labels"][L_INSTANCE].as_str() {
                    me.remove_instance(iid).await?;
                }
            }
            ok_if_missing(me.api.delete(&format!("/images/{}", enc(&image))).await)
                .map_err(err(format!("cannot remove the image {image}")))?;
            log.info(&format!("removed {image}"));
        }
        if let Err(e) = me.gc().await {
            warn!(error = %e, "docker gc after a delete failed");
        }
        Ok(())
    }

    async fn start(&self, req: StartRequest<'_>, log: &JobLog) -> Result<Started, BackendError> {
        let me = &self.inner;
        let inst = req.instance;
        // A start cut off by a crash may have left a container: start afresh.
        me.remove_instance(&inst.id).await?;
        let (image, command, copy_home, wm, writable) = match (req.object.phase, inst.purpose) {
            (Phase::App, _) => {
                let dep = req
                    .parent
                    .ok_or_else(|| BackendError::failed("the app has no deployment"))?;
                (
                    image_of(&dep.id),
                    req.object.spec.command.clone(),
                    Some(me.cfg.home.as_str()),
                    None,
                    req.object.spec.writable_root,
                )
            }
            (_, Purpose::Configure) => (
                image_of(&req.object.id),
                vec!["xterm".to_owned()],
                None,
                req.object.spec.window_manager.clone(),
                true,
            ),
            (p, Purpose::Run) => {
                return Err(BackendError::failed(format!(
                    "a {p} is not run, only configured"
                )));
            }
        };
        if command.is_empty() {
            return Err(BackendError::failed("nothing to run: the command is empty"));
        }
        if me.image_exists(&image).await?.is_none() {
            return Err(BackendError::NotFound(format!("the image {image}")));
        }
        let geometry = req
            .object
            .spec
            .geometry
            .as_deref()
            .and_then(|g| g.parse().ok())
            .unwrap_or(me.cfg.geometry);
        let password = random_password();
        let pw = printf_escape(&daas_rfb::vnc_password_file(&password));
        let home = if copy_home.is_some() {
            "/tmp/home".to_owned()
        } else {
            me.cfg.home.clone()
        };
        let (memory, cpus, pids) = me.resources(&req.object.spec);
        let mut entry = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            session_script(geometry, copy_home, wm.is_some()),
            "daas-session".to_owned(),
        ];
        entry.extend(command);
        let name = container_name(&inst.id);
        let mut host = json!({
            "Init": true,
            "Privileged": false,
            "ReadonlyRootfs": !writable,
            "Tmpfs": {"/tmp": format!("rw,nosuid,nodev,size={}m,mode=1777", me.cfg.tmpfs_mib)},
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
        });
        if let Some(m) = memory {
            host["Memory"] = json!(m << 20);
            host["MemorySwap"] = json!(m << 20);
        }
        if let Some(c) = cpus {
            host["NanoCpus"] = json!(c * 1_000_000_000);
        }
        if let Some(p) = pids {
            host["PidsLimit"] = json!(p);
        }
        let hostname = format!("daas-{}", &safe_id(&inst.id)[..8.min(inst.id.len())]);
        let mut env = vec![
            format!("HOME={home}"),
            "USER=daas".to_owned(),
            "LANG=C.UTF-8".to_owned(),
            format!("DAAS_VNC_PASSWD={pw}"),
            format!("DAAS_XVNC={}", me.cfg.xvnc),
            format!("DAAS_NAME={}", req.object.name),
        ];
        if let Some(w) = &wm {
            env.push(format!(
                "DAAS_WM={}",
                w.iter()
                    .map(|s| shell_quote(s))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        let user = inst.user_id.clone();
        let lock = me.user_lock(&user);
        let network;
        {
            let _g = lock.lock().await;
            network = me.ensure_network(&user).await?;
            host["NetworkMode"] = json!(network);
            let body = json!({
                "Image": image,
                "Entrypoint": entry,
                "Cmd": [],
                "User": me.cfg.user,
                "Env": env,
                "WorkingDir": "/",
                "Hostname": hostname,
                "Labels": me.labels("instance", &req.object.id, &inst.id, &user),
                "HostConfig": host,
            });
            me.create_container(&name, &body)
                .await
                .map_err(err(format!("cannot create the container from {image}")))?;
        }
        let started = async {
            me.api
                .post(&format!("/containers/{name}/start"), None)
                .await
                .map_err(err("cannot start the container"))?;
            let v = me
                .api
                .get(&format!("/containers/{name}/json"))
                .await
                .map_err(err("cannot inspect the container"))?;
            let ip = match v["NetworkSettings"]["Networks"][&network]["IPAddress"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                Some(ip) => ip.to_owned(),
                // An exited container has left its network already.
                None if v["State"]["Running"].as_bool() != Some(true) => {
                    let (reason, _) = me.exit_reason(&name, memory).await;
                    return Err(BackendError::failed(format!(
                        "the container ended during start: {reason}"
                    )));
                }
                None => return Err(BackendError::failed("the container has no address")),
            };
            log.info(&format!(
                "container {name} started at {ip}; waiting for its display"
            ));
            let deadline =
                tokio::time::Instant::now() + Duration::from_secs(me.cfg.start_timeout_secs);
            let mut n = 0u32;
            loop {
                if vnc_ready(&ip).await {
                    break;
                }
                n += 1;
                if n == 10 {
                    n = 0;
                    let v = me
                        .api
                        .get(&format!("/containers/{name}/json"))
                        .await
                        .map_err(err("cannot inspect the container"))?;
                    if v["State"]["Running"].as_bool() != Some(true) {
                        let (reason, _) = me.exit_reason(&name, memory).await;
                        return Err(BackendError::failed(format!(
                            "the container ended during start: {reason}"
                        )));
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    let tail = me.log_tail(&name).await;
                    return Err(BackendError::failed(format!(
                        "the display did not come up within {} s: {tail}",
                        me.cfg.start_timeout_secs
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(ip)
        }
        .await;
        let ip = match started {
            Ok(ip) => ip,
            Err(e) => {
                if !e.retryable() {
                    let _ = me.remove_instance(&inst.id).await;
                }
                return Err(e);
            }
        };
        me.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inst.id.clone());
        log.info("display ready");
        Ok(Started {
            backend_ref: serde_json::to_value(InstanceRef {
                container: name,
                network,
                ip: ip.clone(),
            })
            .unwrap_or_default(),
            connection: Connection {
                protocol: Protocol::Vnc,
                target: Target::Tcp {
                    host: ip,
                    port: VNC_PORT,
                },
                password: Some(password),
                username: None,
            },
        })
    }

    async fn stop(&self, instance: &Instance, log: &JobLog) -> Result<(), BackendError> {
        let me = &self.inner;
        me.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&instance.id);
        let name = container_name(&instance.id);
        if instance.purpose == Purpose::Configure {
            // The configuration desktop's changes become the object's image.
            match me.api.get(&format!("/containers/{name}/json")).await {
                Ok(v) => {
                    let _ = me
                        .api
                        .post(&format!("/containers/{name}/stop?t=5"), None)
                        .await;
                    let sealed = false;
                    let owner = v["Config"]["Labels"][L_OWNER]
                        .as_str()
                        .unwrap_or(&instance.user_id)
                        .to_owned();
                    me.commit(&name, &instance.object_id, &owner, sealed)
                        .await?;
                    log.info("the configuration desktop's changes are committed");
                }
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(err("cannot inspect the container")(e)),
            }
        }
        me.remove_instance(&instance.id).await?;
        log.info("container removed");
        Ok(())
    }

    async fn inventory(&self) -> Result<Inventory, BackendError> {
        let me = &self.inner;
        let mut inv = Inventory::default();
        let f = label_filter(&[me.scope_filter()], &[]);
        let list = me
            .api
            .get(&format!("/containers/json?all=true&filters={f}"))
            .await
            .map_err(err("cannot list containers"))?;
        for c in list.as_array().into_iter().flatten() {
            let labels = &c["Labels"];
            match labels[L_KIND].as_str() {
                Some("instance") => {
                    let Some(iid) = labels[L_INSTANCE].as_str() else {
                        continue;
                    };
                    if c["State"].as_str() == Some("running") {
                        inv.instances.insert(iid.to_owned());
                    } else {
                        inv.instances.insert(format!("{iid}#dead"));
                    }
                }
                Some("build") => {
                    if let Some(o) = labels[L_OBJECT].as_str() {
                        inv.objects.insert(o.to_owned());
                    }
                }
                _ => {}
            }
        }
        let f = label_filter(&[me.scope_filter(), format!("{L_KIND}=image")], &[]);
        let images = me
            .api
            .get(&format!("/images/json?filters={f}"))
            .await
            .map_err(err("cannot list images"))?;
        for i in images.as_array().into_iter().flatten() {
            if let Some(o) = i["Labels"][L_OBJECT].as_str().filter(|o| !o.is_empty()) {
                inv.objects.insert(o.to_owned());
            }
        }
        Ok(inv)
    }

    async fn remove_orphan(&self, orphan: &Orphan) -> Result<(), BackendError> {
        let me = &self.inner;
        let id = orphan.id.trim_end_matches("#dead");
        match orphan.what {
            "instance" => me.remove_instance(id).await,
            "object" => {
                me.remove_container(&build_name(id)).await?;
                let f = label_filter(&[me.scope_filter(), format!("{L_OBJECT}={id}")], &[]);
                let images = me
                    .api
                    .get(&format!("/images/json?all=true&filters={f}"))
                    .await
                    .map_err(err("cannot list images"))?;
                let mut ids: BTreeMap<String, ()> = BTreeMap::new();
                for i in images.as_array().into_iter().flatten() {
                    if let Some(i) = i["Id"].as_str() {
                        ids.insert(i.to_owned(), ());
                    }
                }
                ok_if_missing(
                    me.api
                        .delete(&format!("/images/{}", enc(&image_of(id))))
                        .await,
                )
                .map_err(err("cannot remove the image"))?;
                for i in ids.keys() {
                    let _ = ok_if_missing(
                        me.api
                            .delete(&format!("/images/{}?force=true", enc(i)))
                            .await,
                    );
                }
                let _ = me.gc().await;
                Ok(())
            }
            w => Err(BackendError::failed(format!("unknown orphan kind {w}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_ids() {
        assert_eq!(image_of("5F0C-1a"), "daas/5f0c-1a:latest");
        assert_eq!(container_name("../x"), "daas-inst-x");
        assert_eq!(network_name("u-1"), "daas-user-u-1");
        assert_eq!(build_name("o"), "daas-build-o");
    }

    #[test]
    fn passwords_pass_through_printf_escapes() {
        assert_eq!(printf_escape(&[0, 7, 255, b'%']), "\\000\\007\\377\\045");
    }

    #[test]
    fn the_session_script_takes_the_command_as_arguments() {
        let s = session_script(
            Geometry {
                width: 800,
                height: 600,
            },
            Some("/home/daas"),
            false,
        );
        assert!(s.contains("-geometry 800x600"), "{s}");
        assert!(s.contains("\n\"$@\"\n"), "{s}");
        assert!(s.contains("cp -a /home/daas/."), "{s}");
        assert!(!s.contains("DAAS_WM"));
    }
}
