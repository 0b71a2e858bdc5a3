//! Integration tests of the agent: the API over its unix socket, dnsmasq
//! with a DHCP client in network namespaces, crashes, mutual TLS, joining.
//!
//! Tests that need root and `ip netns` print a loud SKIP and return where
//! the machine cannot run them.

mod harness;

mod crash;
mod dhcp;
mod join;
mod leases;
mod mtls;
