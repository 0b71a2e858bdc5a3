//! `daas-pve-sim`: the Proxmox VE simulator as a server of its own, for
//! tests and for running the appliance without Proxmox VE.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use daas_proxmox::sim::{
    FaultConfig, FaultKind, SimConfig, SimSeedVm, SimTimings, SimTls, SimUser, Simulator,
};

/// A Proxmox VE API simulator (HTTPS, /api2/json subset).
#[derive(Debug, Parser)]
#[command(name = "daas-pve-sim", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8006")]
    listen: SocketAddr,
    /// The accepted API token, `USER@REALM!TOKENID=SECRET`. Created (mode
    /// 600, random secret for daas@pve!appliance) if missing.
    #[arg(long)]
    token_file: PathBuf,
    /// Allow password logins (tickets) for root@pam with the password in
    /// this file.
    #[arg(long)]
    root_password_file: Option<PathBuf>,
    /// Write the CA certificate (PEM) here, for CA-verified clients.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Write the server certificate's SHA-256 fingerprint here.
    #[arg(long)]
    fingerprint_file: Option<PathBuf>,
    /// Server certificate (PEM); a fresh CA and certificate otherwise.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Cluster nodes, comma-separated.
    #[arg(long, default_value = "pve", value_delimiter = ',')]
    nodes: Vec<String>,
    /// Extra templates, `VMID:NAME:STORAGE` (storages: local-lvm links,
    /// thick does not).
    #[arg(long = "template")]
    templates: Vec<String>,
    /// Multiply every task duration (0.1 = ten times faster).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// A linked clone takes this long (ms, before scaling).
    #[arg(long)]
    clone_ms: Option<u64>,
    /// A start takes this long (ms, before scaling).
    #[arg(long)]
    start_ms: Option<u64>,
    /// Added to every answer (ms).
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Share of API requests that get a fault (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Seed of the fault choice.
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    /// Fault kinds: 595, 596, lost, hang, task.
    #[arg(long, value_delimiter = ',', default_value = "595,596,task")]
    faults: Vec<String>,
    /// How long a hang lasts (ms).
    #[arg(long, default_value_t = 30_000)]
    hang_ms: u64,
    /// Delay of a 401 answer (ms); PVE waits 3 s.
    #[arg(long, default_value_t = 3000)]
    unauthorized_delay_ms: u64,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn token(path: &Path) -> anyhow::Result<(String, String)> {
    if !path.exists() {
        let secret = format!("{:032x}", rand::random::<u128>());
        write_private(path, &format!("daas@pve!appliance={secret}\n"))?;
        eprintln!("daas-pve-sim: wrote a new token to {}", path.display());
    }
    let t = daas_proxmox::ApiToken::from_file(path, None)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    Ok((t.id.to_string(), t.secret().expose().to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (id, secret) = token(&args.token_file)?;
    let mut config = SimConfig::new(&id, &secret);
    if args.nodes.is_empty() {
        bail!("--nodes needs at least one node");
    }
    config.nodes = args.nodes.clone();
    for v in &mut config.vms {
        v.node = args.nodes[0].clone();
    }
    for t in &args.templates {
        let parts: Vec<&str> = t.splitn(3, ':').collect();
        let [vmid, name, storage] = parts.as_slice() else {
            bail!("--template {t:?}: expected VMID:NAME:STORAGE");
        };
        config.vms.push(SimSeedVm {
            vmid: vmid
                .parse()
                .with_context(|| format!("--template {t:?}: VMID"))?,
            node: args.nodes[0].clone(),
            name: (*name).to_owned(),
            storage: (*storage).to_owned(),
            template: true,
        });
    }
    if let Some(p) = &args.root_password_file {
        let creds = daas_proxmox::Credentials::password_from_file("root@pam", p)?;
        if let daas_proxmox::Credentials::Password { password, .. } = creds {
            config.users.push(SimUser {
                userid: "root@pam".into(),
                password: password.expose().to_owned(),
            });
        }
    }
    let mut timings = SimTimings::realistic();
    if let Some(ms) = args.clone_ms {
        timings.clone = Duration::from_millis(ms);
    }
    if let Some(ms) = args.start_ms {
        timings.start = Duration::from_millis(ms);
    }
    timings = timings.scaled(args.time_scale);
    if let Some(ms) = args.latency_ms {
        timings.latency = Duration::from_millis(ms);
    }
    config.timings = timings;
    config.faults = FaultConfig {
        rate: args.fault_rate.clamp(0.0, 1.0),
        seed: args.fault_seed,
        kinds: args
            .faults
            .iter()
            .map(|k| k.parse::<FaultKind>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        hang: Duration::from_millis(args.hang_ms),
    };
    config.unauthorized_delay = Duration::from_millis(args.unauthorized_delay_ms);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => SimTls {
            ca_pem: std::fs::read_to_string(c)?,
            cert_pem: std::fs::read_to_string(c)?,
            key_pem: std::fs::read_to_string(k)?,
        },
        _ => SimTls::generate(&[args.listen.ip().to_string()])?,
    };
    let sim = Simulator::start(config, args.listen, tls).await?;
    if let Some(p) = &args.ca_file {
        std::fs::write(p, sim.ca_pem()).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.fingerprint_file {
        std::fs::write(p, format!("{}\n", sim.fingerprint()))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("url {}", sim.url());
    println!("fingerprint {}", sim.fingerprint());
    println!("token-id {id}");
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
