//! The six sync predict routes: thin handlers over [`crate::gateway`].

use crate::auth::Principal;
use crate::catalog::Selector;
use crate::gateway::{self, PredictCall};
use crate::state::SharedState;
use crate::telemetry::trace::TraceContext;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use std::sync::Arc;

/// The predict routes (authentication is added by the caller).
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/models/{model}/predict", post(model_predict))
        .route(
            "/models/{model}/environments/{env}/predict",
            post(env_predict),
        )
        .route(
            "/model_versions/{version_id}/predict",
            post(version_predict),
        )
        .route(
            "/models/{model}/predict_internal",
            post(model_predict_internal),
        )
        .route(
            "/model_versions/{version_id}/predict_internal",
            post(version_predict_internal),
        )
        .route(
            "/model/{model}/{version_id}/predict_internal",
            post(model_version_predict_internal),
        )
}

struct Caller {
    principal: Arc<Principal>,
    trace: TraceContext,
}

async fn run(
    state: SharedState,
    caller: Caller,
    selector: Selector,
    internal: bool,
    request: Request,
) -> Response {
    // Taken apart, not cloned: the headers move into the call.
    let (parts, body) = request.into_parts();
    gateway::predict(
        &state,
        PredictCall {
            principal: caller.principal,
            trace: caller.trace,
            selector,
            internal,
            headers: parts.headers,
            body,
        },
    )
    .await
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
    Path(model): Path<String>,
    request: Request,
) -> Response {
    run(
        s,
        Caller {
            principal: p,
            trace: t,
        },
        production(model),
        false,
        request,
    )
    .await
}

/// Call the version an environment of a model points at.
#[utoipa::path(post, path = "/models/{model}/environments/{env}/predict", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn env_predict(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path((model, env)): Path<(String, String)>,
    request: Request,
) -> Response {
    run(
        s,
        Caller {
            principal: p,
            trace: t,
        },
        Selector::Environment { model, env },
        false,
        request,
    )
    .await
}

/// Call one version.
#[utoipa::path(post, path = "/model_versions/{version_id}/predict", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn version_predict(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(version): Path<String>,
    request: Request,
) -> Response {
    run(
        s,
        Caller {
            principal: p,
            trace: t,
        },
        Selector::Version { version },
        false,
        request,
    )
    .await
}

/// Internal callers (`internal` scope): a model's `production` version, no rate limit.
#[utoipa::path(post, path = "/models/{model}/predict_internal", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn model_predict_internal(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    run(
        s,
        Caller {
            principal: p,
            trace: t,
        },
        production(model),
        true,
        request,
    )
    .await
}

/// Internal callers: one version, no rate limit.
#[utoipa::path(post, path = "/model_versions/{version_id}/predict_internal", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn version_predict_internal(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path(version): Path<String>,
    request: Request,
) -> Response {
    run(
        s,
        Caller {
            principal: p,
            trace: t,
        },
        Selector::Version { version },
        true,
        request,
    )
    .await
}

/// Internal callers: one version of a model, no rate limit.
#[utoipa::path(post, path = "/model/{model}/{version_id}/predict_internal", tag = "predict",
    request_body(content = Object, description = "The model input (JSON)"),
    responses((status = 200, description = "Envelope or raw answer")), security(("api_key" = [])))]
async fn model_version_predict_internal(
    State(s): State<SharedState>,
    Extension(p): Extension<Arc<Principal>>,
    Extension(t): Extension<TraceContext>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    run(
        s,
        Caller {
            principal: p,
            trace: t,
        },
        Selector::ModelVersion { model, version },
        true,
        request,
    )
    .await
}
