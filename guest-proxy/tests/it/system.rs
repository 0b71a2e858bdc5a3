//! Operations that change the system, run for real inside a namespace
//! sandbox (copies of /etc and /home, an empty /run, own hostname).

use std::time::Duration;

use daas_guest_proxy_wire::message::{
    EnsureUser, Exec, Ready, Reboot, SetHostname, SetKeyboardLayout, Shutdown, Spawn,
};
use daas_guest_proxy_wire::ErrorCode;

use crate::support::{eventually, pid_alive, Sandbox, Xvnc};

fn exec(p: &mut crate::harness::Proxy, cmd: &str) -> String {
    let r = p.call_reply(Exec {
        argv: vec!["sh".into(), "-c".into(), cmd.into()],
        ..Default::default()
    });
    r.result::<Exec>().unwrap();
    String::from_utf8(r.stdout).unwrap()
}

#[test]
fn set_hostname_changes_kernel_name_and_files() {
    let Some(sb) = Sandbox::new("set_hostname") else {
        return;
    };
    let mut p = sb.proxy();
    let before = std::fs::read_to_string("/etc/hostname").ok();
    p.call(SetHostname {
        hostname: "desk-42.example.org".into(),
    })
    .unwrap();
    assert_eq!(exec(&mut p, "hostname").trim(), "desk-42.example.org");
    assert_eq!(
        std::fs::read_to_string(sb.path("etc/hostname")).unwrap(),
        "desk-42.example.org\n"
    );
    let hosts = std::fs::read_to_string(sb.path("etc/hosts")).unwrap();
    assert!(
        hosts.contains("127.0.1.1\tdesk-42.example.org desk-42\n"),
        "{hosts}"
    );
    for bad in ["", "bad_name", "-x", "a..b", &"x".repeat(300)] {
        let err = p
            .call(SetHostname {
                hostname: bad.into(),
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{bad}");
    }
    assert_eq!(
        std::fs::read_to_string("/etc/hostname").ok(),
        before,
        "the machine is untouched"
    );
}

#[test]
fn ensure_user_creates_once_and_is_idempotent() {
    let Some(sb) = Sandbox::new("ensure_user") else {
        return;
    };
    let mut p = sb.proxy();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKXyXOyqUmzBt8ZG7yEqfz3TsKF0CDkT0uv5ikj5LZR appliance";
    let r = p
        .call(EnsureUser {
            name: "daasuser".into(),
            groups: vec!["daasgrp".into(), "audio".into()],
            authorized_key: Some(key.into()),
            shell: None,
        })
        .unwrap();
    assert!(r.created && r.key_added);
    assert_eq!(r.home, "/home/daasuser");
    let id = exec(&mut p, "id daasuser");
    assert!(id.contains("(daasgrp)") && id.contains("(audio)"), "{id}");
    let keys = sb.path("home/daasuser/.ssh/authorized_keys");
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("{key}\n"));
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&keys).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (r.uid, 0o600));
    let again = p
        .call(EnsureUser {
            name: "daasuser".into(),
            groups: vec!["daasgrp".into(), "video".into()],
            authorized_key: Some(key.into()),
            shell: None,
        })
        .unwrap();
    assert!(!again.created && !again.key_added);
    assert_eq!(again.groups_added, vec!["video".to_string()]);
    assert_eq!(again.uid, r.uid);
    assert_eq!(std::fs::read_to_string(&keys).unwrap().lines().count(), 1);
    // a user's symlinked authorized_keys is not followed
    let victim = sb.path("etc/victim");
    std::fs::write(&victim, "keep\n").unwrap();
    std::fs::remove_file(&keys).unwrap();
    std::os::unix::fs::symlink("/etc/victim", &keys).unwrap();
    let err = p
        .call(EnsureUser {
            name: "daasuser".into(),
            groups: vec![],
            authorized_key: Some(key.into()),
            shell: None,
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Io, "{err:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    for (name, key) in [
        ("Bad Name", None),
        ("ok", Some("command=\"x\" ssh-ed25519 AAAA")),
    ] {
        let err = p
            .call(EnsureUser {
                name: name.into(),
                groups: vec![],
                authorized_key: key.map(str::to_string),
                shell: None,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
    assert!(!std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("daasuser"));
}

#[test]
fn ready_reads_systemd_state() {
    let mut p = crate::support::local(&[]);
    if !std::path::Path::new("/run/systemd/system").exists() {
        let r = p.call(Ready {}).unwrap();
        assert!(r.ready);
        assert_eq!(r.state, "no-systemd");
    }
    let Some(mut sb) = Sandbox::new("ready with systemd") else {
        return;
    };
    sb.systemd = true;
    let state = sb.path("state");
    std::fs::write(&state, "starting\n").unwrap();
    sb.fake_tool(
        "systemctl",
        &format!(
            "[ \"$1\" = is-system-running ] || exit 3\ncat {}\nexit 1",
            state.display()
        ),
    );
    let mut p = sb.proxy();
    let r = p.call(Ready {}).unwrap();
    assert_eq!((r.ready, r.state.as_str()), (false, "starting"));
    std::fs::write(&state, "degraded\n").unwrap();
    let r = p.call(Ready {}).unwrap();
    assert_eq!((r.ready, r.state.as_str()), (true, "degraded"));
}

#[test]
fn shutdown_and_reboot_answer_first_then_act() {
    let Some(mut sb) = Sandbox::new("shutdown/reboot") else {
        return;
    };
    let marker = sb.path("power.log");
    // No systemd in the sandbox: the proxy runs `poweroff` / `reboot`.
    for tool in ["poweroff", "reboot"] {
        sb.fake_tool(tool, &format!("echo {tool} >> {}", marker.display()));
    }
    let mut p = sb.proxy();
    let r = p
        .call(Shutdown {
            delay_ms: Some(300),
        })
        .unwrap();
    assert!(r.command[0].ends_with("/poweroff"), "{r:?}");
    assert!(!marker.exists(), "answered before acting");
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s == "poweroff\n")
    }));
    p.call(Reboot { delay_ms: Some(1) }).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s == "poweroff\nreboot\n")
    }));
    // with systemd, systemctl does it
    sb.systemd = true;
    sb.fake_tool(
        "systemctl",
        &format!("echo \"systemctl $*\" >> {}", marker.display()),
    );
    let mut p = sb.proxy();
    p.call(Reboot { delay_ms: Some(1) }).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s.ends_with("systemctl reboot\n"))
    }));
    // nothing to shut down with
    let mut p = crate::harness::Proxy::start({
        let mut c = std::process::Command::new(crate::support::BIN);
        c.arg("serve").env("PATH", sb.path("empty"));
        c
    });
    assert_eq!(
        p.call(Shutdown { delay_ms: None }).unwrap_err().code,
        ErrorCode::Unsupported
    );
}

#[test]
fn spawn_detaches_into_the_users_session() {
    let Some(x) = Xvnc::start("spawn") else {
        return;
    };
    let mut p = crate::support::local(&[]);
    let r = p
        .call(Spawn {
            user: "nobody".into(),
            display: x.display.clone(),
            argv: vec!["sleep".into(), "30".into()],
            env: [("APP_MODE".to_string(), "kiosk".to_string())].into(),
            cwd: Some("/".into()),
        })
        .unwrap();
    let pid = r.pid;
    assert!(pid_alive(pid));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t65534")),
        "{status}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("DISPLAY={}\0", x.display)),
        "{environ}"
    );
    assert!(environ.contains("APP_MODE=kiosk\0"));
    assert!(environ.contains("USER=nobody\0"));
    // its own session, not the proxy's
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let sid: u32 = fields[3].parse().unwrap();
    let proxy_stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id())).unwrap();
    let proxy_sid: u32 = proxy_stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(sid, proxy_sid);
    assert_eq!(fields[4], "0", "no controlling terminal");
    // it outlives the session
    drop(p);
    assert!(pid_alive(pid));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut p = crate::support::local(&[]);
    let spawn = |argv: &[&str], user: &str, display: &str| Spawn {
        user: user.into(),
        display: display.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        cwd: None,
    };
    let cases = [
        (
            spawn(&["/no/such/app"], "nobody", &x.display),
            ErrorCode::NotFound,
        ),
        (
            spawn(&["true"], "no-such-user-xyz", &x.display),
            ErrorCode::NotFound,
        ),
        (spawn(&["true"], "nobody", ":4099"), ErrorCode::NotFound),
        (
            spawn(&["true"], "nobody", "remote:0"),
            ErrorCode::InvalidArgument,
        ),
        (spawn(&[], "nobody", &x.display), ErrorCode::InvalidArgument),
    ];
    for (s, code) in cases {
        assert_eq!(p.call(s.clone()).unwrap_err().code, code, "{s:?}");
    }
}

#[test]
fn keyboard_layout_is_applied_and_persisted() {
    let Some(x) = Xvnc::start("set_keyboard_layout") else {
        return;
    };
    let Some(sb) = Sandbox::new("set_keyboard_layout") else {
        return;
    };
    let before = std::fs::read_to_string("/etc/default/keyboard").ok();
    let mut p = sb.proxy();
    let r = p
        .call(SetKeyboardLayout {
            display: Some(x.display.clone()),
            layout: "de".into(),
            variant: Some("nodeadkeys".into()),
            options: Some("compose:ralt".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(r.applied);
    assert_eq!(r.persisted_to.as_deref(), Some("/etc/default/keyboard"));
    let q = exec(&mut p, &format!("setxkbmap -display {} -query", x.display));
    assert!(q.contains("layout:     de"), "{q}");
    assert!(q.contains("variant:    nodeadkeys"), "{q}");
    assert!(q.contains("options:    compose:ralt"), "{q}");
    let kb = std::fs::read_to_string(sb.path("etc/default/keyboard")).unwrap();
    assert!(
        kb.contains("XKBLAYOUT=\"de\"\n") && kb.contains("XKBVARIANT=\"nodeadkeys\"\n"),
        "{kb}"
    );
    // persist only; no display
    p.call(SetKeyboardLayout {
        layout: "fr".into(),
        ..Default::default()
    })
    .unwrap();
    let kb = std::fs::read_to_string(sb.path("etc/default/keyboard")).unwrap();
    assert!(
        kb.contains("XKBLAYOUT=\"fr\"\n") && kb.contains("XKBVARIANT=\"\"\n"),
        "{kb}"
    );
    let err = p
        .call(SetKeyboardLayout {
            layout: "de;reboot".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert_eq!(
        std::fs::read_to_string("/etc/default/keyboard").ok(),
        before
    );
}
