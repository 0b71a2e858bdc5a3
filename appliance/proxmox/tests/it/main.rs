//! The client against the simulator over real HTTPS, every request checked
//! against Proxmox VE's API schema; and an opt-in run against a real PVE.

mod auth;
mod errors;
mod faults;
mod harness;
mod lifecycle;
mod limits;
mod real_pve;
mod retry;
mod schema;
mod schema_check;
mod tls;
mod vmid;
