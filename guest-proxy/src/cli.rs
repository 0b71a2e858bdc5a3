//! Command line: `serve`, `install`, `uninstall`, `seal`, `--version`,
//! `--help`. Parsed by hand to keep the binary small and quick to start.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use daas_guest_proxy_wire::PROTOCOL_VERSION;

use crate::detach;
use crate::install::{self, InstallOptions};
use crate::safepath::AllowedTree;
use crate::serve::{self, Config};

const USAGE: &str = "\
daas-guest-proxy: the DaaS appliance's command proxy inside a guest

Usage:
  daas-guest-proxy serve [--allowed-tree DIR]
  daas-guest-proxy install --authorized-key KEY [--user USER] [--root DIR] [--allowed-tree DIR]
  daas-guest-proxy uninstall [--root DIR]
  daas-guest-proxy seal [--root DIR]
  daas-guest-proxy --version | --help

Commands:
  serve       speak the guest-proxy protocol on stdin/stdout (run by sshd as
              the forced command of the appliance's key)
  install     prepare this system (or the rootfs at --root) for the appliance
  uninstall   undo exactly what install did
  seal        ready a baseimage for cloning: remove SSH host keys, empty the
              machine-id, truncate logs, remove shell histories

`daas-guest-proxy COMMAND --help` describes each command.
";

const SERVE_HELP: &str = "\
daas-guest-proxy serve [--allowed-tree DIR]

Speaks the versioned, framed guest-proxy protocol on stdin/stdout; diagnostics
go to stderr. Meant to be the forced command of the appliance's key in
authorized_keys, not to be run by hand.

Options:
  --allowed-tree DIR   file operations (put_file, get_file) stay inside DIR
                       (default /); `..` is refused and so are symlinks that
                       lead out of DIR
";

const INSTALL_HELP: &str = "\
daas-guest-proxy install --authorized-key KEY [--user USER] [--root DIR] [--allowed-tree DIR]

Prepares a guest (or the rootfs at DIR) for the appliance:
  - copies this binary to /usr/local/bin/daas-guest-proxy
  - adds KEY to USER's ~/.ssh/authorized_keys, restricted to the forced
    command: command=\"/usr/local/bin/daas-guest-proxy serve\",restrict KEY
  - writes /etc/ssh/sshd_config.d/daas-guest-proxy.conf (PubkeyAuthentication
    yes; for root also PermitRootLogin prohibit-password)
  - on systemd guests, installs and enables daas-guest-proxy-hostkeys.service,
    which runs `ssh-keygen -A` at boot when `seal` removed the host keys
  - records all of it in /var/lib/daas-guest-proxy/install-manifest.json
Running it again is harmless.

Options:
  --authorized-key KEY  the appliance's public key, \"TYPE BASE64 [COMMENT]\"
  --user USER           the account the appliance logs in as (default root)
  --root DIR            operate on the rootfs at DIR instead of /
  --allowed-tree DIR    pass --allowed-tree DIR to serve in the forced command
";

const UNINSTALL_HELP: &str = "\
daas-guest-proxy uninstall [--root DIR]

Removes exactly what install recorded in its manifest: the key line it added,
the files and symlinks it wrote, the directories it created (when empty) and
the manifest itself.

Options:
  --root DIR   operate on the rootfs at DIR instead of /
";

const SEAL_HELP: &str = "\
daas-guest-proxy seal [--root DIR]

Readies a baseimage for cloning so that every clone gets its own identity:
removes /etc/ssh/ssh_host_* keys, empties /etc/machine-id, removes
/var/lib/dbus/machine-id, /var/lib/systemd/random-seed and
credential.secret and DHCP leases, truncates logs under /var/log (rotated
copies and journal files are removed) and removes shell histories of root
and of regular users. Run it last, then shut the guest down.

Options:
  --root DIR   operate on the rootfs at DIR instead of /
";

fn version() -> String {
    format!(
        "daas-guest-proxy {} (protocol {PROTOCOL_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
}

/// Parsed `--flag VALUE` / `--flag=VALUE` options.
struct Flags {
    values: Vec<(String, String)>,
    help: bool,
}

impl Flags {
    fn parse(args: &[String], known: &[&str]) -> Result<Self, String> {
        let mut values = Vec::new();
        let mut help = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                help = true;
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            if !known.contains(&name) {
                return Err(format!("unknown argument {a:?}"));
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))?,
            };
            if values.iter().any(|(n, _)| n == name) {
                return Err(format!("{name} given twice"));
            }
            values.push((name.to_string(), value));
        }
        Ok(Self { values, help })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("daas-guest-proxy: {msg}");
    ExitCode::from(2)
}

fn report(r: Result<String, install::SetupError>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("daas-guest-proxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The program's entry point.
pub fn main() -> ExitCode {
    let args: Result<Vec<String>, OsString> = std::env::args_os()
        .skip(1)
        .map(OsString::into_string)
        .collect();
    let Ok(args) = args else {
        return fail("arguments must be valid UTF-8");
    };
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let root = |f: &Flags| PathBuf::from(f.get("--root").unwrap_or("/"));
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        "-V" | "--version" | "version" => {
            println!("{}", version());
            ExitCode::SUCCESS
        }
        "serve" => match Flags::parse(rest, &["--allowed-tree"]) {
            Err(e) => fail(&e),
            Ok(f) if f.help => {
                print!("{SERVE_HELP}");
                ExitCode::SUCCESS
            }
            Ok(f) => {
                let dir = f.get("--allowed-tree").unwrap_or("/");
                match AllowedTree::new(std::path::Path::new(dir)) {
                    Ok(tree) => serve::serve(Config { tree }),
                    Err(e) => fail(&format!("--allowed-tree {dir}: {e}")),
                }
            }
        },
        "install" => match Flags::parse(
            rest,
            &["--authorized-key", "--user", "--root", "--allowed-tree"],
        ) {
            Err(e) => fail(&e),
            Ok(f) if f.help => {
                print!("{INSTALL_HELP}");
                ExitCode::SUCCESS
            }
            Ok(f) => {
                let Some(key) = f.get("--authorized-key") else {
                    return fail("install needs --authorized-key KEY");
                };
                report(install::install(&InstallOptions {
                    root: root(&f),
                    user: f.get("--user").unwrap_or("root").to_string(),
                    authorized_key: key.to_string(),
                    allowed_tree: f.get("--allowed-tree").map(str::to_string),
                }))
            }
        },
        "uninstall" => match Flags::parse(rest, &["--root"]) {
            Err(e) => fail(&e),
            Ok(f) if f.help => {
                print!("{UNINSTALL_HELP}");
                ExitCode::SUCCESS
            }
            Ok(f) => report(install::uninstall(&root(&f))),
        },
        "seal" => match Flags::parse(rest, &["--root"]) {
            Err(e) => fail(&e),
            Ok(f) if f.help => {
                print!("{SEAL_HELP}");
                ExitCode::SUCCESS
            }
            Ok(f) => report(install::seal(&root(&f))),
        },
        detach::HELPER_ARG => detach::helper_main(),
        detach::DELAYED_ARG => detach::exec_after_main(rest),
        detach::EXEC_AS_ARG => detach::exec_as_main(rest),
        other => fail(&format!("unknown command {other:?}; see --help")),
    }
}
