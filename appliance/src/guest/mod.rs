//! The instance channel: how the appliance drives `daas-guest-proxy` inside
//! a guest.
//!
//! - [`session`]: one multiplexed protocol session over any
//!   `AsyncRead + AsyncWrite` pair (many requests in flight, cancel on drop).
//! - [`ssh`]: the SSH transport (russh): the appliance's own ed25519 key,
//!   host keys pinned at first contact and refused when changed.
//! - [`Connector`]: how a transport is opened: [`ssh::SshConnector`] for
//!   guests on the network, [`CommandConnector`] for a proxy reached
//!   through a command's stdio (`docker exec -i CTR daas-guest-proxy serve`).
//! - [`Guest`]: one guest with its session, reopened with backoff when it
//!   drops, and the operations a backend needs (`exec_script` streaming
//!   into a job log, `spawn_app`, `put_file`, `wait_ready`, `set_hostname`,
//!   `ensure_user`, `info`). [`GuestChannels`] keeps one [`Guest`] per
//!   instance.
//!
//! Invariants: the appliance speaks to guests only through the wire crate's
//! types; every wait has a timeout; a changed host key is never accepted
//! (only [`crate::store::Store::forget_guest_host_key`] removes a pin).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daas_guest_proxy_wire::message::{
    EnsureUser, EnsureUserResult, Exec, Info, InfoResult, Ping, PutFile, PutFileResult, Ready,
    ReadyResult, SetHostname, Spawn,
};
use daas_guest_proxy_wire::{ErrorCode, Stream, WireError};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backend::BackendError;
use crate::jobs::JobLog;
use crate::model::Script;
use crate::store::{PinnedHostKey, Store, StoreError};

pub mod session;
pub mod ssh;

pub use session::{Call, Reply, Session};

/// A failure of the instance channel.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {target}")]
    Connect {
        /// `user@host:port`.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SSH protocol failed (handshake, connection lost).
    #[error("SSH with {target} failed")]
    Ssh {
        /// `user@host:port`.
        target: String,
        /// Why.
        #[source]
        source: russh::Error,
    },
    /// The guest refused the appliance's key.
    #[error("{target} refused the appliance's key {fingerprint} (is it in the guest's authorized_keys? `daas-appliance guest-key` prints it)")]
    Auth {
        /// `user@host:port`.
        target: String,
        /// The appliance key's fingerprint.
        fingerprint: String,
    },
    /// The guest presented another host key than the one pinned.
    #[error("the host key of {subject} changed: pinned {pinned}, presented {presented}; refusing to connect (a rebuilt guest needs its pin forgotten by an admin)")]
    HostKeyChanged {
        /// What the pin belongs to.
        subject: String,
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint of the key presented now.
        presented: String,
    },
    /// The pin could not be read or stored.
    #[error("cannot check the guest's host key pin")]
    Pin(#[source] StoreError),
    /// The appliance's own key is unusable.
    #[error("the appliance's guest key {path} is not usable: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The proxy broke the protocol (or speaks another version).
    #[error("the guest-proxy broke the protocol")]
    Protocol(#[source] daas_guest_proxy_wire::SessionError),
    /// A request could not be encoded.
    #[error("cannot encode a request: {0}")]
    Encode(String),
    /// A result did not have the expected shape.
    #[error("unexpected result of {op}: {message}")]
    BadResult {
        /// The operation.
        op: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The session ended (connection dropped, proxy exited).
    #[error("the guest session ended: {0}")]
    Disconnected(String),
    /// Something took too long.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The proxy answered an error.
    #[error("{op} failed in the guest: {error}")]
    Remote {
        /// The operation.
        op: &'static str,
        /// The proxy's error.
        #[source]
        error: WireError,
    },
    /// A ConfigAuto script ended unsuccessfully.
    #[error("script {name:?} failed: {status}")]
    ScriptFailed {
        /// The script's name.
        name: String,
        /// `exit status 3`, `killed by signal 9`.
        status: String,
    },
    /// Starting the transport command failed.
    #[error("cannot start {command}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl GuestError {
    /// Whether trying again (a new connection) may work.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GuestError::Connect { .. }
                | GuestError::Ssh { .. }
                | GuestError::Disconnected(_)
                | GuestError::Spawn { .. }
        ) || matches!(self, GuestError::Timeout { what, .. } if what.contains("connect") || what.contains("handshake") || what.contains("hello"))
    }
}

impl From<GuestError> for BackendError {
    fn from(e: GuestError) -> BackendError {
        match e {
            GuestError::Cancelled => BackendError::Cancelled,
            e if e.retryable() => BackendError::unavailable("the guest is not reachable", e),
            e => BackendError::failed_with("the guest operation failed", e),
        }
    }
}

pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    crate::jobs::error_chain(e)
}

/// Where guest host key pins live: the store, or memory (tools).
pub trait HostKeyPins: Send + Sync + 'static {
    /// Pins `public_key` for `subject` unless one is pinned, and returns the
    /// key in force.
    fn pin_first(
        &self,
        subject: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<PinnedHostKey, StoreError>;
}

impl HostKeyPins for Store {
    fn pin_first(
        &self,
        subject: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<PinnedHostKey, StoreError> {
        self.pin_guest_host_key(subject, public_key, fingerprint)
    }
}

/// Pins in memory, for tools and benchmarks that have no store.
#[derive(Default)]
pub struct MemoryPins(Mutex<HashMap<String, PinnedHostKey>>);

impl HostKeyPins for MemoryPins {
    fn pin_first(
        &self,
        subject: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<PinnedHostKey, StoreError> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(m.entry(subject.to_owned())
            .or_insert_with(|| PinnedHostKey {
                subject: subject.to_owned(),
                public_key: public_key.to_owned(),
                fingerprint: fingerprint.to_owned(),
                pinned_at: crate::model::now(),
            })
            .clone())
    }
}

/// Opens a transport to a guest's proxy and starts a session on it.
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    /// For messages: `root@10.0.0.5:22`, `docker exec ...`.
    fn describe(&self) -> String;
    /// A new session.
    async fn connect(&self) -> Result<Session, GuestError>;
}

/// A proxy reached through a command's stdin and stdout, such as
/// `docker exec -i CTR daas-guest-proxy serve` (or the proxy itself).
#[derive(Debug, Clone)]
pub struct CommandConnector {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Time for the proxy's hello.
    pub hello_timeout: Duration,
}

struct ChildTransport {
    _child: Mutex<tokio::process::Child>,
}

#[async_trait::async_trait]
impl Connector for CommandConnector {
    fn describe(&self) -> String {
        self.argv.join(" ")
    }

    async fn connect(&self) -> Result<Session, GuestError> {
        let spawn_err = |source| GuestError::Spawn {
            command: self.describe(),
            source,
        };
        let (prog, args) = self
            .argv
            .split_first()
            .ok_or_else(|| spawn_err(std::io::Error::other("empty command")))?;
        let mut child = tokio::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let (Some(w), Some(r)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(spawn_err(std::io::Error::other("no stdio pipes")));
        };
        Session::start(
            r,
            w,
            Some(Box::new(ChildTransport {
                _child: Mutex::new(child),
            })),
            self.hello_timeout,
        )
        .await
    }
}

/// Timeouts and retries of a [`Guest`].
#[derive(Debug, Clone, Copy)]
pub struct GuestPolicy {
    /// Connection attempts before giving up (each a new transport).
    pub connect_attempts: u32,
    /// First pause between attempts; doubled each time up to `backoff_max`.
    pub backoff: Duration,
    /// Longest pause between attempts.
    pub backoff_max: Duration,
    /// Time for one short operation (`info`, `set_hostname`, ...).
    pub op_timeout: Duration,
    /// Extra time given beyond a script's own timeout for the answer.
    pub script_grace: Duration,
}

impl Default for GuestPolicy {
    fn default() -> Self {
        GuestPolicy {
            connect_attempts: 4,
            backoff: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            op_timeout: Duration::from_secs(60),
            script_grace: Duration::from_secs(15),
        }
    }
}

/// One guest: its connector, its open session (one, multiplexed), and the
/// operations a backend runs on it.
pub struct Guest {
    connector: Arc<dyn Connector>,
    session: tokio::sync::Mutex<Option<Session>>,
    policy: GuestPolicy,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("target", &self.connector.describe())
            .finish()
    }
}

impl Guest {
    /// A guest reached through `connector`. Nothing is opened yet.
    pub fn new(connector: Arc<dyn Connector>, policy: GuestPolicy) -> Guest {
        Guest {
            connector,
            session: tokio::sync::Mutex::new(None),
            policy,
        }
    }

    /// Where the guest is.
    pub fn describe(&self) -> String {
        self.connector.describe()
    }

    /// The open session, or a new one: up to `connect_attempts` tries with
    /// exponential backoff; errors no retry can fix (a changed host key, a
    /// refused key, another protocol) end at once.
    pub async fn session(&self) -> Result<Session, GuestError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
            debug!(target = %self.describe(), reason = ?s.close_reason(), "reopening the guest session");
        }
        *slot = None;
        let mut delay = self.policy.backoff;
        let mut attempt = 1;
        loop {
            match self.connector.connect().await {
                Ok(s) => {
                    *slot = Some(s.clone());
                    return Ok(s);
                }
                Err(e) if e.retryable() && attempt < self.policy.connect_attempts => {
                    debug!(target = %self.describe(), attempt, error = %chain(&e), "guest connection failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.policy.backoff_max);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops the open session (the next operation opens a new one).
    pub async fn close(&self) {
        *self.session.lock().await = None;
    }

    /// Runs an idempotent operation, once more on a new session if the
    /// first one dropped under it.
    async fn idempotent<T, F, Fut>(&self, what: &str, f: F) -> Result<T, GuestError>
    where
        F: Fn(Session) -> Fut,
        Fut: std::future::Future<Output = Result<T, GuestError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let s = self.session().await?;
            let r = tokio::time::timeout(self.policy.op_timeout, f(s)).await;
            match r {
                Ok(Err(GuestError::Disconnected(reason))) if tries < 2 => {
                    warn!(target = %self.describe(), %reason, "{what}: the session dropped; retrying on a new one");
                }
                Ok(r) => return r,
                Err(_) => {
                    return Err(GuestError::Timeout {
                        what: what.to_owned(),
                        after: self.policy.op_timeout,
                    })
                }
            }
        }
    }

    /// A round trip (liveness).
    pub async fn ping(&self) -> Result<(), GuestError> {
        self.idempotent("ping", |s| async move { s.call(Ping {}).await })
            .await
            .map(|_| ())
    }

    /// Facts about the guest.
    pub async fn info(&self) -> Result<InfoResult, GuestError> {
        self.idempotent("info", |s| async move { s.call(Info {}).await })
            .await
    }

    /// Sets the guest's hostname.
    pub async fn set_hostname(&self, hostname: &str) -> Result<(), GuestError> {
        self.idempotent("set_hostname", |s| async move {
            s.call(SetHostname {
                hostname: hostname.to_owned(),
            })
            .await
        })
        .await
        .map(|_| ())
    }

    /// Creates a user if missing, with groups and an authorized key.
    pub async fn ensure_user(&self, user: EnsureUser) -> Result<EnsureUserResult, GuestError> {
        let user = &user;
        self.idempotent("ensure_user", |s| async move { s.call(user.clone()).await })
            .await
    }

    /// Writes `content` to `path` in the guest, atomically (a temporary file
    /// renamed into place once its sha256 matched). `args.size` and
    /// `args.sha256` are filled in here. Retried once on a new session: a
    /// cut-off upload leaves nothing behind in the guest.
    pub async fn put_file(
        &self,
        mut args: PutFile,
        content: &[u8],
    ) -> Result<PutFileResult, GuestError> {
        args.size = content.len() as u64;
        args.sha256 = hex::encode(sha2::Sha256::digest(content));
        let args = &args;
        self.idempotent("put_file", |s| async move {
            s.put_file(args.clone(), content).await
        })
        .await
    }

    /// Starts `argv` detached as `user` on `display` (RunApp). Not retried:
    /// an answer lost with the connection may mean the app runs already.
    pub async fn spawn_app(
        &self,
        user: &str,
        display: &str,
        argv: &[String],
    ) -> Result<u32, GuestError> {
        let s = self.session().await?;
        let call = s.call(Spawn {
            user: user.to_owned(),
            display: display.to_owned(),
            argv: argv.to_vec(),
            ..Default::default()
        });
        match tokio::time::timeout(self.policy.op_timeout, call).await {
            Ok(r) => r.map(|r| r.pid),
            Err(_) => Err(GuestError::Timeout {
                what: "spawn".into(),
                after: self.policy.op_timeout,
            }),
        }
    }

    /// Waits until the guest answers and says it has booted: connection
    /// failures are retried (the guest may still be booting) until `within`.
    pub async fn wait_ready(&self, within: Duration) -> Result<ReadyResult, GuestError> {
        let deadline = Instant::now() + within;
        let mut last = String::from("no answer yet");
        let mut delay = self.policy.backoff;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GuestError::Timeout {
                    what: format!("{} to be ready ({last})", self.describe()),
                    after: within,
                });
            }
            let attempt = async {
                let s = self.session().await?;
                s.call(Ready {}).await
            };
            match tokio::time::timeout(left, attempt).await {
                Ok(Ok(r)) if r.ready => return Ok(r),
                Ok(Ok(r)) => last = format!("state {:?}", r.state),
                Ok(Err(e)) if e.retryable() => last = chain(&e),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(self.policy.backoff_max);
        }
    }

    /// Runs one ConfigAuto script (`/bin/sh -c RUN` as the login user) with
    /// its timeout, writing its stdout (info) and stderr (warn) to `log`
    /// line by line as they come. Cancelling kills it in the guest.
    pub async fn exec_script(
        &self,
        script: &Script,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), GuestError> {
        let limit = Duration::from_secs(u64::from(script.timeout_secs));
        let exec = Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.run.clone()],
            timeout_ms: Some(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)),
            ..Default::default()
        };
        let s = self.session().await?;
        let mut out = LineSplitter::default();
        let mut err = LineSplitter::default();
        let run = s.exec_with(exec, |stream, data| match stream {
            Stream::Stderr => err.push(data, |l| log.warn(l)),
            _ => out.push(data, |l| log.info(l)),
        });
        let r = tokio::select! {
            r = tokio::time::timeout(limit + self.policy.script_grace, run) => r,
            _ = cancel.cancelled() => return Err(GuestError::Cancelled),
        };
        out.flush(|l| log.info(l));
        err.flush(|l| log.warn(l));
        let timed_out = || GuestError::Timeout {
            what: format!("script {:?}", script.name),
            after: limit,
        };
        let result = match r {
            Err(_) => return Err(timed_out()),
            Ok(Err(GuestError::Remote { error, .. })) if error.code == ErrorCode::Timeout => {
                return Err(timed_out())
            }
            Ok(r) => r?,
        };
        let status = match (result.exit_code, result.signal) {
            (Some(0), _) => return Ok(()),
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "no exit status".to_owned(),
        };
        Err(GuestError::ScriptFailed {
            name: script.name.clone(),
            status,
        })
    }
}

/// Cuts output into lines for the job log; a line longer than 4 KiB is cut
/// (the log bounds lines anyway), invalid UTF-8 is replaced.
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
}

const MAX_LINE: usize = 4096;

impl LineSplitter {
    fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        for &b in data {
            if b == b'\n' {
                emit(String::from_utf8_lossy(&self.buf).trim_end_matches('\r'));
                self.buf.clear();
            } else if self.buf.len() < MAX_LINE {
                self.buf.push(b);
            }
        }
    }

    fn flush(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            emit(String::from_utf8_lossy(&self.buf).trim_end_matches('\r'));
            self.buf.clear();
        }
    }
}

/// One [`Guest`] per instance (or object), so every operation on it shares
/// one multiplexed session. Backends hold one.
#[derive(Default, Clone)]
pub struct GuestChannels {
    map: Arc<Mutex<HashMap<String, Arc<Guest>>>>,
}

impl GuestChannels {
    /// The guest registered under `subject`, or a new one made by `make`.
    pub fn get_or_insert(
        &self,
        subject: &str,
        make: impl FnOnce() -> Arc<dyn Connector>,
        policy: GuestPolicy,
    ) -> Arc<Guest> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(subject.to_owned())
            .or_insert_with(|| Arc::new(Guest::new(make(), policy)))
            .clone()
    }

    /// Forgets a guest (its instance stopped); its session closes when the
    /// last user lets go.
    pub fn remove(&self, subject: &str) -> Option<Arc<Guest>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(subject)
    }

    /// How many guests are registered.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pin subject of an instance's guest.
pub fn instance_subject(instance_id: &str) -> String {
    format!("instance:{instance_id}")
}

/// The pin subject of an object's guest (a Baseimage being configured).
pub fn object_subject(object_id: &str) -> String {
    format!("object:{object_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"one\ntw", |l| got.push(l.to_owned()));
        s.push(b"o\r\n\nthr\xffee", |l| got.push(l.to_owned()));
        s.flush(|l| got.push(l.to_owned()));
        assert_eq!(got, ["one", "two", "", "thr\u{fffd}ee"]);
        let mut got = Vec::new();
        s.push(&vec![b'x'; 10_000], |_| {});
        s.push(b"\n", |l| got.push(l.len()));
        assert_eq!(got, [MAX_LINE]);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        assert!(GuestError::Disconnected("x".into()).retryable());
        assert!(!GuestError::HostKeyChanged {
            subject: "instance:a".into(),
            pinned: "SHA256:a".into(),
            presented: "SHA256:b".into()
        }
        .retryable());
        let b: BackendError = GuestError::Disconnected("x".into()).into();
        assert!(b.retryable());
        let b: BackendError = GuestError::ScriptFailed {
            name: "s".into(),
            status: "exit status 3".into(),
        }
        .into();
        assert!(!b.retryable());
        assert!(crate::jobs::error_chain(&b).contains("exit status 3"));
    }
}
