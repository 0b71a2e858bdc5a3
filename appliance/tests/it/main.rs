#![allow(unreachable_pub)]
//! The appliance's integration tests: the real binary, real SQLite files,
//! real Xvnc sessions in bubblewrap sandboxes.

mod api;
mod cli;
mod crash;
mod docker;
mod guest;
mod harness;
mod lifecycle;
mod nodes;
mod pve;
mod tunnel;
