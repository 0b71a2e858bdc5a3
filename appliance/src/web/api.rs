//! Routes and handlers of the REST API v1 and the service endpoints.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiJson, AppState, AuthVia, Caller, ClientAddr, SESSION_COOKIE};
use crate::auth;
use crate::jobs::LogEvent;
use crate::lifecycle::NewObject;
use crate::model::*;

type St = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<(&'static str, String)>,
}

impl Routes {
    fn add(
        mut self,
        path: &str,
        methods: &[&'static str],
        mr: MethodRouter<Arc<AppState>>,
    ) -> Self {
        for m in methods {
            self.table.push((m, path.to_owned()));
        }
        self.router = self.router.route(path, mr);
        self
    }
}

fn build() -> Routes {
    let mut r = Routes {
        router: Router::new(),
        table: Vec::new(),
    };
    r = r
        .add("/healthz", &["get"], get(healthz))
        .add("/readyz", &["get"], get(readyz))
        .add("/metrics", &["get"], get(metrics))
        .add("/api/v1/openapi.json", &["get"], get(openapi))
        .add(
            "/api/v1/session",
            &["post", "delete"],
            post(login).delete(logout),
        )
        .add("/api/v1/me", &["get"], get(me))
        .add(
            "/api/v1/users",
            &["get", "post"],
            get(users).post(user_create),
        )
        .add(
            "/api/v1/users/{id}/password",
            &["post"],
            post(user_password),
        )
        .add("/api/v1/users/{id}/disable", &["post"], post(user_disable))
        .add("/api/v1/users/{id}/enable", &["post"], post(user_enable))
        .add(
            "/api/v1/tokens",
            &["get", "post"],
            get(tokens).post(token_create),
        )
        .add("/api/v1/tokens/{id}", &["delete"], delete(token_delete))
        .add("/api/v1/backends", &["get"], get(backends))
        .add("/api/v1/admin/orphans", &["get"], get(orphans))
        .add(
            "/api/v1/admin/orphans/{backend}/{what}/{id}",
            &["delete"],
            delete(orphan_remove),
        )
        .add(
            "/api/v1/baseimages",
            &["get", "post"],
            get(list_baseimages).post(create_baseimage),
        )
        .add("/api/v1/environments", &["get"], get(list_environments))
        .add("/api/v1/deployments", &["get"], get(list_deployments))
        .add("/api/v1/apps", &["get"], get(list_apps))
        .add("/api/v1/instances", &["get"], get(instances))
        .add("/api/v1/instances/{id}", &["get"], get(instance))
        .add(
            "/api/v1/instances/{id}/stop",
            &["post"],
            post(instance_stop),
        )
        .add(
            "/api/v1/instances/{id}/connect",
            &["post"],
            post(instance_connect),
        )
        .add("/api/v1/jobs", &["get"], get(jobs))
        .add("/api/v1/jobs/{id}", &["get"], get(job))
        .add("/api/v1/jobs/{id}/cancel", &["post"], post(job_cancel))
        .add("/api/v1/jobs/{id}/logs", &["get"], get(job_logs))
        .add(
            "/api/v1/jobs/{id}/logs/stream",
            &["get"],
            get(job_logs_stream),
        )
        .add("/api/v1/tunnel", &["get"], get(super::tunnel::tunnel))
        .add("/api/v1/nodes", &["get"], get(nodes_list))
        .add(
            "/api/v1/nodes/tokens",
            &["get", "post"],
            get(node_tokens).post(node_token_create),
        )
        .add(
            daas_agent_api::paths::APPLIANCE_JOIN,
            &["post"],
            post(node_join).layer(DefaultBodyLimit::max(daas_agent_api::MAX_BODY_BYTES)),
        )
        .add(
            daas_agent_api::paths::APPLIANCE_HEARTBEAT,
            &["post"],
            post(node_heartbeat).layer(DefaultBodyLimit::max(daas_agent_api::MAX_BODY_BYTES)),
        )
        .add(
            "/api/v1/nodes/{id}",
            &["get", "delete"],
            get(node_get).delete(node_remove),
        );
    for phase in Phase::ALL.iter().copied() {
        let base = format!("/api/v1/{}/{{id}}", phase.plural());
        r = r
            .add(
                &base,
                &["get", "delete"],
                get(move |s: St, c: Caller, p: Path<String>| object_get(s, c, p, phase))
                    .delete(move |s: St, c: Caller, p: Path<String>| object_delete(s, c, p, phase)),
            )
            .add(
                &format!("{base}/retry"),
                &["post"],
                post(move |s: St, c: Caller, p: Path<String>| object_retry(s, c, p, phase)),
            )
            .add(
                &format!("{base}/open"),
                &["post"],
                post(move |s: St, c: Caller, p: Path<String>| object_open(s, c, p, phase)),
            );
        if let Some(child) = phase.child() {
            r = r
                .add(
                    &format!("{base}/{}", child.plural()),
                    &["post"],
                    post(
                        move |s: St, c: Caller, p: Path<String>, b: ApiJson<NewObject>| {
                            object_derive(s, c, p, b, phase)
                        },
                    ),
                )
                .add(
                    &format!("{base}/finalize"),
                    &["post"],
                    post(move |s: St, c: Caller, p: Path<String>| object_finalize(s, c, p, phase)),
                );
        }
    }
    r
}

/// The router with its state, limits and fallbacks.
pub(super) fn routes(state: Arc<AppState>) -> Router {
    let limit = state.cfg.server.max_body_bytes;
    let counted = state.clone();
    build()
        .router
        .fallback(portal)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(move |r: Response| {
            let st = counted.clone();
            async move {
                let m = &st.http;
                match r.status().as_u16() {
                    500..=599 => m.server_error.fetch_add(1, Ordering::Relaxed),
                    400..=499 => m.client_error.fetch_add(1, Ordering::Relaxed),
                    _ => m.ok.fetch_add(1, Ordering::Relaxed),
                };
                r
            }
        }))
        .with_state(state)
}

/// GETs outside the API serve the web portal (`daas-portal`: its files,
/// and `index.html` for the paths the single-page app routes itself);
/// everything else is the API's JSON 404.
async fn portal(method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    let api = ["/api", "/healthz", "/readyz", "/metrics"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    let asset = (!api && (method == axum::http::Method::GET || method == axum::http::Method::HEAD))
        .then(|| daas_portal::page(path))
        .flatten();
    let Some(a) = asset else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
            .into_response();
    };
    let mut h = HeaderMap::new();
    for (k, v) in daas_portal::SECURITY_HEADERS {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h.insert(header::ETAG, HeaderValue::from_static(a.etag));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(daas_portal::cache_control(&a)),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    match a.gzip {
        Some(gz) if gzip_ok => {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            (h, gz).into_response()
        }
        _ => (h, a.bytes).into_response(),
    }
}

/// The (method, path) pairs served.
pub(super) fn route_table() -> Vec<(&'static str, String)> {
    build().table
}

fn accepted(body: Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn items<T: serde::Serialize>(v: &[T]) -> Response {
    Json(json!({ "items": v })).into_response()
}

// ---- service ----------------------------------------------------------------

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(st): St) -> Response {
    let ready = st.ready.load(Ordering::Acquire)
        && !st.lifecycle.engine().draining()
        && st.lifecycle.store().ping().is_ok();
    if ready {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready" })),
        )
            .into_response()
    }
}

async fn metrics(State(st): St) -> Response {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, help: &str, kind: &str, samples: &[(String, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "daas_build_info",
        "Version of this appliance.",
        "gauge",
        &[(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
    );
    let h = &st.http;
    metric(
        "daas_http_responses_total",
        "HTTP responses by status class.",
        "counter",
        &[
            ("{class=\"ok\"}".into(), h.ok.load(Ordering::Relaxed)),
            (
                "{class=\"client_error\"}".into(),
                h.client_error.load(Ordering::Relaxed),
            ),
            (
                "{class=\"server_error\"}".into(),
                h.server_error.load(Ordering::Relaxed),
            ),
        ],
    );
    let j = st.lifecycle.engine().metrics();
    metric(
        "daas_jobs_total",
        "Jobs ended, by outcome.",
        "counter",
        &[
            (
                "{outcome=\"succeeded\"}".into(),
                j.succeeded.load(Ordering::Relaxed),
            ),
            (
                "{outcome=\"failed\"}".into(),
                j.failed.load(Ordering::Relaxed),
            ),
            (
                "{outcome=\"cancelled\"}".into(),
                j.cancelled.load(Ordering::Relaxed),
            ),
        ],
    );
    metric(
        "daas_job_step_retries_total",
        "Steps retried after a retryable backend error.",
        "counter",
        &[(String::new(), j.retries.load(Ordering::Relaxed))],
    );
    metric(
        "daas_job_orchestration_seconds_total",
        "Time jobs spent outside backend calls, in microseconds summed.",
        "counter",
        &[(String::new(), j.overhead_us.load(Ordering::Relaxed))],
    );
    if let Ok(all) = st.lifecycle.store().instances(None, false) {
        let samples: Vec<(String, u64)> = InstanceState::ALL
            .iter()
            .map(|s| {
                (
                    format!("{{state=\"{s}\"}}"),
                    all.iter().filter(|i| i.state == *s).count() as u64,
                )
            })
            .collect();
        metric(
            "daas_instances",
            "Instances by state (latest 1000).",
            "gauge",
            &samples,
        );
    }
    metric(
        "daas_tunnels_open",
        "Guacamole tunnels open now.",
        "gauge",
        &[(String::new(), st.tunnels.count() as u64)],
    );
    out.push_str(&st.gateway.prometheus_text());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::serve::OPENAPI,
    )
        .into_response()
}

// ---- session ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

fn user_json(u: &User) -> Value {
    json!({ "id": u.id, "name": u.name, "role": u.role, "disabled": u.disabled, "created_at": u.created_at })
}

async fn login(
    State(st): St,
    Extension(ClientAddr(addr)): Extension<ClientAddr>,
    uri: Uri,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Login>,
) -> ApiResult {
    // A login form posted from another site is refused like any write.
    if headers.contains_key(header::ORIGIN) {
        super::check_origin(&headers, &uri, &st)?;
    }
    let ip = Some(addr.ip());
    if let Some(wait) = st.throttle.retry_after(&req.username, ip) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!("too many failed logins; try again in {wait} seconds"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let store = st.lifecycle.store().clone();
    let name = req.username.clone();
    let pw = req.password;
    let found = tokio::task::spawn_blocking(move || match store.user_by_name(&name) {
        Ok((u, hash)) => Ok(auth::verify_password(&pw, &hash).then_some(u)),
        Err(crate::store::StoreError::NotFound) => {
            auth::dummy_verify(&pw);
            Ok(None)
        }
        Err(e) => Err(e),
    })
    .await
    .map_err(|_| ApiError::internal())??;
    let Some(user) = found else {
        st.throttle.failed(&req.username, ip);
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    if user.disabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "disabled",
            "this account is disabled",
        ));
    }
    st.throttle.succeeded(&req.username);
    // A new session id at every login.
    if let Some(old) = super::cookie(&headers, SESSION_COOKIE) {
        let _ = st.lifecycle.store().delete_session(&auth::hash_secret(old));
    }
    let secret = auth::new_secret("s_");
    let t = now();
    let a = &st.cfg.auth;
    let absolute = t + a.session_absolute_secs;
    st.lifecycle.store().create_session(
        &auth::hash_secret(&secret),
        &user.id,
        (t + a.session_idle_secs).min(absolute),
        absolute,
    )?;
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        a.session_absolute_secs,
        if st.tls { "; Secure" } else { "" }
    );
    let mut r = Json(json!({ "user": user_json(&user) })).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::internal())?,
    );
    Ok(r)
}

async fn logout(State(st): St, c: Caller) -> ApiResult {
    if let AuthVia::Session(hash) = &c.via {
        st.lifecycle.store().delete_session(hash)?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("daas_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(r)
}

async fn me(c: Caller) -> Response {
    Json(user_json(&c.user)).into_response()
}

// ---- users and tokens ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: Role,
    password: String,
}

async fn users(State(st): St, c: Caller) -> ApiResult {
    c.admin()?;
    let u: Vec<Value> = st
        .lifecycle
        .store()
        .users()?
        .iter()
        .map(user_json)
        .collect();
    Ok(items(&u))
}

fn bad(e: auth::CredentialError) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
}

async fn user_create(State(st): St, c: Caller, ApiJson(req): ApiJson<NewUser>) -> ApiResult {
    c.admin()?;
    auth::check_user_name(&req.name).map_err(bad)?;
    auth::check_new_password(&req.password).map_err(bad)?;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&req.password))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(bad)?;
    let u = st
        .lifecycle
        .store()
        .create_user(&req.name, req.role, &hash)?;
    tracing::info!(user = %u.name, role = %u.role, by = %c.user.name, "user created");
    Ok((StatusCode::CREATED, Json(user_json(&u))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
    #[serde(default)]
    current_password: Option<String>,
}

async fn user_password(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewPassword>,
) -> ApiResult {
    let store = st.lifecycle.store().clone();
    if id != c.user.id {
        c.admin()?;
        store.user(&id)?;
    } else if !c.user.is_admin() {
        let (_, hash) = store.user_by_name(&c.user.name)?;
        let cur = req.current_password.clone().unwrap_or_default();
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&cur, &hash))
            .await
            .map_err(|_| ApiError::internal())?;
        if !ok {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the current password is wrong",
            ));
        }
    }
    auth::check_new_password(&req.password).map_err(bad)?;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&req.password))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(bad)?;
    store.set_password(&id, &hash)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_disabled(st: &AppState, c: &Caller, id: &str, disabled: bool) -> ApiResult {
    c.admin()?;
    let store = st.lifecycle.store();
    let u = store.user(id)?;
    if disabled && u.id == c.user.id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot disable yourself",
        ));
    }
    if disabled && u.is_admin() && !u.disabled && store.active_admins()? <= 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the last admin cannot be disabled",
        ));
    }
    store.set_disabled(id, disabled)?;
    Ok(Json(user_json(&store.user(id)?)).into_response())
}

async fn user_disable(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    set_disabled(&st, &c, &id, true).await
}

async fn user_enable(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    set_disabled(&st, &c, &id, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

async fn tokens(State(st): St, c: Caller) -> ApiResult {
    Ok(items(&st.lifecycle.store().tokens(&c.user.id)?))
}

async fn token_create(State(st): St, c: Caller, ApiJson(req): ApiJson<NewToken>) -> ApiResult {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "a token name is 1 to 128 characters",
        ));
    }
    let expires = match req.expires_in_days {
        Some(0) | Some(3651..) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "expires_in_days is 1 to 3650",
            ))
        }
        Some(d) => Some(now() + i64::from(d) * 86_400),
        None => None,
    };
    let secret = auth::new_secret("daas_");
    let t = st.lifecycle.store().create_token(
        &c.user.id,
        name,
        &auth::hash_secret(&secret),
        expires,
    )?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": t, "secret": secret })),
    )
        .into_response())
}

async fn token_delete(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    st.lifecycle.store().delete_token(&c.user.id, &id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn backends(State(st): St, _c: Caller) -> ApiResult {
    let v: Vec<Value> = st
        .lifecycle
        .backends()
        .into_iter()
        .map(|(k, caps)| json!({ "kind": k, "capabilities": caps }))
        .collect();
    Ok(items(&v))
}

async fn orphans(State(st): St, c: Caller) -> ApiResult {
    c.admin()?;
    Ok(items(&st.reconciler.orphans()))
}

async fn orphan_remove(
    State(st): St,
    c: Caller,
    Path((backend, what, id)): Path<(String, String, String)>,
) -> ApiResult {
    c.admin()?;
    let backend: BackendKind = backend
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such backend"))?;
    match st.reconciler.remove(backend, &what, &id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such orphan in the last reconciler pass",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "backend",
            crate::jobs::error_chain(&e),
        )),
    }
}

// ---- nodes ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJoinToken {
    #[serde(default)]
    ttl_minutes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesQuery {
    /// Include removed nodes.
    #[serde(default)]
    removed: bool,
    /// Only the nodes placement may choose (available, heard from lately).
    #[serde(default)]
    placeable: bool,
}

async fn nodes_list(State(st): St, c: Caller, Query(q): Query<NodesQuery>) -> ApiResult {
    c.admin()?;
    let nodes = if q.placeable {
        st.nodes.placeable()?
    } else {
        st.nodes.list(q.removed)?
    };
    Ok(items(&nodes))
}

async fn node_get(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    c.admin()?;
    Ok(Json(st.nodes.get(&id)?).into_response())
}

async fn node_remove(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    c.admin()?;
    let n = st.nodes.remove(&id)?;
    tracing::info!(node_id = %n.id, node = %n.name, by = %c.user.name, "node removed");
    Ok(Json(n).into_response())
}

async fn node_tokens(State(st): St, c: Caller) -> ApiResult {
    c.admin()?;
    Ok(items(&st.nodes.tokens()?))
}

async fn node_token_create(
    State(st): St,
    c: Caller,
    ApiJson(req): ApiJson<NewJoinToken>,
) -> ApiResult {
    let admin = c.admin()?;
    let t = st.nodes.create_token(req.ttl_minutes, Some(&admin.id))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": t.info.id,
            "token": t.token.to_string(),
            "fingerprint": t.token.fingerprint().to_string(),
            "created_at": t.info.created_at,
            "expires_at": t.info.expires_at,
        })),
    )
        .into_response())
}

/// Token auth only (no session): the body carries the one-time token.
async fn node_join(
    State(st): St,
    Extension(ClientAddr(addr)): Extension<ClientAddr>,
    ApiJson(req): ApiJson<daas_agent_api::JoinRequest>,
) -> ApiResult {
    let nodes = st.nodes.clone();
    // Signing and hashing are CPU work: off the async threads.
    let resp = tokio::task::spawn_blocking(move || nodes.join(&req, addr))
        .await
        .map_err(|_| ApiError::internal())??;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

/// The node secret as bearer; no session.
async fn node_heartbeat(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(hb): ApiJson<daas_agent_api::Heartbeat>,
) -> ApiResult {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let resp = st.nodes.heartbeat(&id, secret, &hb)?;
    Ok(Json(resp).into_response())
}

// ---- objects --------------------------------------------------------------------

fn object_json(o: &Object) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

async fn list_phase(st: &AppState, c: &Caller, phase: Phase) -> ApiResult {
    let v: Vec<Value> = st
        .lifecycle
        .objects(&c.user, Some(phase))?
        .iter()
        .map(object_json)
        .collect();
    Ok(items(&v))
}

async fn list_baseimages(State(st): St, c: Caller) -> ApiResult {
    list_phase(&st, &c, Phase::Baseimage).await
}

async fn list_environments(State(st): St, c: Caller) -> ApiResult {
    list_phase(&st, &c, Phase::Environment).await
}

async fn list_deployments(State(st): St, c: Caller) -> ApiResult {
    list_phase(&st, &c, Phase::Deployment).await
}

/// The apps this user may open, each with the user's live instance if any.
async fn list_apps(State(st): St, c: Caller) -> ApiResult {
    let apps = st.lifecycle.apps(&c.user)?;
    let live = st.lifecycle.instances(&c.user, false, true)?;
    let v: Vec<Value> = apps
        .iter()
        .map(|a| {
            let mut j = object_json(a);
            let inst = live
                .iter()
                .find(|i| i.object_id == a.id)
                .map(|i| json!({ "id": i.id, "state": i.state }));
            j["instance"] = inst.unwrap_or(Value::Null);
            j
        })
        .collect();
    Ok(items(&v))
}

async fn create_baseimage(State(st): St, c: Caller, ApiJson(req): ApiJson<NewObject>) -> ApiResult {
    let a = st.lifecycle.create_baseimage(&c.user, req)?;
    Ok(accepted(json!({ "object": a.item, "job": a.job })))
}

async fn object_get(State(st): St, c: Caller, Path(id): Path<String>, phase: Phase) -> ApiResult {
    let o = st.lifecycle.object(&c.user, &id)?;
    if o.phase != phase {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{phase} not found"),
        ));
    }
    Ok(Json(object_json(&o)).into_response())
}

fn check_phase(st: &AppState, c: &Caller, id: &str, phase: Phase) -> Result<(), ApiError> {
    let o = st.lifecycle.object(&c.user, id)?;
    if o.phase != phase {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{phase} not found"),
        ));
    }
    Ok(())
}

async fn object_delete(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
    phase: Phase,
) -> ApiResult {
    check_phase(&st, &c, &id, phase)?;
    let a = st.lifecycle.delete(&c.user, &id)?;
    Ok(accepted(json!({ "object": a.item, "job": a.job })))
}

async fn object_retry(State(st): St, c: Caller, Path(id): Path<String>, phase: Phase) -> ApiResult {
    check_phase(&st, &c, &id, phase)?;
    let a = st.lifecycle.retry(&c.user, &id)?;
    Ok(accepted(json!({ "object": a.item, "job": a.job })))
}

async fn object_finalize(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
    phase: Phase,
) -> ApiResult {
    check_phase(&st, &c, &id, phase)?;
    let a = st.lifecycle.finalize(&c.user, &id)?;
    Ok(accepted(json!({ "object": a.item, "job": a.job })))
}

async fn object_derive(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewObject>,
    phase: Phase,
) -> ApiResult {
    let a = st.lifecycle.derive(&c.user, phase, &id, req)?;
    Ok(accepted(json!({ "object": a.item, "job": a.job })))
}

async fn object_open(State(st): St, c: Caller, Path(id): Path<String>, phase: Phase) -> ApiResult {
    check_phase(&st, &c, &id, phase)?;
    let a = st.lifecycle.open(&c.user, &id)?;
    Ok(accepted(json!({ "instance": a.item, "job": a.job })))
}

// ---- instances --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceQuery {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    active: bool,
}

async fn instances(State(st): St, c: Caller, Query(q): Query<InstanceQuery>) -> ApiResult {
    Ok(items(&st.lifecycle.instances(&c.user, q.all, q.active)?))
}

async fn instance(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    Ok(Json(st.lifecycle.instance(&c.user, &id)?).into_response())
}

async fn instance_stop(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    let a = st.lifecycle.stop(&c.user, &id)?;
    Ok(accepted(json!({ "instance": a.item, "job": a.job })))
}

async fn instance_connect(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    let ticket = st.lifecycle.connect(&c.user, &id)?;
    Ok(Json(json!({
        "ticket": ticket,
        "tunnel": "/api/v1/tunnel",
        "expires_in": st.cfg.gateway.ticket_ttl_secs,
    }))
    .into_response())
}

// ---- jobs ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    limit: Option<u32>,
}

async fn jobs(State(st): St, c: Caller, Query(q): Query<JobsQuery>) -> ApiResult {
    if q.all {
        c.admin()?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let user = (!q.all).then_some(c.user.id.as_str());
    Ok(items(&st.lifecycle.store().jobs(user, limit)?))
}

async fn job(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    let (j, steps) = st.lifecycle.job(&c.user, &id)?;
    let mut v = serde_json::to_value(&j).unwrap_or(Value::Null);
    v["steps"] = steps
        .iter()
        .map(|s| json!({ "idx": s.idx, "label": s.step.label(), "step": s.step, "state": s.state, "error": s.error }))
        .collect();
    Ok(Json(v).into_response())
}

async fn job_cancel(State(st): St, c: Caller, Path(id): Path<String>) -> ApiResult {
    let j = st.lifecycle.cancel(&c.user, &id)?;
    Ok(accepted(json!({ "job": j })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<u32>,
}

async fn job_logs(
    State(st): St,
    c: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult {
    let (j, _) = st.lifecycle.job(&c.user, &id)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(items(&st.lifecycle.store().logs(&j.id, q.after, limit)?))
}

/// Streams a job's log over a WebSocket: stored lines first, then live ones,
/// progress and the end. Messages are JSON objects with a `type`.
async fn job_logs_stream(
    State(st): St,
    c: Caller,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    if matches!(c.via, AuthVia::Session(_)) && headers.contains_key(header::ORIGIN) {
        super::check_origin(&headers, &uri, &st)?;
    }
    let (j, _) = st.lifecycle.job(&c.user, &id)?;
    let shutdown = st.shutdown.clone();
    Ok(ws
        .on_upgrade(move |sock| stream_logs(st, j, q.after, sock, shutdown))
        .into_response())
}

async fn stream_logs(
    st: Arc<AppState>,
    job: Job,
    after: i64,
    mut sock: WebSocket,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let store = st.lifecycle.store().clone();
    // Subscribe before reading what is stored, so nothing falls in between.
    let mut rx = st.lifecycle.engine().hub().subscribe(&job.id);
    let mut last = after;
    let send = |v: Value| Message::Text(v.to_string().into());
    loop {
        let Ok(batch) = store.logs(&job.id, last, 1000) else {
            return;
        };
        let n = batch.len();
        for l in batch {
            last = l.seq;
            if sock
                .send(send(json!({ "type": "line", "line": l })))
                .await
                .is_err()
            {
                return;
            }
        }
        if n < 1000 {
            break;
        }
    }
    let finished = |state: JobState| json!({ "type": "finished", "state": state });
    if let Ok(j) = store.job(&job.id) {
        if j.state.is_final() {
            let _ = sock.send(send(finished(j.state))).await;
            let _ = sock.send(Message::Close(None)).await;
            return;
        }
    }
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(LogEvent::Line(l)) => {
                    if l.seq <= last { continue; }
                    last = l.seq;
                    if sock.send(send(json!({ "type": "line", "line": l }))).await.is_err() { return; }
                }
                Ok(LogEvent::Progress(p)) => {
                    if sock.send(send(json!({ "type": "progress", "progress": p }))).await.is_err() { return; }
                }
                Ok(LogEvent::Finished(state)) => {
                    // Lines may have been stored after the last broadcast we saw.
                    if let Ok(rest) = store.logs(&job.id, last, 10_000) {
                        for l in rest {
                            if sock.send(send(json!({ "type": "line", "line": l }))).await.is_err() { return; }
                        }
                    }
                    let _ = sock.send(send(finished(state))).await;
                    let _ = sock.send(Message::Close(None)).await;
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: catch up from the store.
                    if let Ok(rest) = store.logs(&job.id, last, 10_000) {
                        for l in rest {
                            last = l.seq;
                            if sock.send(send(json!({ "type": "line", "line": l }))).await.is_err() { return; }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            msg = sock.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                _ => {}
            },
            _ = tokio::time::sleep(Duration::from_secs(20)) => {
                // Keep proxies from closing an idle stream; also notice a job
                // that ended while no event reached us.
                if let Ok(j) = store.job(&job.id) {
                    if j.state.is_final() {
                        let _ = sock.send(send(finished(j.state))).await;
                        return;
                    }
                }
                if sock.send(Message::Ping(Vec::new().into())).await.is_err() { return; }
            }
            _ = shutdown.cancelled() => {
                let _ = sock.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
