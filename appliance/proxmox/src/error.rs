//! The client's errors, typed by what the caller can do about them.
//!
//! Proxmox VE reports most failures as HTTP 500 with the reason in the
//! status line and in the body's `message` (`VM is locked (clone)`,
//! `Configuration file 'nodes/pve/qemu-server/123.conf' does not exist`),
//! parameter errors as 400 with a per-field `errors` map, and failures of
//! background work only in the task's `exitstatus`. [`classify`] turns those
//! texts into [`ErrorKind`]s, the same for a direct answer and for a task.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::auth::AuthError;
use crate::tls::{Fingerprint, TlsConfigError};
use crate::upid::Upid;

/// What kind of failure, for deciding what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The VM's config carries a lock (`clone`, `snapshot`, `rollback`, ...).
    Locked,
    /// A file lock could not be had in time (parallel tasks on one node).
    LockTimeout,
    /// The VM (or snapshot) does not exist.
    NotFound,
    /// The VMID is taken.
    AlreadyExists,
    /// The storage (or the source) cannot make linked clones.
    LinkedCloneUnsupported,
    /// The credentials were refused.
    Unauthorized,
    /// The credentials lack a privilege.
    PermissionDenied,
    /// A parameter was refused.
    Validation,
    /// The node or a proxy in front of it failed (595, 596, 502, 503).
    Unavailable,
    /// No answer in time.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The server's certificate is not the pinned one.
    TlsPinMismatch,
    /// The client is misconfigured.
    Config,
    /// The answer was not what the API promises.
    Protocol,
    /// Anything else the server refused.
    Other,
}

impl ErrorKind {
    /// Whether the same call may succeed later without any change.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Locked
                | ErrorKind::LockTimeout
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Connect
        )
    }
}

/// A failed Proxmox VE call.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// The client configuration is unusable.
    #[error("invalid Proxmox VE client configuration: {0}")]
    Config(String),
    /// The credentials could not be read.
    #[error("Proxmox VE credentials")]
    Credentials(#[from] AuthError),
    /// The TLS setup failed.
    #[error("Proxmox VE TLS setup")]
    Tls(#[from] TlsConfigError),
    /// The node's certificate is not the pinned one.
    #[error("the node's TLS certificate {got} is not the pinned one ({expected})")]
    TlsPinMismatch {
        /// The pin.
        expected: Fingerprint,
        /// The certificate met.
        got: Fingerprint,
    },
    /// No connection (refused, unreachable, TLS handshake failed).
    #[error("cannot reach Proxmox VE at {url}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// No answer in time. A non-idempotent call may have been applied.
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout {
        /// The method.
        method: &'static str,
        /// The API path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// 595/596/502/503 after the retries allowed for the call. A
    /// non-idempotent call may have been applied (596 can come after).
    #[error("{method} {path}: node unavailable (HTTP {status}: {message})")]
    Unavailable {
        /// The method.
        method: &'static str,
        /// The API path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The reason given.
        message: String,
    },
    /// 401: the token or ticket was refused.
    #[error("authentication failed: {message}")]
    Unauthorized {
        /// The reason given.
        message: String,
    },
    /// 403 (or a root-only option): a privilege is missing.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The reason given, naming the path and privilege.
        message: String,
    },
    /// 400: parameters refused, with a message per field.
    #[error("{method} {path}: parameter verification failed: {}", fields(errors))]
    Validation {
        /// The method.
        method: &'static str,
        /// The API path.
        path: String,
        /// Field name to message.
        errors: BTreeMap<String, String>,
    },
    /// The server refused the call (500 and others), classified.
    #[error("{method} {path}: {message}")]
    Api {
        /// The method.
        method: &'static str,
        /// The API path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The message, as PVE gave it (one line, no trailing newline).
        message: String,
        /// What it means.
        kind: ErrorKind,
    },
    /// A task ended with an exit status other than `OK` or `WARNINGS: n`.
    #[error("task {upid} failed: {exitstatus}")]
    TaskFailed {
        /// The task.
        upid: Box<Upid>,
        /// Its exit status (the error message).
        exitstatus: String,
        /// The last lines of its log.
        log_tail: Vec<String>,
        /// What the exit status means.
        kind: ErrorKind,
    },
    /// A task did not end in time; it may still be running.
    #[error("task {upid} did not finish within {timeout:?}")]
    TaskTimeout {
        /// The task.
        upid: Box<Upid>,
        /// The limit.
        timeout: Duration,
    },
    /// Every candidate VMID was taken by someone else.
    #[error("no free VMID after {attempts} attempts")]
    VmidExhausted {
        /// How many were tried.
        attempts: u32,
    },
    /// The answer was not what the API promises.
    #[error("{method} {path}: unexpected answer: {detail}")]
    Protocol {
        /// The method.
        method: &'static str,
        /// The API path.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

fn fields(errors: &BTreeMap<String, String>) -> String {
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.trim_end()))
        .collect::<Vec<_>>()
        .join("; ")
}

impl PveError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PveError::Config(_) | PveError::Credentials(_) | PveError::Tls(_) => ErrorKind::Config,
            PveError::TlsPinMismatch { .. } => ErrorKind::TlsPinMismatch,
            PveError::Connect { .. } => ErrorKind::Connect,
            PveError::Timeout { .. } | PveError::TaskTimeout { .. } => ErrorKind::Timeout,
            PveError::Unavailable { .. } => ErrorKind::Unavailable,
            PveError::Unauthorized { .. } => ErrorKind::Unauthorized,
            PveError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            PveError::Validation { .. } => ErrorKind::Validation,
            PveError::Api { kind, .. } | PveError::TaskFailed { kind, .. } => *kind,
            PveError::VmidExhausted { .. } => ErrorKind::AlreadyExists,
            PveError::Protocol { .. } => ErrorKind::Protocol,
        }
    }

    /// Whether the same call may succeed later (locks, unavailable nodes,
    /// timeouts). A caller retrying a non-idempotent call must first check
    /// whether the first one was applied.
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// The per-field messages of a validation error.
    pub fn field_errors(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            PveError::Validation { errors, .. } => Some(errors),
            _ => None,
        }
    }
}

/// Classifies a PVE error text (a 500's message or a task's exit status).
pub fn classify(message: &str) -> ErrorKind {
    let m = message;
    let lower = m.to_ascii_lowercase();
    if locked_by(m).is_some() {
        ErrorKind::Locked
    } else if lower.contains("can't lock file") && lower.contains("got timeout")
        || lower.contains("got lock request timeout")
        || lower.contains("got lock timeout")
    {
        ErrorKind::LockTimeout
    } else if (m.contains("Configuration file '") && m.contains("' does not exist"))
        || (m.contains("snapshot '") && m.ends_with("' does not exist"))
    {
        ErrorKind::NotFound
    } else if m.contains("config file already exists")
        || (m.starts_with("VM ") && m.contains(" already exists"))
    {
        ErrorKind::AlreadyExists
    } else if lower.contains("linked clone feature is not supported")
        || lower.contains("linked clone feature for")
    {
        ErrorKind::LinkedCloneUnsupported
    } else if m.starts_with("Permission check failed") || m.starts_with("only root can set") {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Other
    }
}

/// The lock name of a "VM is locked (clone)" (or older "VM 123 is locked
/// (clone)") message.
pub fn locked_by(message: &str) -> Option<&str> {
    let i = message.find(" is locked (")?;
    let head = &message[..i];
    let guest = head.rsplit(": ").next().unwrap_or(head);
    let ok_head = guest == "VM"
        || guest == "CT"
        || guest
            .strip_prefix("VM ")
            .or_else(|| guest.strip_prefix("CT "))
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()));
    if !ok_head {
        return None;
    }
    let rest = &message[i + " is locked (".len()..];
    let end = rest.find(')')?;
    let lock = &rest[..end];
    (!lock.is_empty()).then_some(lock)
}

/// The VMID named in a message such as `Configuration file
/// 'nodes/pve/qemu-server/123.conf' does not exist` or `unable to create VM
/// 123: ...`.
pub fn vmid_in(message: &str) -> Option<u32> {
    if let Some(i) = message.find("qemu-server/") {
        let rest = &message[i + "qemu-server/".len()..];
        let end = rest.find(".conf")?;
        return rest[..end].parse().ok();
    }
    for prefix in ["unable to create VM ", "VM "] {
        if let Some(i) = message.find(prefix) {
            let rest = &message[i + prefix.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(v) = digits.parse() {
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_pve_messages() {
        let table = [
            ("VM is locked (clone)", ErrorKind::Locked),
            ("VM 123 is locked (snapshot)", ErrorKind::Locked),
            ("clone failed: VM is locked (rollback)", ErrorKind::Locked),
            (
                "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
                ErrorKind::LockTimeout,
            ),
            (
                "clone failed: can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout",
                ErrorKind::LockTimeout,
            ),
            (
                "cfs-lock 'storage-ceph' error: got lock request timeout",
                ErrorKind::LockTimeout,
            ),
            (
                "Configuration file 'nodes/pve/qemu-server/123.conf' does not exist",
                ErrorKind::NotFound,
            ),
            ("snapshot 'base' does not exist", ErrorKind::NotFound),
            (
                "unable to create VM 105: config file already exists",
                ErrorKind::AlreadyExists,
            ),
            ("VM 105 already exists", ErrorKind::AlreadyExists),
            (
                "Linked clone feature is not supported for 'thick:base-9001-disk-0' (scsi0)",
                ErrorKind::LinkedCloneUnsupported,
            ),
            (
                "Permission check failed (/vms/100, VM.Allocate)",
                ErrorKind::PermissionDenied,
            ),
            ("only root can set 'args' config", ErrorKind::PermissionDenied),
            ("VM 100 already running", ErrorKind::Other),
            ("the VM is locked up", ErrorKind::Other),
            ("", ErrorKind::Other),
        ];
        for (msg, kind) in table {
            assert_eq!(classify(msg), kind, "{msg:?}");
        }
    }

    #[test]
    fn lock_names_and_vmids() {
        assert_eq!(locked_by("VM is locked (clone)"), Some("clone"));
        assert_eq!(locked_by("VM 7 is locked (backup)"), Some("backup"));
        assert_eq!(locked_by("X is locked (clone)"), None);
        assert_eq!(locked_by("VM is locked ()"), None);
        assert_eq!(locked_by("VM is locked (clone"), None);
        assert_eq!(
            vmid_in("Configuration file 'nodes/pve/qemu-server/123.conf' does not exist"),
            Some(123)
        );
        assert_eq!(
            vmid_in("unable to create VM 105: config file already exists"),
            Some(105)
        );
        assert_eq!(vmid_in("VM 9 already running"), Some(9));
        assert_eq!(vmid_in("nothing here"), None);
    }
}
