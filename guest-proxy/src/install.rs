//! `install`, `uninstall` and `seal`: preparing a baseimage, on the running
//! system or on a rootfs directory (`--root`).
//!
//! `install` records everything it creates in a manifest
//! (`/var/lib/daas-guest-proxy/install-manifest.json`); `uninstall` removes
//! exactly that and nothing else.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accounts::Accounts;
use crate::fsutil::write_atomic;
use crate::ops::system::{check_public_key, has_key};

/// Where the binary goes in the guest.
pub(crate) const BIN_PATH: &str = "/usr/local/bin/daas-guest-proxy";
pub(crate) const DROPIN_PATH: &str = "/etc/ssh/sshd_config.d/daas-guest-proxy.conf";
pub(crate) const UNIT_NAME: &str = "daas-guest-proxy-hostkeys.service";
pub(crate) const MANIFEST_PATH: &str = "/var/lib/daas-guest-proxy/install-manifest.json";

/// Why `install`, `uninstall` or `seal` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Op(#[from] crate::error::OpError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

/// What `install` made, for `uninstall`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    version: String,
    /// Files install wrote (paths as seen inside the guest).
    files: Vec<String>,
    /// Directories install created, in creation order.
    dirs: Vec<String>,
    /// Symlinks install created.
    symlinks: Vec<String>,
    /// Lines added to authorized_keys files.
    authorized_keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyEntry {
    file: String,
    line: String,
    /// The file did not exist before install.
    created_file: bool,
}

/// A rootfs (`/` for the running system).
struct Root {
    dir: PathBuf,
    canon: PathBuf,
}

impl Root {
    fn new(dir: &Path) -> Result<Self, SetupError> {
        let canon =
            std::fs::canonicalize(dir).map_err(io_err(format!("root {}", dir.display())))?;
        if !canon.is_dir() {
            return Err(SetupError::Invalid(format!(
                "root {} is not a directory",
                dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            canon,
        })
    }

    /// The host path of a guest path.
    fn path(&self, guest: &str) -> PathBuf {
        self.dir.join(guest.trim_start_matches('/'))
    }

    /// The host path of a guest path whose parent directory must resolve
    /// inside the root (an absolute symlink in a rootfs must not lead us
    /// to the build host's files).
    fn checked(&self, guest: &str) -> Result<PathBuf, SetupError> {
        let p = self.path(guest);
        let parent = p.parent().unwrap_or(&self.dir);
        let canon = std::fs::canonicalize(parent).map_err(io_err(format!("resolving {guest}")))?;
        if !canon.starts_with(&self.canon) {
            return Err(SetupError::Invalid(format!(
                "{guest} resolves to {} outside the root {}",
                canon.display(),
                self.canon.display()
            )));
        }
        Ok(p)
    }

    /// Creates a guest directory and its missing parents, recording those
    /// it created.
    fn mkdirs(&self, guest: &str, mode: u32, created: &mut Vec<String>) -> Result<(), SetupError> {
        let mut cur = String::new();
        for comp in guest.split('/').filter(|c| !c.is_empty()) {
            cur.push('/');
            cur.push_str(comp);
            let p = self.checked(&cur)?;
            match std::fs::symlink_metadata(&p) {
                Ok(_) => continue,
                Err(_) => {
                    std::fs::create_dir(&p).map_err(io_err(format!("creating {cur}")))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                        .map_err(io_err(format!("chmod {cur}")))?;
                    if !created.contains(&cur) {
                        created.push(cur.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn load_manifest(&self) -> Result<Option<Manifest>, SetupError> {
        let p = self.path(MANIFEST_PATH);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                SetupError::Invalid(format!("manifest {MANIFEST_PATH} is damaged: {e}"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("reading {MANIFEST_PATH}"))(e)),
        }
    }
}

/// `install` options.
pub(crate) struct InstallOptions {
    pub(crate) root: PathBuf,
    pub(crate) user: String,
    pub(crate) authorized_key: String,
    pub(crate) allowed_tree: Option<String>,
}

/// The sshd drop-in: public-key login on; root may log in by key only when
/// the forced command is for root.
fn dropin(user: &str) -> String {
    let mut s = String::from(
        "# Installed by `daas-guest-proxy install`; removed by `daas-guest-proxy uninstall`.\n\
         # The appliance logs in with its key; authorized_keys forces `daas-guest-proxy serve`.\n\
         PubkeyAuthentication yes\n",
    );
    if user == "root" {
        s.push_str("PermitRootLogin prohibit-password\n");
    }
    s
}

const UNIT: &str =
    "# Installed by `daas-guest-proxy install`; removed by `daas-guest-proxy uninstall`.\n\
[Unit]\n\
Description=Generate SSH host keys missing after daas-guest-proxy seal\n\
Before=ssh.service sshd.service\n\
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\
\n\
[Service]\n\
Type=oneshot\n\
ExecStart=/usr/bin/ssh-keygen -A\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n";

/// The authorized_keys line for the appliance's key.
pub(crate) fn forced_command_line(key: &str, allowed_tree: Option<&str>) -> String {
    let mut cmd = format!("{BIN_PATH} serve");
    if let Some(t) = allowed_tree {
        cmd.push_str(" --allowed-tree ");
        cmd.push_str(t);
    }
    format!("command=\"{cmd}\",restrict {}", key.trim())
}

pub(crate) fn install(opts: &InstallOptions) -> Result<String, SetupError> {
    let (kind, blob) = check_public_key(&opts.authorized_key)?;
    if let Some(t) = &opts.allowed_tree {
        let ok = t.starts_with('/')
            && !t.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control());
        if !ok {
            return Err(SetupError::Invalid(format!(
                "--allowed-tree {t:?} must be an absolute path without spaces or quotes"
            )));
        }
    }
    let root = Root::new(&opts.root)?;
    let acc = Accounts::load(&root.dir);
    let user = match acc.users.iter().find(|u| u.name == opts.user) {
        Some(u) => u.clone(),
        None if opts.user == "root" => crate::accounts::User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
        },
        None => {
            return Err(SetupError::Invalid(format!(
                "user {:?} does not exist in {}/etc/passwd",
                opts.user,
                root.dir.display()
            )))
        }
    };
    let mut m = root.load_manifest()?.unwrap_or_default();
    m.version = env!("CARGO_PKG_VERSION").into();
    let mut report = String::new();
    let add_file = |m: &mut Manifest, guest: &str| {
        if !m.files.iter().any(|f| f == guest) {
            m.files.push(guest.to_string());
        }
    };

    // 1. the binary
    root.mkdirs("/usr/local/bin", 0o755, &mut m.dirs)?;
    let bin = root.checked(BIN_PATH)?;
    let me = std::fs::canonicalize("/proc/self/exe").map_err(io_err("locating this binary"))?;
    let same = match (std::fs::metadata(&me), std::fs::metadata(&bin)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if !same {
        let data = std::fs::read(&me).map_err(io_err("reading this binary"))?;
        write_atomic(&bin, &data, 0o755)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {BIN_PATH}")))?;
    }
    add_file(&mut m, BIN_PATH);
    let _ = writeln!(report, "installed {BIN_PATH}");

    // 2. sshd drop-in
    root.mkdirs("/etc/ssh/sshd_config.d", 0o755, &mut m.dirs)?;
    write_atomic(
        &root.checked(DROPIN_PATH)?,
        dropin(&user.name).as_bytes(),
        0o644,
    )?;
    add_file(&mut m, DROPIN_PATH);
    let _ = writeln!(report, "wrote {DROPIN_PATH}");
    let main_conf = std::fs::read_to_string(root.path("/etc/ssh/sshd_config")).unwrap_or_default();
    let included = main_conf.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("Include") && l.contains("sshd_config.d")
    });
    if !included {
        let _ = writeln!(
            report,
            "warning: /etc/ssh/sshd_config has no `Include /etc/ssh/sshd_config.d/*.conf`; \
             add it at the top or the drop-in has no effect"
        );
    }

    // 3. authorized_keys with the forced command
    let ssh_dir = format!("{}/.ssh", user.home.trim_end_matches('/'));
    let mut new_dirs = Vec::new();
    root.mkdirs(&ssh_dir, 0o700, &mut new_dirs)?;
    for d in &new_dirs {
        let p = root.path(d);
        std::os::unix::fs::lchown(&p, Some(user.uid), Some(user.gid))
            .map_err(io_err(format!("chown {d}")))?;
    }
    m.dirs.extend(
        new_dirs
            .into_iter()
            .filter(|d| !m.dirs.contains(d))
            .collect::<Vec<_>>(),
    );
    let keys_guest = format!("{ssh_dir}/authorized_keys");
    let keys = root.checked(&keys_guest)?;
    if std::fs::symlink_metadata(&keys).is_ok_and(|m| !m.is_file()) {
        return Err(SetupError::Invalid(format!(
            "{keys_guest} is not a regular file"
        )));
    }
    let existed = keys.exists();
    let old = std::fs::read_to_string(&keys).unwrap_or_default();
    let line = forced_command_line(&opts.authorized_key, opts.allowed_tree.as_deref());
    if old.lines().any(|l| l == line) {
        let _ = writeln!(report, "{keys_guest} already has the key");
    } else {
        if has_key(&old, kind, blob) {
            let _ = writeln!(
                report,
                "warning: {keys_guest} already lists this key with other options; sshd uses the \
                 first matching line, remove the other one"
            );
        }
        let mut text = old.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        write_atomic(&keys, text.as_bytes(), 0o600)?;
        if !existed {
            std::os::unix::fs::lchown(&keys, Some(user.uid), Some(user.gid))
                .map_err(io_err(format!("chown {keys_guest}")))?;
        }
        let entry = KeyEntry {
            file: keys_guest.clone(),
            line,
            created_file: !existed,
        };
        if !m.authorized_keys.contains(&entry) {
            m.authorized_keys.push(entry);
        }
        let _ = writeln!(report, "added the forced-command key to {keys_guest}");
    }

    // 4. host keys regenerated at first boot after `seal` (systemd guests)
    if root.path("/etc/systemd/system").is_dir() {
        let unit = format!("/etc/systemd/system/{UNIT_NAME}");
        write_atomic(&root.checked(&unit)?, UNIT.as_bytes(), 0o644)?;
        add_file(&mut m, &unit);
        root.mkdirs(
            "/etc/systemd/system/multi-user.target.wants",
            0o755,
            &mut m.dirs,
        )?;
        let link_guest = format!("/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}");
        let link = root.checked(&link_guest)?;
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&unit, &link)
                .map_err(io_err(format!("creating {link_guest}")))?;
        }
        if !m.symlinks.contains(&link_guest) {
            m.symlinks.push(link_guest);
        }
        let _ = writeln!(report, "installed and enabled {UNIT_NAME}");
    } else {
        let _ = writeln!(
            report,
            "note: no systemd; after `seal`, run `ssh-keygen -A` at boot before sshd starts"
        );
    }

    // 5. the manifest
    root.mkdirs("/var/lib/daas-guest-proxy", 0o755, &mut m.dirs)?;
    let json = serde_json::to_vec_pretty(&m)
        .map_err(|e| SetupError::Invalid(format!("cannot encode the manifest: {e}")))?;
    write_atomic(&root.checked(MANIFEST_PATH)?, &json, 0o644)?;
    let _ = writeln!(report, "recorded {MANIFEST_PATH}");
    Ok(report)
}

pub(crate) fn uninstall(root_dir: &Path) -> Result<String, SetupError> {
    let root = Root::new(root_dir)?;
    let Some(m) = root.load_manifest()? else {
        return Err(SetupError::Invalid(format!(
            "nothing to uninstall: no manifest at {}",
            root.path(MANIFEST_PATH).display()
        )));
    };
    let mut report = String::new();
    for k in &m.authorized_keys {
        let p = root.checked(&k.file)?;
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let kept: Vec<&str> = text.lines().filter(|l| *l != k.line).collect();
        if kept.len() == text.lines().count() {
            continue;
        }
        if kept.is_empty() && k.created_file {
            std::fs::remove_file(&p).map_err(io_err(format!("removing {}", k.file)))?;
            let _ = writeln!(report, "removed {}", k.file);
        } else {
            let mut out = kept.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            write_atomic(&p, out.as_bytes(), 0o600)?;
            let _ = writeln!(report, "removed the forced-command key from {}", k.file);
        }
    }
    for f in m.symlinks.iter().chain(&m.files) {
        let p = root.checked(f)?;
        match std::fs::remove_file(&p) {
            Ok(()) => {
                let _ = writeln!(report, "removed {f}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {f}"))(e)),
        }
    }
    let manifest = root.checked(MANIFEST_PATH)?;
    std::fs::remove_file(&manifest).map_err(io_err(format!("removing {MANIFEST_PATH}")))?;
    let _ = writeln!(report, "removed {MANIFEST_PATH}");
    // Directories install created, deepest first, where now empty.
    let mut dirs = m.dirs.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        if std::fs::remove_dir(root.path(&d)).is_ok() {
            let _ = writeln!(report, "removed directory {d}");
        }
    }
    Ok(report)
}

/// Log file names that are rotated copies (removed rather than truncated).
fn is_rotated(name: &str) -> bool {
    let archive = [".gz", ".xz", ".bz2", ".zst", ".old"]
        .iter()
        .any(|s| name.ends_with(s));
    let numbered = name
        .rsplit_once('.')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    archive || numbered
}

/// Shell and tool histories removed from every home.
const HISTORIES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".ash_history",
    ".sh_history",
    ".history",
    ".python_history",
    ".lesshst",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".viminfo",
    ".wget-hsts",
];

pub(crate) fn seal(root_dir: &Path) -> Result<String, SetupError> {
    let root = Root::new(root_dir)?;
    let mut report = String::new();
    let remove = |guest: &str, report: &mut String| -> Result<(), SetupError> {
        let p = match root.checked(guest) {
            Ok(p) => p,
            // No parent directory (a minimal rootfs without dbus or
            // systemd): nothing to remove.
            Err(SetupError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(&p) {
            Ok(()) => {
                let _ = writeln!(report, "removed {guest}");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {guest}"))(e)),
        }
    };

    // SSH host keys
    if let Ok(entries) = std::fs::read_dir(root.path("/etc/ssh")) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        names.sort();
        for n in names {
            remove(&format!("/etc/ssh/{n}"), &mut report)?;
        }
    }
    // machine ids
    let mid = root.checked("/etc/machine-id")?;
    if std::fs::symlink_metadata(&mid).is_ok_and(|m| m.is_file()) {
        write_atomic(&mid, b"", 0o444)?;
        let _ = writeln!(report, "emptied /etc/machine-id");
    }
    remove("/var/lib/dbus/machine-id", &mut report)?;
    // seeds and leases a clone must not share
    remove("/var/lib/systemd/random-seed", &mut report)?;
    remove("/var/lib/systemd/credential.secret", &mut report)?;
    if let Ok(entries) = std::fs::read_dir(root.path("/var/lib/dhcp")) {
        for e in entries.flatten() {
            if let Some(n) = e.file_name().to_str().filter(|n| n.ends_with(".leases")) {
                remove(&format!("/var/lib/dhcp/{n}"), &mut report)?;
            }
        }
    }
    // logs
    let logs = root.path("/var/log");
    let logs_inside = std::fs::canonicalize(&logs).is_ok_and(|c| c.starts_with(&root.canon));
    if logs.is_dir() && logs_inside {
        let (mut truncated, mut removed) = (0usize, 0usize);
        seal_logs(&logs, false, &mut truncated, &mut removed)?;
        let _ = writeln!(
            report,
            "logs under /var/log: truncated {truncated}, removed {removed} rotated or journal files"
        );
    }
    // shell histories
    let acc = Accounts::load(&root.dir);
    let mut homes: Vec<String> = vec!["/root".into()];
    for u in &acc.users {
        if (u.uid == 0 || u.uid >= 1000)
            && u.home.starts_with('/')
            && u.home != "/"
            && !homes.contains(&u.home)
        {
            homes.push(u.home.clone());
        }
    }
    for h in homes {
        for f in HISTORIES {
            let guest = format!("{}/{f}", h.trim_end_matches('/'));
            if root.path(&h).is_dir() {
                remove(&guest, &mut report)?;
            }
        }
    }
    if !root
        .path(&format!("/etc/systemd/system/{UNIT_NAME}"))
        .exists()
    {
        let _ = writeln!(
            report,
            "note: host keys are gone; make sure the guest runs `ssh-keygen -A` before sshd at first boot"
        );
    }
    Ok(report)
}

fn seal_logs(
    dir: &Path,
    in_journal: bool,
    truncated: &mut usize,
    removed: &mut usize,
) -> Result<(), SetupError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if ft.is_dir() {
            seal_logs(&p, in_journal || name == "journal", truncated, removed)?;
        } else if ft.is_file() {
            if in_journal || is_rotated(&name) {
                std::fs::remove_file(&p).map_err(io_err(format!("removing {}", p.display())))?;
                *removed += 1;
            } else {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags_nofollow()
                    .open(&p)
                    .map_err(io_err(format!("opening {}", p.display())))?;
                f.set_len(0)
                    .map_err(io_err(format!("truncating {}", p.display())))?;
                *truncated += 1;
            }
        }
        // symlinks and special files are left alone
    }
    Ok(())
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names() {
        for r in ["syslog.1", "syslog.2.gz", "dpkg.log.old", "x.zst"] {
            assert!(is_rotated(r), "{r}");
        }
        for n in ["syslog", "auth.log", "wtmp", "x.log"] {
            assert!(!is_rotated(n), "{n}");
        }
    }

    #[test]
    fn forced_command() {
        assert_eq!(
            forced_command_line("ssh-ed25519 AAAA c\n", None),
            "command=\"/usr/local/bin/daas-guest-proxy serve\",restrict ssh-ed25519 AAAA c"
        );
        assert_eq!(
            forced_command_line("ssh-ed25519 AAAA", Some("/srv")),
            "command=\"/usr/local/bin/daas-guest-proxy serve --allowed-tree /srv\",restrict ssh-ed25519 AAAA"
        );
    }
}
