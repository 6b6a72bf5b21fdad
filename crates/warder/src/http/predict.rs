//! The six sync predict routes: thin handlers over [`crate::gateway`].

use crate::auth::Principal;
use crate::catalog::Selector;
use crate::gateway::{self, is_json_content_type, Input, PredictCall, RequestFacts};
use crate::http::middleware::header_text;
use crate::state::SharedState;
use crate::telemetry::trace::TraceContext;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// The six sync predict routes. The axum router and [`crate::http::hot`]
/// both take their paths and selectors from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PredictRoute {
    Model,
    Environment,
    Version,
    ModelInternal,
    VersionInternal,
    ModelVersionInternal,
}

impl PredictRoute {
    pub(crate) const ALL: [PredictRoute; 6] = [
        PredictRoute::Model,
        PredictRoute::Environment,
        PredictRoute::Version,
        PredictRoute::ModelInternal,
        PredictRoute::VersionInternal,
        PredictRoute::ModelVersionInternal,
    ];

    /// The route's path pattern (also its `route` label).
    pub(crate) const fn path(self) -> &'static str {
        match self {
            PredictRoute::Model => "/models/{model}/predict",
            PredictRoute::Environment => "/models/{model}/environments/{env}/predict",
            PredictRoute::Version => "/model_versions/{version_id}/predict",
            PredictRoute::ModelInternal => "/models/{model}/predict_internal",
            PredictRoute::VersionInternal => "/model_versions/{version_id}/predict_internal",
            PredictRoute::ModelVersionInternal => "/model/{model}/{version_id}/predict_internal",
        }
    }

    /// A `predict_internal` route (needs the `internal` scope, skips limits).
    pub(crate) const fn internal(self) -> bool {
        matches!(
            self,
            PredictRoute::ModelInternal
                | PredictRoute::VersionInternal
                | PredictRoute::ModelVersionInternal
        )
    }

    /// What to call, from the route's path parameters by name.
    pub(crate) fn selector<'a>(self, param: impl Fn(&str) -> Option<&'a str>) -> Selector {
        let get = |name: &str| param(name).unwrap_or_default().to_owned();
        match self {
            PredictRoute::Model | PredictRoute::ModelInternal => production(get("model")),
            PredictRoute::Environment => Selector::Environment {
                model: get("model"),
                env: get("env"),
            },
            PredictRoute::Version | PredictRoute::VersionInternal => Selector::Version {
                version: get("version_id"),
            },
            PredictRoute::ModelVersionInternal => Selector::ModelVersion {
                model: get("model"),
                version: get("version_id"),
            },
        }
    }
}

/// The predict routes (authentication is added by the caller).
pub fn routes() -> Router<SharedState> {
    use PredictRoute as R;
    Router::new()
        .route(R::Model.path(), post(model_predict))
        .route(R::Environment.path(), post(env_predict))
        .route(R::Version.path(), post(version_predict))
        .route(R::ModelInternal.path(), post(model_predict_internal))
        .route(R::VersionInternal.path(), post(version_predict_internal))
        .route(
            R::ModelVersionInternal.path(),
            post(model_version_predict_internal),
        )
}

/// Runs a predict for an authenticated caller, from the request as axum
/// has it (the router and [`crate::http::hot`]'s `Service::call`).
pub(crate) fn call<'a>(
    state: &'a SharedState,
    principal: Arc<Principal>,
    trace: TraceContext,
    route: PredictRoute,
    selector: Selector,
    request: Request,
) -> impl Future<Output = (Response, RequestFacts)> + 'a {
    let (parts, body) = request.into_parts();
    let json = header_text(&parts.headers, header::CONTENT_TYPE.as_str())
        .is_some_and(is_json_content_type);
    run(
        state,
        principal,
        trace,
        route,
        selector,
        json,
        Input::Stream(body),
    )
}

/// Runs a predict for an authenticated caller (every dispatch path ends
/// here). `json`: the request declared a JSON body (`Content-Type`).
///
/// A plain function returning the gateway's future, not an `async fn`: an
/// `async fn` would wrap that future in one of its own, and every such layer
/// copies the whole inner future once more per request.
pub(crate) fn run<'a>(
    state: &'a SharedState,
    principal: Arc<Principal>,
    trace: TraceContext,
    route: PredictRoute,
    selector: Selector,
    json: bool,
    body: Input,
) -> impl Future<Output = (Response, RequestFacts)> + 'a {
    gateway::predict(
        state,
        PredictCall {
            principal,
            trace,
            selector,
            internal: route.internal(),
            json,
            body,
        },
    )
}

/// Path parameters by name, as axum extracts them.
type Params = HashMap<String, String>;

async fn via_router(
    route: PredictRoute,
    state: SharedState,
    principal: Arc<Principal>,
    trace: TraceContext,
    params: Params,
    request: Request,
) -> Response {
    let selector = route.selector(|name| params.get(name).map(String::as_str));
    let (mut response, facts) = call(&state, principal, trace, route, selector, request).await;
    // For `request_context`, outside the router's handler.
    response.extensions_mut().insert(facts);
    response
}

fn production(model: String) -> Selector {
    Selector::Environment {
        model,
        env: "production".to_owned(),
    }
}

/// Call a model's `production` version.
#[utoipa::path(post, path = "/models/{model}/predict", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "`{request_id, model_id, model_version_id, output, cached}` (or the raw upstream answer)"),
        (status = 401), (status = 403), (status = 404), (status = 413), (status = 415), (status = 429),
        (status = 502), (status = 503), (status = 504)),
    security(("api_key" = [])))]
async fn model_predict(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    request: Request,
) -> Response {
    via_router(PredictRoute::Model, s, p, t, params, request).await
}

/// Call the version an environment of a model points at.
#[utoipa::path(post, path = "/models/{model}/environments/{env}/predict", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn env_predict(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    request: Request,
) -> Response {
    via_router(PredictRoute::Environment, s, p, t, params, request).await
}

/// Call one version.
#[utoipa::path(post, path = "/model_versions/{version_id}/predict", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn version_predict(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    request: Request,
) -> Response {
    via_router(PredictRoute::Version, s, p, t, params, request).await
}

/// Internal callers (`internal` scope): a model's `production` version, no rate limit.
#[utoipa::path(post, path = "/models/{model}/predict_internal", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn model_predict_internal(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    request: Request,
) -> Response {
    via_router(PredictRoute::ModelInternal, s, p, t, params, request).await
}

/// Internal callers: one version, no rate limit.
#[utoipa::path(post, path = "/model_versions/{version_id}/predict_internal", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn version_predict_internal(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    request: Request,
) -> Response {
    via_router(PredictRoute::VersionInternal, s, p, t, params, request).await
}

/// Internal callers: one version of a model, no rate limit.
#[utoipa::path(post, path = "/model/{model}/{version_id}/predict_internal", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn model_version_predict_internal(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(params): Path<Params>,
    request: Request,
) -> Response {
    via_router(PredictRoute::ModelVersionInternal, s, p, t, params, request).await
}
