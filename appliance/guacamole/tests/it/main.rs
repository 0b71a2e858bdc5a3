//! Integration tests of daas-guacamole: properties over generated streams.

mod properties;
mod support;
