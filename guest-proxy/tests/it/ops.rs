//! `hello`, `ping`, `info` and `exec` over pipes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use daas_guest_proxy_wire::message::{Exec, Info, Ping};
use daas_guest_proxy_wire::{ErrorCode, Event, Stream, OPERATIONS, PROTOCOL_VERSION};

use crate::harness::{pseudo_random, Proxy};
use crate::support::{eventually, pid_alive};

fn exec(argv: &[&str]) -> Exec {
    Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn hello_names_version_and_capabilities() {
    let p = crate::support::local(&[]);
    assert_eq!(p.hello.protocol, PROTOCOL_VERSION);
    assert_eq!(p.hello.program, "daas-guest-proxy");
    assert_eq!(p.hello.version, env!("CARGO_PKG_VERSION"));
    let caps: Vec<&str> = p.hello.capabilities.iter().map(String::as_str).collect();
    assert_eq!(caps, OPERATIONS);
    assert_eq!(p.hello.limits.max_payload, 1 << 20);
}

#[test]
fn ping_and_info() {
    let mut p = crate::support::local(&[]);
    p.call(Ping {}).unwrap();
    let info = p.call(Info {}).unwrap();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(!info.hostname.is_empty());
    let os = std::fs::read_to_string("/etc/os-release").unwrap();
    let id = info.os.id.clone().unwrap();
    assert!(os.contains(&format!("ID={id}")), "{id}");
    assert!(info.memory.as_ref().unwrap().total_bytes > 0);
    assert!(info.uptime_secs.unwrap() > 0.0);
    assert!(info.load.is_some());
    assert!(info.kernel.is_some());
    assert!(!info.disks.is_empty(), "{info:?}");
    assert!(info.disks.iter().all(|d| d.total_bytes > 0));
}

#[test]
fn exec_streams_output_and_reports_status() {
    let mut p = crate::support::local(&[]);
    let r = p.call_reply(exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
    let res = r.result::<Exec>().unwrap();
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(res.exit_code, Some(3));
    assert_eq!(res.signal, None);
    assert_eq!((res.stdout_bytes, res.stderr_bytes), (4, 4));
    assert!(matches!(r.events[0], Event::Started { pid } if pid > 1));

    let res = p.call(exec(&["sh", "-c", "kill -KILL $$"])).unwrap();
    assert_eq!((res.exit_code, res.signal), (None, Some(9)));

    // env, cwd, clear_env
    let dir = tempfile::tempdir().unwrap();
    let mut e = exec(&[
        "sh",
        "-c",
        "printf '%s %s %s' \"$FOO\" \"$(pwd)\" \"${HOME:-none}\"",
    ]);
    e.env = BTreeMap::from([("FOO".into(), "bar baz".into())]);
    e.cwd = Some(dir.path().display().to_string());
    e.clear_env = true;
    let r = p.call_reply(e);
    assert_eq!(
        String::from_utf8(r.stdout).unwrap(),
        format!("bar baz {} none", dir.path().display())
    );

    // a clean signal mask and its own process group
    let r = p.call_reply(exec(&[
        "sh",
        "-c",
        "grep -E '^Sig(Blk|Ign)' /proc/self/status; ps -o pgid= -p $$; echo $$",
    ]));
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(text.contains("SigBlk:\t0000000000000000"), "{text}");
    let nums: Vec<&str> = text.lines().skip(2).map(str::trim).collect();
    if nums.len() == 2 {
        assert_eq!(nums[0], nums[1], "the command leads its own process group");
    }
}

#[test]
fn exec_as_user() {
    let mut p = crate::support::local(&[]);
    let mut e = exec(&["sh", "-c", "id -u; id -g; id -G; echo $HOME $USER; echo $$"]);
    e.user = Some("nobody".into());
    let r = p.call_reply(e);
    r.result::<Exec>().unwrap();
    let out = String::from_utf8(r.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("65534"));
    assert_eq!(lines.next(), Some("65534"));
    assert_eq!(
        lines.next(),
        Some("65534"),
        "supplementary groups as for a login"
    );
    assert!(lines.next().unwrap().ends_with(" nobody"));
    // the command keeps the pid announced in `started`
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    assert!(matches!(r.events[0], Event::Started { pid: p } if p == pid));
    let mut e = exec(&["/no/such/program"]);
    e.user = Some("nobody".into());
    assert_eq!(p.call(e).unwrap_err().code, ErrorCode::NotFound);
    let mut e = exec(&["true"]);
    e.user = Some("no-such-user-xyz".into());
    assert_eq!(p.call(e).unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn exec_stdin_is_streamed() {
    let mut p = crate::support::local(&[]);
    let data = pseudo_random(3 << 20, 7);
    let mut e = exec(&["sha256sum"]);
    e.stdin = true;
    let id = p.send(e);
    for chunk in data.chunks(100_000) {
        p.data(id, Stream::Stdin, chunk);
    }
    p.data(id, Stream::Stdin, b"");
    let r = p.wait(id);
    r.result::<Exec>().unwrap();
    let out = String::from_utf8(r.stdout).unwrap();
    assert_eq!(
        out.split_whitespace().next().unwrap(),
        crate::harness::sha256_hex(&data)
    );
    // stdin closed at once
    let mut e = exec(&["cat"]);
    e.stdin = true;
    let id = p.send(e);
    p.data(id, Stream::Stdin, b"");
    assert_eq!(p.wait(id).result::<Exec>().unwrap().exit_code, Some(0));
}

#[test]
fn exec_output_is_capped() {
    let mut p = crate::support::local(&[]);
    let mut e = exec(&[
        "sh",
        "-c",
        "head -c 1000000 /dev/zero; head -c 10 /dev/zero >&2",
    ]);
    e.output_limit = Some(1000);
    let r = p.call_reply(e);
    let res = r.result::<Exec>().unwrap();
    assert_eq!(r.stdout.len(), 1000);
    assert_eq!(res.stdout_bytes, 1_000_000);
    assert!(res.stdout_truncated);
    assert!(!res.stderr_truncated);
    assert_eq!(r.stderr.len(), 10);
}

/// The pid the command printed first on stdout.
fn first_pid(p: &mut Proxy, id: u64) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        if let Some(crate::harness::Msg::In(daas_guest_proxy_wire::Incoming::Data {
            id: i,
            data,
            ..
        })) = p.try_next(Duration::from_millis(100))
        {
            assert_eq!(i, id);
            out.extend_from_slice(&data);
            if let Some(line) = String::from_utf8_lossy(&out).lines().next() {
                if out.contains(&b'\n') {
                    return line.trim().parse().unwrap();
                }
            }
        }
    }
    panic!("no pid printed");
}

#[test]
fn exec_timeout_and_cancel_kill_the_process_group() {
    let mut p = crate::support::local(&[]);
    // timeout
    let mut e = exec(&["sh", "-c", "sleep 30 & echo $!; wait"]);
    e.timeout_ms = Some(300);
    let id = p.send(e);
    let r = p.wait(id);
    let err = r.result::<Exec>().unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout);
    let bg: u32 = String::from_utf8(r.stdout).unwrap().trim().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !pid_alive(bg)),
        "background child {bg} survived"
    );

    // cancel
    let id = p.send(exec(&["sh", "-c", "sleep 30 & echo $!; wait"]));
    let bg = first_pid(&mut p, id);
    let started = Instant::now();
    p.cancel(id);
    let err = p.wait(id).result::<Exec>().unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(5), || !pid_alive(bg)));
    // a cancel for an unknown id is ignored
    p.cancel(987_654);
    p.call(Ping {}).unwrap();
}

#[test]
fn requests_run_concurrently() {
    let mut p = crate::support::local(&[]);
    let slow = p.send(exec(&["sleep", "1"]));
    let started = Instant::now();
    p.call(Ping {}).unwrap();
    p.call(exec(&["true"])).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "blocked behind the slow request"
    );
    assert_eq!(p.wait(slow).result::<Exec>().unwrap().exit_code, Some(0));
}

#[test]
fn exec_errors_are_typed() {
    let mut p = crate::support::local(&[]);
    assert_eq!(
        p.call(exec(&["/no/such/program"])).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        p.call(exec(&[])).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let mut e = exec(&["true"]);
    e.env.insert("A=B".into(), "x".into());
    assert_eq!(p.call(e).unwrap_err().code, ErrorCode::InvalidArgument);
    let mut e = exec(&["true"]);
    e.cwd = Some("/no/such/dir".into());
    assert_eq!(p.call(e).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        p.call(exec(&["a\0b"])).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn session_end_kills_running_commands() {
    let mut p = crate::support::local(&[]);
    let id = p.send(exec(&["sh", "-c", "sleep 60 & echo $!; wait"]));
    let bg = first_pid(&mut p, id);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("proxy exits on EOF");
    assert!(status.success(), "{status:?}");
    assert!(eventually(Duration::from_secs(5), || !pid_alive(bg)));
}

#[test]
fn termination_signal_cleans_up() {
    let mut p = crate::support::local(&[]);
    let id = p.send(exec(&["sh", "-c", "sleep 60 & echo $!; wait"]));
    let bg = first_pid(&mut p, id);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(p.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("proxy exits on SIGTERM");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::into_raw(status) >> 8,
        128 + 15
    );
    assert!(eventually(Duration::from_secs(5), || !pid_alive(bg)));
}
