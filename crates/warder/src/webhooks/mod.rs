//! Webhook delivery of finished async requests (Standard Webhooks).
//!
//! A delivery is a POST of `{"type": "async_request_completed", …}` signed
//! with every valid secret of the request's owner, with `webhook-id` = the
//! request id (stable across retries). Only 2xx counts; 3xx is not
//! followed; each attempt has its own timeout; failures are retried on the
//! configured schedule, then the webhook is FAILED. A target refused by the
//! SSRF [`guard`] fails at once, without retries and without a connection.
//! Deliveries are claimed from the store with a lease, so several workers
//! never deliver the same attempt twice at once.

pub mod guard;
pub mod signing;

use crate::config::Config;
use crate::queue::Signals;
use crate::telemetry::lifecycle;
use crate::telemetry::metrics::Metrics;
use guard::{AddressFilter, GuardedResolver, Refused};
use serde_json::{json, Value};
use signing::{Sealer, WebhookSecret};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;
use warder_core::*;

/// How long a rotated-out secret keeps signing.
const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// Delivers webhooks and manages their secrets; cheap to share.
pub struct Webhooks {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    filter: Arc<AddressFilter>,
    sealer: Sealer,
    schedule: Vec<u64>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// Why webhooks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    /// The sealing key.
    #[error(transparent)]
    Seal(#[from] signing::SealError),
    /// The HTTP client.
    #[error("webhook client: {0}")]
    Client(String),
}

impl Webhooks {
    /// Webhooks over `store` as configured.
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Webhooks, WebhookSetupError> {
        let q = &config.async_queue;
        let filter = Arc::new(AddressFilter::new(&config.webhook_allowed_cidrs));
        let timeout = Duration::from_millis(q.webhook_timeout_ms);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(filter.clone())))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf to whatever it resolves.
            .no_proxy()
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| WebhookSetupError::Client(e.to_string()))?;
        Ok(Webhooks {
            store,
            client,
            filter,
            sealer: Sealer::from_config(q.secrets_key.as_deref(), &config.data_dir)?,
            schedule: q.webhook_retry_schedule_ms.clone(),
            timeout,
            metrics,
        })
    }

    /// The address filter (submit checks literal targets with it).
    pub fn filter(&self) -> &AddressFilter {
        &self.filter
    }

    /// Creates a new secret for a user; earlier ones stay valid 24 h.
    pub async fn rotate_secret(&self, user_id: &str) -> StoreResult<WebhookSecret> {
        let secret = WebhookSecret::generate();
        let now = Timestamp::now();
        self.store
            .rotate_webhook_secret(
                user_id,
                &self.sealer.seal(&secret),
                now,
                Timestamp(now.0 + ROTATION_OVERLAP_MS),
            )
            .await?;
        Ok(secret)
    }

    async fn secrets(&self, user_id: &str) -> StoreResult<Vec<WebhookSecret>> {
        let sealed = self
            .store
            .webhook_secrets(user_id, Timestamp::now())
            .await?;
        Ok(sealed.iter().filter_map(|s| self.sealer.open(s)).collect())
    }

    /// Claims and delivers due webhooks until `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        signals: Arc<Signals>,
        poll: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let slots = Arc::new(Semaphore::new(64));
        tokio::pin!(shutdown);
        loop {
            let free = slots.available_permits() as u32;
            let now = Timestamp::now();
            // The claim outlives the attempt's timeout, so a slow target is
            // never delivered to twice at once.
            let until = Timestamp(now.0 + self.timeout.as_millis() as i64 + 10_000);
            let due = if free == 0 {
                Vec::new()
            } else {
                match self.store.claim_deliveries(now, until, free).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming webhook deliveries failed");
                        Vec::new()
                    }
                }
            };
            let claimed = due.len();
            for job in due {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                let signals = signals.clone();
                tokio::spawn(async move {
                    this.deliver_and_record(&job, &signals).await;
                    drop(permit);
                });
            }
            if claimed as u32 >= free && free > 0 {
                continue;
            }
            tokio::select! {
                _ = signals.deliveries.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    async fn deliver_and_record(&self, job: &AsyncJob, signals: &Arc<Signals>) {
        let attempt = job.webhook_attempts + 1;
        // The delivery line is written by `lifecycle`, in the shape of a line
        // in this span. The span itself exists around the call only when
        // this module logs at debug, and is made for the rare lines.
        let debug_span = tracing::debug_span!(
            "async.webhook",
            trace_id = %job.id,
            request_id = %job.id,
            attempt,
        );
        let (delivery, next) = self.deliver(job, attempt).instrument(debug_span).await;
        let outcome = match next {
            DeliveryNext::Done => "succeeded",
            DeliveryNext::RetryAt(_) => "retry",
            DeliveryNext::GiveUp => "failed",
        };
        self.metrics.webhook_outcome(outcome);
        lifecycle::webhook_delivery(&lifecycle::Delivered {
            id: &job.id,
            attempt,
            status_code: delivery.status_code,
            error: delivery.error.as_deref().unwrap_or(""),
            outcome,
        });
        if let DeliveryNext::RetryAt(at) = next {
            signals.wake_deliveries_at(at);
        }
        if let Err(e) = self.store.record_delivery(delivery, next).await {
            lifecycle::webhook_span(&job.id, attempt)
                .in_scope(|| tracing::warn!(error = %e, "recording a webhook delivery failed"));
        }
    }

    /// Makes one delivery attempt; answers what to record and what follows.
    async fn deliver(&self, job: &AsyncJob, attempt: u32) -> (Delivery, DeliveryNext) {
        let started = Instant::now();
        let mut delivery = Delivery {
            request_id: job.id.clone(),
            attempt,
            at: Timestamp::now(),
            status_code: None,
            success: false,
            error: None,
            duration_ms: 0,
        };
        let Some(url) = job.webhook_url.as_deref() else {
            delivery.error = Some("no webhook endpoint".into());
            return (delivery, DeliveryNext::GiveUp);
        };
        let result = self.post(job, url).await;
        delivery.duration_ms = started.elapsed().as_millis() as u64;
        let retry = match result {
            Ok(status) if (200..300).contains(&status) => {
                delivery.status_code = Some(status);
                delivery.success = true;
                return (delivery, DeliveryNext::Done);
            }
            Ok(status) => {
                delivery.status_code = Some(status);
                delivery.error = Some(format!("the endpoint answered {status}"));
                true
            }
            Err(PostError::Refused(r)) => {
                delivery.error = Some(r.to_string());
                false
            }
            Err(PostError::Failed(m)) => {
                delivery.error = Some(m);
                true
            }
        };
        let next = match self.schedule.get(attempt as usize) {
            Some(delay) if retry => {
                DeliveryNext::RetryAt(Timestamp(Timestamp::now().0 + *delay as i64))
            }
            _ => DeliveryNext::GiveUp,
        };
        (delivery, next)
    }

    async fn post(&self, job: &AsyncJob, url: &str) -> Result<u16, PostError> {
        // Literal addresses never reach the resolver, so they are checked here.
        self.filter.check_url(url).map_err(PostError::Refused)?;
        let body = payload(job).to_string();
        let timestamp = Timestamp::now().0 / 1000;
        let secrets = self
            .secrets(&job.user_id)
            .await
            .map_err(|e| PostError::Failed(format!("reading webhook secrets: {e}")))?;
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &job.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "traceparent",
                format!("00-{}-{}-01", job.id, SpanId::generate().to_hex()),
            );
        if secrets.is_empty() {
            lifecycle::webhook_span(&job.id, job.webhook_attempts + 1).in_scope(|| {
                tracing::warn!(user_id = %job.user_id, "webhook sent unsigned: the user has no webhook secret")
            });
        } else {
            req = req.header(
                "webhook-signature",
                signing::signature_header(&secrets, &job.id, timestamp, body.as_bytes()),
            );
        }
        match req.body(body).send().await {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(match find_refusal(&e) {
                Some(r) => PostError::Refused(r),
                None if e.is_timeout() => {
                    PostError::Failed(format!("no answer within {} ms", self.timeout.as_millis()))
                }
                None => PostError::Failed(crate::upstream::error_chain(&e)),
            }),
        }
    }
}

enum PostError {
    Refused(Refused),
    Failed(String),
}

/// The refusal of the guarded resolver, if that is why a request failed.
fn find_refusal(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

/// The webhook body; identical on every retry of one request.
pub fn payload(job: &AsyncJob) -> Value {
    let data = job
        .output
        .as_deref()
        .map(|o| serde_json::from_str::<Value>(o).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    json!({
        "type": "async_request_completed",
        "request_id": job.id,
        "model_id": job.model_id,
        "model_version_id": job.version_id,
        "status": job.status,
        "time": job.finished_at.unwrap_or(job.created_at),
        "data": data,
        "errors": job.errors,
    })
}
