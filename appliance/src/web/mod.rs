//! The web layer: HTTP routes, JSON, cookies and the error translation.
//! **Only this module knows HTTP and JSON bodies.** Handlers turn requests
//! into typed calls on [`crate::lifecycle::Lifecycle`] (or the store's user
//! functions) and never run SQL themselves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Throttle};
use crate::config::Config;
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::model::{now, User};
use crate::store::StoreError;

mod api;
pub mod serve;
pub mod tunnel;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "daas_session";

/// Everything handlers share.
pub struct AppState {
    /// The lifecycle service (and through it the store and engine).
    pub lifecycle: Lifecycle,
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Failed-login throttle.
    pub throttle: Throttle,
    /// Set once the store is migrated and the listeners are up.
    pub ready: AtomicBool,
    /// Cancelled when the appliance shuts down.
    pub shutdown: CancellationToken,
    /// Whether the listener speaks TLS (cookies get `Secure`).
    pub tls: bool,
    /// HTTP counters.
    pub http: HttpMetrics,
    /// The appliance's start time.
    pub started_at: i64,
    /// The reconciler (orphans for admins).
    pub reconciler: crate::reconcile::Reconciler,
    /// Open tunnels by instance.
    pub tunnels: tunnel::Tunnels,
    /// The gateway's counters.
    pub gateway: Arc<daas_gateway::Metrics>,
    /// Nodes: join tokens, registry, heartbeats.
    pub nodes: crate::nodes::Nodes,
}

/// HTTP request counters by status class.
#[derive(Default)]
pub struct HttpMetrics {
    /// 1xx/2xx/3xx.
    pub ok: AtomicU64,
    /// 4xx.
    pub client_error: AtomicU64,
    /// 5xx.
    pub server_error: AtomicU64,
}

/// The client's address, set per connection by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// An API error: JSON `{"error":{"code","message"}}` with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a stable code and a sentence for people.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on the appliance; the details are in its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            LifecycleError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            LifecycleError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            LifecycleError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m)
            }
            LifecycleError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            LifecycleError::Store(e) => {
                tracing::error!(error = %crate::jobs::error_chain(&e), "store failure");
                ApiError::internal()
            }
        }
    }
}

impl From<crate::nodes::NodeError> for ApiError {
    fn from(e: crate::nodes::NodeError) -> Self {
        use crate::nodes::NodeError as E;
        use daas_agent_api::ErrorCode as C;
        let agent = |c: C, m: String| {
            ApiError::new(
                StatusCode::from_u16(c.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
                c.as_str(),
                m,
            )
        };
        match e {
            E::InvalidToken | E::Unauthorized | E::UnknownNode | E::NameInUse(_) => {
                let code = match &e {
                    E::InvalidToken => C::InvalidToken,
                    E::Unauthorized => C::Unauthorized,
                    E::UnknownNode => C::UnknownNode,
                    _ => C::NodeNameInUse,
                };
                agent(code, e.to_string())
            }
            E::Invalid(m) => agent(C::InvalidRequest, m),
            E::TlsOff => ApiError::new(StatusCode::CONFLICT, "tls_required", e.to_string()),
            E::Store(e) => e.into(),
            E::Ca(e) => {
                tracing::error!(error = %crate::jobs::error_chain(&e), "node CA failure");
                ApiError::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        LifecycleError::from(e).into()
    }
}

/// A JSON body: unknown fields, wrong types and bad syntax are 400/422 in
/// the API's error shape; a wrong content type 415; too large 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection as R;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(R::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            )),
            Err(R::JsonSyntaxError(e)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!(
                    "the body is not valid JSON: {}",
                    inner_message(&e.body_text())
                ),
            )),
            Err(R::JsonDataError(e)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("the body does not fit: {}", inner_message(&e.body_text())),
            )),
            Err(R::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the body is larger than this appliance accepts",
                ))
            }
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                e.body_text(),
            )),
        }
    }
}

fn inner_message(s: &str) -> String {
    // axum prefixes "Failed to deserialize the JSON body into the target type: ".
    s.split_once(": ").map_or(s, |(_, rest)| rest).to_owned()
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVia {
    /// A session cookie (its hash).
    Session(String),
    /// An API token.
    Token,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: User,
    /// How they authenticated.
    pub via: AuthVia,
}

impl Caller {
    /// Refuses non-admins.
    pub fn admin(&self) -> Result<&User, ApiError> {
        if self.user.is_admin() {
            Ok(&self.user)
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs an admin",
            ))
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let store = st.lifecycle.store();
        if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
            let token = v
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <token>"))?;
            let user = store
                .token_user(&auth::hash_secret(token.trim()), now())?
                .ok_or_else(|| ApiError::unauthorized("the API token is unknown or expired"))?;
            if user.disabled {
                return Err(ApiError::unauthorized("the account is disabled"));
            }
            return Ok(Caller {
                user,
                via: AuthVia::Token,
            });
        }
        let secret = cookie(&parts.headers, SESSION_COOKIE)
            .ok_or_else(|| ApiError::unauthorized("log in first"))?;
        let hash = auth::hash_secret(secret);
        let s = store
            .session(&hash)?
            .ok_or_else(|| ApiError::unauthorized("the session has ended; log in again"))?;
        let t = now();
        if s.idle_expires_at <= t || s.absolute_expires_at <= t {
            let _ = store.delete_session(&hash);
            return Err(ApiError::unauthorized(
                "the session has expired; log in again",
            ));
        }
        if s.user.disabled {
            return Err(ApiError::unauthorized("the account is disabled"));
        }
        // Cookies ride along on cross-site requests: writes must come from
        // our own pages.
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            check_origin(&parts.headers, &parts.uri, st)?;
        }
        // Extend the idle expiry, writing at most every 15 s per session.
        if t - s.last_seen_at >= 15 {
            let idle = (t + st.cfg.auth.session_idle_secs).min(s.absolute_expires_at);
            let _ = store.touch_session(&hash, idle);
        }
        Ok(Caller {
            user: s.user,
            via: AuthVia::Session(hash),
        })
    }
}

/// Refuses a cookie-authenticated write whose Origin is not ours.
///
/// The page's own origin is the scheme with the request's authority: the
/// Host header under HTTP/1.1, the `:authority` (the URI's) under HTTP/2,
/// where browsers send no Host header.
fn check_origin(headers: &HeaderMap, uri: &Uri, st: &AppState) -> Result<(), ApiError> {
    let refuse = |m: &str| Err(ApiError::new(StatusCode::FORBIDDEN, "bad_origin", m));
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return refuse("a write with a session cookie needs an Origin header");
    };
    let origin = origin.trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let scheme = if st.tls { "https" } else { "http" };
    let own = format!("{scheme}://{host}");
    let trusted = origin.eq_ignore_ascii_case(&own)
        || st
            .cfg
            .server
            .public_url
            .as_deref()
            .is_some_and(|u| u.trim_end_matches('/').eq_ignore_ascii_case(origin))
        || st
            .cfg
            .server
            .trusted_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if trusted {
        Ok(())
    } else {
        refuse("the request comes from a page of another site")
    }
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    api::routes(state)
}

/// The (method, path) pairs the router serves, for the OpenAPI check.
pub fn route_table() -> Vec<(&'static str, String)> {
    api::route_table()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when a route is missing from the OpenAPI document (or the
    /// document names a route that does not exist).
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(serve::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut served = std::collections::BTreeSet::new();
        for (method, path) in route_table() {
            served.insert((method.to_owned(), path.clone()));
            assert!(
                paths.get(&path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is served but missing from openapi.json"
            );
        }
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                assert!(
                    served.contains(&(method.clone(), path.clone())),
                    "openapi.json documents {method} {path}, which is not served"
                );
            }
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; daas_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
