//! dnsmasq: telling it to re-read the hosts file (SIGHUP), and in managed
//! mode running and supervising it.
//!
//! - **external**: dnsmasq is the system's; the agent reads its pid file and
//!   checks that the pid is a dnsmasq (`/proc/<pid>/comm`) before signalling,
//!   so a stale pid file never makes the agent signal another process.
//! - **managed**: the agent starts dnsmasq in the foreground with the
//!   options the hosts file needs, logs its stderr, keeps the last lines for
//!   errors, and restarts it with a growing delay when it exits.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daas_agent_api::status::{DnsmasqMode, DnsmasqState, DnsmasqStatus, ExitInfo};
use daas_agent_api::Ipv4Range;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::util::unix_now;

/// How long a managed dnsmasq must stay up to count as started.
const STARTUP_GRACE: Duration = Duration::from_millis(300);
/// Lines of stderr kept for errors.
const STDERR_LINES: usize = 20;

/// What the agent knows of dnsmasq, and how to reach it.
pub struct Dnsmasq {
    mode: Mode,
    status: watch::Sender<DnsmasqStatus>,
    version: Option<String>,
}

enum Mode {
    External {
        pid_file: PathBuf,
        comm: String,
    },
    Managed {
        task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    },
}

/// How to run a managed dnsmasq.
#[derive(Debug, Clone)]
pub struct ManagedSpec {
    pub binary: PathBuf,
    pub interface: String,
    pub range: Ipv4Range,
    pub lease_time: String,
    pub hosts_file: PathBuf,
    pub lease_file: PathBuf,
    pub extra_args: Vec<String>,
    pub restart_max: Duration,
}

impl ManagedSpec {
    /// The command line: foreground, no config file, no DNS, DHCP only for
    /// the hosts of the hosts file (`static` range), on one interface.
    pub fn args(&self) -> Vec<OsString> {
        let r = &self.range;
        let mut args: Vec<OsString> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--log-facility=-".into(),
            "--pid-file=".into(),
            "--port=0".into(),
            "--bind-interfaces".into(),
            format!("--interface={}", self.interface).into(),
            format!(
                "--dhcp-range={},static,{},{}",
                r.subnet().network(),
                r.subnet().netmask(),
                self.lease_time
            )
            .into(),
            "--dhcp-authoritative".into(),
        ];
        let mut hosts = OsString::from("--dhcp-hostsfile=");
        hosts.push(&self.hosts_file);
        args.push(hosts);
        let mut leases = OsString::from("--dhcp-leasefile=");
        leases.push(&self.lease_file);
        args.push(leases);
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }
}

/// dnsmasq could not be told to reload; the status says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct ReloadError(pub DnsmasqStatus);

/// A one-line account of what is wrong with dnsmasq.
pub fn describe(s: &DnsmasqStatus) -> String {
    let mut out = match (s.state, &s.last_exit) {
        (DnsmasqState::Failed, Some(exit)) => format!("dnsmasq is not running: {exit}"),
        (DnsmasqState::Running, _) => "dnsmasq is running".to_owned(),
        (DnsmasqState::Starting, _) => "dnsmasq is starting".to_owned(),
        (DnsmasqState::Stopped, _) => "dnsmasq is stopped".to_owned(),
        _ => "dnsmasq is not running".to_owned(),
    };
    if let Some(m) = &s.message {
        out.push_str(": ");
        out.push_str(m);
    }
    if let Some(e) = &s.stderr {
        out.push_str("; stderr: ");
        out.push_str(e.trim_end());
    }
    out
}

fn initial(mode: DnsmasqMode, state: DnsmasqState) -> DnsmasqStatus {
    DnsmasqStatus {
        mode,
        state,
        pid: None,
        last_exit: None,
        stderr: None,
        restarts: 0,
        reloads: 0,
        message: None,
    }
}

impl Dnsmasq {
    /// An external dnsmasq found through `pid_file`.
    pub async fn external(binary: &Path, pid_file: PathBuf) -> Arc<Self> {
        let comm = binary
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_else(|| "dnsmasq".to_owned());
        let (status, _) = watch::channel(initial(DnsmasqMode::External, DnsmasqState::NotRunning));
        let d = Arc::new(Dnsmasq {
            mode: Mode::External { pid_file, comm },
            status,
            version: version(binary).await,
        });
        d.refresh_external();
        d
    }

    /// Starts dnsmasq and supervises it until `stop` is cancelled. Returns
    /// once it has started or failed its first start.
    pub async fn managed(spec: ManagedSpec, stop: CancellationToken) -> Arc<Self> {
        let (status, _) = watch::channel(initial(DnsmasqMode::Managed, DnsmasqState::Starting));
        let d = Arc::new(Dnsmasq {
            mode: Mode::Managed {
                task: Mutex::new(None),
            },
            status,
            version: version(&spec.binary).await,
        });
        let task = tokio::spawn(supervise(d.clone(), spec, stop));
        if let Mode::Managed { task: slot } = &d.mode {
            *slot.lock().expect("not poisoned") = Some(task);
        }
        d.settled().await;
        d
    }

    /// Waits for a managed dnsmasq to stop (after its `stop` was cancelled).
    pub async fn join(&self) {
        if let Mode::Managed { task } = &self.mode {
            let t = task.lock().expect("not poisoned").take();
            if let Some(t) = t {
                let _ = t.await;
            }
        }
    }

    /// dnsmasq's version (`dnsmasq --version`), if it could be run.
    pub fn version(&self) -> Option<String> {
        self.version.clone()
    }

    /// The current state.
    pub fn status(&self) -> DnsmasqStatus {
        if matches!(self.mode, Mode::External { .. }) {
            self.refresh_external();
        }
        self.status.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn subscribe(&self) -> watch::Receiver<DnsmasqStatus> {
        self.status.subscribe()
    }

    /// Waits (at most 2 s) until a managed dnsmasq is no longer starting.
    async fn settled(&self) {
        let mut rx = self.status.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|s| s.state != DnsmasqState::Starting),
        )
        .await;
    }

    /// Makes dnsmasq re-read the hosts file (SIGHUP).
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let pid = match &self.mode {
            Mode::External { .. } => {
                self.refresh_external();
                self.status.borrow().pid
            }
            Mode::Managed { .. } => {
                self.settled().await;
                let s = self.status.borrow();
                (s.state == DnsmasqState::Running)
                    .then_some(s.pid)
                    .flatten()
            }
        };
        let Some(pid) = pid else {
            return Err(ReloadError(self.status.borrow().clone()));
        };
        let pid_i32 = i32::try_from(pid).map_err(|_| ReloadError(self.status.borrow().clone()))?;
        match kill(Pid::from_raw(pid_i32), Signal::SIGHUP) {
            Ok(()) => {
                self.status.send_modify(|s| s.reloads += 1);
                Ok(())
            }
            Err(e) => {
                let mut s = self.status.borrow().clone();
                s.message = Some(format!("cannot signal pid {pid}: {e}"));
                Err(ReloadError(s))
            }
        }
    }

    fn refresh_external(&self) {
        let Mode::External { pid_file, comm } = &self.mode else {
            return;
        };
        let (pid, message) = match find_external(pid_file, comm) {
            Ok(pid) => (Some(pid), None),
            Err(m) => (None, Some(m)),
        };
        self.status.send_if_modified(|s| {
            let state = if pid.is_some() {
                DnsmasqState::Running
            } else {
                DnsmasqState::NotRunning
            };
            let changed = s.pid != pid || s.message != message || s.state != state;
            s.pid = pid;
            s.message = message;
            s.state = state;
            changed
        });
    }
}

fn find_external(pid_file: &Path, comm: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read pid file {}: {e}", pid_file.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 1)
        .ok_or_else(|| format!("pid file {} holds no pid", pid_file.display()))?;
    let actual = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|_| format!("pid {pid} from {} is not running", pid_file.display()))?;
    if actual.trim_end() != comm {
        return Err(format!(
            "pid {pid} from {} is {:?}, not {comm:?} (stale pid file)",
            pid_file.display(),
            actual.trim_end()
        ));
    }
    Ok(pid)
}

/// Runs `binary --version` and returns the version number.
async fn version(binary: &Path) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `Dnsmasq version 2.90  Copyright ...` → `2.90`.
pub fn parse_version(text: &str) -> Option<String> {
    let rest = text
        .lines()
        .next()?
        .trim()
        .strip_prefix("Dnsmasq version ")?;
    let v = rest.split_whitespace().next()?;
    (!v.is_empty() && v.len() <= 32).then(|| v.to_owned())
}

async fn supervise(d: Arc<Dnsmasq>, spec: ManagedSpec, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        d.status.send_modify(|s| {
            s.state = DnsmasqState::Starting;
            s.pid = None;
        });
        let started = Instant::now();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut cmd = tokio::process::Command::new(&spec.binary);
        cmd.args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match cmd.spawn() {
            Err(e) => {
                tracing::error!(binary = %spec.binary.display(), error = %e, "cannot run dnsmasq");
                d.status.send_modify(|s| {
                    s.state = DnsmasqState::Failed;
                    s.message = Some(format!("cannot run {}: {e}", spec.binary.display()));
                });
            }
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(pid, "dnsmasq started");
                let reader = child.stderr.take().map(|err| {
                    let tail = tail.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(err).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::info!(target: "dnsmasq", "{line}");
                            let mut t = tail.lock().expect("not poisoned");
                            if t.len() == STDERR_LINES {
                                t.pop_front();
                            }
                            t.push_back(line.chars().take(500).collect::<String>());
                        }
                    })
                });
                let grace = tokio::time::sleep(STARTUP_GRACE);
                tokio::pin!(grace);
                let mut running = false;
                let exit = loop {
                    tokio::select! {
                        status = child.wait() => break Some(status),
                        _ = &mut grace, if !running => {
                            running = true;
                            d.status.send_modify(|s| {
                                s.state = DnsmasqState::Running;
                                s.pid = pid;
                                s.message = None;
                            });
                        }
                        _ = stop.cancelled() => break None,
                    }
                };
                match exit {
                    None => {
                        terminate(&mut child).await;
                        if let Some(r) = reader {
                            let _ = r.await;
                        }
                        d.status.send_modify(|s| {
                            s.state = DnsmasqState::Stopped;
                            s.pid = None;
                        });
                        tracing::info!("dnsmasq stopped");
                        return;
                    }
                    Some(status) => {
                        // Let the reader drain what dnsmasq wrote before it exited.
                        if let Some(r) = reader {
                            let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
                        }
                        let stderr: Vec<String> =
                            tail.lock().expect("not poisoned").iter().cloned().collect();
                        let exit = match status {
                            Ok(st) => {
                                use std::os::unix::process::ExitStatusExt;
                                ExitInfo {
                                    code: st.code(),
                                    signal: st.signal(),
                                    at: unix_now(),
                                }
                            }
                            Err(_) => ExitInfo {
                                code: None,
                                signal: None,
                                at: unix_now(),
                            },
                        };
                        let stderr = (!stderr.is_empty()).then(|| stderr.join("\n"));
                        tracing::error!(
                            exit = %exit,
                            stderr = stderr.as_deref().unwrap_or(""),
                            "dnsmasq exited; restarting in {:?}",
                            backoff
                        );
                        d.status.send_modify(|s| {
                            s.state = DnsmasqState::Failed;
                            s.pid = None;
                            s.last_exit = Some(exit);
                            s.stderr = stderr;
                            s.message = None;
                        });
                    }
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => {
                d.status.send_modify(|s| s.state = DnsmasqState::Stopped);
                return;
            }
        }
        backoff = (backoff * 2).min(spec.restart_max);
        d.status.send_modify(|s| s.restarts += 1);
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_data() {
        assert_eq!(
            parse_version("Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley\nCompile time options: IPv6\n"),
            Some("2.90".into())
        );
        assert_eq!(parse_version("dnsmasq 2.90"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("Dnsmasq version "), None);
    }

    #[test]
    fn managed_command_line() {
        let range = Ipv4Range::new(
            "10.77.0.0/24".parse().unwrap(),
            "10.77.0.100".parse().unwrap(),
            "10.77.0.199".parse().unwrap(),
        )
        .unwrap();
        let spec = ManagedSpec {
            binary: "dnsmasq".into(),
            interface: "br0".into(),
            range,
            lease_time: "1h".into(),
            hosts_file: "/var/lib/daas-agent/dnsmasq-hosts".into(),
            lease_file: "/var/lib/daas-agent/dnsmasq.leases".into(),
            extra_args: vec!["--log-dhcp".into()],
            restart_max: Duration::from_secs(30),
        };
        let args: Vec<String> = spec
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.contains(&"--interface=br0".to_owned()));
        assert!(args.contains(&"--dhcp-range=10.77.0.0,static,255.255.255.0,1h".to_owned()));
        assert!(args.contains(&"--dhcp-hostsfile=/var/lib/daas-agent/dnsmasq-hosts".to_owned()));
        assert_eq!(args.last().unwrap(), "--log-dhcp");
    }

    #[tokio::test]
    async fn external_without_pid_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dnsmasq::external(Path::new("dnsmasq"), dir.path().join("none.pid")).await;
        let s = d.status();
        assert_eq!(s.state, DnsmasqState::NotRunning);
        assert!(s.message.unwrap().contains("cannot read pid file"));
        let err = d.reload().await.unwrap_err();
        assert!(err
            .to_string()
            .contains("dnsmasq is not running: cannot read pid file"));
        // a pid file naming a process that is not dnsmasq: never signalled
        std::fs::write(dir.path().join("me.pid"), std::process::id().to_string()).unwrap();
        let d = Dnsmasq::external(Path::new("dnsmasq"), dir.path().join("me.pid")).await;
        let err = d.reload().await.unwrap_err().to_string();
        assert!(err.contains("stale pid file"), "{err}");
    }
}
