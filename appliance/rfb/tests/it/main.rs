//! Integration tests against real VNC servers: TigerVNC `Xvnc`, `x11vnc`
//! (on an Xvnc display) and QEMU's built-in VNC server. Each test starts
//! its own server on a free loopback port and a free display number, and
//! kills every process it started when it ends, pass or fail. A test whose
//! binary is missing prints a loud SKIP line and passes.

mod harness;
mod qemu;
mod x11vnc;
mod xvnc;
