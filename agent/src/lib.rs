//! `daas-agent`: the node's privileged hands. It owns the dnsmasq hosts file
//! (static DHCP leases, one per instance), reports the node's facts, and
//! sends heartbeats to the appliance it joined, behind a narrow API served on
//! a unix socket and, once joined, on mutual TLS.
//!
//! The library is the whole program; `main.rs` only calls [`cli::main`].
//! Tests start the agent in-process: [`Agent::build`] binds everything and
//! returns the addresses, [`Agent::run_until_stopped`] serves until the
//! [`Agent::stop_handle`] is cancelled.
//!
//! Code map: [`config`] (TOML), [`leases`] (the pure lease table),
//! [`hostsfile`] (the file format, atomic writes), [`store`] (table + file +
//! batching), [`dnsmasq`] (reload, supervise), [`api`] (HTTP, the only
//! module that knows it), [`tls`] and [`client`] (mutual TLS, pinning),
//! [`join`], [`heartbeat`], [`facts`], [`state`] (the state directory).

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod dnsmasq;
pub mod facts;
pub mod heartbeat;
pub mod hostsfile;
pub mod join;
pub mod leases;
pub mod shared;
pub mod state;
pub mod store;
pub mod tls;
pub mod util;

mod server;

pub use config::Config;
pub use server::{Agent, StartError};
