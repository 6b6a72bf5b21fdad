//! The ops listener: `/metrics`, `/healthz`, `/readyz`. Unauthenticated, so
//! bind it to a private address (default `127.0.0.1:9090`).

use crate::state::SharedState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

/// The ops router.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<SharedState>) -> Response {
    let text = s.metrics.render(s.store.read_count());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(s): State<SharedState>) -> Response {
    let store = tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await;
    let store_ok = matches!(store, Ok(Ok(())));
    let redis_ok = match &s.redis {
        Some(link) => Some(link.ping().await),
        None => None,
    };
    let ready = store_ok && redis_ok != Some(false);
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {
            "store": { "backend": s.store.backend(), "ok": store_ok },
            "redis": redis_ok.map(|ok| json!({ "ok": ok })),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
