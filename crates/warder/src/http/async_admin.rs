//! Admin routes of async inference: listing requests and webhook delivery
//! attempts, manual redelivery, and webhook secret rotation. Thin handlers;
//! they sit behind the same admin check as [`crate::http::admin`].

use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::queue::AdminAsyncView;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use warder_core::*;

/// The async admin routes.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/admin/async_requests", get(list))
        .route("/admin/async_requests/{request_id}", get(read))
        .route(
            "/admin/async_requests/{request_id}/webhook_deliveries",
            get(deliveries),
        )
        .route(
            "/admin/async_requests/{request_id}/redeliver",
            post(redeliver),
        )
        .route("/admin/users/{user_id}/webhook_secret", post(rotate_secret))
}

/// Filters of `GET /admin/async_requests`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only this user.
    pub user_id: Option<String>,
    /// Only this model (id or name).
    pub model: Option<String>,
    /// Only this status (`QUEUED`, `SUCCEEDED`, …).
    pub status: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// List async requests.
#[utoipa::path(get, path = "/admin/async_requests", tag = "admin", params(ListQuery),
    responses((status = 200, description = "`{async_requests: [...]}`")), security(("api_key" = [])))]
async fn list(
    State(s): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> Result<ApiJson<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(v) => Some(
            JobStatus::parse(&v.to_ascii_uppercase())
                .ok_or_else(|| ApiError::invalid(format!("unknown status '{v}'")))?,
        ),
    };
    let model_id = match q.model {
        None => None,
        Some(m) => Some(
            s.store
                .find_model(&m)
                .await?
                .ok_or_else(|| ApiError::not_found(&format!("model '{m}'")))?
                .id,
        ),
    };
    let jobs = s
        .store
        .list_jobs(JobFilter {
            user_id: q.user_id,
            model_id,
            status,
            limit: q.limit.unwrap_or(100).clamp(1, 1000),
        })
        .await?;
    let views: Vec<AdminAsyncView> = jobs.iter().map(Into::into).collect();
    Ok(ApiJson(json!({ "async_requests": views })))
}

async fn job(s: &SharedState, id: &str) -> Result<AsyncJob, ApiError> {
    s.store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("async request '{id}'")))
}

/// Read any async request.
#[utoipa::path(get, path = "/admin/async_requests/{request_id}", tag = "admin",
    responses((status = 200, body = AdminAsyncView), (status = 404)), security(("api_key" = [])))]
async fn read(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> Result<ApiJson<AdminAsyncView>, ApiError> {
    Ok(ApiJson((&job(&s, &id).await?).into()))
}

/// The webhook delivery attempts of an async request.
#[utoipa::path(get, path = "/admin/async_requests/{request_id}/webhook_deliveries", tag = "admin",
    responses((status = 200, description = "`{request_id, webhook_status, deliveries: [...]}`"), (status = 404)),
    security(("api_key" = [])))]
async fn deliveries(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Value>, ApiError> {
    let j = job(&s, &id).await?;
    let list = s.store.list_deliveries(&id).await?;
    Ok(ApiJson(json!({
        "request_id": j.id,
        "webhook_status": j.webhook_status,
        "deliveries": list,
    })))
}

/// Deliver a finished request's webhook again (from the first attempt of
/// the schedule).
#[utoipa::path(post, path = "/admin/async_requests/{request_id}/redeliver", tag = "admin",
    responses((status = 200, description = "`{request_id, webhook_status: \"PENDING\"}`"),
        (status = 404), (status = 409, description = "no webhook, not finished, or already pending")),
    security(("api_key" = [])))]
async fn redeliver(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> Result<ApiJson<Value>, ApiError> {
    job(&s, &id).await?;
    if !s.store.redeliver(&id, Timestamp::now()).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the request has no webhook, is not finished, or its delivery is already pending",
        ));
    }
    s.signals.deliveries.notify_one();
    Ok(ApiJson(
        json!({ "request_id": id, "webhook_status": WebhookStatus::Pending }),
    ))
}

/// A new webhook secret, shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSecret {
    /// `whsec_…`; earlier secrets keep signing for 24 h.
    pub secret: String,
}

/// Create (or rotate) a user's webhook signing secret.
#[utoipa::path(post, path = "/admin/users/{user_id}/webhook_secret", tag = "admin",
    responses((status = 201, body = CreatedSecret), (status = 404)), security(("api_key" = [])))]
async fn rotate_secret(
    State(s): State<SharedState>,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, ApiJson<CreatedSecret>), ApiError> {
    if s.store.get_user(&user_id).await?.is_none() {
        return Err(ApiError::not_found(&format!("user '{user_id}'")));
    }
    let secret = s.webhooks.rotate_secret(&user_id).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedSecret {
            secret: secret.expose(),
        }),
    ))
}
