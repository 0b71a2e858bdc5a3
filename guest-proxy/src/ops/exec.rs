//! `exec`: run a command, stream its output, end with its exit status.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use daas_guest_proxy_wire::message::{Exec, ExecResult, DEFAULT_OUTPUT_LIMIT};
use daas_guest_proxy_wire::{ErrorCode, Event, ServerMessage, Stream};

use crate::accounts::Accounts;
use crate::error::OpError;
use crate::serve::{reply, Entry, Shared, MAX_STDIN_BUFFER};
use crate::tools::{kill_group, search_path};

/// After the process exits, how long to wait for its output pipes to close
/// (a background child may hold them).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Messages to an exec's control thread.
pub(crate) enum ExecCtl {
    Exited(std::io::Result<ExitStatus>),
    PumpDone,
    Cancel,
    StdinOverflow,
}

/// The reader's end of an exec's stdin.
pub(crate) struct StdinFeed {
    tx: Sender<Vec<u8>>,
    pending: Arc<AtomicU64>,
}

impl StdinFeed {
    /// Queues data for the process (empty closes its stdin). `false` if
    /// that would exceed [`MAX_STDIN_BUFFER`] bytes not yet written.
    pub(crate) fn push(&self, data: Vec<u8>) -> bool {
        let n = data.len() as u64;
        if self.pending.load(Ordering::Relaxed) + n > MAX_STDIN_BUFFER {
            return false;
        }
        self.pending.fetch_add(n, Ordering::Relaxed);
        // The writer may be gone (the process closed stdin): data dropped.
        let _ = self.tx.send(data);
        true
    }
}

/// Registers the exec and starts its thread; the thread answers.
pub(crate) fn start(shared: &Arc<Shared>, id: u64, args: Exec) {
    let (ctl_tx, ctl_rx) = mpsc::channel();
    let pending = Arc::new(AtomicU64::new(0));
    let (feed, stdin_rx) = if args.stdin {
        let (tx, rx) = mpsc::channel();
        (
            Some(StdinFeed {
                tx,
                pending: Arc::clone(&pending),
            }),
            Some(rx),
        )
    } else {
        (None, None)
    };
    shared.inflight().insert(
        id,
        Entry::Exec {
            ctl: ctl_tx.clone(),
            stdin: feed,
        },
    );
    let shared2 = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("exec-{id}"))
        .spawn(move || {
            let r = run(
                &shared2,
                id,
                args,
                ctl_tx,
                ctl_rx,
                stdin_rx.map(|rx| (rx, pending)),
            );
            shared2.finish(id, reply::<Exec>(r));
        });
    if let Err(e) = spawned {
        shared.finish(
            id,
            Err(OpError::new(
                ErrorCode::Internal,
                format!("cannot start a thread: {e}"),
            )),
        );
    }
}

pub(crate) fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), OpError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(OpError::invalid(format!(
                "invalid environment variable {k:?}"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_argv(argv: &[String]) -> Result<&str, OpError> {
    let first = argv
        .first()
        .ok_or_else(|| OpError::invalid("argv is empty"))?;
    if first.is_empty() {
        return Err(OpError::invalid("argv[0] is empty"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(OpError::invalid("argv contains a NUL byte"));
    }
    Ok(first)
}

/// Whether `program` can be found as `Command` would find it.
fn program_exists(program: &str, path: Option<&str>) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).exists();
    }
    let search = path
        .map(std::ffi::OsString::from)
        .unwrap_or_else(search_path);
    std::env::split_paths(&search).any(|d| d.join(program).is_file())
}

fn build(args: &Exec, with_stdin: bool) -> Result<Command, OpError> {
    let argv0 = check_argv(&args.argv)?;
    check_env(&args.env)?;
    let mut cwd = args.cwd.clone();
    let mut cmd = match &args.user {
        None => {
            let mut cmd = Command::new(argv0);
            cmd.args(&args.argv[1..]);
            cmd
        }
        Some(name) => {
            let acc = Accounts::load(std::path::Path::new("/"));
            let user = acc
                .user(name)
                .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no user {name:?}")))?;
            if !program_exists(argv0, args.env.get("PATH").map(String::as_str)) {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("cannot run {argv0:?}: not found"),
                ));
            }
            let groups: Vec<String> = acc.group_ids(&user).iter().map(u32::to_string).collect();
            // The helper drops to the user (with supplementary groups) and
            // then becomes argv, keeping the pid.
            let mut cmd = Command::new("/proc/self/exe");
            cmd.arg(crate::detach::EXEC_AS_ARG)
                .arg(user.uid.to_string())
                .arg(user.gid.to_string())
                .arg(groups.join(","))
                .arg("--")
                .args(&args.argv);
            for (k, v) in [
                ("HOME", user.home.as_str()),
                ("USER", user.name.as_str()),
                ("LOGNAME", user.name.as_str()),
                ("SHELL", user.shell.as_str()),
            ] {
                cmd.env(k, v);
            }
            if cwd.is_none() && std::path::Path::new(&user.home).is_dir() {
                cwd = Some(user.home.clone());
            }
            cmd
        }
    };
    if args.clear_env {
        cmd.env_clear();
        if let Some(name) = &args.user {
            if let Some(user) = Accounts::load(std::path::Path::new("/")).user(name) {
                for (k, v) in [
                    ("HOME", user.home),
                    ("USER", user.name.clone()),
                    ("LOGNAME", user.name),
                ] {
                    cmd.env(k, v);
                }
            }
        }
    }
    if !args.env.contains_key("PATH") && (args.clear_env || std::env::var_os("PATH").is_none()) {
        cmd.env("PATH", search_path());
    }
    cmd.envs(&args.env);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.process_group(0)
        .stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

struct StreamCount {
    total: AtomicU64,
}

fn run(
    shared: &Arc<Shared>,
    id: u64,
    args: Exec,
    ctl_tx: Sender<ExecCtl>,
    ctl_rx: Receiver<ExecCtl>,
    stdin: Option<(Receiver<Vec<u8>>, Arc<AtomicU64>)>,
) -> Result<ExecResult, OpError> {
    let started = Instant::now();
    let mut cmd = build(&args, stdin.is_some())?;
    let argv0 = &args.argv[0];
    let mut child = cmd.spawn().map_err(|e| {
        OpError::io(
            format_args!(
                "cannot run {argv0:?}{}",
                args.cwd
                    .as_ref()
                    .map(|c| format!(" in {c:?}"))
                    .unwrap_or_default()
            ),
            &e,
        )
    })?;
    let pid = child.id();
    shared.register_group(id, pid);
    shared.out.send(&ServerMessage::Event {
        id,
        event: Event::Started { pid },
    });

    let limit = args.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT);
    // Set once the answer is about to be sent: no output after it.
    let finished = Arc::new(Mutex::new(false));
    let counts = [
        Arc::new(StreamCount {
            total: AtomicU64::new(0),
        }),
        Arc::new(StreamCount {
            total: AtomicU64::new(0),
        }),
    ];
    let pipes: [(Option<Box<dyn Read + Send>>, Stream); 2] = [
        (
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Stream::Stdout,
        ),
        (
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Stream::Stderr,
        ),
    ];
    let mut pumps_left = 0;
    for ((pipe, stream), count) in pipes.into_iter().zip(counts.iter()) {
        let Some(mut pipe) = pipe else { continue };
        pumps_left += 1;
        let (shared, finished, count, tx) = (
            Arc::clone(shared),
            Arc::clone(&finished),
            Arc::clone(count),
            ctl_tx.clone(),
        );
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let before = count.total.fetch_add(n as u64, Ordering::Relaxed);
                if before < limit {
                    let done = finished.lock().unwrap_or_else(|p| p.into_inner());
                    if !*done {
                        let room = usize::try_from(limit - before).unwrap_or(usize::MAX);
                        shared.out.send_data(id, stream, &buf[..n.min(room)]);
                    }
                }
            }
            let _ = tx.send(ExecCtl::PumpDone);
        });
    }
    if let (Some(mut pipe), Some((rx, pending))) = (child.stdin.take(), stdin) {
        thread::spawn(move || {
            let mut open = true;
            for data in rx {
                pending.fetch_sub(data.len() as u64, Ordering::Relaxed);
                if data.is_empty() {
                    break;
                }
                if open && pipe.write_all(&data).is_err() {
                    // The process closed its stdin: drop the rest.
                    open = false;
                }
            }
        });
    }
    {
        let tx = ctl_tx.clone();
        thread::spawn(move || {
            let _ = tx.send(ExecCtl::Exited(child.wait()));
        });
    }
    drop(ctl_tx);

    let deadline = args
        .timeout_ms
        .map(|ms| started + Duration::from_millis(ms));
    let mut status: Option<ExitStatus> = None;
    let mut outcome: Option<OpError> = None;
    let mut drain_until: Option<Instant> = None;
    let kill = |outcome: &mut Option<OpError>, e: OpError| {
        if outcome.is_none() {
            kill_group(pid);
            *outcome = Some(e);
        }
    };
    while status.is_none() || pumps_left > 0 {
        let watch_deadline = outcome.is_none() && status.is_none();
        let wake = match (watch_deadline.then_some(deadline).flatten(), drain_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let msg = match wake {
            Some(t) => ctl_rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => ctl_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(ExecCtl::Exited(Ok(s))) => {
                status = Some(s);
                drain_until.get_or_insert(Instant::now() + DRAIN_GRACE);
            }
            Ok(ExecCtl::Exited(Err(e))) => {
                kill_group(pid);
                shared.unregister_group(id);
                return Err(OpError::io("waiting for the process", &e));
            }
            Ok(ExecCtl::PumpDone) => pumps_left -= 1,
            Ok(ExecCtl::Cancel) => kill(&mut outcome, OpError::cancelled()),
            Ok(ExecCtl::StdinOverflow) => kill(
                &mut outcome,
                OpError::new(
                    ErrorCode::TooLarge,
                    format!("more than {MAX_STDIN_BUFFER} bytes of stdin queued that the process did not read"),
                ),
            ),
            Err(RecvTimeoutError::Timeout) => {
                if drain_until.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                if status.is_none() {
                    kill(
                        &mut outcome,
                        OpError::new(
                            ErrorCode::Timeout,
                            format!("timed out after {} ms; process group killed", args.timeout_ms.unwrap_or(0)),
                        ),
                    );
                    drain_until.get_or_insert(Instant::now() + DRAIN_GRACE);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    *finished.lock().unwrap_or_else(|p| p.into_inner()) = true;
    shared.unregister_group(id);
    if let Some(e) = outcome {
        return Err(e);
    }
    let status = status
        .ok_or_else(|| OpError::new(ErrorCode::Internal, "process did not report its exit"))?;
    let [out, err] = counts.map(|c| c.total.load(Ordering::Relaxed));
    Ok(ExecResult {
        exit_code: status.code(),
        signal: status.signal(),
        stdout_bytes: out,
        stderr_bytes: err,
        stdout_truncated: out > limit,
        stderr_truncated: err > limit,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}
