//! Runs the guacamole-common-js tests (tests/js, `node --test`) against the
//! `tunnel_server` example. Skips with a loud message only where Node or the
//! npm packages are missing and cannot be installed.
