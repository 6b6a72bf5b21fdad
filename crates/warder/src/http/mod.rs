//! The public router: open routes, authenticated routes, admin routes and
//! the fallback, with their layers in order.
//!
//! **Invariant:** every route is authenticated unless it is in
//! [`open_routes`]. Authentication is a `route_layer` over the whole
//! protected router, so a route added there cannot forget it; the fallback
//! (unmatched paths) is open because the fallback upstream authenticates its
//! own callers.

pub mod admin;
pub mod async_admin;
pub mod async_predict;
pub mod docs;
pub mod error;
pub mod fallback;
pub mod hot;
pub mod json;
pub mod middleware;
pub mod ops;
pub mod predict;

use crate::http::error::ApiError;
use crate::state::SharedState;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa::OpenApi;
use warder_core::ErrorCode;

/// The routes that need no key. Keep this list short and explicit.
fn open_routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(routes_listing))
        .route("/v1", get(routes_listing))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/openapi.json", docs::ApiDoc::openapi()),
        )
}

/// The routes served (open; KBase-style listing).
#[utoipa::path(get, path = "/", tag = "predict",
    responses((status = 200, description = "`{service, version, routes: [...]}`")))]
async fn routes_listing() -> Json<Value> {
    Json(json!({
        "service": "warder",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/docs",
        "openapi": "/openapi.json",
        "routes": [
            "POST /models/{model}/predict",
            "POST /models/{model}/environments/{env}/predict",
            "POST /model_versions/{version_id}/predict",
            "POST /models/{model}/predict_internal",
            "POST /model_versions/{version_id}/predict_internal",
            "POST /model/{model}/{version_id}/predict_internal",
            "POST /models/{model}/async_predict",
            "POST /models/{model}/environments/{env}/async_predict",
            "POST /model_versions/{version_id}/async_predict",
            "GET|DELETE /async_request/{request_id}",
            "GET /models/{model}/async_queue_status",
            "/admin/…",
        ],
    }))
}

async fn method_not_allowed(req: Request) -> impl IntoResponse {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The public router with every layer.
pub fn router(state: SharedState) -> Router {
    let admin = admin::routes()
        .merge(async_admin::routes())
        .route_layer(axum::middleware::from_fn(middleware::require_admin));
    // Layer order (outer → inner) on protected routes:
    // request_context (router-wide) → authenticate → [require_admin] → handler.
    let protected = Router::new()
        .merge(predict::routes())
        .merge(async_predict::routes())
        .merge(admin)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ));
    Router::new()
        .merge(open_routes())
        .merge(protected)
        .fallback(fallback::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        // Extractor-based bodies (admin JSON) are capped here; predict
        // bodies are read with the same cap by the gateway itself.
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Outermost: sees every request, including unmatched and refused ones,
        // so each gets a request id, a metric and a log line.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}
