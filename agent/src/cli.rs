//! The command line: `serve`, `check-config`, `join`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use daas_agent_api::{Hostname, JoinToken};

use crate::config::{Config, LogFormat};
use crate::facts::{gather, FactsInput};
use crate::join::{join, JoinOptions};
use crate::Agent;

/// The node agent of the DaaS appliance: static DHCP leases in dnsmasq,
/// node facts, heartbeats to the appliance, behind a narrow API.
#[derive(Debug, Parser)]
#[command(name = "daas-agent", version, about, long_about = None)]
pub struct Cli {
    /// The TOML config file [default: /etc/daas/agent.toml if it exists,
    /// else built-in defaults].
    #[arg(long, global = true, value_name = "PATH", env = "DAAS_AGENT_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the systemd service runs this).
    Serve,
    /// Check the config file and exit: 0 if it is valid, else 2 with the
    /// reason (file, line, key).
    CheckConfig,
    /// Join this node to an appliance with a one-time token.
    Join {
        /// The appliance's base URL, `https://HOST[:PORT]`.
        url: String,
        /// The join token from the appliance (`daas1.<id>.<secret>.<fingerprint>`).
        #[arg(long, env = "DAAS_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The node's name [default: `[node] name`, else the host name].
        #[arg(long)]
        name: Option<String>,
        /// Join again although this node has joined (makes a new key).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the appliance.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// Runs the command line; what `main` calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, path) = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("daas-agent: {}", crate::util::chain(&e));
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        let name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        println!("{name}: ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("daas-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let is_serve = matches!(cli.command, Command::Serve);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Join {
                url,
                token,
                name,
                force,
                timeout,
            } => run_join(config, url, token, name, force, timeout).await,
            Command::CheckConfig => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_serve {
                tracing::error!("{e:#}");
            } else {
                eprintln!("daas-agent: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAAS_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let agent = Agent::build(config).await?;
    let stop = agent.stop_handle();
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
    agent.run_until_stopped().await?;
    Ok(())
}

async fn run_join(
    config: Config,
    url: String,
    token: String,
    name: Option<String>,
    force: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let token: JoinToken = token.trim().parse()?;
    let name: Option<Hostname> = name.map(|n| n.parse()).transpose()?;
    let hosts = config.hosts_file();
    let leases = std::fs::read_to_string(&hosts)
        .ok()
        .and_then(|t| crate::hostsfile::parse(&t).ok())
        .map(|l| u32::try_from(l.len()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let input = FactsInput {
        storage_paths: config.node.storage_paths.clone(),
        leases,
        appliance_instances: None,
        dnsmasq_version: None,
    };
    let facts = tokio::task::spawn_blocking(move || gather(&input)).await?;
    let opts = JoinOptions {
        url,
        token,
        name,
        force,
        timeout: Duration::from_secs(timeout.max(1)),
    };
    let record = join(&config, &opts, facts).await?;
    println!(
        "joined {} as node {} ({}); restart the agent to start heartbeats and the mutual-TLS API",
        record.appliance_url, record.node_id, record.node_name
    );
    Ok(())
}
