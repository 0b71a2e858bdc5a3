//! The lifecycle: Baseimage → Environment → Deployment → App, their
//! subphases, instances and who may do what. Every command here is typed,
//! checked, stored with its job in one transaction, and handed to the job
//! engine. The web layer calls these and nothing below them.
//!
//! The state machine of phases 0–2 (Apps go Create → Ready):
//!
//! ```text
//! Create ──job──> ConfigAuto ──job──> ConfigInteractive ──finalize──> Finalize ──job──> Ready
//!                              └── (spec.interactive = false) ──────────^
//! ```
//!
//! Rules:
//! - Only admins make Baseimages; the rest belongs to the user who made it.
//! - The graph only runs forward, from a Ready parent, and never across
//!   users: an Environment comes from any Ready Baseimage; a Deployment only
//!   from the caller's own Environment; an App only from the caller's own
//!   Deployment. Only admins may share an App with every user.
//! - A user has at most `limits.environments_per_user` Environments.
//! - Objects and instances a user may not see are "not found", never
//!   "forbidden": ids do not leak.

use std::sync::Arc;

use crate::auth::{TicketGrant, Tickets};
use crate::backend::{Backends, Capabilities};
use crate::config::Config;
use crate::jobs::Engine;
use crate::model::*;
use crate::store::{NewJob, ObjectFilter, Store, StoreError};

/// A refused or failed lifecycle command.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// Unknown, or not visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The command does not fit the current state.
    #[error("{0}")]
    Conflict(String),
    /// The command's input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The appliance cannot take this work now.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error("store failure")]
    Store(#[source] StoreError),
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => LifecycleError::NotFound("object"),
            StoreError::Conflict(m) => LifecycleError::Conflict(m),
            e => LifecycleError::Store(e),
        }
    }
}

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// What a caller asks for when making an object.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewObject {
    /// Display name.
    pub name: String,
    /// Baseimages only: VM or container (later phases inherit it).
    #[serde(default)]
    pub kind: Option<Kind>,
    /// Baseimages only: the platform.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Baseimages only: the display protocol.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Baseimages only: the backend.
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Apps only: offered to every user (admins only).
    #[serde(default)]
    pub shared: bool,
    /// What it is made of.
    #[serde(default)]
    pub spec: Spec,
}

/// A command's stored result: the object (or instance) and its job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accepted<T> {
    /// The thing worked on.
    #[serde(flatten)]
    pub item: T,
    /// The job doing it.
    pub job: Job,
}

/// The lifecycle service. Cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    store: Store,
    engine: Engine,
    backends: Backends,
    tickets: Arc<Tickets>,
    cfg: Arc<Config>,
}

/// Limits on text a caller supplies.
const MAX_NAME_CHARS: usize = 128;
const MAX_SCRIPTS: usize = 64;
const MAX_SCRIPT_BYTES: usize = 64 * 1024;
const MAX_COMMAND_WORDS: usize = 64;

impl Lifecycle {
    /// The service.
    pub fn new(
        store: Store,
        engine: Engine,
        backends: Backends,
        tickets: Arc<Tickets>,
        cfg: Arc<Config>,
    ) -> Self {
        Lifecycle {
            store,
            engine,
            backends,
            tickets,
            cfg,
        }
    }

    /// The store (read-only uses by the web layer go through here).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The job engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Backends and their capabilities.
    pub fn backends(&self) -> Vec<(BackendKind, Capabilities)> {
        self.backends
            .iter()
            .map(|b| (b.kind(), b.capabilities()))
            .collect()
    }

    fn check_accepting(&self) -> Result<()> {
        if self.engine.draining() {
            return Err(LifecycleError::Unavailable(
                "the appliance is shutting down; try again in a moment".into(),
            ));
        }
        Ok(())
    }

    /// An object the user may see.
    pub fn object(&self, user: &User, id: &str) -> Result<Object> {
        let o = self.store.object(id).map_err(not_found("object"))?;
        if !visible(user, &o) {
            return Err(LifecycleError::NotFound("object"));
        }
        Ok(o)
    }

    /// Objects of a phase the user may see (admins see all).
    pub fn objects(&self, user: &User, phase: Option<Phase>) -> Result<Vec<Object>> {
        Ok(self.store.objects(&ObjectFilter {
            phase,
            visible_to: (!user.is_admin()).then(|| user.id.clone()),
            parent_id: None,
        })?)
    }

    /// The Apps a user may open: shared ones and their own, Ready.
    pub fn apps(&self, user: &User) -> Result<Vec<Object>> {
        Ok(self
            .store
            .objects(&ObjectFilter {
                phase: Some(Phase::App),
                visible_to: Some(user.id.clone()),
                parent_id: None,
            })?
            .into_iter()
            .filter(|o| o.subphase == Subphase::Ready && o.status != ObjectStatus::Failed)
            .collect())
    }

    /// Makes a Baseimage (admins only).
    pub fn create_baseimage(&self, user: &User, req: NewObject) -> Result<Accepted<Object>> {
        if !user.is_admin() {
            return Err(LifecycleError::Forbidden(
                "only admins make Baseimages".into(),
            ));
        }
        let backend = req.backend.unwrap_or(BackendKind::Local);
        if self.backends.get(backend).is_none() {
            return Err(LifecycleError::Invalid(format!(
                "the {backend} backend is not configured on this appliance"
            )));
        }
        let kind = req.kind.unwrap_or(match backend {
            BackendKind::Proxmox => Kind::Vm,
            _ => Kind::Container,
        });
        let t = now();
        let obj = Object {
            id: new_id(),
            phase: Phase::Baseimage,
            name: String::new(),
            parent_id: None,
            owner_id: user.id.clone(),
            kind,
            platform: req.platform.unwrap_or(Platform::Linux),
            protocol: req.protocol.unwrap_or(Protocol::Vnc),
            backend,
            subphase: Subphase::Create,
            status: ObjectStatus::Busy,
            error: None,
            shared: false,
            spec: Spec::default(),
            backend_ref: serde_json::Value::Null,
            created_at: t,
            updated_at: t,
        };
        self.insert_new(user, obj, req)
    }

    /// CloneTemplate, CreateSnapshot or RunApp: makes the child of `parent_id`.
    pub fn derive(
        &self,
        user: &User,
        parent_phase: Phase,
        parent_id: &str,
        req: NewObject,
    ) -> Result<Accepted<Object>> {
        let parent = self.object(user, parent_id)?;
        if parent.phase != parent_phase {
            return Err(LifecycleError::NotFound("object"));
        }
        let phase = parent
            .phase
            .child()
            .ok_or_else(|| LifecycleError::Conflict("nothing is made from an App".into()))?;
        let transition = parent.phase.transition().unwrap_or("transition");
        if parent.subphase != Subphase::Ready || parent.status == ObjectStatus::Failed {
            return Err(LifecycleError::Conflict(format!(
                "{transition} needs a finalized {}; this one is in {}",
                parent.phase, parent.subphase
            )));
        }
        // Nothing a user made is ever cloned into another user's objects.
        if parent.phase != Phase::Baseimage && parent.owner_id != user.id {
            return Err(LifecycleError::NotFound("object"));
        }
        if req.kind.is_some_and(|k| k != parent.kind)
            || req.platform.is_some_and(|p| p != parent.platform)
            || req.backend.is_some_and(|b| b != parent.backend)
        {
            return Err(LifecycleError::Invalid(
                "kind, platform and backend are inherited from the parent".into(),
            ));
        }
        if req.shared && !user.is_admin() {
            return Err(LifecycleError::Forbidden(
                "only admins share Apps with every user".into(),
            ));
        }
        if req.shared && phase != Phase::App {
            return Err(LifecycleError::Invalid("only Apps can be shared".into()));
        }
        let t = now();
        let obj = Object {
            id: new_id(),
            phase,
            name: String::new(),
            parent_id: Some(parent.id.clone()),
            owner_id: user.id.clone(),
            kind: parent.kind,
            platform: parent.platform,
            protocol: req.protocol.unwrap_or(parent.protocol),
            backend: parent.backend,
            subphase: Subphase::Create,
            status: ObjectStatus::Busy,
            error: None,
            shared: req.shared,
            spec: Spec::default(),
            backend_ref: serde_json::Value::Null,
            created_at: t,
            updated_at: t,
        };
        self.insert_new(user, obj, req)
    }

    fn insert_new(&self, user: &User, mut obj: Object, req: NewObject) -> Result<Accepted<Object>> {
        self.check_accepting()?;
        obj.name = check_name(&req.name)?;
        obj.spec = check_spec(obj.phase, req.spec)?;
        let steps = plan(obj.phase, Subphase::Create, &obj.spec);
        let job = NewJob {
            id: new_id(),
            kind: JobKind::Create,
            object_id: Some(obj.id.clone()),
            instance_id: None,
            user_id: user.id.clone(),
            steps,
        };
        let limit =
            (obj.phase == Phase::Environment).then_some(self.cfg.limits.environments_per_user);
        let job = self.store.insert_object_with_job(&obj, &job, limit)?;
        self.engine.submit(&job.id);
        Ok(Accepted { item: obj, job })
    }

    fn owned(&self, user: &User, id: &str) -> Result<Object> {
        let o = self.object(user, id)?;
        if o.owner_id != user.id && !user.is_admin() {
            return Err(LifecycleError::NotFound("object"));
        }
        Ok(o)
    }

    /// Ends ConfigInteractive: seals the object (a job).
    pub fn finalize(&self, user: &User, id: &str) -> Result<Accepted<Object>> {
        self.check_accepting()?;
        let o = self.owned(user, id)?;
        if o.phase == Phase::App {
            return Err(LifecycleError::Conflict(
                "Apps have no subphases to finalize".into(),
            ));
        }
        let (_, live) = self.store.object_dependents(&o.id)?;
        if live > 0 {
            return Err(LifecycleError::Conflict(
                "stop the configuration desktop of this object before finalizing it".into(),
            ));
        }
        let job = NewJob {
            id: new_id(),
            kind: JobKind::Finalize,
            object_id: Some(o.id.clone()),
            instance_id: None,
            user_id: user.id.clone(),
            steps: plan(o.phase, Subphase::Finalize, &o.spec),
        };
        let job = self
            .store
            .enqueue_object_job(&o.id, &[Subphase::ConfigInteractive], &job)?;
        self.engine.submit(&job.id);
        Ok(Accepted {
            item: self.store.object(&o.id)?,
            job,
        })
    }

    /// Runs a failed object's plan again from its current subphase.
    pub fn retry(&self, user: &User, id: &str) -> Result<Accepted<Object>> {
        self.check_accepting()?;
        let o = self.owned(user, id)?;
        if o.status != ObjectStatus::Failed {
            return Err(LifecycleError::Conflict(
                "only a failed object can be retried".into(),
            ));
        }
        let steps = plan(o.phase, o.subphase, &o.spec);
        if steps.is_empty() {
            return Err(LifecycleError::Conflict(format!(
                "nothing to retry in {}",
                o.subphase
            )));
        }
        let kind = if matches!(o.subphase, Subphase::Finalize) {
            JobKind::Finalize
        } else {
            JobKind::Create
        };
        let job = NewJob {
            id: new_id(),
            kind,
            object_id: Some(o.id.clone()),
            instance_id: None,
            user_id: user.id.clone(),
            steps,
        };
        let job = self.store.enqueue_object_job(&o.id, &[o.subphase], &job)?;
        self.engine.submit(&job.id);
        Ok(Accepted {
            item: self.store.object(&o.id)?,
            job,
        })
    }

    /// Deletes an object without children or live instances (a job).
    pub fn delete(&self, user: &User, id: &str) -> Result<Accepted<Object>> {
        self.check_accepting()?;
        let o = self.owned(user, id)?;
        let (children, live) = self.store.object_dependents(&o.id)?;
        if children > 0 {
            return Err(LifecycleError::Conflict(format!(
                "delete the {children} object(s) made from this {} first",
                o.phase
            )));
        }
        if live > 0 {
            return Err(LifecycleError::Conflict(format!(
                "stop the {live} live instance(s) of this {} first",
                o.phase
            )));
        }
        let job = NewJob {
            id: new_id(),
            kind: JobKind::DeleteObject,
            object_id: Some(o.id.clone()),
            instance_id: None,
            user_id: user.id.clone(),
            steps: vec![Step::DeleteObject],
        };
        let job = self.store.enqueue_object_job(&o.id, Subphase::ALL, &job)?;
        self.engine.submit(&job.id);
        Ok(Accepted { item: o, job })
    }

    /// Opens an App (or, in ConfigInteractive, the object's desktop): the
    /// caller's live instance, or a new one being started.
    pub fn open(&self, user: &User, id: &str) -> Result<Accepted<Instance>> {
        self.check_accepting()?;
        let o = self.object(user, id)?;
        let purpose = match o.phase {
            Phase::App => {
                if o.owner_id != user.id && !o.shared {
                    return Err(LifecycleError::NotFound("app"));
                }
                if o.subphase != Subphase::Ready || o.status == ObjectStatus::Failed {
                    return Err(LifecycleError::Conflict("the app is not ready yet".into()));
                }
                Purpose::Run
            }
            _ => {
                // A configuration desktop shows the owner's data: owner only.
                if o.owner_id != user.id {
                    return Err(LifecycleError::NotFound("object"));
                }
                if o.subphase != Subphase::ConfigInteractive || o.status == ObjectStatus::Busy {
                    return Err(LifecycleError::Conflict(format!(
                        "a {} opens for configuration only in config_interactive; it is in {}",
                        o.phase, o.subphase
                    )));
                }
                Purpose::Configure
            }
        };
        let live = self.store.instances(Some(&user.id), true)?;
        let already = live
            .iter()
            .any(|i| i.object_id == o.id && i.state != InstanceState::Stopping);
        if !already && live.len() >= self.cfg.limits.instances_per_user as usize {
            return Err(LifecycleError::Conflict(format!(
                "you already have {} open instances, the most allowed; stop one first",
                live.len()
            )));
        }
        let uid = user.id.clone();
        let (inst, job, fresh) =
            self.store
                .open_instance(&o.id, &user.id, purpose, |iid| NewJob {
                    id: new_id(),
                    kind: JobKind::StartInstance,
                    object_id: None,
                    instance_id: Some(iid.to_owned()),
                    user_id: uid,
                    steps: vec![Step::StartInstance],
                })?;
        if fresh {
            self.engine.submit(&job.id);
        }
        Ok(Accepted { item: inst, job })
    }

    /// An instance the user may see (their own; admins see all).
    pub fn instance(&self, user: &User, id: &str) -> Result<Instance> {
        let i = self.store.instance(id).map_err(not_found("instance"))?;
        if i.user_id != user.id && !user.is_admin() {
            return Err(LifecycleError::NotFound("instance"));
        }
        Ok(i)
    }

    /// Instances: the user's, or with `all` (admins) everyone's.
    pub fn instances(&self, user: &User, all: bool, active: bool) -> Result<Vec<Instance>> {
        if all && !user.is_admin() {
            return Err(LifecycleError::Forbidden(
                "only admins list everyone's instances".into(),
            ));
        }
        Ok(self
            .store
            .instances((!all).then_some(user.id.as_str()), active)?)
    }

    /// Stops an instance (a job).
    pub fn stop(&self, user: &User, id: &str) -> Result<Accepted<Instance>> {
        let i = self.instance(user, id)?;
        let job = NewJob {
            id: new_id(),
            kind: JobKind::StopInstance,
            object_id: None,
            instance_id: Some(i.id.clone()),
            user_id: user.id.clone(),
            steps: vec![Step::StopInstance],
        };
        let job = self.store.enqueue_stop(&i.id, &job).map_err(|e| match e {
            StoreError::NotFound => LifecycleError::NotFound("instance"),
            e => e.into(),
        })?;
        self.engine.submit(&job.id);
        Ok(Accepted {
            item: self.store.instance(&i.id)?,
            job,
        })
    }

    /// A one-time tunnel ticket for the caller's running instance.
    pub fn connect(&self, user: &User, id: &str) -> Result<String> {
        let i = self.store.instance(id).map_err(not_found("instance"))?;
        // Only the instance's own user sees its desktop, admins included.
        if i.user_id != user.id {
            return Err(LifecycleError::NotFound("instance"));
        }
        if i.state != InstanceState::Running || i.connection.is_none() {
            return Err(LifecycleError::Conflict(format!(
                "the instance is {}, not running",
                i.state
            )));
        }
        Ok(self.tickets.issue(TicketGrant {
            user_id: user.id.clone(),
            instance_id: i.id,
        }))
    }

    /// Redeems a tunnel ticket: the instance it grants, if it is still its
    /// user's and running. Each ticket works once.
    pub fn redeem(&self, ticket: &str) -> Result<(User, Instance)> {
        let grant = self.tickets.redeem(ticket).ok_or_else(|| {
            LifecycleError::Forbidden("the ticket is unknown, used or expired".into())
        })?;
        let user = self.store.user(&grant.user_id).map_err(not_found("user"))?;
        if user.disabled {
            return Err(LifecycleError::Forbidden("the account is disabled".into()));
        }
        let i = self
            .store
            .instance(&grant.instance_id)
            .map_err(not_found("instance"))?;
        if i.user_id != user.id {
            return Err(LifecycleError::NotFound("instance"));
        }
        if i.state != InstanceState::Running || i.connection.is_none() {
            return Err(LifecycleError::Conflict(format!(
                "the instance is {}, not running",
                i.state
            )));
        }
        Ok((user, i))
    }

    /// A job the user may see (their own; admins see all).
    pub fn job(&self, user: &User, id: &str) -> Result<(Job, Vec<JobStep>)> {
        let j = self.store.job(id).map_err(not_found("job"))?;
        if j.user_id != user.id && !user.is_admin() {
            return Err(LifecycleError::NotFound("job"));
        }
        let steps = self.store.job_steps(&j.id)?;
        Ok((j, steps))
    }

    /// Cancels a job the user may see.
    pub fn cancel(&self, user: &User, id: &str) -> Result<Job> {
        let (j, _) = self.job(user, id)?;
        if j.state.is_final() {
            return Err(LifecycleError::Conflict(format!(
                "the job has already {}",
                j.state
            )));
        }
        self.engine.cancel(&j.id)?;
        Ok(self.store.job(&j.id)?)
    }
}

fn not_found(what: &'static str) -> impl Fn(StoreError) -> LifecycleError {
    move |e| match e {
        StoreError::NotFound => LifecycleError::NotFound(what),
        e => e.into(),
    }
}

/// Whether a user may see an object at all.
fn visible(user: &User, o: &Object) -> bool {
    user.is_admin()
        || o.owner_id == user.id
        || o.phase == Phase::Baseimage
        || (o.phase == Phase::App && o.shared)
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control) {
        return Err(LifecycleError::Invalid(format!(
            "a name is 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(n.to_owned())
}

fn check_spec(phase: Phase, spec: Spec) -> Result<Spec> {
    let bad = |m: String| Err(LifecycleError::Invalid(m));
    if spec.config_auto.len() > MAX_SCRIPTS {
        return bad(format!("at most {MAX_SCRIPTS} scripts"));
    }
    for s in &spec.config_auto {
        if s.run.len() > MAX_SCRIPT_BYTES || s.run.contains('\0') {
            return bad(format!(
                "script {:?} is larger than {MAX_SCRIPT_BYTES} bytes or holds NUL",
                s.name
            ));
        }
        if s.timeout_secs == 0 || s.timeout_secs > 24 * 3600 {
            return bad(format!(
                "script {:?}: timeout_secs must be 1 to 86400",
                s.name
            ));
        }
        check_name(&s.name)?;
    }
    if let Some(g) = &spec.geometry {
        g.parse::<crate::config::Geometry>()
            .map_err(LifecycleError::Invalid)?;
    }
    let words_ok = |w: &[String]| {
        w.len() <= MAX_COMMAND_WORDS && w.iter().all(|s| !s.contains('\0') && s.len() <= 4096)
    };
    if phase == Phase::App {
        if spec.command.is_empty() || spec.command[0].trim().is_empty() {
            return bad("an App needs a command, e.g. [\"xterm\"]".into());
        }
        if !spec.config_auto.is_empty() || spec.interactive {
            return bad("Apps have no configuration subphases; configure the Deployment".into());
        }
    } else if !spec.command.is_empty() {
        return bad("only Apps have a command".into());
    }
    if !words_ok(&spec.command) || !spec.window_manager.as_deref().is_none_or(words_ok) {
        return bad(format!(
            "a command is at most {MAX_COMMAND_WORDS} words of 4096 bytes, without NUL"
        ));
    }
    if spec.window_manager.is_some() && phase != Phase::Baseimage {
        return bad("the window manager belongs to the Baseimage".into());
    }
    if spec.writable_root && phase != Phase::App {
        return bad("only Apps have a writable_root".into());
    }
    if spec.live && phase != Phase::Deployment {
        return bad("only Deployments are (live) snapshots".into());
    }
    Ok(spec)
}

/// The steps that take an object from `from` to where its spec leads.
pub fn plan(phase: Phase, from: Subphase, spec: &Spec) -> Vec<Step> {
    if phase == Phase::App {
        return match from {
            Subphase::Ready => vec![],
            _ => vec![
                Step::BackendCreate,
                Step::EnterSubphase {
                    subphase: Subphase::Ready,
                },
            ],
        };
    }
    let mut steps = Vec::new();
    let scripts = || {
        (0..spec.config_auto.len())
            .map(|i| Step::ConfigAuto {
                script: u32::try_from(i).unwrap_or(u32::MAX),
            })
            .collect::<Vec<_>>()
    };
    let finalize = [
        Step::EnterSubphase {
            subphase: Subphase::Finalize,
        },
        Step::BackendFinalize,
        Step::EnterSubphase {
            subphase: Subphase::Ready,
        },
    ];
    match from {
        Subphase::Create => {
            steps.push(Step::BackendCreate);
            steps.push(Step::EnterSubphase {
                subphase: Subphase::ConfigAuto,
            });
            steps.extend(scripts());
        }
        Subphase::ConfigAuto => steps.extend(scripts()),
        Subphase::ConfigInteractive | Subphase::Finalize => {
            steps.extend(finalize);
            return steps;
        }
        Subphase::Ready => return steps,
    }
    if spec.interactive {
        steps.push(Step::EnterSubphase {
            subphase: Subphase::ConfigInteractive,
        });
    } else {
        steps.extend(finalize);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scripts: usize, interactive: bool) -> Spec {
        Spec {
            config_auto: (0..scripts)
                .map(|i| Script {
                    name: format!("s{i}"),
                    run: "true".into(),
                    timeout_secs: 10,
                })
                .collect(),
            interactive,
            ..Spec::default()
        }
    }

    #[test]
    fn plans_walk_the_subphases() {
        use Step::{BackendCreate, BackendFinalize, EnterSubphase};
        use Subphase::*;
        let check =
            |phase, from, s: &Spec, expect: Vec<Step>| assert_eq!(plan(phase, from, s), expect);
        check(
            Phase::Baseimage,
            Create,
            &spec(2, true),
            vec![
                BackendCreate,
                EnterSubphase {
                    subphase: ConfigAuto,
                },
                Step::ConfigAuto { script: 0 },
                Step::ConfigAuto { script: 1 },
                EnterSubphase {
                    subphase: ConfigInteractive,
                },
            ],
        );
        check(
            Phase::Environment,
            Create,
            &spec(0, false),
            vec![
                BackendCreate,
                EnterSubphase {
                    subphase: ConfigAuto,
                },
                EnterSubphase { subphase: Finalize },
                BackendFinalize,
                EnterSubphase { subphase: Ready },
            ],
        );
        check(
            Phase::Deployment,
            ConfigInteractive,
            &spec(3, true),
            vec![
                EnterSubphase { subphase: Finalize },
                BackendFinalize,
                EnterSubphase { subphase: Ready },
            ],
        );
        check(
            Phase::App,
            Create,
            &Spec::default(),
            vec![BackendCreate, EnterSubphase { subphase: Ready }],
        );
        check(Phase::Baseimage, Ready, &spec(1, false), vec![]);
    }

    #[test]
    fn specs_are_checked_per_phase() {
        let app = Spec {
            command: vec!["xterm".into()],
            ..Spec::default()
        };
        assert!(check_spec(Phase::App, app.clone()).is_ok());
        assert!(
            check_spec(Phase::Deployment, app).is_err(),
            "only apps have commands"
        );
        assert!(
            check_spec(Phase::App, Spec::default()).is_err(),
            "apps need a command"
        );
        let live = Spec {
            live: true,
            ..Spec::default()
        };
        assert!(check_spec(Phase::Deployment, live.clone()).is_ok());
        assert!(check_spec(Phase::Environment, live).is_err());
        let mut s = spec(1, false);
        s.config_auto[0].timeout_secs = 0;
        assert!(check_spec(Phase::Baseimage, s).is_err());
        let g = Spec {
            geometry: Some("5x5".into()),
            ..Spec::default()
        };
        assert!(check_spec(Phase::Baseimage, g).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("  Office  ").unwrap(), "Office");
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(200)).is_err());
        assert_eq!(check_name("Grüße 日本").unwrap(), "Grüße 日本");
    }
}
