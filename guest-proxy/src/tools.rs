//! Running the guest's own tools (`setxkbmap`, `useradd`, `systemctl`, ...)
//! with a timeout, captured output and a clean error when they are missing.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use daas_guest_proxy_wire::ErrorCode;

use crate::error::{IoContext, OpError};

/// `PATH` when the proxy's environment has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `PATH` the proxy and its children use.
pub(crate) fn search_path() -> OsString {
    std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into())
}

/// Finds an executable by name on the search path.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&search_path())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first of `names` found, or an `unsupported` error naming them all.
pub(crate) fn require_tool(names: &[&str], purpose: &str) -> Result<(String, PathBuf), OpError> {
    names
        .iter()
        .find_map(|n| find_tool(n).map(|p| (n.to_string(), p)))
        .ok_or_else(|| {
            OpError::unsupported(format!(
                "{purpose} needs {} in the guest; none found on PATH",
                names.join(" or ")
            ))
        })
}

/// What a tool run produced.
#[derive(Debug)]
pub(crate) struct ToolOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl ToolOutput {
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How to run a tool.
pub(crate) struct Tool<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Option<Vec<u8>>,
    /// Capture stdout; off for tools that fork a daemon that keeps it open.
    pub(crate) capture_stdout: bool,
    /// Put the tool in a process group of its own (killed as a whole on
    /// timeout). Off for the detach helper, which calls `setsid`.
    pub(crate) own_group: bool,
    pub(crate) timeout: Duration,
}

impl<'a> Tool<'a> {
    pub(crate) fn new(program: &'a Path, args: &[&str]) -> Self {
        Self {
            program,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            stdin: None,
            capture_stdout: true,
            own_group: true,
            timeout: Duration::from_secs(60),
        }
    }

    /// Runs the tool; a non-zero exit is not an error here.
    pub(crate) fn run(self) -> Result<ToolOutput, OpError> {
        let name = self.program.display().to_string();
        let mut cmd = Command::new(self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", search_path())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if self.capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        if self.own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().ctx(format_args!("cannot run {name}"))?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<Event>();
        if let (Some(mut pipe), Some(data)) = (child.stdin.take(), self.stdin) {
            thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let mut pumps = 0;
        for (pipe, is_err) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                false,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                true,
            ),
        ] {
            if let Some(mut pipe) = pipe {
                pumps += 1;
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut kept = 0usize;
                    loop {
                        match pipe.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                // Keep at most 4 MiB (these tools print little);
                                // drain the rest so the tool never blocks.
                                if kept < 4 << 20 {
                                    kept += n;
                                    if tx.send(Event::Chunk(is_err, buf[..n].to_vec())).is_err() {
                                        kept = usize::MAX;
                                    }
                                }
                            }
                        }
                    }
                    let _ = tx.send(Event::Eof);
                });
            }
        }
        {
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(Event::Exited(child.wait()));
            });
        }
        drop(tx);
        let deadline = std::time::Instant::now() + self.timeout;
        let mut status = None;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut grace_deadline = None;
        while status.is_none() || pumps > 0 {
            let until = grace_deadline.unwrap_or(deadline);
            let wait = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Event::Exited(s)) => {
                    status = Some(s.ctx(format_args!("waiting for {name}"))?);
                    // A daemon it forked may hold the pipes: wait briefly only.
                    grace_deadline = Some(std::time::Instant::now() + Duration::from_millis(300));
                }
                Ok(Event::Chunk(is_err, buf)) => {
                    if is_err {
                        stderr.extend_from_slice(&buf);
                    } else {
                        stdout.extend_from_slice(&buf);
                    }
                }
                Ok(Event::Eof) => pumps -= 1,
                Err(_) if grace_deadline.is_some() => break,
                Err(_) => {
                    if self.own_group {
                        kill_group(pid);
                    }
                    return Err(OpError::new(
                        ErrorCode::Timeout,
                        format!("{name} did not finish within {:?}", self.timeout),
                    ));
                }
            }
        }
        let Some(status) = status else {
            return Err(OpError::new(
                ErrorCode::Internal,
                format!("{name}: no exit status"),
            ));
        };
        Ok(ToolOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs the tool; a non-zero exit is a `command_failed` error with its
    /// stderr.
    pub(crate) fn run_ok(self) -> Result<ToolOutput, OpError> {
        let shown = std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let out = self.run()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(OpError::new(
                ErrorCode::CommandFailed,
                format!(
                    "`{shown}` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }
}

enum Event {
    Exited(std::io::Result<ExitStatus>),
    Chunk(bool, Vec<u8>),
    Eof,
}

/// SIGKILL to a process group (by its leader's pid); errors (already gone)
/// are ignored.
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_captures_and_times_out() {
        let sh = find_tool("sh").unwrap();
        let out = Tool::new(&sh, &["-c", "echo out; echo err >&2; exit 3"])
            .run()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let e = Tool::new(&sh, &["-c", "exit 4"]).run_ok().unwrap_err();
        assert_eq!(e.code, ErrorCode::CommandFailed);
        let mut t = Tool::new(&sh, &["-c", "sleep 5"]);
        t.timeout = Duration::from_millis(100);
        assert_eq!(t.run().unwrap_err().code, ErrorCode::Timeout);
        let mut t = Tool::new(&sh, &["-c", "cat"]);
        t.stdin = Some(b"piped".to_vec());
        assert_eq!(t.run().unwrap().stdout, b"piped");
        // a forked child holding stderr does not make us wait for it
        let start = std::time::Instant::now();
        let out = Tool::new(&sh, &["-c", "sleep 3 & echo done"])
            .run()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"done\n");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(require_tool(&["no-such-tool-xyz"], "testing").is_err());
    }
}
