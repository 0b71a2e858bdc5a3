//! Integration tests of `daas-guest-proxy`: the built binary over pipes,
//! through a real sshd, and its install/uninstall/seal commands.

mod bad_input;
mod files;
mod harness;
mod ops;
mod setup;
mod sshd;
mod support;
mod system;
mod x11;
