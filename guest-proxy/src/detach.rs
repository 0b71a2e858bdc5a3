//! Starting programs detached from the session: `spawn` and the delayed
//! `shutdown`/`reboot`.
//!
//! std cannot call `setsid` between fork and exec without unsafe code, so
//! the proxy runs itself as a helper (`daas-guest-proxy __detach`): the
//! helper, a fresh process and not a group leader, calls `setsid`, starts
//! the program with its stdio on `/dev/null`, prints the pid and exits. The
//! program, orphaned, belongs to init; it has a session of its own and no
//! controlling terminal, and outlives the SSH connection.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use daas_guest_proxy_wire::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::error::OpError;
use crate::tools::Tool;

pub(crate) const HELPER_ARG: &str = "__detach";
pub(crate) const DELAYED_ARG: &str = "__exec-after";
pub(crate) const EXEC_AS_ARG: &str = "__exec-as";

/// What to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DetachSpec {
    pub(crate) argv: Vec<String>,
    /// The whole environment.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: String,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    /// Supplementary groups (with `uid`).
    #[serde(default)]
    pub(crate) groups: Vec<u32>,
    /// Wait this long before starting the program.
    pub(crate) delay_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    pid: Option<u32>,
    error: Option<String>,
    #[serde(default)]
    not_found: bool,
}

/// Starts `spec` detached and returns its pid.
pub(crate) fn launch(spec: &DetachSpec) -> Result<u32, OpError> {
    let json = serde_json::to_vec(spec).map_err(|e| {
        OpError::new(
            ErrorCode::Internal,
            format!("cannot encode spawn spec: {e}"),
        )
    })?;
    let exe = Path::new("/proc/self/exe");
    let mut tool = Tool::new(exe, &[HELPER_ARG]);
    tool.stdin = Some(json);
    tool.own_group = false;
    tool.timeout = Duration::from_secs(10);
    let out = tool.run()?;
    let reply: Reply = serde_json::from_slice(&out.stdout).map_err(|_| {
        OpError::new(
            ErrorCode::Internal,
            format!(
                "spawn helper failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
    })?;
    match reply {
        Reply { pid: Some(pid), .. } => Ok(pid),
        Reply {
            error, not_found, ..
        } => Err(OpError::new(
            if not_found {
                ErrorCode::NotFound
            } else {
                ErrorCode::Io
            },
            error.unwrap_or_else(|| "spawn helper gave no pid".into()),
        )),
    }
}

/// `daas-guest-proxy __detach`: reads a [`DetachSpec`] on stdin, prints a
/// reply on stdout.
pub(crate) fn helper_main() -> ExitCode {
    let mut input = Vec::new();
    let reply = match std::io::stdin().take(16 << 20).read_to_end(&mut input) {
        Err(e) => Reply {
            pid: None,
            error: Some(format!("reading the spec: {e}")),
            not_found: false,
        },
        Ok(_) => match serde_json::from_slice::<DetachSpec>(&input) {
            Err(e) => Reply {
                pid: None,
                error: Some(format!("bad spec: {e}")),
                not_found: false,
            },
            Ok(spec) => match start(&spec) {
                Ok(pid) => Reply {
                    pid: Some(pid),
                    error: None,
                    not_found: false,
                },
                Err(e) => Reply {
                    pid: None,
                    not_found: e.kind() == std::io::ErrorKind::NotFound,
                    error: Some(format!(
                        "cannot start {:?}: {e}",
                        spec.argv.first().map(String::as_str).unwrap_or("")
                    )),
                },
            },
        },
    };
    match serde_json::to_string(&reply) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}

fn start(spec: &DetachSpec) -> std::io::Result<u32> {
    let Some(program) = spec.argv.first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty argv",
        ));
    };
    nix::unistd::setsid().map_err(std::io::Error::from)?;
    // Drop to the user here, in the helper, where supplementary groups can
    // be set without unsafe code (std's `uid()` would drop them all).
    if let Some(uid) = spec.uid {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        let gid = spec.gid.unwrap_or(uid);
        let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).map_err(std::io::Error::from)?;
        setgid(Gid::from_raw(gid)).map_err(std::io::Error::from)?;
        setuid(Uid::from_raw(uid)).map_err(std::io::Error::from)?;
    }
    let mut cmd = if spec.delay_ms > 0 {
        let mut c = Command::new("/proc/self/exe");
        c.arg(DELAYED_ARG)
            .arg(spec.delay_ms.to_string())
            .arg("--")
            .args(&spec.argv);
        c
    } else {
        let mut c = Command::new(program);
        c.args(&spec.argv[1..]);
        c
    };
    cmd.env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd.spawn()?.id())
}

/// `daas-guest-proxy __exec-after MS -- ARGV...`: sleeps, then becomes ARGV.
pub(crate) fn exec_after_main(args: &[String]) -> ExitCode {
    let (Some(ms), Some("--")) = (
        args.first().and_then(|s| s.parse::<u64>().ok()),
        args.get(1).map(String::as_str),
    ) else {
        return ExitCode::from(2);
    };
    let Some(program) = args.get(2) else {
        return ExitCode::from(2);
    };
    std::thread::sleep(Duration::from_millis(ms));
    let e = Command::new(program).args(&args[3..]).exec();
    eprintln!("daas-guest-proxy: cannot run {program:?}: {e}");
    ExitCode::from(127)
}

/// `daas-guest-proxy __exec-as UID GID GROUPS -- ARGV...`: takes on the
/// user's uid, gid and supplementary groups (comma-separated), then becomes
/// ARGV, keeping pid, process group, stdio, environment and cwd. `exec` runs
/// commands for a `user` through this, as std cannot set supplementary
/// groups in the child without unsafe code.
pub(crate) fn exec_as_main(args: &[String]) -> ExitCode {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let parse = |s: Option<&String>| s.and_then(|s| s.parse::<u32>().ok());
    let (Some(uid), Some(gid), Some(groups), Some("--"), Some(program)) = (
        parse(args.first()),
        parse(args.get(1)),
        args.get(2),
        args.get(3).map(String::as_str),
        args.get(4),
    ) else {
        eprintln!("daas-guest-proxy: bad {EXEC_AS_ARG} arguments");
        return ExitCode::from(2);
    };
    let groups: Option<Vec<Gid>> = groups
        .split(',')
        .filter(|g| !g.is_empty())
        .map(|g| g.parse::<u32>().ok().map(Gid::from_raw))
        .collect();
    let Some(groups) = groups else {
        eprintln!("daas-guest-proxy: bad groups {:?}", args[2]);
        return ExitCode::from(2);
    };
    let dropped = setgroups(&groups)
        .and_then(|()| setgid(Gid::from_raw(gid)))
        .and_then(|()| setuid(Uid::from_raw(uid)));
    if let Err(e) = dropped {
        eprintln!("daas-guest-proxy: cannot become uid {uid}: {e}");
        return ExitCode::from(126);
    }
    let e = Command::new(program).args(&args[5..]).exec();
    eprintln!("daas-guest-proxy: cannot run {program:?}: {e}");
    ExitCode::from(127)
}
