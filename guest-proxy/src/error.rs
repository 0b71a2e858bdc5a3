//! The error every operation returns, one-to-one with the wire's typed error.

use std::io;

use daas_guest_proxy_wire::{ErrorCode, WireError};

/// Why an operation failed; sent to the appliance as an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct OpError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl OpError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    pub(crate) fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PathRejected, message)
    }

    pub(crate) fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "cancelled")
    }

    /// A system error while doing `what`; the code follows the error kind.
    pub(crate) fn io(what: impl std::fmt::Display, e: &io::Error) -> Self {
        let code = match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
            io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
            _ => ErrorCode::Io,
        };
        Self::new(code, format!("{what}: {e}"))
    }

    pub(crate) fn to_wire(&self) -> WireError {
        WireError::new(self.code, self.message.clone())
    }
}

/// Shorthand for mapping `io::Result` into `OpError` with context.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, OpError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, OpError> {
        self.map_err(|e| OpError::io(what, &e))
    }
}

impl<T> IoContext<T> for Result<T, rustix::io::Errno> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, OpError> {
        self.map_err(|e| OpError::io(what, &io::Error::from(e)))
    }
}
