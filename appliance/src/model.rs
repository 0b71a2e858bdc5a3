//! The domain: users, lifecycle objects, instances, connections and jobs.
//!
//! Plain data with serde; no SQL (that is `store`), no HTTP (that is `web`).
//! Enumerations are stored and serialised by their lowercase names, which are
//! part of the public API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch.
pub type Timestamp = i64;

/// Now, in seconds since the Unix epoch.
pub fn now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new random identifier (UUID v4, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Declares a string-backed enum with `as_str`, `FromStr`, `Display` and
/// serde in lowercase (snake_case) form.
macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialised name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { what: stringify!($name), value: s.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A name that is not one of an enum's values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownName {
    /// The enum's type name.
    pub what: &'static str,
    /// The value that was given.
    pub value: String,
}

named_enum!(
    /// What a user may do: admins own Baseimages and manage users.
    Role { Admin => "admin", User => "user" }
);

named_enum!(
    /// The four phases of the lifecycle (seed 000).
    Phase {
        Baseimage => "baseimage",
        Environment => "environment",
        Deployment => "deployment",
        App => "app",
    }
);

named_enum!(
    /// Where an object stands inside its phase. Apps go from Create straight to Ready.
    Subphase {
        Create => "create",
        ConfigAuto => "config_auto",
        ConfigInteractive => "config_interactive",
        Finalize => "finalize",
        Ready => "ready",
    }
);

named_enum!(
    /// Whether a job is working on an object, or its last job failed.
    ObjectStatus { Idle => "idle", Busy => "busy", Failed => "failed" }
);

named_enum!(
    /// Virtual machine or container (the local backend counts as a container).
    Kind { Vm => "vm", Container => "container" }
);

named_enum!(
    /// The guest platform.
    Platform { Linux => "linux", Windows => "windows", LinuxWine => "linux-wine" }
);

named_enum!(
    /// The remote display protocol.
    Protocol { Vnc => "vnc", Rdp => "rdp" }
);

named_enum!(
    /// Which backend holds an object.
    BackendKind { Local => "local", Docker => "docker", Proxmox => "proxmox" }
);

named_enum!(
    /// The state of an instance (part of the fixed public contract).
    InstanceState {
        Starting => "starting",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Failed => "failed",
        Lost => "lost",
    }
);

named_enum!(
    /// Why an instance runs: to use an App, or to configure an object by hand.
    Purpose { Run => "run", Configure => "configure" }
);

named_enum!(
    /// The state of a durable job.
    JobState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

named_enum!(
    /// The state of one step of a job.
    StepState {
        Pending => "pending",
        Running => "running",
        Done => "done",
        Failed => "failed",
        Undone => "undone",
        Skipped => "skipped",
    }
);

impl Phase {
    /// The phase an object of this phase is made from, if any.
    pub fn parent(self) -> Option<Phase> {
        match self {
            Phase::Baseimage => None,
            Phase::Environment => Some(Phase::Baseimage),
            Phase::Deployment => Some(Phase::Environment),
            Phase::App => Some(Phase::Deployment),
        }
    }

    /// The phase made from this one, if any.
    pub fn child(self) -> Option<Phase> {
        match self {
            Phase::Baseimage => Some(Phase::Environment),
            Phase::Environment => Some(Phase::Deployment),
            Phase::Deployment => Some(Phase::App),
            Phase::App => None,
        }
    }

    /// The transition that leads out of this phase (seed 000's edge names).
    pub fn transition(self) -> Option<&'static str> {
        match self {
            Phase::Baseimage => Some("CloneTemplate"),
            Phase::Environment => Some("CreateSnapshot"),
            Phase::Deployment => Some("RunApp"),
            Phase::App => None,
        }
    }

    /// The plural used in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            Phase::Baseimage => "baseimages",
            Phase::Environment => "environments",
            Phase::Deployment => "deployments",
            Phase::App => "apps",
        }
    }
}

impl InstanceState {
    /// Whether the instance still holds backend resources or may soon.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstanceState::Starting | InstanceState::Running | InstanceState::Stopping
        )
    }
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A user of the appliance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Identifier.
    pub id: String,
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// A disabled user cannot log in and its sessions and tokens stop working.
    pub disabled: bool,
    /// When the user was made.
    pub created_at: Timestamp,
}

impl User {
    /// Whether the user is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A script run in the ConfigAuto subphase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// A short name shown in job logs.
    pub name: String,
    /// Shell text run with `/bin/sh -c` inside the object.
    pub run: String,
    /// Seconds before the script is killed.
    #[serde(default = "default_script_timeout")]
    pub timeout_secs: u32,
}

fn default_script_timeout() -> u32 {
    600
}

/// Resource limits of an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (or a share of them for containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// What an object is made of, beyond its place in the graph.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Scripts of the ConfigAuto subphase, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_auto: Vec<Script>,
    /// Whether the object stops in ConfigInteractive for its owner to
    /// configure it by hand before Finalize.
    #[serde(default)]
    pub interactive: bool,
    /// Baseimages: the desktop's window manager command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_manager: Option<Vec<String>>,
    /// Baseimages: backend-specific source (a template VMID, an image name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Deployments: a live snapshot (with RAM) where the backend can.
    #[serde(default)]
    pub live: bool,
    /// Apps: the command that runs the hosted app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Apps: resource limits of each instance.
    #[serde(default)]
    pub resources: Resources,
    /// Apps: the app writes outside its home and `/tmp`, so container
    /// backends give it a writable root (read-only otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writable_root: bool,
    /// Desktop size `WIDTHxHEIGHT` of instances, if not the backend default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<String>,
}

/// A Baseimage, Environment, Deployment or App.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Object {
    /// Identifier.
    pub id: String,
    /// Phase.
    pub phase: Phase,
    /// Display name.
    pub name: String,
    /// The object this one was made from (none for Baseimages).
    pub parent_id: Option<String>,
    /// The owning user.
    pub owner_id: String,
    /// VM or container.
    pub kind: Kind,
    /// Guest platform.
    pub platform: Platform,
    /// Display protocol.
    pub protocol: Protocol,
    /// Backend holding it.
    pub backend: BackendKind,
    /// Where it stands inside its phase.
    pub subphase: Subphase,
    /// Idle, busy with a job, or failed.
    pub status: ObjectStatus,
    /// The last job's error, when `status` is failed.
    pub error: Option<String>,
    /// Apps: every user may open it (the catalogue), not only its owner.
    pub shared: bool,
    /// What it is made of.
    pub spec: Spec,
    /// The backend's own identifiers (opaque outside the backend).
    #[serde(skip)]
    pub backend_ref: serde_json::Value,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// Where and how the gateway reaches an instance's display. Server-side only:
/// it never leaves the appliance (no `Serialize` to clients; stored as JSON).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    /// VNC or RDP.
    pub protocol: Protocol,
    /// The network endpoint of the display.
    pub target: Target,
    /// The display's password, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The login user (RDP), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("protocol", &self.protocol)
            .field("target", &self.target)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .finish()
    }
}

/// A display endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Target {
    /// TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket path on the appliance's machine.
    Unix {
        /// Socket path.
        path: String,
    },
}

/// A running (or once running) Baseimage, Environment, Deployment or App.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Instance {
    /// Identifier.
    pub id: String,
    /// The object it runs.
    pub object_id: String,
    /// The user it belongs to.
    pub user_id: String,
    /// Run an App, or configure an object by hand.
    pub purpose: Purpose,
    /// State (fixed contract names).
    pub state: InstanceState,
    /// Why it failed or was lost.
    pub error: Option<String>,
    /// The backend's identifiers (opaque outside the backend).
    #[serde(skip)]
    pub backend_ref: serde_json::Value,
    /// How to reach its display; server-side only.
    #[serde(skip)]
    pub connection: Option<Connection>,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// A durable job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Job {
    /// Identifier.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// The object it works on, if any.
    pub object_id: Option<String>,
    /// The instance it works on, if any.
    pub instance_id: Option<String>,
    /// Who asked for it.
    pub user_id: String,
    /// State.
    pub state: JobState,
    /// Percent done, 0 to 100.
    pub progress: u8,
    /// Why it failed.
    pub error: Option<String>,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// How many times it was started (recovery after a crash counts).
    pub attempts: u32,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// When it first started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}

named_enum!(
    /// What a job does.
    JobKind {
        /// Create an object and run its automatic configuration.
        Create => "create",
        /// Seal an object after ConfigInteractive.
        Finalize => "finalize",
        /// Start an instance.
        StartInstance => "start_instance",
        /// Stop an instance.
        StopInstance => "stop_instance",
        /// Delete an object and its backend artefacts.
        DeleteObject => "delete_object",
    }
);

/// One step of a job, as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobStep {
    /// Position in the job.
    pub idx: u32,
    /// What the step does.
    pub step: Step,
    /// State.
    pub state: StepState,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a step does. Steps are idempotent: a step cut off by a crash is run
/// again, or undone, at the next start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Make the object's backend artefact (Create subphase or a transition).
    BackendCreate,
    /// Run the ConfigAuto script with this index.
    ConfigAuto {
        /// Index into the object's `spec.config_auto`.
        script: u32,
    },
    /// Move the object to a subphase.
    EnterSubphase {
        /// The subphase entered.
        subphase: Subphase,
    },
    /// Seal the object (Finalize subphase).
    BackendFinalize,
    /// Start the instance on the backend.
    StartInstance,
    /// Stop the instance on the backend.
    StopInstance,
    /// Delete the object's backend artefact and then its row.
    DeleteObject,
}

impl Step {
    /// A short human label for logs and the portal.
    pub fn label(&self) -> String {
        match self {
            Step::BackendCreate => "create on the backend".into(),
            Step::ConfigAuto { script } => {
                format!("automatic configuration, script {}", script + 1)
            }
            Step::EnterSubphase { subphase } => format!("enter {subphase}"),
            Step::BackendFinalize => "finalize (seal)".into(),
            Step::StartInstance => "start the instance".into(),
            Step::StopInstance => "stop the instance".into(),
            Step::DeleteObject => "delete".into(),
        }
    }
}

/// One line of a job's log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    /// Sequence number within the job, from 1.
    pub seq: i64,
    /// When it was written.
    pub ts: Timestamp,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// The text.
    pub line: String,
}

/// An API token (the secret is shown once, at creation, and stored hashed).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiToken {
    /// Identifier.
    pub id: String,
    /// The user it acts as.
    pub user_id: String,
    /// A label.
    pub name: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was last used.
    pub last_used_at: Option<Timestamp>,
}

named_enum!(
    /// Whether new instances may be placed on a node.
    NodeState { Available => "available", Unavailable => "unavailable", Removed => "removed" }
);

/// A node joined to this appliance (its agent reports by heartbeat).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Node {
    /// Identifier (a UUID; also the DNS label of its certificate name).
    pub id: String,
    /// The name it joined with (one DNS label).
    pub name: String,
    /// Where its agent's mutual-TLS API listens, `HOST:PORT`.
    pub api_addr: Option<String>,
    /// The node's facts from its last heartbeat (or the join).
    pub facts: serde_json::Value,
    /// available, unavailable or removed.
    pub state: NodeState,
    /// When it joined.
    pub joined_at: Timestamp,
    /// When its last heartbeat arrived.
    pub last_heartbeat_at: Option<Timestamp>,
    /// When it was removed.
    pub removed_at: Option<Timestamp>,
}

/// A one-time join token as listed (never its secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JoinTokenInfo {
    /// The public id.
    pub id: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was used.
    pub used_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), *p);
        }
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("Admin".parse::<Role>().is_err());
        assert_eq!(
            "linux-wine".parse::<Platform>().unwrap(),
            Platform::LinuxWine
        );
    }

    #[test]
    fn graph_only_runs_forward() {
        assert_eq!(Phase::Baseimage.child(), Some(Phase::Environment));
        assert_eq!(Phase::App.child(), None);
        for p in Phase::ALL {
            if let Some(c) = p.child() {
                assert_eq!(c.parent(), Some(*p));
            }
        }
    }

    #[test]
    fn connection_debug_hides_the_password() {
        let c = Connection {
            protocol: Protocol::Vnc,
            target: Target::Unix { path: "/x".into() },
            password: Some("hunter2".into()),
            username: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn step_serialises_with_op_tag() {
        let s = Step::ConfigAuto { script: 2 };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"op":"config_auto","script":2}"#);
        assert_eq!(serde_json::from_str::<Step>(&j).unwrap(), s);
    }
}
