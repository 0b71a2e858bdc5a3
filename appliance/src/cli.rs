//! The command line of `daas-appliance`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::model::{now, Role};
use crate::store::{Store, StoreError};
use crate::{auth, Appliance, Options};

/// The DaaS appliance: web portal, REST API, Guacamole gateway, lifecycle and jobs.
#[derive(Debug, Parser)]
#[command(name = "daas-appliance", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file (TOML). Without it, /etc/daas/appliance.toml
    /// if it exists, else the built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// Seed a demo catalogue on the local backend on first start.
        #[arg(long)]
        demo: bool,
    },
    /// Validate the configuration and exit (non-zero with the reason).
    CheckConfig,
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Database maintenance.
    #[command(subcommand)]
    Db(DbCmd),
    /// Print the appliance's public SSH key for guests (made on first use,
    /// in the state directory), for `daas-guest-proxy install --authorized-key`.
    GuestKey {
        /// Print the SHA-256 fingerprint instead of the key.
        #[arg(long)]
        fingerprint: bool,
    },
    /// Nodes: join tokens and the registry.
    #[command(subcommand)]
    Node(NodeCmd),
}

/// `node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Make a one-time join token and print it (`daas1.…`, shown once);
    /// on the node: `daas-agent join https://APPLIANCE --token TOKEN`.
    Token {
        /// Minutes until it expires (default `[nodes] token_ttl_minutes`).
        #[arg(long)]
        ttl_minutes: Option<u32>,
    },
    /// List the nodes (removed ones too).
    List,
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; the password is read from standard input.
    Add {
        /// Login name.
        name: String,
        /// Role.
        #[arg(long, value_parser = ["admin", "user"])]
        role: String,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Set a user's password from standard input; ends their sessions.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Disable a user; ends their sessions.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Login name.
        name: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an API token for a user and print it (shown only once).
    Create {
        /// The user it acts as.
        #[arg(long)]
        user: String,
        /// A label.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_days: Option<u32>,
    },
}

/// `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCmd {
    /// Write a consistent copy of the live database (safe while serving).
    Backup {
        /// Destination file.
        dest: PathBuf,
    },
}

fn load(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string()),
        None if Path::new(config::DEFAULT_PATH).exists() => {
            Config::from_file(Path::new(config::DEFAULT_PATH)).map_err(|e| e.to_string())
        }
        None => Ok(Config::default()),
    }
}

fn read_password() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .take(auth::MAX_PASSWORD_BYTES as u64 + 2)
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let pw = s.lines().next().unwrap_or("").to_owned();
    auth::check_new_password(&pw).map_err(|e| e.to_string())?;
    Ok(pw)
}

fn store(cfg: &Config) -> Result<Store, String> {
    let path = cfg.store_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
    }
    Store::open(&cfg.store_path()).map_err(|e| crate::jobs::error_chain(&e))
}

fn user_by_name(store: &Store, name: &str) -> Result<crate::model::User, String> {
    match store.user_by_name(name) {
        Ok((u, _)) => Ok(u),
        Err(StoreError::NotFound) => Err(format!("no user named {name:?}")),
        Err(e) => Err(crate::jobs::error_chain(&e)),
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daas-appliance: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let cfg = load(cli.config.as_deref())?;
    match cli.command {
        Command::CheckConfig => {
            println!("configuration OK");
            Ok(())
        }
        Command::Serve { demo } => serve(cfg, demo),
        Command::GuestKey { fingerprint } => {
            let key = crate::guest::ssh::ApplianceKey::load_or_create(&cfg.paths.state_dir)
                .map_err(|e| crate::jobs::error_chain(&e))?;
            if fingerprint {
                println!("{}", key.fingerprint());
            } else {
                println!("{}", key.public_openssh());
            }
            Ok(())
        }
        Command::User(cmd) => {
            let store = store(&cfg)?;
            match cmd {
                UserCmd::Add { name, role, .. } => {
                    auth::check_user_name(&name).map_err(|e| e.to_string())?;
                    let role: Role = role
                        .parse()
                        .map_err(|e: crate::model::UnknownName| e.to_string())?;
                    let pw = read_password()?;
                    let hash = auth::hash_password(&pw).map_err(|e| e.to_string())?;
                    let u = store.create_user(&name, role, &hash).map_err(|e| match e {
                        StoreError::Conflict(_) => format!("a user named {name:?} exists"),
                        e => crate::jobs::error_chain(&e),
                    })?;
                    println!("created {} ({})", u.name, u.role);
                }
                UserCmd::List => {
                    for u in store.users().map_err(|e| e.to_string())? {
                        println!(
                            "{}\t{}\t{}",
                            u.name,
                            u.role,
                            if u.disabled { "disabled" } else { "active" }
                        );
                    }
                }
                UserCmd::Passwd { name, .. } => {
                    let u = user_by_name(&store, &name)?;
                    let pw = read_password()?;
                    let hash = auth::hash_password(&pw).map_err(|e| e.to_string())?;
                    store
                        .set_password(&u.id, &hash)
                        .map_err(|e| e.to_string())?;
                    println!("password of {name} changed; their sessions ended");
                }
                UserCmd::Disable { name } => {
                    let u = user_by_name(&store, &name)?;
                    if u.is_admin()
                        && !u.disabled
                        && store.active_admins().map_err(|e| e.to_string())? <= 1
                    {
                        return Err("the last admin cannot be disabled".into());
                    }
                    store.set_disabled(&u.id, true).map_err(|e| e.to_string())?;
                    println!("{name} disabled");
                }
                UserCmd::Enable { name } => {
                    let u = user_by_name(&store, &name)?;
                    store
                        .set_disabled(&u.id, false)
                        .map_err(|e| e.to_string())?;
                    println!("{name} enabled");
                }
            }
            Ok(())
        }
        Command::Token(TokenCmd::Create {
            user,
            name,
            expires_days,
        }) => {
            let store = store(&cfg)?;
            let u = user_by_name(&store, &user)?;
            let secret = auth::new_secret("daas_");
            let expires = expires_days.map(|d| now() + i64::from(d) * 86_400);
            store
                .create_token(&u.id, &name, &auth::hash_secret(&secret), expires)
                .map_err(|e| e.to_string())?;
            println!("{secret}");
            Ok(())
        }
        Command::Node(cmd) => {
            let store = store(&cfg)?;
            match cmd {
                NodeCmd::Token { ttl_minutes } => {
                    if !cfg.tls_enabled() {
                        return Err(crate::nodes::NodeError::TlsOff.to_string());
                    }
                    let fp = crate::web::serve::certificate_fingerprint(&cfg)
                        .map_err(|e| crate::jobs::error_chain(&e))?
                        .parse()
                        .map_err(|e: daas_agent_api::FingerprintError| e.to_string())?;
                    let nodes = crate::nodes::Nodes::new(
                        store,
                        cfg.nodes.clone(),
                        &cfg.paths.state_dir,
                        Some(fp),
                    );
                    let t = nodes
                        .create_token(ttl_minutes, None)
                        .map_err(|e| crate::jobs::error_chain(&e))?;
                    println!("{}", t.token);
                }
                NodeCmd::List => {
                    for n in store.nodes(true).map_err(|e| e.to_string())? {
                        println!(
                            "{}\t{}\t{}\t{}",
                            n.id,
                            n.name,
                            n.state,
                            n.api_addr.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Db(DbCmd::Backup { dest }) => {
            let store = store(&cfg)?;
            store
                .backup_to(&dest)
                .map_err(|e| crate::jobs::error_chain(&e))?;
            println!("backup written to {}", dest.display());
            Ok(())
        }
    }
}

fn serve(cfg: Config, demo: bool) -> Result<(), String> {
    crate::init_logging(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let app = Appliance::build(
            cfg,
            Options {
                demo,
                announce: true,
            },
        )
        .await
        .map_err(|e| crate::jobs::error_chain(&e))?;
        let stop = app.shutdown_token();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        });
        app.run_until_stopped()
            .await
            .map_err(|e| crate::jobs::error_chain(&e))
    })
}
