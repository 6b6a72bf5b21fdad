//! Every metric warder exports, defined in this one module.
//!
//! Each [`Metrics`] owns its own registry (no process-global state), so
//! several gateways in one process — as in the integration tests — never mix
//! their numbers. Names start with `warder_`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};

/// A label value shared by reference, so recording a request allocates no
/// strings (route templates are interned, model ids come with the target).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct Label(pub Arc<str>);

impl Label {
    /// A label from text (allocates; for cold paths).
    pub fn new(s: &str) -> Label {
        Label(Arc::from(s))
    }
}

// `Arc<str>` hashes as its `str`, so a map keyed by labels can be asked with
// a `&str`.
impl std::borrow::Borrow<str> for Label {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// Labels of a finished HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Matched route template (`/models/{model}/predict`), or `fallback`.
    pub route: Label,
    /// Model id, or empty when the route has none.
    pub model: Label,
    /// HTTP status answered.
    pub status: u16,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Matched route template.
    pub route: Label,
    /// Model id, or empty.
    pub model: Label,
}

/// Labels naming a model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model id.
    pub model: Label,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Model id.
    pub model: String,
    /// `connect`, `timeout`, `reset`, `status_4xx`, `status_5xx`, `invalid`.
    pub kind: String,
}

/// Labels of a cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: String,
}

/// Labels naming an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// What was attempted.
    pub op: String,
}

/// Labels naming an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: String,
}

/// Labels naming a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Which kind.
    pub kind: String,
}

/// Labels of an async queue depth.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Model id.
    pub model: String,
    /// `QUEUED` or `IN_PROGRESS`.
    pub status: String,
}

/// Labels of an async attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Model id.
    pub model: String,
    /// `succeeded`, `retry`, `failed` or `canceled`.
    pub outcome: String,
}

/// Labels of a webhook delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `succeeded`, `retry` or `failed`.
    pub outcome: String,
}

fn queue_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0,
        7200.0, 86400.0,
    ]
    .into_iter()
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

fn overhead_buckets() -> impl Iterator<Item = f64> {
    [
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
    ]
    .into_iter()
}

/// The series one finished request of a route and model records, looked up
/// once per pair: recording a request then hashes no labels (each family
/// lookup hashes its label set with SipHash under a lock). The 200 counter
/// and the overhead histogram are registered when first recorded, so a pair
/// that never answers 200 or never reaches an upstream exports neither.
pub struct RouteMeters {
    route: Label,
    model: Label,
    ok: OnceLock<Counter>,
    /// `warder_http_request_duration_seconds{route,model}`.
    pub duration: Histogram,
    overhead: OnceLock<Histogram>,
}

impl RouteMeters {
    /// `warder_http_requests_total{route,model,status="200"}`.
    pub fn ok(&self, metrics: &Metrics) -> &Counter {
        self.ok.get_or_init(|| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: self.route.clone(),
                    model: self.model.clone(),
                    status: 200,
                })
                .clone()
        })
    }

    /// `warder_gateway_overhead_seconds{route,model}`.
    pub fn overhead(&self, metrics: &Metrics) -> &Histogram {
        self.overhead.get_or_init(|| {
            metrics
                .overhead
                .get_or_create(&RouteLabels {
                    route: self.route.clone(),
                    model: self.model.clone(),
                })
                .clone()
        })
    }
}

/// Route label → model label → its meters.
type MeterMap = HashMap<Label, HashMap<Label, Arc<RouteMeters>, crate::FastHash>, crate::FastHash>;

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    routes: RwLock<HashMap<Box<str>, Label>>,
    meters: RwLock<MeterMap>,
    upstream_by_model: RwLock<HashMap<Label, Histogram, crate::FastHash>>,
    /// `warder_http_requests_total{route,model,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `warder_http_request_duration_seconds{route,model}`.
    pub request_duration: Family<RouteLabels, Histogram>,
    /// `warder_gateway_overhead_seconds{route,model}`: total minus upstream time.
    pub overhead: Family<RouteLabels, Histogram>,
    /// `warder_upstream_duration_seconds{model}`: time to upstream headers.
    pub upstream_duration: Family<ModelLabels, Histogram>,
    /// `warder_upstream_errors_total{model,kind}`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `warder_rate_limited_total{model}`.
    pub rate_limited: Family<ModelLabels, Counter>,
    /// `warder_quota_exceeded_total{model}`.
    pub quota_exceeded: Family<ModelLabels, Counter>,
    /// `warder_auth_cache_total{result}`.
    pub auth_cache: Family<CacheLabels, Counter>,
    /// `warder_http_requests_in_flight`.
    pub in_flight: Gauge,
    /// `warder_store_reads_total`, copied from the store at scrape time.
    pub store_reads: Counter,
    /// `warder_redis_up`: 1 while Redis answers (cluster mode).
    pub redis_up: Gauge,
    /// `warder_redis_errors_total{op}`.
    pub redis_errors: Family<OpLabels, Counter>,
    /// `warder_auth_l2_total{result}`: shared auth cache hit, miss or error.
    pub auth_l2: Family<CacheLabels, Counter>,
    /// `warder_rate_limit_unavailable_total{outcome}`: checks made while the
    /// shared limiter was down, allowed (fail open) or refused (fail closed).
    pub rate_limit_unavailable: Family<OutcomeLabels, Counter>,
    /// `warder_invalidations_received_total{kind}`.
    pub invalidations: Family<KindLabels, Counter>,
    /// `warder_invalidation_bus_reconnects_total`.
    pub bus_reconnects: Counter,
    /// `warder_async_queue_depth{model,status}`, refreshed by the sweeper.
    pub async_queue_depth: Family<QueueLabels, Gauge>,
    /// `warder_async_time_in_queue_seconds{model}`: submit to first attempt.
    pub async_time_in_queue: Family<ModelLabels, Histogram>,
    /// `warder_async_attempts_total{model,outcome}`.
    pub async_attempts: Family<AttemptLabels, Counter>,
    /// `warder_webhook_deliveries_total{outcome}`.
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let overhead = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(overhead_buckets())
        });
        let upstream_duration = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let rate_limited = Family::<ModelLabels, Counter>::default();
        let quota_exceeded = Family::<ModelLabels, Counter>::default();
        let auth_cache = Family::<CacheLabels, Counter>::default();
        let in_flight = Gauge::default();
        let store_reads = Counter::default();
        let redis_up = Gauge::default();
        let redis_errors = Family::<OpLabels, Counter>::default();
        let auth_l2 = Family::<CacheLabels, Counter>::default();
        let rate_limit_unavailable = Family::<OutcomeLabels, Counter>::default();
        let invalidations = Family::<KindLabels, Counter>::default();
        let bus_reconnects = Counter::default();
        registry.register("warder_redis_up", "1 while Redis answers", redis_up.clone());
        registry.register(
            "warder_redis_errors",
            "Redis operations that failed or timed out",
            redis_errors.clone(),
        );
        registry.register(
            "warder_auth_l2",
            "Lookups in the shared (Redis) auth cache",
            auth_l2.clone(),
        );
        registry.register(
            "warder_rate_limit_unavailable",
            "Rate-limit checks made while the shared limiter was unreachable",
            rate_limit_unavailable.clone(),
        );
        registry.register(
            "warder_invalidations_received",
            "Cache invalidations received from the bus",
            invalidations.clone(),
        );
        registry.register(
            "warder_invalidation_bus_reconnects",
            "Reconnections of the invalidation bus consumer",
            bus_reconnects.clone(),
        );
        let async_queue_depth = Family::<QueueLabels, Gauge>::default();
        let async_time_in_queue = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(queue_buckets())
        });
        let async_attempts = Family::<AttemptLabels, Counter>::default();
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "warder_async_queue_depth",
            "Unfinished async requests by model and status",
            async_queue_depth.clone(),
        );
        registry.register(
            "warder_async_time_in_queue_seconds",
            "Time from async submit to the first attempt",
            async_time_in_queue.clone(),
        );
        registry.register(
            "warder_async_attempts",
            "Async attempts by model and outcome",
            async_attempts.clone(),
        );
        registry.register(
            "warder_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            webhook_deliveries.clone(),
        );
        registry.register(
            "warder_http_requests",
            "HTTP requests answered on the public listener",
            requests.clone(),
        );
        registry.register(
            "warder_http_request_duration_seconds",
            "Time from request to response headers",
            request_duration.clone(),
        );
        registry.register(
            "warder_gateway_overhead_seconds",
            "Time spent in warder itself: total minus upstream time",
            overhead.clone(),
        );
        registry.register(
            "warder_upstream_duration_seconds",
            "Time from upstream call to upstream response headers",
            upstream_duration.clone(),
        );
        registry.register(
            "warder_upstream_errors",
            "Upstream calls that failed, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "warder_rate_limited",
            "Requests refused by a per-key rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "warder_quota_exceeded",
            "Requests refused by a daily or monthly quota",
            quota_exceeded.clone(),
        );
        registry.register(
            "warder_auth_cache",
            "Authentication lookups answered from the in-process cache (hit) or the store (miss)",
            auth_cache.clone(),
        );
        registry.register(
            "warder_http_requests_in_flight",
            "Requests being processed",
            in_flight.clone(),
        );
        registry.register(
            "warder_store_reads",
            "Read queries issued to the store",
            store_reads.clone(),
        );
        Metrics {
            registry,
            routes: RwLock::new(HashMap::new()),
            meters: RwLock::new(MeterMap::default()),
            upstream_by_model: RwLock::new(HashMap::default()),
            requests,
            request_duration,
            overhead,
            upstream_duration,
            upstream_errors,
            rate_limited,
            quota_exceeded,
            auth_cache,
            in_flight,
            store_reads,
            redis_up,
            redis_errors,
            auth_l2,
            rate_limit_unavailable,
            invalidations,
            bus_reconnects,
            async_queue_depth,
            async_time_in_queue,
            async_attempts,
            webhook_deliveries,
        }
    }

    /// The interned label of a route template.
    pub fn route_label(&self, route: &str) -> Label {
        if let Some(l) = self.routes.read().ok().and_then(|m| m.get(route).cloned()) {
            return l;
        }
        let label = Label::new(route);
        if let Ok(mut m) = self.routes.write() {
            m.entry(route.into()).or_insert_with(|| label.clone());
        }
        label
    }

    /// The series of `route` and `model` (see [`RouteMeters`]). Bounded like
    /// the families themselves: one entry per route and model seen.
    pub fn route_meters(&self, route: &Label, model: &Label) -> Arc<RouteMeters> {
        if let Ok(m) = self.meters.read() {
            if let Some(meters) = m.get(&*route.0).and_then(|r| r.get(&*model.0)) {
                return meters.clone();
            }
        }
        let meters = Arc::new(RouteMeters {
            route: route.clone(),
            model: model.clone(),
            ok: OnceLock::new(),
            duration: self
                .request_duration
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                    model: model.clone(),
                })
                .clone(),
            overhead: OnceLock::new(),
        });
        if let Ok(mut m) = self.meters.write() {
            m.entry(route.clone())
                .or_default()
                .entry(model.clone())
                .or_insert_with(|| meters.clone());
        }
        meters
    }

    /// `warder_upstream_duration_seconds{model}`, looked up once per model
    /// like [`Metrics::route_meters`].
    pub fn upstream_histogram(&self, model: &Label) -> Histogram {
        if let Some(h) = self
            .upstream_by_model
            .read()
            .ok()
            .and_then(|m| m.get(&*model.0).cloned())
        {
            return h;
        }
        let h = self
            .upstream_duration
            .get_or_create(&ModelLabels {
                model: model.clone(),
            })
            .clone();
        if let Ok(mut m) = self.upstream_by_model.write() {
            m.entry(model.clone()).or_insert_with(|| h.clone());
        }
        h
    }

    /// Counts a failed Redis operation.
    pub fn redis_error(&self, op: &str) {
        self.redis_errors
            .get_or_create(&OpLabels { op: op.to_owned() })
            .inc();
    }

    /// Counts a received invalidation.
    pub fn invalidation_received(&self, kind: &str) {
        self.invalidations
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts an async attempt's outcome.
    pub fn async_attempt(&self, model: &str, outcome: &str) {
        self.async_attempts
            .get_or_create(&AttemptLabels {
                model: model.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a webhook delivery attempt's outcome.
    pub fn webhook_outcome(&self, outcome: &str) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, model: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                model: model.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Renders the Prometheus text format, after copying `store_reads`.
    pub fn render(&self, store_reads: u64) -> String {
        self.store_reads
            .inner()
            .store(store_reads, Ordering::Relaxed);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
