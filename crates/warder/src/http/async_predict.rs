//! The async inference routes (Baseten-compatible shapes): thin handlers
//! over [`crate::queue`].

use crate::auth::Principal;
use crate::catalog::Selector;
use crate::gateway::RequestFacts;
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::queue::{
    self, AsyncRequestView, Canceled, QueueStatus, SubmitBody, SubmitCall, Submitted,
};
use crate::state::SharedState;
use crate::telemetry::trace::TraceContext;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::collections::HashMap;
use std::sync::Arc;

/// Path parameters by name, as axum extracts them.
type Params = HashMap<String, String>;

/// The three async submit routes. The axum router and [`crate::http::hot`]
/// both take their paths and selectors from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubmitRoute {
    Model,
    Environment,
    Version,
}

impl SubmitRoute {
    pub(crate) const ALL: [SubmitRoute; 3] = [
        SubmitRoute::Model,
        SubmitRoute::Environment,
        SubmitRoute::Version,
    ];

    /// The route's path pattern (also its `route` label).
    pub(crate) const fn path(self) -> &'static str {
        match self {
            SubmitRoute::Model => "/models/{model}/async_predict",
            SubmitRoute::Environment => "/models/{model}/environments/{env}/async_predict",
            SubmitRoute::Version => "/model_versions/{version_id}/async_predict",
        }
    }

    /// What to queue for, from the route's path parameters by name.
    pub(crate) fn selector<'a>(self, param: impl Fn(&str) -> Option<&'a str>) -> Selector {
        let get = |name: &str| param(name).unwrap_or_default().to_owned();
        match self {
            SubmitRoute::Model => Selector::Environment {
                model: get("model"),
                env: "production".to_owned(),
            },
            SubmitRoute::Environment => Selector::Environment {
                model: get("model"),
                env: get("env"),
            },
            SubmitRoute::Version => Selector::Version {
                version: get("version_id"),
            },
        }
    }
}

/// The async routes (authentication is added by the caller).
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route(SubmitRoute::Model.path(), post(model_async))
        .route(SubmitRoute::Environment.path(), post(env_async))
        .route(SubmitRoute::Version.path(), post(version_async))
        .route("/async_request/{request_id}", get(status).delete(cancel))
        .route("/models/{model}/async_queue_status", get(queue_status))
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Queues one request for an authenticated caller (both dispatch paths end
/// here); the [`RequestFacts`] for the access line ride on the response.
pub(crate) async fn submit(
    state: SharedState,
    principal: Arc<Principal>,
    trace: TraceContext,
    selector: Selector,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let text = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let call = SubmitCall {
        principal,
        trace,
        selector,
        idempotency_key: text(IDEMPOTENCY_KEY.clone()),
        content_type: text(header::CONTENT_TYPE),
        body,
    };
    let mut facts = RequestFacts::default();
    let mut response = match queue::submit(&state, call, &mut facts).await {
        Ok(s) => {
            let replayed = s.replayed;
            let mut r = (StatusCode::CREATED, ApiJson(s)).into_response();
            if replayed {
                r.headers_mut().insert(
                    HeaderName::from_static("idempotent-replayed"),
                    HeaderValue::from_static("true"),
                );
            }
            r
        }
        Err(e) => e.into_response(),
    };
    // `request_context` names the model and version in the access line.
    response.extensions_mut().insert(facts);
    response
}

/// Queue a request for a model's `production` version.
#[utoipa::path(post, path = "/models/{model}/async_predict", tag = "async", request_body = SubmitBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried submit with the same key returns the first request"), ("model" = String, Path)),
    responses((status = 201, body = Submitted), (status = 400, description = "refused webhook target or bad header"),
        (status = 401), (status = 403), (status = 404), (status = 413), (status = 415), (status = 422), (status = 429), (status = 503)),
    security(("api_key" = [])))]
async fn model_async(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let selector = SubmitRoute::Model.selector(|n| params.get(n).map(String::as_str));
    submit(s, p, t, selector, headers, body).await
}

/// Queue a request for the version an environment points at.
#[utoipa::path(post, path = "/models/{model}/environments/{env}/async_predict", tag = "async",
    params(("model" = String, Path), ("env" = String, Path)), request_body = SubmitBody, responses((status = 201, body = Submitted)), security(("api_key" = [])))]
async fn env_async(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let selector = SubmitRoute::Environment.selector(|n| params.get(n).map(String::as_str));
    submit(s, p, t, selector, headers, body).await
}

/// Queue a request for one version.
#[utoipa::path(post, path = "/model_versions/{version_id}/async_predict", tag = "async",
    params(("version_id" = String, Path)), request_body = SubmitBody, responses((status = 201, body = Submitted)), security(("api_key" = [])))]
async fn version_async(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let selector = SubmitRoute::Version.selector(|n| params.get(n).map(String::as_str));
    submit(s, p, t, selector, headers, body).await
}

/// The status, output and errors of one of the caller's async requests.
#[utoipa::path(get, path = "/async_request/{request_id}", tag = "async",
    responses((status = 200, body = AsyncRequestView), (status = 404, description = "unknown, or another user's")),
    security(("api_key" = [])))]
async fn status(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<ApiJson<AsyncRequestView>, ApiError> {
    let job = queue::owned(&s, &p, &id).await?;
    Ok(ApiJson((&job).into()))
}

/// Cancel one of the caller's async requests (a running one is aborted).
#[utoipa::path(delete, path = "/async_request/{request_id}", tag = "async",
    responses((status = 200, body = Canceled), (status = 404, description = "unknown, or another user's")),
    security(("api_key" = [])))]
async fn cancel(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<ApiJson<Canceled>, ApiError> {
    Ok(ApiJson(queue::cancel(&s, &p, &id).await?))
}

/// Queued and running requests of a model the caller may call.
#[utoipa::path(get, path = "/models/{model}/async_queue_status", tag = "async",
    responses((status = 200, body = QueueStatus), (status = 403), (status = 404)),
    security(("api_key" = [])))]
async fn queue_status(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(model): Path<String>,
) -> Result<ApiJson<QueueStatus>, ApiError> {
    Ok(ApiJson(queue::queue_status(&s, &p, &model).await?))
}
