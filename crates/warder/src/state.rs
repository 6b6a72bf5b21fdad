//! The shared state of a running gateway, handed to every handler.

use crate::auth::AuthService;
use crate::catalog::Catalog;
use crate::cluster::RedisLink;
use crate::config::Config;
use crate::control::ControlPlane;
use crate::queue::submit::Submitter;
use crate::queue::Signals;
use crate::telemetry::metrics::Metrics;
use crate::upstream::UpstreamClient;
use crate::usage::{Quotas, UsageRecorder};
use crate::webhooks::Webhooks;
use std::sync::Arc;
use warder_core::{RateLimiter, Store};

/// Everything a request may need; built once by [`crate::app::App`].
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// Key authentication with its cache.
    pub auth: AuthService,
    /// Target and access resolution with their caches.
    pub catalog: Arc<Catalog>,
    /// Per key × model rate limits.
    pub limiter: Arc<dyn RateLimiter>,
    /// Daily and monthly quotas.
    pub quotas: Arc<Quotas>,
    /// Pooled client for model servers and the fallback.
    pub upstream: UpstreamClient,
    /// Metric registry.
    pub metrics: Arc<Metrics>,
    /// Usage events, written off the hot path.
    pub usage: UsageRecorder,
    /// Control-plane operations (admin API, demo, bootstrap).
    pub control: ControlPlane,
    /// The shared Redis, in cluster mode.
    pub redis: Option<RedisLink>,
    /// Wake-ups of the async worker loops of this process.
    pub signals: Arc<Signals>,
    /// Async submits, stored in group commits.
    pub submitter: Submitter,
    /// Webhook secrets, the SSRF guard and delivery.
    pub webhooks: Arc<Webhooks>,
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;
