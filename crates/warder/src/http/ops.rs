//! The ops listener: `/metrics`, `/healthz`, `/readyz`. Unauthenticated, so
//! bind it to a private address (default `127.0.0.1:9090`).
//!
//! Served by `serve` and by `warder worker` alike: it reads only what both
//! processes have ([`OpsState`]), never the gateway's request path.

use crate::cluster::RedisLink;
use crate::state::AppState;
use crate::telemetry::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warder_core::Store;

/// What the ops routes read.
#[derive(Clone)]
pub struct OpsState {
    /// Rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Pinged by `/readyz`; its read count is a metric.
    pub store: Arc<dyn Store>,
    /// Pinged by `/readyz` in cluster mode; a worker has none.
    pub redis: Option<RedisLink>,
    /// Set once a `warder worker` was told to stop: its ops listener stays
    /// up while running attempts finish, and `/readyz` answers 503
    /// `draining` meanwhile. (`serve` closes its ops listener with the
    /// public one and never sets it.)
    pub draining: Arc<AtomicBool>,
}

impl OpsState {
    /// The ops view of a gateway's state.
    pub fn of(state: &AppState) -> OpsState {
        OpsState {
            metrics: state.metrics.clone(),
            store: state.store.clone(),
            redis: state.redis.clone(),
            draining: Arc::default(),
        }
    }
}

/// The ops router.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<OpsState>) -> Response {
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

async fn readyz(State(s): State<OpsState>) -> Response {
    let store = tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await;
    let store_ok = matches!(store, Ok(Ok(())));
    let redis_ok = match &s.redis {
        Some(link) => Some(link.ping().await),
        None => None,
    };
    let draining = s.draining.load(Ordering::Acquire);
    let ready = !draining && store_ok && redis_ok != Some(false);
    let body = json!({
        "status": match (draining, ready) {
            (true, _) => "draining",
            (false, true) => "ready",
            (false, false) => "not ready",
        },
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
