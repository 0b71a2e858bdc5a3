//! System operations: hostname, users, readiness, power, and `spawn`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;

use daas_guest_proxy_wire::message::Empty;
use daas_guest_proxy_wire::message::{
    EnsureUser, EnsureUserResult, PowerResult, ReadyResult, SetHostname, Spawn, SpawnResult,
};
use daas_guest_proxy_wire::ErrorCode;
use rustix::fs::{FileType, Gid, Mode, OFlags, Uid};

use crate::accounts::{valid_name, Accounts, User};
use crate::detach::{launch, DetachSpec};
use crate::error::{IoContext, OpError};
use crate::fsutil::write_atomic;
use crate::ops::exec::{check_argv, check_env};
use crate::ops::x11::{parse_display, x_env};
use crate::serve::Ctx;
use crate::tools::{find_tool, require_tool, search_path, Tool};

// --------------------------------------------------------------------------
// set_hostname

/// RFC 1123 host names: dot-separated labels of letters, digits and `-`.
pub(crate) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Points the `127.0.1.1` line of `/etc/hosts` (Debian's convention for the
/// host's own name) at `name`, adding it if missing.
pub(crate) fn update_hosts(old: &str, name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let entry = if short == name {
        format!("127.0.1.1\t{name}")
    } else {
        format!("127.0.1.1\t{name} {short}")
    };
    let mut out = String::new();
    let mut replaced = false;
    for line in old.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !replaced {
                out.push_str(&entry);
                out.push('\n');
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&entry);
        out.push('\n');
    }
    out
}

pub(crate) fn set_hostname(_ctx: &Ctx, a: SetHostname) -> Result<Empty, OpError> {
    if !valid_hostname(&a.hostname) {
        return Err(OpError::invalid(format!(
            "{:?} is not a valid host name",
            a.hostname
        )));
    }
    nix::unistd::sethostname(&a.hostname)
        .map_err(|e| OpError::io("cannot set the host name", &std::io::Error::from(e)))?;
    write_atomic(
        Path::new("/etc/hostname"),
        format!("{}\n", a.hostname).as_bytes(),
        0o644,
    )?;
    let hosts = Path::new("/etc/hosts");
    let old = std::fs::read_to_string(hosts).unwrap_or_default();
    write_atomic(hosts, update_hosts(&old, &a.hostname).as_bytes(), 0o644)?;
    Ok(Empty {})
}

// --------------------------------------------------------------------------
// ensure_user

/// An OpenSSH public key line: `TYPE BASE64 [COMMENT]`, one line, no options.
pub(crate) fn check_public_key(key: &str) -> Result<(&str, &str), OpError> {
    let bad = |why: &str| OpError::invalid(format!("authorized_key: {why}"));
    if key.len() > 16 * 1024 {
        return Err(bad("longer than 16 KiB"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(bad("must be one line without control characters"));
    }
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(bad("expected \"TYPE BASE64 [COMMENT]\""));
    };
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-sha2-");
    if !known {
        return Err(bad(&format!(
            "unknown key type {kind:?} (options are not accepted)"
        )));
    }
    if !blob
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err(bad("key data is not base64"));
    }
    Ok((kind, blob))
}

/// Whether an authorized_keys text already has this key (any options).
pub(crate) fn has_key(text: &str, kind: &str, blob: &str) -> bool {
    text.lines().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.windows(2).any(|w| w[0] == kind && w[1] == blob)
    })
}

fn run_tool(name_options: &[&str], args: &[&str], purpose: &str) -> Result<(), OpError> {
    let (_, path) = require_tool(name_options, purpose)?;
    Tool::new(&path, args).run_ok().map(|_| ())
}

fn add_group(name: &str) -> Result<(), OpError> {
    if find_tool("groupadd").is_some() {
        run_tool(&["groupadd"], &[name], "ensure_user")
    } else {
        run_tool(&["addgroup"], &[name], "ensure_user")
    }
}

fn add_to_group(user: &str, group: &str) -> Result<(), OpError> {
    if find_tool("usermod").is_some() {
        run_tool(&["usermod"], &["-a", "-G", group, user], "ensure_user")
    } else {
        // busybox
        run_tool(&["addgroup"], &[user, group], "ensure_user")
    }
}

pub(crate) fn ensure_user(_ctx: &Ctx, a: EnsureUser) -> Result<EnsureUserResult, OpError> {
    if !valid_name(&a.name) {
        return Err(OpError::invalid(format!(
            "{:?} is not a valid user name",
            a.name
        )));
    }
    for g in &a.groups {
        if !valid_name(g) {
            return Err(OpError::invalid(format!("{g:?} is not a valid group name")));
        }
    }
    let key = a
        .authorized_key
        .as_deref()
        .map(check_public_key)
        .transpose()?;
    let shell = match &a.shell {
        Some(s) if s.starts_with('/') && !s.contains(char::is_control) => s.clone(),
        Some(s) => {
            return Err(OpError::invalid(format!(
                "shell {s:?} is not an absolute path"
            )))
        }
        None if Path::new("/bin/bash").exists() => "/bin/bash".into(),
        None => "/bin/sh".into(),
    };

    let root = Path::new("/");
    let mut acc = Accounts::load(root);
    for g in &a.groups {
        if acc.group(g).is_none() {
            add_group(g)?;
        }
    }
    acc = Accounts::load(root);
    let mut created = false;
    let mut groups_added = Vec::new();
    if acc.users.iter().all(|u| u.name != a.name) {
        if find_tool("useradd").is_some() {
            let groups = a.groups.join(",");
            let mut args = vec!["-m", "-U", "-s", &shell];
            if !groups.is_empty() {
                args.extend(["-G", &groups]);
            }
            args.push(&a.name);
            run_tool(&["useradd"], &args, "ensure_user")?;
            groups_added = a.groups.clone();
        } else {
            run_tool(&["adduser"], &["-D", "-s", &shell, &a.name], "ensure_user")?;
        }
        created = true;
        acc = Accounts::load(root);
    }
    let user = acc
        .users
        .iter()
        .find(|u| u.name == a.name)
        .cloned()
        .ok_or_else(|| {
            OpError::new(
                ErrorCode::Internal,
                format!("user {} missing after creation", a.name),
            )
        })?;
    for g in &a.groups {
        if !acc.is_member(&user, g) {
            add_to_group(&user.name, g)?;
            groups_added.push(g.clone());
        }
    }
    let key_added = match key {
        Some((kind, blob)) => {
            add_authorized_key(&user, kind, blob, a.authorized_key.as_deref().unwrap_or(""))?
        }
        None => false,
    };
    Ok(EnsureUserResult {
        created,
        uid: user.uid,
        gid: user.gid,
        home: user.home,
        groups_added,
        key_added,
    })
}

/// Appends a key to `~/.ssh/authorized_keys`, walking with `O_NOFOLLOW` so
/// that a user's symlink cannot redirect root's write.
fn add_authorized_key(user: &User, kind: &str, blob: &str, line: &str) -> Result<bool, OpError> {
    let home = Path::new(&user.home);
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let home_fd = rustix::fs::open(home, dir_flags, Mode::empty())
        .ctx(format_args!("cannot open home {}", home.display()))?;
    let (uid, gid) = (Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)));
    let ssh = OsStr::new(".ssh");
    match rustix::fs::mkdirat(&home_fd, ssh, Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            let fd = rustix::fs::openat(&home_fd, ssh, dir_flags, Mode::empty())
                .ctx("cannot open ~/.ssh")?;
            rustix::fs::fchown(&fd, uid, gid).ctx("cannot chown ~/.ssh")?;
        }
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e).ctx("cannot create ~/.ssh"),
    }
    let ssh_fd =
        rustix::fs::openat(&home_fd, ssh, dir_flags, Mode::empty()).ctx("cannot open ~/.ssh")?;
    let fd = rustix::fs::openat(
        &ssh_fd,
        "authorized_keys",
        OFlags::RDWR | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ctx("cannot open ~/.ssh/authorized_keys")?;
    let st = rustix::fs::fstat(&fd).ctx("cannot stat ~/.ssh/authorized_keys")?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(OpError::invalid(
            "~/.ssh/authorized_keys is not a regular file",
        ));
    }
    let mut f = std::fs::File::from(fd);
    let mut text = String::new();
    f.read_to_string(&mut text)
        .ctx("cannot read ~/.ssh/authorized_keys")?;
    if has_key(&text, kind, blob) {
        return Ok(false);
    }
    let mut add = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        add.push('\n');
    }
    add.push_str(line.trim());
    add.push('\n');
    f.write_all(add.as_bytes())
        .ctx("cannot write ~/.ssh/authorized_keys")?;
    f.sync_all().ctx("fsync ~/.ssh/authorized_keys")?;
    rustix::fs::fchown(&f, uid, gid).ctx("cannot chown ~/.ssh/authorized_keys")?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(0o600))
        .ctx("cannot chmod ~/.ssh/authorized_keys")?;
    Ok(true)
}

// --------------------------------------------------------------------------
// ready, shutdown, reboot

fn has_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub(crate) fn ready(_ctx: &Ctx) -> Result<ReadyResult, OpError> {
    let systemctl = find_tool("systemctl");
    let (true, Some(systemctl)) = (has_systemd(), systemctl) else {
        return Ok(ReadyResult {
            ready: true,
            state: "no-systemd".into(),
        });
    };
    // Non-zero exit for anything but "running"; the text is what counts.
    let out = Tool::new(&systemctl, &["is-system-running"]).run()?;
    let state = out.stdout_text().trim().to_string();
    Ok(ReadyResult {
        ready: state == "running" || state == "degraded",
        state,
    })
}

pub(crate) fn power(
    _ctx: &Ctx,
    reboot: bool,
    delay_ms: Option<u64>,
) -> Result<PowerResult, OpError> {
    let verb = if reboot { "reboot" } else { "poweroff" };
    let argv: Vec<String> = match (has_systemd(), find_tool("systemctl")) {
        (true, Some(p)) => vec![p.display().to_string(), verb.into()],
        _ => {
            let (_, p) = require_tool(&[verb], if reboot { "reboot" } else { "shutdown" })?;
            vec![p.display().to_string()]
        }
    };
    let env = vec![(
        "PATH".to_string(),
        search_path().to_string_lossy().into_owned(),
    )];
    launch(&DetachSpec {
        argv: argv.clone(),
        env,
        cwd: "/".into(),
        uid: None,
        gid: None,
        groups: Vec::new(),
        // Time for the answer to reach the appliance before SSH goes down.
        delay_ms: delay_ms.unwrap_or(500).clamp(1, 600_000),
    })?;
    Ok(PowerResult { command: argv })
}

// --------------------------------------------------------------------------
// spawn

/// The environment of a graphical session of `user` on `display`.
fn session_env(user: &User, display: &str) -> Result<BTreeMap<String, String>, OpError> {
    let mut env: BTreeMap<String, String> = x_env(display)?.into_iter().collect();
    env.insert("HOME".into(), user.home.clone());
    env.insert("USER".into(), user.name.clone());
    env.insert("LOGNAME".into(), user.name.clone());
    env.insert("SHELL".into(), user.shell.clone());
    env.insert("PATH".into(), search_path().to_string_lossy().into_owned());
    let xauth = Path::new(&user.home).join(".Xauthority");
    if xauth.is_file() {
        env.insert("XAUTHORITY".into(), xauth.display().to_string());
    }
    let runtime = format!("/run/user/{}", user.uid);
    if Path::new(&runtime).is_dir() {
        let bus = format!("{runtime}/bus");
        if Path::new(&bus).exists() {
            env.insert(
                "DBUS_SESSION_BUS_ADDRESS".into(),
                format!("unix:path={bus}"),
            );
        }
        env.insert("XDG_RUNTIME_DIR".into(), runtime);
    }
    if let Ok(text) = std::fs::read_to_string("/etc/default/locale") {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("LANG=") {
                env.insert("LANG".into(), v.trim_matches('"').to_string());
            }
        }
    }
    Ok(env)
}

pub(crate) fn spawn(_ctx: &Ctx, a: Spawn) -> Result<SpawnResult, OpError> {
    check_argv(&a.argv)?;
    check_env(&a.env)?;
    parse_display(&a.display)?;
    let acc = Accounts::load(Path::new("/"));
    let user = acc
        .user(&a.user)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no user {:?}", a.user)))?;
    let groups = acc.group_ids(&user);
    let mut env = session_env(&user, &a.display)?;
    env.extend(a.env);
    let cwd = a.cwd.unwrap_or_else(|| {
        if Path::new(&user.home).is_dir() {
            user.home.clone()
        } else {
            "/".into()
        }
    });
    let pid = launch(&DetachSpec {
        argv: a.argv,
        env: env.into_iter().collect(),
        cwd,
        uid: Some(user.uid),
        gid: Some(user.gid),
        groups,
        delay_ms: 0,
    })?;
    Ok(SpawnResult { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["a", "desk-01", "desk-01.example.org", &"a".repeat(63)] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            "é",
            &"a".repeat(64),
            ".a",
        ] {
            assert!(!valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_file() {
        assert_eq!(
            update_hosts(
                "127.0.0.1\tlocalhost\n127.0.1.1\told\n127.0.1.1 dup\n::1 ip6\n",
                "new.example.org"
            ),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnew.example.org new\n::1 ip6\n"
        );
        assert_eq!(
            update_hosts("127.0.0.1 localhost", "h"),
            "127.0.0.1 localhost\n127.0.1.1\th\n"
        );
    }

    #[test]
    fn public_keys() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9v test@host";
        assert_eq!(
            check_public_key(k).unwrap(),
            ("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIG9v")
        );
        assert!(check_public_key("command=\"x\" ssh-ed25519 AAAA").is_err());
        assert!(check_public_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
        assert!(check_public_key("ssh-ed25519").is_err());
        assert!(check_public_key("ssh-ed25519 AA$A").is_err());
        assert!(has_key(
            "restrict,command=\"x\" ssh-ed25519 AAAA c\n",
            "ssh-ed25519",
            "AAAA"
        ));
        assert!(!has_key("ssh-ed25519 AAAB c\n", "ssh-ed25519", "AAAA"));
    }
}
