//! `daas-guest-proxy`: the CommandProxy in every baseimage. The guest's sshd
//! runs `daas-guest-proxy serve` as a forced command; it speaks the
//! `daas-guest-proxy-wire` protocol on stdin/stdout. `install`, `uninstall`
//! and `seal` prepare baseimages.
//!
//! No async runtime: a reader thread, one thread per running request, and
//! whole-frame writes to stdout under a lock.

mod accounts;
mod cli;
mod detach;
mod error;
mod fsutil;
mod install;
mod ops;
mod safepath;
mod serve;
mod tools;

pub use cli::main;
