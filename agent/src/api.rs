//! The agent's HTTP API (the routes of [`daas_agent_api::paths`]). Only this
//! module knows HTTP: a request becomes a typed call on the [`LeaseStore`]
//! or a read of facts and status, and errors become
//! `{"error":{"code","message"}}` here, once.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use daas_agent_api::{
    paths, AllocateRequest, ApiError, ConvergeRequest, ConvergeResponse, ErrorBody, ErrorCode,
    LeaseList, MacAddr, MAX_BODY_BYTES,
};

use crate::leases::LeaseError;
use crate::shared::Shared;
use crate::store::StoreError;

/// The router of the API, over the agent's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::FACTS, get(facts))
        .route(paths::LEASES, get(list).post(allocate).put(converge))
        .route(paths::LEASE, delete(release))
        .fallback(|| async { error(ApiError::new(ErrorCode::NotFound, "no such route")) })
        .method_not_allowed_fallback(|| async {
            Failure(
                ApiError::new(ErrorCode::InvalidRequest, "method not allowed"),
                Some(StatusCode::METHOD_NOT_ALLOWED),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// An error answer (with the status of its code unless one is given).
struct Failure(ApiError, Option<StatusCode>);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.1.unwrap_or_else(|| {
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        (status, Json(ErrorBody::from(self.0))).into_response()
    }
}

fn error(e: ApiError) -> Failure {
    Failure(e, None)
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        error(store_error(&e))
    }
}

impl From<JsonRejection> for Failure {
    fn from(r: JsonRejection) -> Self {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::InvalidRequest
        };
        error(ApiError::new(code, r.body_text()))
    }
}

/// The one translation of a store error to the wire.
pub fn store_error(e: &StoreError) -> ApiError {
    let code = match e {
        StoreError::Lease(l) => match l {
            LeaseError::OutOfRange { .. } => ErrorCode::OutOfRange,
            LeaseError::AddressInUse { .. } => ErrorCode::AddressInUse,
            LeaseError::MacInUse { .. } => ErrorCode::MacInUse,
            LeaseError::HostnameInUse { .. } => ErrorCode::HostnameInUse,
            LeaseError::PoolExhausted { .. } | LeaseError::LimitReached { .. } => {
                ErrorCode::PoolExhausted
            }
            LeaseError::NotFound { .. } => ErrorCode::NotFound,
            LeaseError::Duplicate { .. } => ErrorCode::InvalidRequest,
            LeaseError::TooMany { .. } => ErrorCode::PayloadTooLarge,
        },
        StoreError::Write { .. } => ErrorCode::StorageFailed,
        StoreError::Reload(_) => ErrorCode::DnsmasqUnavailable,
        StoreError::Stopping => ErrorCode::DnsmasqUnavailable,
    };
    let mut api = ApiError::new(code, crate::util::chain(e));
    if let StoreError::Reload(r) = e {
        api.dnsmasq = Some(r.0.clone());
    }
    api
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    Json(s.status()).into_response()
}

async fn facts(State(s): State<Arc<Shared>>) -> Result<Response, Failure> {
    let facts = s
        .facts()
        .await
        .map_err(|m| error(ApiError::new(ErrorCode::Internal, m)))?;
    Ok(Json(facts).into_response())
}

async fn list(State(s): State<Arc<Shared>>) -> Response {
    Json(LeaseList {
        items: s.store.list(),
    })
    .into_response()
}

async fn allocate(
    State(s): State<Arc<Shared>>,
    body: Result<Json<AllocateRequest>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(req) = body?;
    let (lease, created) = s.store.allocate(&req).await.inspect_err(log_refusal)?;
    if created {
        tracing::info!(mac = %lease.mac, ip = %lease.ip, hostname = %lease.hostname, "lease allocated");
    }
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(lease)).into_response())
}

async fn release(
    State(s): State<Arc<Shared>>,
    Path(mac): Path<String>,
) -> Result<Response, Failure> {
    let mac: MacAddr = mac.parse().map_err(|e: daas_agent_api::MacAddrError| {
        error(ApiError::new(ErrorCode::InvalidRequest, e.to_string()))
    })?;
    let lease = s.store.release(&mac).await.inspect_err(log_refusal)?;
    tracing::info!(mac = %lease.mac, ip = %lease.ip, "lease released");
    Ok(Json(lease).into_response())
}

async fn converge(
    State(s): State<Arc<Shared>>,
    body: Result<Json<ConvergeRequest>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(req) = body?;
    let (stats, leases) = s
        .store
        .converge(req.leases)
        .await
        .inspect_err(log_refusal)?;
    tracing::info!(
        added = stats.added,
        removed = stats.removed,
        changed = stats.changed,
        "leases converged"
    );
    Ok(Json(ConvergeResponse {
        added: stats.added,
        removed: stats.removed,
        changed: stats.changed,
        unchanged: stats.unchanged,
        leases,
    })
    .into_response())
}

/// A refused request is the caller's business (debug); a failure to store
/// or reload is the node's (already logged by the store).
fn log_refusal(e: &StoreError) {
    if let StoreError::Lease(l) = e {
        tracing::debug!(error = %l, "lease request refused");
    }
}
