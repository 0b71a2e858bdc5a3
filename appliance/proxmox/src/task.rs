//! Tasks: PVE answers a long call with a UPID at once and does the work in
//! a worker. An HTTP 200 only means the worker started: the outcome is the
//! task's `exitstatus` once its `status` is `stopped` (`OK` or
//! `WARNINGS: n` for success, else the error message).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use crate::client::{Client, Idempotency, Params};
use crate::error::{classify, PveError};
use crate::types::TaskDone;
use crate::upid::Upid;

/// Lines of the log kept with a failed task.
const LOG_TAIL: usize = 20;

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// Set once stopped.
    #[serde(default)]
    pub exitstatus: Option<String>,
}

/// A started task. Holds its node's slot of the per-node limit until it is
/// waited for (or dropped: then the slot frees while PVE may still run it).
#[derive(Debug)]
#[must_use = "a task's outcome is only known after wait()"]
pub struct Task {
    client: Client,
    upid: Upid,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Task {
    /// The task's id.
    pub fn upid(&self) -> &Upid {
        &self.upid
    }

    /// Waits for the end with the client's default limit.
    pub async fn wait(self) -> Result<TaskDone, PveError> {
        let t = self.client.config().task_timeout;
        self.wait_for(t).await
    }

    /// Polls the status with backoff until the task stops or `timeout`
    /// passes; a failed task comes back as [`PveError::TaskFailed`] with the
    /// tail of its log.
    pub async fn wait_for(self, timeout: Duration) -> Result<TaskDone, PveError> {
        let poll = self.client.config().poll;
        let deadline = Instant::now() + timeout;
        let mut wait = poll.initial;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PveError::TaskTimeout {
                    upid: Box::new(self.upid.clone()),
                    timeout,
                });
            }
            tokio::time::sleep(wait.min(left)).await;
            wait = wait.mul_f64(poll.factor).min(poll.max);
            let st = match self.client.task_status(&self.upid).await {
                Ok(st) => st,
                Err(e) if e.is_transient() => {
                    warn!(upid = %self.upid, error = %e, "task status unavailable, polling on");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if st.status != "stopped" {
                continue;
            }
            let exitstatus = st.exitstatus.unwrap_or_else(|| "unexpected status".into());
            if exitstatus == "OK" || is_warnings(&exitstatus) {
                debug!(upid = %self.upid, %exitstatus, "task done");
                return Ok(TaskDone {
                    upid: self.upid,
                    exitstatus,
                });
            }
            let log_tail = match self.client.task_log_tail(&self.upid, LOG_TAIL).await {
                Ok(l) => l,
                Err(e) => vec![format!("(task log unavailable: {e})")],
            };
            let kind = classify(&exitstatus);
            return Err(PveError::TaskFailed {
                upid: Box::new(self.upid),
                exitstatus,
                log_tail,
                kind,
            });
        }
    }
}

fn is_warnings(s: &str) -> bool {
    s.strip_prefix("WARNINGS: ")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

fn upid_from(data: serde_json::Value, m: &'static str, path: &str) -> Result<Upid, PveError> {
    let text = data.as_str().ok_or_else(|| PveError::Protocol {
        method: m,
        path: path.to_owned(),
        detail: "expected a task id".into(),
    })?;
    text.parse().map_err(|e| PveError::Protocol {
        method: m,
        path: path.to_owned(),
        detail: format!("{e}"),
    })
}

impl Client {
    /// A handle for a task started elsewhere (a stored UPID after a restart).
    pub fn task(&self, upid: Upid) -> Task {
        Task {
            client: self.clone(),
            upid,
            _permit: None,
        }
    }

    /// Starts a task on `node`: takes the node's slot, sends the call and
    /// reads the UPID.
    pub async fn start_task(
        &self,
        node: &str,
        method: Method,
        segments: &[&str],
        params: &Params,
        idempotency: Idempotency,
    ) -> Result<Task, PveError> {
        let permit = self.limiter().acquire(node).await;
        let m = match method {
            Method::DELETE => "DELETE",
            Method::PUT => "PUT",
            _ => "POST",
        };
        let env = self.call(method, segments, params, idempotency).await?;
        let upid = upid_from(env.data, m, &format!("/{}", segments.join("/")))?;
        debug!(%upid, "task started");
        Ok(Task {
            client: self.clone(),
            upid,
            _permit: Some(permit),
        })
    }

    /// The task's status, read on the task's node.
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        self.call_data(
            Method::GET,
            &["nodes", &upid.node, "tasks", upid.as_str(), "status"],
            &Params::new(),
            Idempotency::Idempotent,
        )
        .await
    }

    /// The last `lines` lines of a task's log.
    pub async fn task_log_tail(&self, upid: &Upid, lines: usize) -> Result<Vec<String>, PveError> {
        #[derive(Deserialize)]
        struct Line {
            #[serde(default)]
            t: String,
        }
        let segs = ["nodes", upid.node.as_str(), "tasks", upid.as_str(), "log"];
        let limit = i64::try_from(lines.max(1)).unwrap_or(50);
        let read = |start: i64| {
            let params = Params::new().int("start", start).int("limit", limit);
            async move {
                self.call(Method::GET, &segs, &params, Idempotency::Idempotent)
                    .await
            }
        };
        let mut env = read(0).await?;
        if let Some(total) = env.total {
            let total = i64::try_from(total).unwrap_or(i64::MAX);
            if total > limit {
                env = read(total - limit).await?;
            }
        }
        let lines: Vec<Line> =
            serde_json::from_value(env.data).map_err(|e| PveError::Protocol {
                method: "GET",
                path: format!("/{}", segs.join("/")),
                detail: e.to_string(),
            })?;
        Ok(lines.into_iter().map(|l| l.t).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_success() {
        assert!(is_warnings("WARNINGS: 2"));
        assert!(!is_warnings("WARNINGS: "));
        assert!(!is_warnings("WARNINGS: x"));
        assert!(!is_warnings("clone failed: WARNINGS: 2"));
    }
}
