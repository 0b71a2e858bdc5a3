//! A Proxmox VE API client for the appliance's Proxmox backend, and a
//! simulator of the API subset it uses.
//!
//! # The client
//! ```no_run
//! # async fn demo() -> Result<(), daas_proxmox::PveError> {
//! use daas_proxmox::*;
//! let token = ApiToken::from_file("/etc/daas/pve.token".as_ref(), None)?;
//! let pin: Fingerprint = "AB:CD:...".parse().expect("fingerprint");
//! let client = Client::new(ClientConfig::new(
//!     "https://pve1.example:8006",
//!     Credentials::Token(token),
//!     TlsTrust::Fingerprint(pin),
//! ))?;
//! let vmids = VmidAllocator::new(client.clone());
//! let (vmid, _) = vmids
//!     .create(|newid| {
//!         let client = client.clone();
//!         async move {
//!             let req = CloneRequest {
//!                 node: "pve1".into(),
//!                 vmid: 9000,
//!                 newid,
//!                 name: Some("env-1".into()),
//!                 mode: CloneMode::Linked,
//!                 target: None,
//!                 description: None,
//!                 pool: None,
//!             };
//!             client.clone_vm(&req).await?.wait().await
//!         }
//!     })
//!     .await?;
//! client.create_snapshot("pve1", vmid, "root", false, None).await?.wait().await?;
//! # Ok(()) }
//! ```
//! - Every call that PVE runs as a task returns a [`Task`]; its outcome is
//!   [`Task::wait`] (an HTTP 200 only means the worker started).
//! - Task calls hold a slot of their node's [`NodeLimiter`] until the task
//!   ends, so parallel clones do not run into PVE's lock timeouts.
//! - Reads and repeatable writes are retried on 595/596/502/503, timeouts
//!   and connect errors; calls that create are not ([`Idempotency`]).
//! - Errors are typed by what can be done about them ([`ErrorKind`]).
//!
//! # The simulator
//! [`sim::Simulator`] is a real HTTPS server with the same API subset,
//! tasks with durations, locks, linked-clone rules, live snapshots,
//! rollback semantics, the `nextid` race and injectable faults; the binary
//! `daas-pve-sim` runs it on its own.

pub mod auth;
pub mod client;
pub mod error;
pub mod limits;
mod ops;
pub mod sim;
pub mod task;
pub mod tls;
pub mod types;
pub mod upid;
pub mod vmid;

pub use auth::{ApiToken, AuthError, Credentials, Secret, TokenId};
pub use client::{Client, ClientConfig, Envelope, Idempotency, Params, PollPolicy, RetryPolicy};
pub use error::{ErrorKind, PveError};
pub use limits::{NodeLimiter, DEFAULT_TASKS_PER_NODE};
pub use task::{Task, TaskStatus};
pub use tls::{Fingerprint, TlsTrust};
pub use types::*;
pub use upid::Upid;
pub use vmid::{VmidAllocator, VmidLease};
