//! Messages: the JSON carried by control frames.
//!
//! Appliance to proxy ([`ClientMessage`]):
//!
//! ```json
//! {"type":"request","id":7,"op":"exec","args":{"argv":["true"]}}
//! {"type":"cancel","id":7}
//! ```
//!
//! Proxy to appliance ([`ServerMessage`]):
//!
//! ```json
//! {"type":"hello","protocol":1,"program":"daas-guest-proxy","version":"0.1.0","capabilities":["ping",...],"limits":{...}}
//! {"type":"event","id":7,"event":{"kind":"started","pid":4242}}
//! {"type":"result","id":7,"result":{"exit_code":0,...}}
//! {"type":"error","id":7,"error":{"code":"not_found","message":"..."}}
//! ```
//!
//! Every request ends with exactly one `result` or `error` carrying its id;
//! `event`s and data frames for it may come before. An `error` whose `id` is
//! `null` concerns the connection (a malformed frame or message whose id could
//! not be read).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::frame::{Frame, FrameError};

/// The protocol version this crate speaks. Bumped on any change an older
/// peer would misread; additions that older peers can ignore (a new
/// operation, announced in `capabilities`; a new field in a result) keep it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The program name the proxy announces in its hello.
pub const PROGRAM_NAME: &str = "daas-guest-proxy";

/// Default cap on each of an exec's output streams (16 MiB).
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;

/// An operation: its argument type, wire name and result type.
///
/// The appliance builds a request from the argument struct and reads the
/// result back as [`Op::Output`] with [`decode_result`].
pub trait Op: Serialize + DeserializeOwned + Into<Operation> {
    /// The wire name (`"exec"`).
    const NAME: &'static str;
    /// What a successful `result` carries.
    type Output: Serialize + DeserializeOwned;
}

macro_rules! operations {
    ($( $(#[$doc:meta])* $variant:ident($args:ident) = $name:literal -> $out:ty; )*) => {
        /// One operation with its arguments.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Operation {
            $( $(#[$doc])* $variant($args), )*
        }

        /// Wire names of all operations, as the proxy lists them in its
        /// hello's `capabilities`.
        pub const OPERATIONS: &[&str] = &[$($name),*];

        impl Operation {
            /// The wire name.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => $name,)* }
            }

            fn args_to_json(&self) -> Result<Value, serde_json::Error> {
                match self { $(Self::$variant(a) => serde_json::to_value(a),)* }
            }

            fn from_json(name: &str, args: Value) -> Result<Self, OpParseError> {
                match name {
                    $($name => serde_json::from_value(args)
                        .map(Self::$variant)
                        .map_err(OpParseError::Args),)*
                    _ => Err(OpParseError::Unknown),
                }
            }
        }

        $(
            impl Op for $args {
                const NAME: &'static str = $name;
                type Output = $out;
            }
            impl From<$args> for Operation {
                fn from(a: $args) -> Self { Self::$variant(a) }
            }
        )*
    };
}

enum OpParseError {
    Unknown,
    Args(serde_json::Error),
}

operations! {
    /// Does nothing; answers at once (round-trip measurements, liveness).
    Ping(Ping) = "ping" -> Empty;
    /// Facts about the guest.
    Info(Info) = "info" -> InfoResult;
    /// Runs a command and streams its output.
    Exec(Exec) = "exec" -> ExecResult;
    /// Starts a program detached in a user's graphical session.
    Spawn(Spawn) = "spawn" -> SpawnResult;
    /// Writes a file atomically from data frames.
    PutFile(PutFile) = "put_file" -> PutFileResult;
    /// Reads a file as data frames.
    GetFile(GetFile) = "get_file" -> GetFileResult;
    /// Sets the hostname, now and persistently.
    SetHostname(SetHostname) = "set_hostname" -> Empty;
    /// Creates a user if missing, with groups and an authorized key.
    EnsureUser(EnsureUser) = "ensure_user" -> EnsureUserResult;
    /// Sets the keyboard layout on a display and persists it.
    SetKeyboardLayout(SetKeyboardLayout) = "set_keyboard_layout" -> SetKeyboardLayoutResult;
    /// Sets a display's screen size.
    SetResolution(SetResolution) = "set_resolution" -> SetResolutionResult;
    /// Sets a display's clipboard text.
    ClipboardSet(ClipboardSet) = "clipboard_set" -> ClipboardSetResult;
    /// Reads a display's clipboard text.
    ClipboardGet(ClipboardGet) = "clipboard_get" -> ClipboardGetResult;
    /// Whether the guest has finished booting.
    Ready(Ready) = "ready" -> ReadyResult;
    /// Powers the guest off.
    Shutdown(Shutdown) = "shutdown" -> PowerResult;
    /// Reboots the guest.
    Reboot(Reboot) = "reboot" -> PowerResult;
}

// ---------------------------------------------------------------------------
// Arguments and results

/// An empty result (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `ping`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {}

/// `info`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Info {}

/// `info` result. Facts the guest could not read are left empty or `null`
/// rather than failing the whole request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InfoResult {
    /// `daas-guest-proxy`'s version.
    pub version: String,
    /// The protocol version.
    pub protocol: u32,
    /// From `/etc/os-release`.
    pub os: OsInfo,
    /// The running kernel's release.
    pub kernel: Option<String>,
    pub hostname: String,
    pub uptime_secs: Option<f64>,
    /// 1, 5 and 15 minute load averages.
    pub load: Option<[f64; 3]>,
    pub memory: Option<MemoryInfo>,
    pub disks: Vec<DiskInfo>,
    /// Login sessions from utmp.
    pub users: Vec<LoggedInUser>,
    /// X displays with a socket in `/tmp/.X11-unix`.
    pub displays: Vec<DisplayInfo>,
}

/// Fields of `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
}

/// Memory figures in bytes, from `/proc/meminfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

/// One mounted filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// One login session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedInUser {
    pub user: String,
    /// The terminal line (`pts/0`, `:0`).
    pub line: String,
    pub host: String,
    pub pid: i32,
    /// Seconds since the epoch.
    pub since: i64,
}

/// One X display.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayInfo {
    /// `:0`
    pub display: String,
    /// Owner of the socket (the X server's user).
    pub uid: u32,
    pub user: Option<String>,
}

/// `exec`: run `argv` (no shell) and stream its output.
///
/// Output comes as data frames on [`crate::Stream::Stdout`] and
/// [`crate::Stream::Stderr`] as it is produced; an `event` `started` with
/// the pid comes first. With `stdin: true` the appliance sends data frames on
/// [`crate::Stream::Stdin`] and an empty one to close it; without it the
/// command's stdin is `/dev/null`. The process runs in its own process group,
/// which is killed on timeout, cancel or a dropped connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub argv: Vec<String>,
    /// Added to (or, with `clear_env`, replacing) the proxy's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub clear_env: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run as this user (name or numeric uid) instead of the proxy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// Kill the process group after this long (error `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes of each output stream forwarded; the rest is read and dropped
    /// and the result says `*_truncated`. Default [`DEFAULT_OUTPUT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<u64>,
}

/// `exec` result: how the process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The exit code if it exited.
    pub exit_code: Option<i32>,
    /// The signal if one killed it.
    pub signal: Option<i32>,
    /// Bytes the process wrote (including any dropped past the limit).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// `spawn`: start `argv` detached (own session, no controlling terminal,
/// stdio on `/dev/null`) as `user` on `display`, with the session's usual
/// environment (`HOME`, `USER`, `DISPLAY`, `XAUTHORITY`, `XDG_RUNTIME_DIR`,
/// ...) plus `env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawn {
    pub user: String,
    /// `:N` (a local display).
    pub display: String,
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Default: the user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `spawn` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnResult {
    pub pid: u32,
}

/// `put_file`: after the request, the appliance sends exactly `size` bytes
/// as data frames on [`crate::Stream::File`]. The proxy writes them to a
/// temporary file beside the target, checks the sha256, fsyncs, sets mode and
/// owner and renames it over the target. Nothing is left behind on error,
/// cancel or a dropped connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutFile {
    /// Absolute path inside the proxy's allowed tree; no `..`.
    pub path: String,
    pub size: u64,
    /// Lowercase or uppercase hex sha256 of the whole content.
    pub sha256: String,
    /// Permission bits; default `0o644`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// User name or numeric uid; default: unchanged (the proxy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name or numeric gid; default: the owner's primary group if
    /// `owner` is given, else unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Create missing parent directories (mode 0755, owned by the proxy).
    #[serde(default, skip_serializing_if = "is_false")]
    pub create_dirs: bool,
}

/// `put_file` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutFileResult {
    /// The path written, with symlinks inside the tree resolved.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `get_file`: the proxy answers with an `event` `file` (size, mode), the
/// content as data frames on [`crate::Stream::File`], then the result with
/// the sha256 of what it sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetFile {
    pub path: String,
    /// Refuse (error `too_large`) files larger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
}

/// `get_file` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetFileResult {
    pub size: u64,
    pub sha256: String,
}

/// `set_hostname`: sets the kernel hostname, `/etc/hostname` and the
/// `127.0.1.1` line of `/etc/hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetHostname {
    /// RFC 1123: labels of letters, digits and `-`, at most 253 bytes.
    pub hostname: String,
}

/// `ensure_user`: idempotent. Creates the user if missing (with a home),
/// creates missing groups, adds the user to `groups`, and appends
/// `authorized_key` to `~/.ssh/authorized_keys` unless already there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsureUser {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_key: Option<String>,
    /// Login shell for a new user; default `/bin/bash` if present, else `/bin/sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// `ensure_user` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureUserResult {
    pub created: bool,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Groups the user was added to now.
    pub groups_added: Vec<String>,
    pub key_added: bool,
}

/// `set_keyboard_layout`: `setxkbmap` on `display` (if given) and, with
/// `persist`, `/etc/default/keyboard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetKeyboardLayout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// `de`, or several: `us,de`.
    pub layout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    #[serde(default = "yes")]
    pub persist: bool,
}

impl Default for SetKeyboardLayout {
    fn default() -> Self {
        Self {
            display: None,
            layout: String::new(),
            variant: None,
            model: None,
            options: None,
            persist: true,
        }
    }
}

/// `set_keyboard_layout` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetKeyboardLayoutResult {
    /// Whether `setxkbmap` ran on a display.
    pub applied: bool,
    /// The file the layout was persisted to.
    pub persisted_to: Option<String>,
}

/// `set_resolution`: `xrandr` on `display`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetResolution {
    pub display: String,
    pub width: u32,
    pub height: u32,
    /// An xrandr output (`Virtual-1`); default: the screen size (`xrandr -s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// `set_resolution` result: the screen size now in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetResolutionResult {
    pub width: u32,
    pub height: u32,
}

/// Which X selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    Clipboard,
    Primary,
}

/// `clipboard_set` (needs `xclip` or `xsel` in the guest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipboardSet {
    pub display: String,
    pub text: String,
    #[serde(default)]
    pub selection: Selection,
}

/// `clipboard_set` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardSetResult {
    /// The tool used (`xclip`, `xsel`).
    pub tool: String,
}

/// `clipboard_get` (needs `xclip` or `xsel` in the guest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipboardGet {
    pub display: String,
    #[serde(default)]
    pub selection: Selection,
}

/// `clipboard_get` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardGetResult {
    /// `null` when the selection is empty (no owner).
    pub text: Option<String>,
    pub tool: String,
}

/// `ready`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {}

/// `ready` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResult {
    /// `true` when systemd says `running` or `degraded`, or there is no systemd.
    pub ready: bool,
    /// What `systemctl is-system-running` said, or `no-systemd`.
    pub state: String,
}

/// `shutdown`: answered first, then the guest powers off after `delay_ms`
/// (default 500) so that the answer reaches the appliance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// `reboot`: as [`Shutdown`], rebooting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reboot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// `shutdown` and `reboot` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerResult {
    /// The command that will run (`systemctl poweroff`).
    pub command: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------
// Errors on the wire

/// Why a request failed. New codes may appear; older peers read them as
/// [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A frame could not be decoded.
    BadFrame,
    /// A control frame did not hold a valid message.
    BadMessage,
    /// The operation is not one the proxy knows (see `capabilities`).
    UnknownOperation,
    /// The arguments are missing, of the wrong type or out of range.
    InvalidArgument,
    /// A request with this id is still in flight.
    DuplicateId,
    /// Too many requests in flight.
    TooManyRequests,
    NotFound,
    PermissionDenied,
    /// The path is outside the allowed tree, has `..`, or goes through a
    /// symlink that leaves the tree.
    PathRejected,
    AlreadyExists,
    /// The data did not match the announced sha256.
    ChecksumMismatch,
    /// More or fewer bytes than announced.
    SizeMismatch,
    /// Larger than a limit.
    TooLarge,
    Timeout,
    Cancelled,
    /// The guest lacks what the operation needs (the message names it).
    Unsupported,
    /// A helper command the operation ran failed (the message has its stderr).
    CommandFailed,
    /// Any other system error.
    Io,
    /// A bug in the proxy.
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

/// An error as sent in an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Envelopes

/// One request: an id chosen by the appliance (unique among those in
/// flight) and an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub op: Operation,
}

/// What the appliance sends in control frames.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Request(Request),
    /// Stop request `id`: it ends with error `cancelled` if still running;
    /// a cancel for an id not in flight is ignored.
    Cancel {
        id: u64,
    },
}

/// Why a control frame from the appliance is not a valid message. `id` is
/// set when the request id could be read, so that the error can be answered
/// to that request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct MessageError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl MessageError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }

    /// The error to send back.
    pub fn to_wire(&self) -> WireError {
        WireError::new(self.code, self.message.clone())
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("message does not fit in a frame")]
    Frame(#[from] FrameError),
    #[error("message could not be serialized")]
    Json(#[from] serde_json::Error),
}

impl ClientMessage {
    /// Parses a control frame's payload.
    pub fn parse(json: &[u8]) -> Result<Self, MessageError> {
        let value: Value = serde_json::from_slice(json).map_err(|e| {
            MessageError::new(None, ErrorCode::BadMessage, format!("invalid JSON: {e}"))
        })?;
        let Value::Object(mut obj) = value else {
            return Err(MessageError::new(
                None,
                ErrorCode::BadMessage,
                "message is not a JSON object",
            ));
        };
        let id = match obj.remove("id") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                MessageError::new(
                    None,
                    ErrorCode::BadMessage,
                    "\"id\" is not an unsigned 64-bit integer",
                )
            })?),
        };
        let kind = match obj.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(MessageError::new(
                    id,
                    ErrorCode::BadMessage,
                    "\"type\" is not a string",
                ))
            }
            None => {
                return Err(MessageError::new(
                    id,
                    ErrorCode::BadMessage,
                    "\"type\" is missing",
                ))
            }
        };
        let need_id = || MessageError::new(None, ErrorCode::BadMessage, "\"id\" is missing");
        match kind.as_str() {
            "request" => {
                let id = id.ok_or_else(need_id)?;
                let op = match obj.remove("op") {
                    Some(Value::String(s)) => s,
                    Some(_) => {
                        return Err(MessageError::new(
                            Some(id),
                            ErrorCode::BadMessage,
                            "\"op\" is not a string",
                        ))
                    }
                    None => {
                        return Err(MessageError::new(
                            Some(id),
                            ErrorCode::BadMessage,
                            "\"op\" is missing",
                        ))
                    }
                };
                let args = match obj.remove("args") {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(v @ Value::Object(_)) => v,
                    Some(_) => {
                        return Err(MessageError::new(
                            Some(id),
                            ErrorCode::InvalidArgument,
                            "\"args\" is not an object",
                        ))
                    }
                };
                reject_extra(&obj, Some(id))?;
                let op = Operation::from_json(&op, args).map_err(|e| match e {
                    OpParseError::Unknown => MessageError::new(
                        Some(id),
                        ErrorCode::UnknownOperation,
                        format!("unknown operation {op:?}"),
                    ),
                    OpParseError::Args(e) => MessageError::new(
                        Some(id),
                        ErrorCode::InvalidArgument,
                        format!("invalid arguments for {op}: {e}"),
                    ),
                })?;
                Ok(ClientMessage::Request(Request { id, op }))
            }
            "cancel" => {
                let id = id.ok_or_else(need_id)?;
                reject_extra(&obj, Some(id))?;
                Ok(ClientMessage::Cancel { id })
            }
            other => Err(MessageError::new(
                id,
                ErrorCode::BadMessage,
                format!("unknown message type {other:?}"),
            )),
        }
    }

    /// The JSON text of the message.
    pub fn to_json(&self) -> Result<Vec<u8>, EncodeError> {
        let mut obj = Map::new();
        match self {
            ClientMessage::Request(r) => {
                obj.insert("type".into(), "request".into());
                obj.insert("id".into(), r.id.into());
                obj.insert("op".into(), r.op.name().into());
                obj.insert("args".into(), r.op.args_to_json()?);
            }
            ClientMessage::Cancel { id } => {
                obj.insert("type".into(), "cancel".into());
                obj.insert("id".into(), (*id).into());
            }
        }
        Ok(serde_json::to_vec(&Value::Object(obj))?)
    }

    /// The encoded control frame.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(Frame::Control(self.to_json()?).encode()?)
    }
}

fn reject_extra(obj: &Map<String, Value>, id: Option<u64>) -> Result<(), MessageError> {
    match obj.keys().next() {
        None => Ok(()),
        Some(k) => Err(MessageError::new(
            id,
            ErrorCode::BadMessage,
            format!("unknown field {k:?} in message"),
        )),
    }
}

/// The proxy's limits, announced in the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame payload accepted ([`crate::MAX_PAYLOAD`]).
    pub max_payload: u64,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// Most stdin bytes buffered for one exec that has not read them yet.
    pub max_stdin_buffer: u64,
}

/// The first message the proxy sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the proxy.
    pub protocol: u32,
    /// [`PROGRAM_NAME`].
    pub program: String,
    /// The proxy's program version.
    pub version: String,
    /// The operations it serves.
    pub capabilities: Vec<String>,
    pub limits: Limits,
}

impl Hello {
    /// Whether the proxy serves the operation `O`.
    pub fn supports<O: Op>(&self) -> bool {
        self.capabilities.iter().any(|c| c == O::NAME)
    }
}

/// Interim news about a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// `exec`: the process started.
    Started { pid: u32 },
    /// `get_file`: what is about to be sent.
    File { size: u64, mode: u32 },
    /// An event this version does not know.
    #[serde(other)]
    Unknown,
}

/// What the proxy sends in control frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Hello(Hello),
    Event {
        id: u64,
        event: Event,
    },
    /// The request succeeded; read `result` with [`decode_result`].
    Result {
        id: u64,
        result: Value,
    },
    /// The request (or, with `id: null`, the connection) failed.
    Error {
        id: Option<u64>,
        error: WireError,
    },
}

impl ServerMessage {
    /// A `result` message for an operation's output.
    pub fn result<O: Op>(id: u64, output: &O::Output) -> Result<Self, EncodeError> {
        Ok(ServerMessage::Result {
            id,
            result: serde_json::to_value(output)?,
        })
    }

    /// An `error` message.
    pub fn error(id: Option<u64>, error: WireError) -> Self {
        ServerMessage::Error { id, error }
    }

    /// Parses a control frame's payload.
    pub fn parse(json: &[u8]) -> Result<Self, MessageError> {
        serde_json::from_slice(json).map_err(|e| {
            MessageError::new(
                None,
                ErrorCode::BadMessage,
                format!("invalid server message: {e}"),
            )
        })
    }

    /// The JSON text of the message.
    pub fn to_json(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// The encoded control frame.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(Frame::Control(self.to_json()?).encode()?)
    }
}

/// Reads a `result` value as operation `O`'s output.
pub fn decode_result<O: Op>(result: Value) -> Result<O::Output, serde_json::Error> {
    serde_json::from_value(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match ClientMessage::parse(input.as_bytes()) {
            Ok(m) => format!("{m:?}"),
            Err(e) => format!("error id={:?} {:?}: {}", e.id, e.code, e.message),
        };
        assert_eq!(got, expect, "input {input}");
    }

    #[test]
    fn parses_client_messages_from_data() {
        check(
            r#"{"type":"request","id":1,"op":"ping"}"#,
            "Request(Request { id: 1, op: Ping(Ping) })",
        );
        check(
            r#"{"type":"request","id":1,"op":"ping","args":null}"#,
            "Request(Request { id: 1, op: Ping(Ping) })",
        );
        check(r#"{"type":"cancel","id":9}"#, "Cancel { id: 9 }");
        check(
            r#"{"type":"request","id":2,"op":"exec","args":{"argv":["true"],"timeout_ms":5}}"#,
            "Request(Request { id: 2, op: Exec(Exec { argv: [\"true\"], env: {}, clear_env: false, cwd: None, user: None, stdin: false, timeout_ms: Some(5), output_limit: None }) })",
        );
        check(
            r#"{"type":"request","id":3,"op":"format_disk"}"#,
            "error id=Some(3) UnknownOperation: unknown operation \"format_disk\"",
        );
        check(
            r#"{"type":"request","id":4,"op":"exec","args":{"argv":"true"}}"#,
            "error id=Some(4) InvalidArgument: invalid arguments for exec: invalid type: string \"true\", expected a sequence",
        );
        check(
            r#"{"type":"request","id":4,"op":"ping","args":{"x":1}}"#,
            "error id=Some(4) InvalidArgument: invalid arguments for ping: unknown field `x`, there are no fields",
        );
        check(
            r#"{"type":"request","id":4,"op":"ping","args":[]}"#,
            "error id=Some(4) InvalidArgument: \"args\" is not an object",
        );
        check(
            r#"{"type":"request","id":5,"op":"ping","extra":1}"#,
            "error id=Some(5) BadMessage: unknown field \"extra\" in message",
        );
        check(
            r#"{"type":"request","op":"ping"}"#,
            "error id=None BadMessage: \"id\" is missing",
        );
        check(
            r#"{"type":"request","id":-1,"op":"ping"}"#,
            "error id=None BadMessage: \"id\" is not an unsigned 64-bit integer",
        );
        check(
            r#"{"type":"request","id":1.5,"op":"ping"}"#,
            "error id=None BadMessage: \"id\" is not an unsigned 64-bit integer",
        );
        check(
            r#"{"type":"bogus","id":6}"#,
            "error id=Some(6) BadMessage: unknown message type \"bogus\"",
        );
        check(
            r#"{"id":6}"#,
            "error id=Some(6) BadMessage: \"type\" is missing",
        );
        check(
            r#"[1]"#,
            "error id=None BadMessage: message is not a JSON object",
        );
        check(
            "{\"type\":",
            "error id=None BadMessage: invalid JSON: EOF while parsing a value at line 1 column 8",
        );
        check(
            "",
            "error id=None BadMessage: invalid JSON: EOF while parsing a value at line 1 column 0",
        );
        // multi-byte text is fine, invalid UTF-8 is not
        check(
            r#"{"type":"request","id":7,"op":"set_hostname","args":{"hostname":"h\u00e9\ud83d\ude00"}}"#,
            "Request(Request { id: 7, op: SetHostname(SetHostname { hostname: \"hé😀\" }) })",
        );
        let mut bad =
            br#"{"type":"request","id":7,"op":"set_hostname","args":{"hostname":""#.to_vec();
        bad.extend_from_slice(b"\xff\"}}");
        assert_eq!(
            ClientMessage::parse(&bad).unwrap_err().code,
            ErrorCode::BadMessage
        );
        // lone surrogate escapes are refused
        check(
            r#"{"type":"request","id":8,"op":"set_hostname","args":{"hostname":"\ud800"}}"#,
            "error id=None BadMessage: invalid JSON: unexpected end of hex escape at line 1 column 72",
        );
        // deep nesting is an error, not a stack overflow
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            ClientMessage::parse(deep.as_bytes()).unwrap_err().code,
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn client_messages_round_trip() {
        let msgs = vec![
            ClientMessage::Request(Request {
                id: 1,
                op: Exec {
                    argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    env: [("A".to_string(), "b".to_string())].into(),
                    stdin: true,
                    ..Default::default()
                }
                .into(),
            }),
            ClientMessage::Request(Request {
                id: u64::MAX,
                op: PutFile {
                    path: "/tmp/x".into(),
                    size: 3,
                    sha256: "00".into(),
                    mode: Some(0o600),
                    ..Default::default()
                }
                .into(),
            }),
            ClientMessage::Request(Request {
                id: 3,
                op: SetKeyboardLayout {
                    layout: "de".into(),
                    ..Default::default()
                }
                .into(),
            }),
            ClientMessage::Cancel { id: 4 },
        ];
        for m in msgs {
            let json = m.to_json().unwrap();
            assert_eq!(ClientMessage::parse(&json).unwrap(), m);
        }
    }

    #[test]
    fn server_messages_round_trip_and_unknowns_are_tolerated() {
        let hello = ServerMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            program: PROGRAM_NAME.into(),
            version: "0.1.0".into(),
            capabilities: OPERATIONS.iter().map(|s| s.to_string()).collect(),
            limits: Limits {
                max_payload: 1,
                max_in_flight: 2,
                max_stdin_buffer: 3,
            },
        });
        let result = ServerMessage::result::<Exec>(
            5,
            &ExecResult {
                exit_code: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        for m in [
            hello.clone(),
            result.clone(),
            ServerMessage::Event {
                id: 1,
                event: Event::Started { pid: 3 },
            },
            ServerMessage::error(None, WireError::new(ErrorCode::BadFrame, "x")),
        ] {
            assert_eq!(ServerMessage::parse(&m.to_json().unwrap()).unwrap(), m);
        }
        let ServerMessage::Hello(h) = hello else {
            unreachable!()
        };
        assert!(h.supports::<Exec>());
        let ServerMessage::Result { result, .. } = result else {
            unreachable!()
        };
        assert_eq!(decode_result::<Exec>(result).unwrap().exit_code, Some(0));
        // newer peers: unknown error codes, event kinds and result fields
        let m = ServerMessage::parse(
            br#"{"type":"error","id":1,"error":{"code":"quota_exceeded","message":"m"}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ServerMessage::error(Some(1), WireError::new(ErrorCode::Unknown, "m"))
        );
        let m =
            ServerMessage::parse(br#"{"type":"event","id":1,"event":{"kind":"progress","pct":5}}"#)
                .unwrap();
        assert_eq!(
            m,
            ServerMessage::Event {
                id: 1,
                event: Event::Unknown
            }
        );
        let r: SpawnResult =
            decode_result::<Spawn>(serde_json::json!({"pid": 7, "new_field": true})).unwrap();
        assert_eq!(r.pid, 7);
    }

    #[test]
    fn operation_names_are_unique_and_listed() {
        let mut names = OPERATIONS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPERATIONS.len());
        assert_eq!(<PutFile as Op>::NAME, "put_file");
        assert!(OPERATIONS.contains(&"clipboard_get"));
    }
}
