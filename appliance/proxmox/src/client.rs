//! The HTTP layer: one call = method, API path, parameters; answers come in
//! PVE's `{"data": ...}` envelope. Retries with backoff where a call is
//! idempotent; auth by token or ticket; TLS by CA or pin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, AUTHORIZATION, COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, warn};

use crate::auth::{Credentials, Secret};
use crate::error::{classify, ErrorKind, PveError};
use crate::limits::{NodeLimiter, DEFAULT_TASKS_PER_NODE};
use crate::tls::{client_config, PinnedVerifier, TlsTrust};

/// The largest answer read (a long task log or resource list fits).
const MAX_BODY: usize = 16 << 20;
/// Tickets live two hours; renew well before.
const TICKET_RENEW: Duration = Duration::from_secs(3600);

/// Backoff for retries of idempotent calls.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    pub attempts: u32,
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before try `n` (1-based, n >= 2): exponential with jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << (n.saturating_sub(2)).min(16));
        let capped = exp.min(self.max);
        // Full jitter on the upper half keeps retries of many callers apart.
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// How task status is polled.
#[derive(Debug, Clone, Copy)]
pub struct PollPolicy {
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Growth per poll.
    pub factor: f64,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 1.5,
        }
    }
}

/// Everything the client needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The node's address, `https://pve1.example:8006` (any node of the
    /// cluster; it proxies to the others).
    pub url: String,
    /// Token or password.
    pub credentials: Credentials,
    /// How the certificate is checked.
    pub tls: TlsTrust,
    /// TCP and TLS connect limit.
    pub connect_timeout: Duration,
    /// Limit for one request and its answer.
    pub request_timeout: Duration,
    /// Retries of idempotent calls.
    pub retry: RetryPolicy,
    /// Task status polling.
    pub poll: PollPolicy,
    /// Default limit for waiting on a task.
    pub task_timeout: Duration,
    /// Tasks in flight per node.
    pub tasks_per_node: usize,
}

impl ClientConfig {
    /// A config with the default timeouts and limits.
    pub fn new(url: impl Into<String>, credentials: Credentials, tls: TlsTrust) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            credentials,
            tls,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            poll: PollPolicy::default(),
            task_timeout: Duration::from_secs(30 * 60),
            tasks_per_node: DEFAULT_TASKS_PER_NODE,
        }
    }
}

/// Request parameters, in order. Booleans go as `1`/`0` (PVE's schema
/// checks booleans strictly). Values are never logged.
#[derive(Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Params {
    /// No parameters.
    pub fn new() -> Params {
        Params(Vec::new())
    }

    /// A string value.
    pub fn str(mut self, k: &str, v: impl Into<String>) -> Params {
        self.0.push((k.to_owned(), v.into()));
        self
    }

    /// An integer value.
    pub fn int(self, k: &str, v: impl Into<i64>) -> Params {
        let v: i64 = v.into();
        self.str(k, v.to_string())
    }

    /// A boolean value.
    pub fn bool(self, k: &str, v: bool) -> Params {
        self.str(k, if v { "1" } else { "0" })
    }

    /// A string value if present.
    pub fn opt_str(self, k: &str, v: Option<impl Into<String>>) -> Params {
        match v {
            Some(v) => self.str(k, v),
            None => self,
        }
    }

    /// The pairs.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a call may be repeated after a failure that leaves its effect
/// unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, and writes whose repetition changes nothing (setting config
    /// values, deleting with an outcome the caller checks).
    Idempotent,
    /// Calls that create something (clones, snapshots, start): never
    /// repeated; a lost answer is reported and the caller reconciles.
    NonIdempotent,
}

/// The answer envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `data`.
    pub data: serde_json::Value,
    /// `total`, where the call pages.
    pub total: Option<u64>,
}

struct TicketSession {
    cookie: HeaderValue,
    csrf: HeaderValue,
    obtained: Instant,
}

enum Auth {
    Token(HeaderValue),
    Ticket {
        username: String,
        password: Secret,
        session: AsyncMutex<Option<Arc<TicketSession>>>,
    },
}

pub(crate) struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    pin: Option<Arc<PinnedVerifier>>,
    pub(crate) config: ClientConfig,
    pub(crate) limiter: NodeLimiter,
}

/// A Proxmox VE API client. Cheap to clone; clones share connections and
/// the per-node task limits.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

fn method_str(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

impl Client {
    /// Builds a client. Makes no request: a ticket login happens on the
    /// first call.
    pub fn new(config: ClientConfig) -> Result<Client, PveError> {
        let limiter = NodeLimiter::new(config.tasks_per_node);
        Client::with_limiter(config, limiter)
    }

    /// Builds a client that shares per-node limits with others (for
    /// example a token client and a `root@pam` ticket client).
    pub fn with_limiter(config: ClientConfig, limiter: NodeLimiter) -> Result<Client, PveError> {
        let mut base = Url::parse(&config.url)
            .map_err(|e| PveError::Config(format!("url {:?}: {e}", config.url)))?;
        if base.scheme() != "https" {
            return Err(PveError::Config(
                "the Proxmox VE API is only spoken over https".into(),
            ));
        }
        if base.host_str().is_none() || base.query().is_some() {
            return Err(PveError::Config(format!(
                "url {:?}: needs a host, no query",
                config.url
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(PveError::Config(
                "put credentials in the token file, not in the url".into(),
            ));
        }
        {
            let mut segs = base
                .path_segments_mut()
                .map_err(|_| PveError::Config("url cannot be a base".into()))?;
            segs.pop_if_empty().extend(["api2", "json"]);
        }
        let (tls, pin) = client_config(&config.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("daas-proxmox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PveError::Config(format!("HTTP client: {e}")))?;
        let auth = match &config.credentials {
            Credentials::Token(t) => Auth::Token(t.header_value()),
            Credentials::Password { username, password } => Auth::Ticket {
                username: username.clone(),
                password: password.clone(),
                session: AsyncMutex::new(None),
            },
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                pin,
                config,
                limiter,
            }),
        })
    }

    /// The per-node task limits.
    pub fn limiter(&self) -> &NodeLimiter {
        &self.inner.limiter
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut s) = url.path_segments_mut() {
            s.extend(segments);
        }
        url
    }

    /// Calls `method` on the API path made of `segments` (each is
    /// percent-encoded) and returns the envelope.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        params: &Params,
        idempotency: Idempotency,
    ) -> Result<Envelope, PveError> {
        let path = format!("/{}", segments.join("/"));
        let m = method_str(&method);
        let retry = self.inner.config.retry;
        let mut relogged = false;
        let mut attempt = 1u32;
        loop {
            let outcome = self.attempt(&method, segments, &path, params).await;
            let err = match outcome {
                Ok(env) => return Ok(env),
                Err(e) => e,
            };
            // A refused ticket: log in again once (not applied, so safe).
            if matches!(err, PveError::Unauthorized { .. })
                && matches!(self.inner.auth, Auth::Ticket { .. })
                && !relogged
            {
                relogged = true;
                self.drop_ticket().await;
                continue;
            }
            let retryable = idempotency == Idempotency::Idempotent
                && matches!(
                    err.kind(),
                    ErrorKind::Unavailable | ErrorKind::Connect | ErrorKind::Timeout
                );
            if !retryable || attempt >= retry.attempts {
                return Err(err);
            }
            attempt += 1;
            let wait = retry.delay(attempt);
            warn!(method = m, %path, attempt, ?wait, error = %err, "Proxmox VE call failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Calls and decodes `data`.
    pub async fn call_data<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        params: &Params,
        idempotency: Idempotency,
    ) -> Result<T, PveError> {
        let env = self
            .call(method.clone(), segments, params, idempotency)
            .await?;
        serde_json::from_value(env.data).map_err(|e| PveError::Protocol {
            method: method_str(&method),
            path: format!("/{}", segments.join("/")),
            detail: e.to_string(),
        })
    }

    async fn attempt(
        &self,
        method: &Method,
        segments: &[&str],
        path: &str,
        params: &Params,
    ) -> Result<Envelope, PveError> {
        let m = method_str(method);
        let url = self.url(segments);
        let mut req = self.inner.http.request(method.clone(), url.clone());
        if method == Method::GET || method == Method::DELETE {
            if !params.is_empty() {
                req = req.query(params.pairs());
            }
        } else {
            req = req.form(params.pairs());
        }
        req = self.authorize(req, method).await?;
        debug!(method = m, %path, params = ?params, "Proxmox VE request");
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(m, path, &url, e)),
        };
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok().map(str::to_owned))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        let body = read_body(resp)
            .await
            .map_err(|e| self.transport_error(m, path, &url, e))?;
        if body.len() > MAX_BODY {
            return Err(PveError::Protocol {
                method: m,
                path: path.to_owned(),
                detail: "answer too large".into(),
            });
        }
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            let json = json.ok_or_else(|| PveError::Protocol {
                method: m,
                path: path.to_owned(),
                detail: "not JSON".into(),
            })?;
            let mut obj = match json {
                serde_json::Value::Object(o) => o,
                _ => {
                    return Err(PveError::Protocol {
                        method: m,
                        path: path.to_owned(),
                        detail: "no {\"data\": ...} envelope".into(),
                    })
                }
            };
            return Ok(Envelope {
                data: obj.remove("data").unwrap_or(serde_json::Value::Null),
                total: obj.get("total").and_then(|t| t.as_u64()),
            });
        }
        Err(error_from(m, path, status, &reason, json.as_ref()))
    }

    fn transport_error(
        &self,
        m: &'static str,
        path: &str,
        url: &Url,
        e: reqwest::Error,
    ) -> PveError {
        if let Some(pin) = &self.inner.pin {
            if let Some(got) = pin.last_mismatch() {
                if is_tls_failure(&e) {
                    return PveError::TlsPinMismatch {
                        expected: pin.expected(),
                        got,
                    };
                }
            }
        }
        if e.is_timeout() {
            PveError::Timeout {
                method: m,
                path: path.to_owned(),
                timeout: self.inner.config.request_timeout,
            }
        } else {
            let mut u = url.clone();
            u.set_query(None);
            PveError::Connect {
                url: u.to_string(),
                source: e,
            }
        }
    }

    async fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        method: &Method,
    ) -> Result<reqwest::RequestBuilder, PveError> {
        match &self.inner.auth {
            Auth::Token(h) => Ok(req.header(AUTHORIZATION, h.clone())),
            Auth::Ticket { .. } => {
                let s = self.ticket().await?;
                let req = req.header(COOKIE, s.cookie.clone());
                Ok(if method == Method::GET {
                    req
                } else {
                    req.header("CSRFPreventionToken", s.csrf.clone())
                })
            }
        }
    }

    async fn drop_ticket(&self) {
        if let Auth::Ticket { session, .. } = &self.inner.auth {
            *session.lock().await = None;
        }
    }

    /// The ticket session, logging in if there is none or it is old.
    async fn ticket(&self) -> Result<Arc<TicketSession>, PveError> {
        let Auth::Ticket {
            username,
            password,
            session,
        } = &self.inner.auth
        else {
            return Err(PveError::Config("not a password login".into()));
        };
        let mut guard = session.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.obtained.elapsed() < TICKET_RENEW {
                return Ok(s.clone());
            }
        }
        let path = "/access/ticket";
        let url = self.url(&["access", "ticket"]);
        let retry = self.inner.config.retry;
        let mut attempt = 1;
        let resp = loop {
            // Logging in changes nothing: retried like a read.
            let r = self
                .inner
                .http
                .post(url.clone())
                .form(&[
                    ("username", username.as_str()),
                    ("password", password.expose()),
                ])
                .send()
                .await;
            let transient = match &r {
                Ok(resp) => matches!(resp.status().as_u16(), 502 | 503 | 595 | 596),
                Err(e) => !self.pin_refused(e),
            };
            if !transient || attempt >= retry.attempts {
                break r;
            }
            attempt += 1;
            tokio::time::sleep(retry.delay(attempt)).await;
        };
        let resp = resp.map_err(|e| self.transport_error("POST", path, &url, e))?;
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok().map(str::to_owned))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        let body = read_body(resp)
            .await
            .map_err(|e| self.transport_error("POST", path, &url, e))?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            return Err(error_from("POST", path, status, &reason, json.as_ref()));
        }
        let data = json
            .as_ref()
            .and_then(|j| j.get("data"))
            .cloned()
            .unwrap_or_default();
        let field = |k: &str| {
            data.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| PveError::Protocol {
                    method: "POST",
                    path: path.into(),
                    detail: format!("no {k} in the ticket answer"),
                })
        };
        let ticket = field("ticket")?;
        let csrf = field("CSRFPreventionToken")?;
        let mut cookie =
            HeaderValue::from_str(&format!("PVEAuthCookie={ticket}")).map_err(|_| {
                PveError::Protocol {
                    method: "POST",
                    path: path.into(),
                    detail: "unusable ticket".into(),
                }
            })?;
        cookie.set_sensitive(true);
        let mut csrf = HeaderValue::from_str(&csrf).map_err(|_| PveError::Protocol {
            method: "POST",
            path: path.into(),
            detail: "unusable CSRF token".into(),
        })?;
        csrf.set_sensitive(true);
        let s = Arc::new(TicketSession {
            cookie,
            csrf,
            obtained: Instant::now(),
        });
        *guard = Some(s.clone());
        debug!(user = %username, "logged in to Proxmox VE with a ticket");
        Ok(s)
    }

    fn pin_refused(&self, e: &reqwest::Error) -> bool {
        self.inner
            .pin
            .as_ref()
            .is_some_and(|p| p.last_mismatch().is_some() && is_tls_failure(e))
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
        if out.len() > MAX_BODY {
            break;
        }
    }
    Ok(out)
}

fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        src = s.source();
    }
    // Some stacks hide the rustls error behind an opaque one; a connect
    // failure with a recorded mismatch is the pin.
    e.is_connect()
}

/// Turns a non-2xx answer into a typed error.
fn error_from(
    m: &'static str,
    path: &str,
    status: StatusCode,
    reason: &str,
    json: Option<&serde_json::Value>,
) -> PveError {
    let message = json
        .and_then(|j| j.get("message"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| reason.to_owned());
    let message = message.trim_end().to_owned();
    let errors: BTreeMap<String, String> = json
        .and_then(|j| j.get("errors"))
        .and_then(|e| e.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text.trim_end().to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let code = status.as_u16();
    match code {
        401 => PveError::Unauthorized { message },
        403 => PveError::PermissionDenied { message },
        400 if !errors.is_empty() => PveError::Validation {
            method: m,
            path: path.to_owned(),
            errors,
        },
        502 | 503 | 595 | 596 => PveError::Unavailable {
            method: m,
            path: path.to_owned(),
            status: code,
            message,
        },
        _ => {
            let kind = classify(&message);
            if kind == ErrorKind::PermissionDenied {
                return PveError::PermissionDenied { message };
            }
            PveError::Api {
                method: m,
                path: path.to_owned(),
                status: code,
                message,
                kind,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for n in 2..12 {
            let d = p.delay(n);
            assert!(d <= Duration::from_secs(1), "{n}: {d:?}");
        }
        let d2 = p.delay(2);
        assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(100));
        let d5 = p.delay(5);
        assert!(d5 >= Duration::from_millis(400), "{d5:?}");
    }

    #[test]
    fn errors_from_answers() {
        let e = error_from(
            "PUT",
            "/nodes/pve/qemu/100/config",
            StatusCode::BAD_REQUEST,
            "Parameter verification failed.",
            Some(
                &serde_json::json!({"data": null, "errors": {"cores": "value must have a minimum value of 1\n"}}),
            ),
        );
        assert_eq!(
            e.field_errors().unwrap()["cores"],
            "value must have a minimum value of 1"
        );
        let e = error_from(
            "PUT",
            "/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "VM is locked (clone)",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::Locked);
        let e = error_from(
            "GET",
            "/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "ignored",
            Some(
                &serde_json::json!({"data": null, "message": "Configuration file 'nodes/pve/qemu-server/1234.conf' does not exist\n"}),
            ),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().ends_with("does not exist"));
        let e = error_from(
            "GET",
            "/x",
            StatusCode::from_u16(596).unwrap(),
            "Connection timed out",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let e = error_from(
            "GET",
            "/x",
            StatusCode::UNAUTHORIZED,
            "invalid token value!",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        let e = error_from(
            "PUT",
            "/x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "only root can set 'args' config",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }

    #[test]
    fn params_do_not_print_values() {
        let p = Params::new()
            .str("password", "hunter2")
            .bool("full", true)
            .int("newid", 101);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2"));
        assert_eq!(p.pairs()[1], ("full".to_string(), "1".to_string()));
    }
}
