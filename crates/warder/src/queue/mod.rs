//! Async inference, the request side: submit, status, cancel, queue status
//! and the admin views, over the durable [`JobQueue`] of the store.
//!
//! Submits are authorized and limited exactly like sync predicts, validated
//! against the documented limits and defaults, then stored before the 201
//! is sent, so an accepted request survives a crash. Running them is the
//! [`worker`]'s job; the two meet only through the store and the wake-up
//! [`Signals`]. A request of another user is reported as not found.

pub mod submit;
pub mod worker;

use crate::auth::Principal;
use crate::catalog::{ResolveError, Selector};
use crate::gateway::{self, RequestFacts};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::telemetry::trace::TraceContext;
use crate::webhooks::guard::Refused;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use utoipa::ToSchema;
use warder_core::*;

/// The most a request may wait in the queue: 72 h.
const MAX_QUEUE_SECONDS: u64 = 72 * 3600;
/// Default `max_time_in_queue_seconds`.
const DEFAULT_QUEUE_SECONDS: u64 = 600;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Wake-ups of the worker loops in this process. Local events (a submit, a
/// finished attempt) notify directly; events of other processes arrive
/// through PostgreSQL `LISTEN`. `Notify` keeps one pending wake-up, so none
/// is lost while a loop is busy.
#[derive(Debug, Default)]
pub struct Signals {
    /// A job may be ready (new, retried, rescued, or a slot was freed).
    pub work: Notify,
    /// A cancel was asked for.
    pub cancel: Notify,
    /// A webhook may be due.
    pub deliveries: Notify,
}

impl Signals {
    /// Wakes the claim loop at `at` (a retry's backoff end).
    pub fn wake_work_at(self: &Arc<Self>, at: Timestamp) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(until(at)).await;
            this.work.notify_one();
        });
    }

    /// Wakes the delivery loop at `at` (a webhook retry).
    pub fn wake_deliveries_at(self: &Arc<Self>, at: Timestamp) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(until(at)).await;
            this.deliveries.notify_one();
        });
    }
}

fn until(at: Timestamp) -> Duration {
    Duration::from_millis((at.0 - now_ms()).max(0) as u64)
}

/// `inference_retry_config` as submitted; absent fields take the defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RetryConfigIn {
    /// 1–10, default 3.
    pub max_attempts: Option<i64>,
    /// 0–10 000, default 1000.
    pub initial_delay_ms: Option<i64>,
    /// 0–60 000, default 5000.
    pub max_delay_ms: Option<i64>,
}

/// Body of an async submit.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitBody {
    /// The model input: sent as the upstream's request body, as written.
    /// Kept as its text: checked to be JSON, but not built into a tree and
    /// written out again, which cost about 8 500 instructions per async job
    /// (callgrind, `bench/` async scenario on PostgreSQL: 7 % of warder's
    /// work per job).
    #[schema(value_type = Value)]
    pub model_input: Box<serde_json::value::RawValue>,
    /// Where the result is POSTed when finished.
    pub webhook_endpoint: Option<String>,
    /// 0 (first) – 2, default 0.
    pub priority: Option<i64>,
    /// 10 – 259 200, default 600.
    pub max_time_in_queue_seconds: Option<i64>,
    /// Retries of failed attempts.
    pub inference_retry_config: Option<RetryConfigIn>,
}

/// One async submit.
pub struct SubmitCall {
    /// Who submits.
    pub principal: Arc<Principal>,
    /// The submit's trace: its id becomes the async request id.
    pub trace: TraceContext,
    /// The target.
    pub selector: Selector,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
    /// The request's `Content-Type` header.
    pub content_type: Option<String>,
    /// The body.
    pub body: axum::body::Body,
}

/// The answer to a submit.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    /// 32 hex characters.
    pub request_id: String,
    /// Whether an earlier submit with the same `Idempotency-Key` was returned.
    #[serde(skip)]
    pub replayed: bool,
}

fn in_range(name: &str, v: Option<i64>, min: i64, max: i64, default: i64) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!(
            "{name} must be between {min} and {max}"
        )))
    }
}

/// Validates a submit and stores it; answers the request id.
pub async fn submit(
    state: &AppState,
    call: SubmitCall,
    facts: &mut RequestFacts,
) -> Result<Submitted, ApiError> {
    let target = state
        .catalog
        .resolve(&call.selector)
        .await
        .map_err(|e| match e {
            ResolveError::NotFound(m) => ApiError::new(ErrorCode::ModelNotFound, m),
            ResolveError::Store(e) => e.into(),
        })?;
    // For the access line, refused or not.
    facts.model_id = Some(target.model_label.clone());
    facts.version_id = Some(target.version_label.clone());
    let limits = gateway::authorize(state, &call.principal, &target).await?;
    if !call
        .content_type
        .as_deref()
        .is_some_and(gateway::is_json_content_type)
    {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ));
    }
    if target.version.state != VersionState::Active {
        return Err(ApiError::new(
            ErrorCode::ModelNotReady,
            format!("model version '{}' is not active", target.version.id),
        )
        .with_retry_after(30));
    }
    gateway::admit(state, &call.principal, &target, &limits).await?;

    let q = &state.config.async_queue;
    let bytes = axum::body::to_bytes(call.body, q.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("async request body exceeds {} bytes", q.max_body_bytes),
            )
        })?;
    let body: SubmitBody = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(e.to_string())
        } else {
            ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
        }
    })?;
    // The version's `input_schema`, checked as a sync predict checks it:
    // an input the model would refuse is refused now, not after its wait.
    if let Some(validator) = &target.validator {
        let input: Value = serde_json::from_str(body.model_input.get()).map_err(|e| {
            ApiError::new(ErrorCode::InvalidJson, format!("invalid model_input: {e}"))
        })?;
        gateway::check_input(validator, &input)?;
    }
    let priority = in_range("priority", body.priority, 0, 2, 0)?;
    let queue_s = in_range(
        "max_time_in_queue_seconds",
        body.max_time_in_queue_seconds,
        q.min_queue_seconds as i64,
        MAX_QUEUE_SECONDS as i64,
        DEFAULT_QUEUE_SECONDS as i64,
    )?;
    let r = body.inference_retry_config.unwrap_or_default();
    let defaults = RetryConfig::default();
    let retry = RetryConfig {
        max_attempts: in_range(
            "inference_retry_config.max_attempts",
            r.max_attempts,
            1,
            10,
            defaults.max_attempts.into(),
        )? as u32,
        initial_delay_ms: in_range(
            "inference_retry_config.initial_delay_ms",
            r.initial_delay_ms,
            0,
            10_000,
            defaults.initial_delay_ms as i64,
        )? as u64,
        max_delay_ms: in_range(
            "inference_retry_config.max_delay_ms",
            r.max_delay_ms,
            0,
            60_000,
            defaults.max_delay_ms as i64,
        )? as u64,
    };
    let webhook_url = match body.webhook_endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(u) => Some(
            state
                .webhooks
                .filter()
                .check_url(u)
                .map_err(|e| match e {
                    Refused::BadUrl => ApiError::invalid(e.to_string()),
                    other => ApiError::new(ErrorCode::BadRequest, other.to_string()),
                })?
                .to_string(),
        ),
    };
    if let Some(k) = &call.idempotency_key {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters"),
            ));
        }
    }

    let now = Timestamp::now();
    // The request id names the job for good, so it is new for every job. A
    // caller's `traceparent` names a whole trace, which may hold many
    // submits: the job gets an id of its own then, and its "async request
    // queued" line keeps the caller's trace id beside it. (Taken as the
    // job's id, a caller's trace id made the second submit of a trace a
    // conflict, and told a caller whether another tenant's request id
    // existed.)
    let id = match call.trace.parent_span_id {
        Some(_) => RequestId::generate(),
        None => call.trace.request_id,
    };
    let job = NewJob {
        id: id.to_hex(),
        user_id: call.principal.user_id.to_string(),
        key_id: call.principal.key_id.to_string(),
        model_id: target.model.id.clone(),
        version_id: target.version.id.clone(),
        webhook_url,
        priority: priority as u8,
        input: body.model_input.get().to_owned(),
        retry,
        idempotency_key: call.idempotency_key,
        created_at: now,
        queue_deadline: Timestamp(now.0 + queue_s * 1000),
        lease: None,
    };
    // A retried submit answers its first request, whatever the quota says.
    if let Some(key) = &job.idempotency_key {
        if let Some(id) = state
            .store
            .job_by_idempotency_key(&job.user_id, key)
            .await?
        {
            return Ok(Submitted {
                request_id: id,
                replayed: true,
            });
        }
    }
    // Quotas count submits like sync calls, after every other check; a
    // submit that raced a replay of itself, or could not be stored, gives
    // its call back.
    gateway::take_quota(state, &call.principal, &target, &limits).await?;
    let may_hand_off = target.version.max_concurrency.is_none();
    let enqueued = state
        .submitter
        .enqueue(job, may_hand_off, call.trace.request_id)
        .await;
    if !matches!(enqueued, Ok(Enqueued::Created(_))) {
        state.quotas.refund(
            &call.principal.key_id,
            &target.model.id,
            limits.daily_calls,
            limits.monthly_calls,
        );
    }
    let submitted = match enqueued? {
        Enqueued::Created(id) => {
            state.usage.record(
                &call.principal.user_id,
                &call.principal.key_id,
                &target.model_label.0,
            );
            Submitted {
                request_id: id,
                replayed: false,
            }
        }
        Enqueued::Existing(id) => Submitted {
            request_id: id,
            replayed: true,
        },
    };
    Ok(submitted)
}

/// An async request as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AsyncRequestView {
    /// The request id.
    pub request_id: String,
    /// Model.
    pub model_id: String,
    /// Version.
    pub model_version_id: String,
    /// Life-cycle state.
    pub status: JobStatus,
    /// Webhook state.
    pub webhook_status: WebhookStatus,
    /// Submit time.
    pub created_at: Timestamp,
    /// First attempt's start.
    pub started_at: Option<Timestamp>,
    /// Terminal time.
    pub finished_at: Option<Timestamp>,
    /// Attempts started.
    pub attempts: u32,
    /// The model's JSON answer, once succeeded.
    #[schema(value_type = Object)]
    pub output: Value,
    /// Errors, oldest first.
    pub errors: Vec<JobError>,
}

impl From<&AsyncJob> for AsyncRequestView {
    fn from(j: &AsyncJob) -> AsyncRequestView {
        AsyncRequestView {
            request_id: j.id.clone(),
            model_id: j.model_id.clone(),
            model_version_id: j.version_id.clone(),
            status: j.status,
            webhook_status: j.webhook_status,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            attempts: j.attempts,
            output: j
                .output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(Value::Null),
            errors: j.errors.clone(),
        }
    }
}

/// An async request as an admin sees it: the owner's view plus bookkeeping.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminAsyncView {
    /// What the owner sees.
    #[serde(flatten)]
    pub request: AsyncRequestView,
    /// Owner.
    pub user_id: String,
    /// Submitting key.
    pub key_id: String,
    /// 0–2.
    pub priority: u8,
    /// Webhook target.
    pub webhook_url: Option<String>,
    /// Webhook deliveries attempted.
    pub webhook_attempts: u32,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// Queue deadline.
    pub queue_deadline: Timestamp,
    /// Deleted after.
    pub expires_at: Option<Timestamp>,
}

impl From<&AsyncJob> for AdminAsyncView {
    fn from(j: &AsyncJob) -> AdminAsyncView {
        AdminAsyncView {
            request: j.into(),
            user_id: j.user_id.clone(),
            key_id: j.key_id.clone(),
            priority: j.priority,
            webhook_url: j.webhook_url.clone(),
            webhook_attempts: j.webhook_attempts,
            lease_owner: j.lease_owner.clone(),
            queue_deadline: j.queue_deadline,
            expires_at: j.expires_at,
        }
    }
}

/// Reads a request of the caller; another user's is "not found".
pub async fn owned(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<AsyncJob, ApiError> {
    let not_found = || ApiError::not_found(&format!("async request '{id}'"));
    if RequestId::parse(id).is_none() {
        return Err(not_found());
    }
    match state.store.get_job(id).await? {
        Some(j) if *j.user_id == *principal.user_id => Ok(j),
        _ => Err(not_found()),
    }
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct Canceled {
    /// The request.
    pub request_id: String,
    /// Whether it is (or is being) canceled.
    pub canceled: bool,
    /// What happened.
    pub message: String,
}

/// Cancels a request of the caller.
pub async fn cancel(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Canceled, ApiError> {
    owned(state, principal, id).await?;
    let now = Timestamp::now();
    let result = state
        .store
        .cancel_job(id, now, retain_until(state, now))
        .await?;
    let (canceled, message) = match result {
        CancelResult::Canceled => (true, "the queued request was canceled".to_owned()),
        CancelResult::Requested => {
            state.signals.cancel.notify_one();
            (
                true,
                "the request is running; its model call is being aborted".to_owned(),
            )
        }
        CancelResult::AlreadyFinished(s) => (
            false,
            format!("the request already finished ({})", s.as_str()),
        ),
    };
    Ok(Canceled {
        request_id: id.to_owned(),
        canceled,
        message,
    })
}

/// When a job finished at `now` is deleted.
pub fn retain_until(state: &AppState, now: Timestamp) -> Timestamp {
    Timestamp(now.0 + state.config.async_queue.retention_s as i64 * 1000)
}

/// The answer of `GET /models/{model}/async_queue_status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatus {
    /// Model.
    pub model_id: String,
    /// QUEUED requests.
    pub num_queued_requests: u64,
    /// IN_PROGRESS requests.
    pub num_in_progress_requests: u64,
}

/// Queue depth of a model the caller may call.
pub async fn queue_status(
    state: &AppState,
    principal: &Principal,
    model: &str,
) -> Result<QueueStatus, ApiError> {
    let target = state
        .catalog
        .resolve(&Selector::Environment {
            model: model.to_owned(),
            env: "production".to_owned(),
        })
        .await
        .map_err(|e| match e {
            ResolveError::NotFound(m) => ApiError::new(ErrorCode::ModelNotFound, m),
            ResolveError::Store(e) => e.into(),
        })?;
    gateway::authorize(state, principal, &target).await?;
    let counts = state.store.queue_counts(&target.model.id).await?;
    Ok(QueueStatus {
        model_id: target.model.id.clone(),
        num_queued_requests: counts.queued,
        num_in_progress_requests: counts.in_progress,
    })
}
