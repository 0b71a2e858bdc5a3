//! Integration tests of the VNC engine: against TigerVNC Xvnc (drawing,
//! typing, clipboard, resize, flow control, VNC authentication) and
//! against fake RFB servers that misbehave. A test whose programs are
//! missing prints a loud SKIP line and passes.

mod fake;
mod harness;
mod xvnc;
