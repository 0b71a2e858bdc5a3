//! Durable jobs: every state change of an object or instance runs as a job
//! of stored steps, executed by a pool of workers.
//!
//! Invariants:
//! - A job and its steps are stored before anything runs; each step's state
//!   is stored as it changes, so a crash leaves a checkpoint.
//! - At most one unfinished job per object and per instance (the store's
//!   unique indexes are the lock; see `store`).
//! - Steps are idempotent. At start, every unfinished job is resumed from its
//!   first step that is not done; a job whose resumption fails is undone
//!   (its instance stopped, its object marked failed) like any failed job.
//! - A retryable backend error is retried with exponential backoff up to
//!   `jobs.max_attempts`; anything else fails the job at once.
//! - Log lines are stored and broadcast live to subscribers (the log stream).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backend::{Backend, BackendError, BackendEvent, Backends, StartRequest};
use crate::config;
use crate::model::*;
use crate::store::{FinishEffects, Store, StoreError};

/// What subscribers of a job's log receive.
#[derive(Debug, Clone)]
pub enum LogEvent {
    /// A new line.
    Line(LogLine),
    /// The job's progress changed.
    Progress(u8),
    /// The job ended.
    Finished(JobState),
}

/// Live log channels, one per job with subscribers or a running worker.
#[derive(Default)]
pub struct LogHub {
    channels: Mutex<HashMap<String, broadcast::Sender<LogEvent>>>,
}

impl LogHub {
    fn sender(&self, job_id: &str) -> broadcast::Sender<LogEvent> {
        let mut m = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(job_id.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    /// Subscribes to a job's live events.
    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<LogEvent> {
        self.sender(job_id).subscribe()
    }

    fn publish(&self, job_id: &str, ev: LogEvent) {
        let m = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = m.get(job_id) {
            let _ = tx.send(ev);
        }
    }

    fn close(&self, job_id: &str, state: JobState) {
        let mut m = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = m.remove(job_id) {
            let _ = tx.send(LogEvent::Finished(state));
        }
    }
}

/// A job's log, handed to backends. A detached log (work outside any job)
/// writes to tracing only.
#[derive(Clone)]
pub struct JobLog {
    sink: Option<(Store, Arc<LogHub>, String)>,
}

impl JobLog {
    /// A log bound to no job.
    pub fn detached() -> JobLog {
        JobLog { sink: None }
    }

    /// Writes a line at `level` (`info`, `warn`, `error`).
    pub fn line(&self, level: &str, text: &str) {
        let Some((store, hub, job_id)) = &self.sink else {
            match level {
                "error" => error!("{text}"),
                "warn" => warn!("{text}"),
                _ => info!("{text}"),
            }
            return;
        };
        // Bound a line's size; logs are for people.
        let text: String = if text.len() > 4096 {
            let mut cut = 4096;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}…", &text[..cut])
        } else {
            text.to_owned()
        };
        match store.append_log(job_id, level, &text) {
            Ok(l) => hub.publish(job_id, LogEvent::Line(l)),
            Err(e) => warn!(job_id = %job_id, error = %e, "cannot store a job log line"),
        }
    }

    /// Writes an info line.
    pub fn info(&self, text: &str) {
        self.line("info", text);
    }

    /// Writes a warning line.
    pub fn warn(&self, text: &str) {
        self.line("warn", text);
    }
}

/// Counters exported in /metrics.
#[derive(Default)]
pub struct JobMetrics {
    /// Jobs that succeeded.
    pub succeeded: AtomicU64,
    /// Jobs that failed.
    pub failed: AtomicU64,
    /// Jobs cancelled.
    pub cancelled: AtomicU64,
    /// Step retries after retryable errors.
    pub retries: AtomicU64,
    /// Total microseconds of orchestration (job time minus backend time).
    pub overhead_us: AtomicU64,
}

/// The job engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    backends: Backends,
    cfg: config::Jobs,
    queue: mpsc::UnboundedSender<String>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    hub: Arc<LogHub>,
    running: Mutex<HashMap<String, CancellationToken>>,
    draining: AtomicBool,
    tracker: TaskTracker,
    metrics: JobMetrics,
    instance_events: broadcast::Sender<InstanceEvent>,
}

/// An instance changed state outside the API (the gateway listens).
#[derive(Debug, Clone)]
pub struct InstanceEvent {
    /// The instance.
    pub instance_id: String,
    /// Its new state.
    pub state: InstanceState,
}

/// A failure of a job, for its row and log.
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

impl Engine {
    /// An engine over a store and backends.
    pub fn new(store: Store, backends: Backends, cfg: config::Jobs) -> Engine {
        let (tx, rx) = mpsc::unbounded_channel();
        Engine {
            inner: Arc::new(Inner {
                store,
                backends,
                cfg,
                queue: tx,
                queue_rx: tokio::sync::Mutex::new(rx),
                hub: Arc::new(LogHub::default()),
                running: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(false),
                tracker: TaskTracker::new(),
                metrics: JobMetrics::default(),
                instance_events: broadcast::channel(256).0,
            }),
        }
    }

    /// The live log hub.
    pub fn hub(&self) -> &Arc<LogHub> {
        &self.inner.hub
    }

    /// Counters.
    pub fn metrics(&self) -> &JobMetrics {
        &self.inner.metrics
    }

    /// Instance state changes made by the engine.
    pub fn instance_events(&self) -> broadcast::Receiver<InstanceEvent> {
        self.inner.instance_events.subscribe()
    }

    /// Tells listeners (the gateway) that an instance changed state.
    pub fn notify(&self, ev: InstanceEvent) {
        let _ = self.inner.instance_events.send(ev);
    }

    /// Whether the engine has stopped taking work.
    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Hands a stored job to the workers.
    pub fn submit(&self, job_id: &str) {
        let _ = self.inner.queue.send(job_id.to_owned());
    }

    /// Asks a job to cancel: a queued job ends at once, a running one at
    /// its next step (and its current backend call is told).
    pub fn cancel(&self, job_id: &str) -> Result<bool, StoreError> {
        let was_open = self.inner.store.request_cancel(job_id)?;
        if let Some(tok) = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
        {
            tok.cancel();
        }
        Ok(was_open)
    }

    /// Queues every unfinished job (after a restart: they resume).
    pub fn recover(&self) -> Result<usize, StoreError> {
        let jobs = self.inner.store.unfinished_jobs()?;
        for j in &jobs {
            if j.state == JobState::Running {
                info!(job_id = %j.id, kind = %j.kind, "resuming a job cut off by a restart");
                let log = self.log(&j.id);
                log.warn(
                    "the appliance restarted during this job; resuming from the last checkpoint",
                );
            }
            self.submit(&j.id);
        }
        Ok(jobs.len())
    }

    /// The log of a stored job, for work done on its behalf outside a
    /// worker (and for tests of what backends write).
    pub fn job_log(&self, job_id: &str) -> JobLog {
        self.log(job_id)
    }

    fn log(&self, job_id: &str) -> JobLog {
        JobLog {
            sink: Some((
                self.inner.store.clone(),
                self.inner.hub.clone(),
                job_id.to_owned(),
            )),
        }
    }

    /// Starts the workers and the backend event loop; they run until
    /// `shutdown` is cancelled, then finish their current job's step.
    pub fn start(
        &self,
        shutdown: CancellationToken,
        mut events: mpsc::UnboundedReceiver<BackendEvent>,
    ) {
        for n in 0..self.inner.cfg.workers {
            let me = self.clone();
            let stop = shutdown.clone();
            self.inner.tracker.spawn(async move {
                loop {
                    let next = {
                        let mut rx = me.inner.queue_rx.lock().await;
                        tokio::select! {
                            _ = stop.cancelled() => None,
                            id = rx.recv() => id,
                        }
                    };
                    let Some(id) = next else { break };
                    me.run_job(&id)
                        .instrument(info_span!("job", job_id = %id, worker = n))
                        .await;
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                me.on_backend_event(ev);
            }
        });
    }

    /// Stops taking work and waits (up to `grace`) for running jobs to reach
    /// a checkpoint. What is left resumes at the next start.
    pub async fn drain(&self, grace: Duration) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!("jobs still running at shutdown; they resume at the next start");
        }
    }

    fn on_backend_event(&self, ev: BackendEvent) {
        match ev {
            BackendEvent::InstanceExited {
                instance_id,
                reason,
                failed,
            } => {
                let Ok(inst) = self.inner.store.instance(&instance_id) else {
                    return;
                };
                if inst.state != InstanceState::Running {
                    return; // a job is handling it
                }
                let state = if failed {
                    InstanceState::Failed
                } else {
                    InstanceState::Stopped
                };
                info!(instance_id = %instance_id, %reason, "instance ended by itself");
                if self
                    .inner
                    .store
                    .set_instance_state(&instance_id, state, Some(&reason))
                    .is_ok()
                {
                    let _ = self.inner.instance_events.send(InstanceEvent {
                        instance_id: instance_id.clone(),
                        state,
                    });
                    // Release what the instance used.
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Some(b) = me.backend_of_instance(&inst) {
                            let log = JobLog::detached();
                            if let Err(e) = b.stop(&inst, &log).await {
                                warn!(instance_id = %inst.id, error = %e, "cleanup after exit failed");
                            }
                        }
                    });
                }
            }
        }
    }

    fn backend_of_instance(&self, inst: &Instance) -> Option<Arc<dyn Backend>> {
        let obj = self.inner.store.object(&inst.object_id).ok()?;
        self.inner.backends.get(obj.backend).cloned()
    }

    async fn run_job(&self, job_id: &str) {
        let store = &self.inner.store;
        let job = match store.job(job_id) {
            Ok(j) if !j.state.is_final() => j,
            Ok(_) => return,
            Err(e) => {
                error!(error = %e, "cannot load a queued job");
                return;
            }
        };
        let token = CancellationToken::new();
        if job.cancel_requested {
            token.cancel();
        }
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.id.clone(), token.clone());
        // Subscribe the hub before anything is logged.
        drop(self.inner.hub.sender(&job.id));
        let log = self.log(&job.id);
        let t0 = Instant::now();
        let mut backend_time = Duration::ZERO;
        let result = self.execute(&job, &log, &token, &mut backend_time).await;
        let (state, err) = match &result {
            Ok(()) => (JobState::Succeeded, None),
            Err(JobError::Cancelled) => (JobState::Cancelled, Some("cancelled".to_owned())),
            Err(e) => (JobState::Failed, Some(error_chain(e))),
        };
        if let Some(e) = &err {
            if state == JobState::Failed {
                error!(job_id = %job.id, kind = %job.kind, error = %e, "job failed");
                log.line("error", &format!("failed: {e}"));
            } else {
                log.warn("cancelled");
            }
            self.undo(&job, &log).await;
        } else {
            log.info("done");
        }
        let effects = self.effects(&job, state, err.as_deref());
        if let Err(e) = store.finish_job(&job.id, state, err.as_deref(), &effects) {
            error!(job_id = %job.id, error = %e, "cannot record the end of a job");
        }
        if let Some((iid, st, _)) = &effects.instance_state {
            let _ = self.inner.instance_events.send(InstanceEvent {
                instance_id: iid.clone(),
                state: *st,
            });
        }
        let m = &self.inner.metrics;
        match state {
            JobState::Succeeded => m.succeeded.fetch_add(1, Ordering::Relaxed),
            JobState::Cancelled => m.cancelled.fetch_add(1, Ordering::Relaxed),
            _ => m.failed.fetch_add(1, Ordering::Relaxed),
        };
        let overhead = t0.elapsed().saturating_sub(backend_time);
        m.overhead_us.fetch_add(
            u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.id);
        self.inner.hub.close(&job.id, state);
    }

    /// What the end of a job changes on its object or instance.
    fn effects(&self, job: &Job, state: JobState, err: Option<&str>) -> FinishEffects {
        let mut fx = FinishEffects::default();
        let ok = state == JobState::Succeeded;
        match job.kind {
            JobKind::Create | JobKind::Finalize => {
                if let Some(o) = &job.object_id {
                    fx.object_status = Some(if ok {
                        (o.clone(), ObjectStatus::Idle, None)
                    } else {
                        (o.clone(), ObjectStatus::Failed, err.map(str::to_owned))
                    });
                }
            }
            JobKind::DeleteObject => {
                if !ok {
                    if let Some(o) = &job.object_id {
                        fx.object_status =
                            Some((o.clone(), ObjectStatus::Failed, err.map(str::to_owned)));
                    }
                }
            }
            JobKind::StartInstance => {
                if let (Some(i), false) = (&job.instance_id, ok) {
                    let st = if state == JobState::Cancelled {
                        InstanceState::Stopped
                    } else {
                        InstanceState::Failed
                    };
                    fx.instance_state = Some((i.clone(), st, err.map(str::to_owned)));
                }
            }
            JobKind::StopInstance => {
                if let Some(i) = &job.instance_id {
                    fx.instance_state = Some(if ok {
                        (i.clone(), InstanceState::Stopped, None)
                    } else {
                        (i.clone(), InstanceState::Failed, err.map(str::to_owned))
                    });
                }
            }
        }
        fx
    }

    async fn execute(
        &self,
        job: &Job,
        log: &JobLog,
        cancel: &CancellationToken,
        backend_time: &mut Duration,
    ) -> Result<(), JobError> {
        let store = &self.inner.store;
        store.start_job(&job.id)?;
        let steps = store.job_steps(&job.id)?;
        let total = steps.len().max(1);
        for s in &steps {
            if s.state == StepState::Done || s.state == StepState::Skipped {
                continue;
            }
            if cancel.is_cancelled() || store.cancel_requested(&job.id)? {
                return Err(JobError::Cancelled);
            }
            store.set_step_state(&job.id, s.idx, StepState::Running, None, pct(s.idx, total))?;
            log.info(&format!("step {}/{}: {}", s.idx + 1, total, s.step.label()));
            let mut attempt = 1;
            let mut delay = Duration::from_millis(self.inner.cfg.retry_backoff_ms);
            loop {
                let t = Instant::now();
                let r = self.step(job, &s.step, log, cancel).await;
                *backend_time += t.elapsed();
                match r {
                    Ok(()) => break,
                    Err(JobError::Backend(e))
                        if e.retryable() && attempt < self.inner.cfg.max_attempts =>
                    {
                        self.inner.metrics.retries.fetch_add(1, Ordering::Relaxed);
                        log.warn(&format!(
                            "attempt {attempt} failed: {}; retrying in {} ms",
                            error_chain(&e),
                            delay.as_millis()
                        ));
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = cancel.cancelled() => return Err(JobError::Cancelled),
                        }
                        delay *= 2;
                        attempt += 1;
                    }
                    Err(JobError::Backend(BackendError::Cancelled)) => {
                        return Err(JobError::Cancelled)
                    }
                    Err(e) => {
                        let msg = error_chain(&e);
                        store.set_step_state(
                            &job.id,
                            s.idx,
                            StepState::Failed,
                            Some(&msg),
                            pct(s.idx, total),
                        )?;
                        return Err(e);
                    }
                }
            }
            store.set_step_state(&job.id, s.idx, StepState::Done, None, pct(s.idx + 1, total))?;
            self.inner
                .hub
                .publish(&job.id, LogEvent::Progress(pct(s.idx + 1, total)));
        }
        Ok(())
    }

    fn object_and_backend(&self, id: &str) -> Result<(Object, Arc<dyn Backend>), JobError> {
        let obj = self.inner.store.object(id)?;
        let b = self
            .inner
            .backends
            .get(obj.backend)
            .cloned()
            .ok_or_else(|| {
                JobError::Invalid(format!("the {} backend is not configured", obj.backend))
            })?;
        Ok((obj, b))
    }

    async fn step(
        &self,
        job: &Job,
        step: &Step,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(), JobError> {
        let store = &self.inner.store;
        let object_id = || {
            job.object_id
                .clone()
                .ok_or_else(|| JobError::Invalid("the job has no object".into()))
        };
        let instance_id = || {
            job.instance_id
                .clone()
                .ok_or_else(|| JobError::Invalid("the job has no instance".into()))
        };
        match step {
            Step::BackendCreate => {
                let (obj, b) = self.object_and_backend(&object_id()?)?;
                let parent = match &obj.parent_id {
                    Some(p) => Some(store.object(p)?),
                    None => None,
                };
                let r = cancellable(cancel, b.create(&obj, parent.as_ref(), log)).await?;
                store.set_object_backend_ref(&obj.id, &r)?;
            }
            Step::ConfigAuto { script } => {
                let (obj, b) = self.object_and_backend(&object_id()?)?;
                let s = obj
                    .spec
                    .config_auto
                    .get(*script as usize)
                    .ok_or_else(|| JobError::Invalid(format!("no script {script}")))?;
                log.info(&format!("running script {:?}", s.name));
                cancellable(cancel, b.run_script(&obj, s, log, cancel)).await?;
            }
            Step::EnterSubphase { subphase } => {
                store.set_object_subphase(&object_id()?, *subphase)?;
            }
            Step::BackendFinalize => {
                let (obj, b) = self.object_and_backend(&object_id()?)?;
                let r = cancellable(cancel, b.finalize(&obj, log)).await?;
                store.set_object_backend_ref(&obj.id, &r)?;
            }
            Step::StartInstance => {
                let inst = store.instance(&instance_id()?)?;
                let (obj, b) = self.object_and_backend(&inst.object_id)?;
                let parent = match &obj.parent_id {
                    Some(p) => Some(store.object(p)?),
                    None => None,
                };
                let started = cancellable(
                    cancel,
                    b.start(
                        StartRequest {
                            instance: &inst,
                            object: &obj,
                            parent: parent.as_ref(),
                        },
                        log,
                    ),
                )
                .await?;
                store.set_instance_started(&inst.id, &started.backend_ref, &started.connection)?;
                let _ = self.inner.instance_events.send(InstanceEvent {
                    instance_id: inst.id.clone(),
                    state: InstanceState::Running,
                });
            }
            Step::StopInstance => {
                let inst = store.instance(&instance_id()?)?;
                let (_, b) = self.object_and_backend(&inst.object_id)?;
                let _ = self.inner.instance_events.send(InstanceEvent {
                    instance_id: inst.id.clone(),
                    state: InstanceState::Stopping,
                });
                b.stop(&inst, log).await?;
            }
            Step::DeleteObject => {
                let (obj, b) = self.object_and_backend(&object_id()?)?;
                let (children, live) = store.object_dependents(&obj.id)?;
                if children > 0 || live > 0 {
                    return Err(JobError::Invalid(format!(
                        "the {} has {children} object(s) made from it and {live} live instance(s)",
                        obj.phase
                    )));
                }
                b.delete(&obj, log).await?;
                store.delete_object(&obj.id)?;
            }
        }
        Ok(())
    }

    /// Undoes what a failed or cancelled job left behind.
    async fn undo(&self, job: &Job, log: &JobLog) {
        if job.kind != JobKind::StartInstance {
            return; // objects keep their checkpoint; the owner retries or deletes
        }
        let Some(iid) = &job.instance_id else { return };
        let Ok(inst) = self.inner.store.instance(iid) else {
            return;
        };
        if let Some(b) = self.backend_of_instance(&inst) {
            log.info("undo: stopping what was started");
            if let Err(e) = b.stop(&inst, log).await {
                log.warn(&format!("undo failed: {}", error_chain(&e)));
            }
        }
    }
}

async fn cancellable<T>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, JobError> {
    tokio::select! {
        r = f => Ok(r?),
        _ = cancel.cancelled() => Err(JobError::Cancelled),
    }
}

fn pct(done: u32, total: usize) -> u8 {
    let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
    u8::try_from((done.min(total) * 100) / total).unwrap_or(100)
}

/// An error and its sources, for people.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;

    use super::*;
    use crate::backend::{Capabilities, Inventory, Orphan, Started};

    /// Fails `create` with a retryable error `flaky` times, then succeeds;
    /// `run_script` fails permanently when the script says so.
    struct Flaky {
        flaky: u32,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Backend for Flaky {
        fn kind(&self) -> BackendKind {
            BackendKind::Local
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn check(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn create(
            &self,
            _: &Object,
            _: Option<&Object>,
            _: &JobLog,
        ) -> Result<serde_json::Value, BackendError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.flaky {
                return Err(BackendError::Unavailable {
                    message: format!("busy ({n})"),
                    source: None,
                });
            }
            Ok(serde_json::json!({ "made": true }))
        }
        async fn run_script(
            &self,
            _: &Object,
            s: &Script,
            _: &JobLog,
            _: &CancellationToken,
        ) -> Result<(), BackendError> {
            if s.run == "fail" {
                return Err(BackendError::failed("the script failed"));
            }
            Ok(())
        }
        async fn finalize(
            &self,
            o: &Object,
            _: &JobLog,
        ) -> Result<serde_json::Value, BackendError> {
            Ok(o.backend_ref.clone())
        }
        async fn delete(&self, _: &Object, _: &JobLog) -> Result<(), BackendError> {
            Ok(())
        }
        async fn start(&self, _: StartRequest<'_>, _: &JobLog) -> Result<Started, BackendError> {
            Err(BackendError::failed("not used"))
        }
        async fn stop(&self, _: &Instance, _: &JobLog) -> Result<(), BackendError> {
            Ok(())
        }
        async fn inventory(&self) -> Result<Inventory, BackendError> {
            Ok(Inventory::default())
        }
        async fn remove_orphan(&self, _: &Orphan) -> Result<(), BackendError> {
            Ok(())
        }
    }

    async fn run(flaky: u32, max_attempts: u32, script: &str) -> (Job, Vec<JobStep>, Object, u32) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let backend = Arc::new(Flaky {
            flaky,
            calls: AtomicU32::new(0),
        });
        let mut backends = Backends::default();
        backends.insert(backend.clone());
        let cfg = config::Jobs {
            workers: 2,
            max_attempts,
            retry_backoff_ms: 1,
        };
        let engine = Engine::new(store.clone(), backends, cfg);
        let (_tx, rx) = mpsc::unbounded_channel();
        engine.start(CancellationToken::new(), rx);
        let user = store.create_user("a", Role::Admin, "x").unwrap();
        let spec = Spec {
            config_auto: vec![Script {
                name: "s".into(),
                run: script.into(),
                timeout_secs: 5,
            }],
            ..Spec::default()
        };
        let obj = Object {
            id: new_id(),
            phase: Phase::Baseimage,
            name: "b".into(),
            parent_id: None,
            owner_id: user.id.clone(),
            kind: Kind::Container,
            platform: Platform::Linux,
            protocol: Protocol::Vnc,
            backend: BackendKind::Local,
            subphase: Subphase::Create,
            status: ObjectStatus::Busy,
            error: None,
            shared: false,
            spec: spec.clone(),
            backend_ref: serde_json::Value::Null,
            created_at: now(),
            updated_at: now(),
        };
        let job = crate::store::NewJob {
            id: new_id(),
            kind: JobKind::Create,
            object_id: Some(obj.id.clone()),
            instance_id: None,
            user_id: user.id.clone(),
            steps: crate::lifecycle::plan(Phase::Baseimage, Subphase::Create, &spec),
        };
        let j = store.insert_object_with_job(&obj, &job, None).unwrap();
        engine.submit(&j.id);
        for _ in 0..500 {
            if store.job(&j.id).unwrap().state.is_final() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let calls = backend.calls.load(Ordering::SeqCst);
        (
            store.job(&j.id).unwrap(),
            store.job_steps(&j.id).unwrap(),
            store.object(&obj.id).unwrap(),
            calls,
        )
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_with_backoff() {
        let (job, steps, obj, calls) = run(2, 3, "ok").await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(calls, 3, "two failures, then success");
        assert!(steps.iter().all(|s| s.state == StepState::Done));
        assert_eq!(
            (obj.subphase, obj.status),
            (Subphase::Ready, ObjectStatus::Idle)
        );
        assert_eq!(obj.backend_ref, serde_json::json!({ "made": true }));
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts() {
        let (job, steps, obj, calls) = run(5, 3, "ok").await;
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(calls, 3);
        assert!(job.error.unwrap().contains("busy"));
        assert_eq!(steps[0].state, StepState::Failed);
        assert_eq!(
            (obj.subphase, obj.status),
            (Subphase::Create, ObjectStatus::Failed)
        );
    }

    #[tokio::test]
    async fn permanent_errors_fail_at_once_and_keep_the_checkpoint() {
        let (job, steps, obj, _) = run(0, 3, "fail").await;
        assert_eq!(job.state, JobState::Failed);
        assert!(job.error.unwrap().contains("the script failed"));
        // Create and the subphase change are done; the script step failed.
        assert_eq!(steps[0].state, StepState::Done);
        assert_eq!(steps[2].state, StepState::Failed);
        assert_eq!(
            (obj.subphase, obj.status),
            (Subphase::ConfigAuto, ObjectStatus::Failed)
        );
    }
}
