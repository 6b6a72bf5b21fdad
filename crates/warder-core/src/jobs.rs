//! Async inference: the records of the durable job queue, their states, and
//! the [`JobQueue`] and [`WebhookSecretStore`] storage traits.
//!
//! The queue's rules (leases, fencing tokens, deadlines) are stated here as
//! trait contracts so that every backend enforces them the same way; the
//! worker that drives the queue lives in the server crate. No IO here.

use crate::records::Timestamp;
use crate::store::StoreResult;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an async request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Waiting for a worker (also between retries).
    Queued,
    /// A worker holds its lease and is calling the model.
    InProgress,
    /// The model answered 2xx; `output` holds its JSON.
    Succeeded,
    /// Every attempt failed, or a non-retryable error occurred.
    Failed,
    /// Still queued when its `max_time_in_queue_seconds` ran out; never ran.
    Expired,
    /// Canceled by its owner.
    Canceled,
    /// The model succeeded but the webhook could not be delivered.
    WebhookFailed,
}

impl JobStatus {
    /// Every status, for metrics.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::InProgress,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Expired,
        JobStatus::Canceled,
        JobStatus::WebhookFailed,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
            JobStatus::Expired => "EXPIRED",
            JobStatus::Canceled => "CANCELED",
            JobStatus::WebhookFailed => "WEBHOOK_FAILED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the request will not change any more (webhooks aside).
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::InProgress)
    }
}

/// Where the webhook of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WebhookStatus {
    /// To be delivered once the request is finished (or being retried).
    Pending,
    /// A 2xx answer was received.
    Succeeded,
    /// The retry schedule ran out, or the target was refused.
    Failed,
    /// The request was canceled; nothing is sent.
    Canceled,
    /// The request had no `webhook_endpoint`.
    NoWebhookProvided,
}

impl WebhookStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Pending => "PENDING",
            WebhookStatus::Succeeded => "SUCCEEDED",
            WebhookStatus::Failed => "FAILED",
            WebhookStatus::Canceled => "CANCELED",
            WebhookStatus::NoWebhookProvided => "NO_WEBHOOK_PROVIDED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<WebhookStatus> {
        [
            WebhookStatus::Pending,
            WebhookStatus::Succeeded,
            WebhookStatus::Failed,
            WebhookStatus::Canceled,
            WebhookStatus::NoWebhookProvided,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// The stable code of an error recorded on an async request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobErrorCode {
    /// The model answered an error status or could not be reached.
    UpstreamError,
    /// The model did not answer within the version's timeout.
    UpstreamTimeout,
    /// The model version no longer exists.
    ModelNotFound,
    /// The request waited in the queue past its deadline.
    QueueTimeout,
    /// The request was canceled by its owner.
    Canceled,
    /// The worker running it stopped and the attempts are used up.
    WorkerLost,
    /// The webhook could not be delivered.
    WebhookFailed,
    /// A failure inside the gateway.
    Internal,
}

/// One error of an async request, as shown in `errors: [{code, message}]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// Stable code.
    pub code: JobErrorCode,
    /// Human-readable detail, no trailing period.
    pub message: String,
}

impl JobError {
    /// An error with a code and message.
    pub fn new(code: JobErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: message.into(),
        }
    }
}

/// How failed attempts are retried (`inference_retry_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetryConfig {
    /// Attempts in total, 1–10.
    pub max_attempts: u32,
    /// Delay before the second attempt, 0–10 000 ms; doubled each time.
    pub initial_delay_ms: u64,
    /// Upper bound of a delay, 0–60 000 ms.
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_delay_ms: 1000,
            max_delay_ms: 5000,
        }
    }
}

impl RetryConfig {
    /// The nominal delay after failed attempt number `attempt` (1-based):
    /// `initial × 2^(attempt-1)`, capped at `max_delay_ms`.
    pub fn base_delay_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        self.initial_delay_ms
            .saturating_mul(factor)
            .min(self.max_delay_ms)
    }
}

/// An async request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncJob {
    /// The request id (32 hex), also its trace id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Key that submitted it.
    pub key_id: String,
    /// Model.
    pub model_id: String,
    /// Version it runs on (resolved at submit).
    pub version_id: String,
    /// Life-cycle state.
    pub status: JobStatus,
    /// Webhook state.
    pub webhook_status: WebhookStatus,
    /// Where the result is delivered, if anywhere.
    pub webhook_url: Option<String>,
    /// 0 runs first.
    pub priority: u8,
    /// The model input, JSON text.
    pub input: String,
    /// The model's JSON answer, once succeeded.
    pub output: Option<String>,
    /// Errors so far, oldest first.
    pub errors: Vec<JobError>,
    /// Attempts started.
    pub attempts: u32,
    /// Retry policy.
    pub retry: RetryConfig,
    /// `Idempotency-Key` given at submit.
    pub idempotency_key: Option<String>,
    /// Submit time.
    pub created_at: Timestamp,
    /// Not started by then → EXPIRED.
    pub queue_deadline: Timestamp,
    /// Not claimed before this instant (retry backoff).
    pub run_after: Timestamp,
    /// First attempt's start.
    pub started_at: Option<Timestamp>,
    /// Terminal state reached.
    pub finished_at: Option<Timestamp>,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// Fencing token: incremented by every claim.
    pub lease_token: i64,
    /// The lease is lost after this instant unless renewed.
    pub lease_expires_at: Option<Timestamp>,
    /// The owner asked to cancel while it was running.
    pub cancel_requested: bool,
    /// Deleted after this instant (result retention).
    pub expires_at: Option<Timestamp>,
    /// Webhook deliveries attempted.
    pub webhook_attempts: u32,
    /// Next webhook delivery not before this instant.
    pub webhook_next_at: Option<Timestamp>,
}

/// An async request to enqueue (validated and defaulted by the caller).
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The request id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Submitting key.
    pub key_id: String,
    /// Model.
    pub model_id: String,
    /// Version.
    pub version_id: String,
    /// Webhook target.
    pub webhook_url: Option<String>,
    /// 0–2.
    pub priority: u8,
    /// JSON text.
    pub input: String,
    /// Retry policy.
    pub retry: RetryConfig,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Submit time.
    pub created_at: Timestamp,
    /// Queue deadline.
    pub queue_deadline: Timestamp,
    /// Stored already leased to this worker (its first attempt started),
    /// instead of queued: a submit handed to a local worker with a free
    /// slot. `None` queues it.
    pub lease: Option<SubmitLease>,
}

/// The lease of a job taken at its submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitLease {
    /// The worker that runs it.
    pub owner: String,
    /// The lease is lost after this instant unless renewed.
    pub until: Timestamp,
}

/// The fencing token of a job's first lease (claims increment the stored
/// token, which starts at 0).
pub const FIRST_LEASE_TOKEN: i64 = 1;

impl NewJob {
    /// The job as stored with its [`NewJob::lease`], and that lease: exactly
    /// what a claim of it would answer. `None` when it is to be queued.
    pub fn leased(&self) -> Option<Lease> {
        let lease = self.lease.as_ref()?;
        let job = AsyncJob {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            key_id: self.key_id.clone(),
            model_id: self.model_id.clone(),
            version_id: self.version_id.clone(),
            status: JobStatus::InProgress,
            webhook_status: if self.webhook_url.is_some() {
                WebhookStatus::Pending
            } else {
                WebhookStatus::NoWebhookProvided
            },
            webhook_url: self.webhook_url.clone(),
            priority: self.priority,
            input: self.input.clone(),
            output: None,
            errors: Vec::new(),
            attempts: 1,
            retry: self.retry,
            idempotency_key: self.idempotency_key.clone(),
            created_at: self.created_at,
            queue_deadline: self.queue_deadline,
            run_after: self.created_at,
            started_at: Some(self.created_at),
            finished_at: None,
            lease_owner: Some(lease.owner.clone()),
            lease_token: FIRST_LEASE_TOKEN,
            lease_expires_at: Some(lease.until),
            cancel_requested: false,
            expires_at: None,
            webhook_attempts: 0,
            webhook_next_at: None,
        };
        Some(Lease {
            job,
            token: FIRST_LEASE_TOKEN,
        })
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new request was stored.
    Created(String),
    /// The owner already submitted this `Idempotency-Key`: the first request's id.
    Existing(String),
}

/// A claimed job: the job and the fencing token its worker must present.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The job as claimed (attempts already incremented).
    pub job: AsyncJob,
    /// Token to present when finishing; stale tokens are refused.
    pub token: i64,
}

/// How an attempt ended, as the worker reports it (the error, if any, is
/// the last of [`Finish::errors`]).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Succeeded with this JSON output.
    Succeeded(String),
    /// Failed for good.
    Failed,
    /// Failed; run again not before this instant.
    Retry(Timestamp),
    /// Aborted on its owner's request.
    Canceled,
}

/// One attempt's end, reported by the worker holding the lease.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The job.
    pub id: String,
    /// The fencing token of the worker's lease.
    pub token: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The job's complete error list after this attempt.
    pub errors: Vec<JobError>,
    /// The job's version has a `max_concurrency`: the end of its attempt
    /// frees one of the version's slots, which workers waiting on the cap
    /// are told of. Other ends free no slot another worker waits for.
    pub capped: bool,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    /// It was queued and is now CANCELED.
    Canceled,
    /// It is running; its worker was asked to abort.
    Requested,
    /// It had already finished (in this status).
    AlreadyFinished(JobStatus),
}

/// Filter for listing async requests.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this owner.
    pub user_id: Option<String>,
    /// Only this model.
    pub model_id: Option<String>,
    /// Only this status.
    pub status: Option<JobStatus>,
    /// At most this many (newest first).
    pub limit: u32,
}

/// One webhook delivery attempt, for the admin listing.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Delivery {
    /// The request.
    pub request_id: String,
    /// 1-based delivery attempt.
    pub attempt: u32,
    /// When it was made.
    pub at: Timestamp,
    /// HTTP status received, if any.
    pub status_code: Option<u16>,
    /// Whether it counted as delivered (2xx).
    pub success: bool,
    /// What went wrong.
    pub error: Option<String>,
    /// Time to the answer.
    pub duration_ms: u64,
}

/// What to do after a delivery attempt.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryNext {
    /// Delivered: webhook SUCCEEDED.
    Done,
    /// Try again not before this instant.
    RetryAt(Timestamp),
    /// Give up: webhook FAILED (and a succeeded request becomes WEBHOOK_FAILED).
    GiveUp,
}

/// Queue depth of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// QUEUED requests.
    pub queued: u64,
    /// IN_PROGRESS requests.
    pub in_progress: u64,
}

/// The durable queue of async requests.
///
/// Contract every backend keeps: a claim hands a job to one worker at a
/// time, in priority then age order, never beyond a version's
/// `max_concurrency` counted over all workers, never a job whose queue
/// deadline has passed before its first attempt; each claim bumps the job's
/// fencing token, and every write by a worker (`finish_job`) is refused
/// unless it presents the current token of a job still IN_PROGRESS.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Stores a new job, or finds the owner's earlier one with the same
    /// idempotency key. A job with a [`NewJob::lease`] is stored as a claim
    /// under that lease would leave it ([`NewJob::leased`]).
    async fn enqueue_job(&self, job: NewJob) -> StoreResult<Enqueued>;
    /// Stores several new jobs in one transaction (group commit), with one
    /// answer per job in order, each as [`JobQueue::enqueue_job`] gives it.
    /// An `Err` of the whole call means none was stored. Ids must be new:
    /// an id given twice is a `Conflict` for the later job, and the SQL
    /// store fails a batch that holds an id stored before whole, with
    /// `Conflict` (warder makes ids of 128 random bits). The default calls
    /// `enqueue_job` for each; backends override it to commit once.
    async fn enqueue_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(self.enqueue_job(job.clone()).await);
        }
        Ok(out)
    }
    /// The id of the owner's job submitted with this idempotency key.
    async fn job_by_idempotency_key(&self, user_id: &str, key: &str)
        -> StoreResult<Option<String>>;
    /// Reads one job.
    async fn get_job(&self, id: &str) -> StoreResult<Option<AsyncJob>>;
    /// Lists jobs, newest first.
    async fn list_jobs(&self, filter: JobFilter) -> StoreResult<Vec<AsyncJob>>;
    /// Queued and in-progress counts of a model.
    async fn queue_counts(&self, model_id: &str) -> StoreResult<QueueCounts>;
    /// Counts per (model, status) of unfinished jobs, for metrics.
    async fn depth_by_model(&self) -> StoreResult<Vec<(String, JobStatus, u64)>>;
    /// Claims up to `limit` ready jobs for `owner` until `lease_until`.
    async fn claim_jobs(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Lease>>;
    /// Extends the leases `owner` holds on `ids`, the jobs it is running;
    /// answers those whose owners asked for a cancel. A lease of `owner` on
    /// a job it does not list (one stored leased to it by a submit whose
    /// batch it could not confirm) is left to run out and be rescued.
    async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: Timestamp,
    ) -> StoreResult<Vec<String>>;
    /// Records attempts' outcomes in one transaction; answers, per item,
    /// `false` when its token is stale (the lease was lost) and nothing was
    /// written. `retain_until` is when a job finished now is deleted.
    async fn finish_jobs(
        &self,
        items: &[Finish],
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<bool>>;
    /// Cancels a queued job or flags a running one.
    async fn cancel_job(
        &self,
        id: &str,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<CancelResult>;
    /// Marks queued jobs past their deadline EXPIRED; answers their ids.
    async fn expire_overdue(
        &self,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<String>>;
    /// Requeues (or fails, when out of attempts) jobs whose lease ran out.
    async fn rescue_expired_leases(
        &self,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<u64>;
    /// Deletes finished jobs past their retention.
    async fn purge_expired(&self, now: Timestamp) -> StoreResult<u64>;
    /// Claims up to `limit` finished jobs with a webhook due, until `lease_until`.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<AsyncJob>>;
    /// Records a delivery attempt and what follows it.
    async fn record_delivery(&self, delivery: Delivery, next: DeliveryNext) -> StoreResult<()>;
    /// A job's delivery attempts, oldest first.
    async fn list_deliveries(&self, id: &str) -> StoreResult<Vec<Delivery>>;
    /// Makes a finished job's webhook due again now; `false` if it has none
    /// or is not finished.
    async fn redeliver(&self, id: &str, now: Timestamp) -> StoreResult<bool>;
}

/// Per-user webhook signing secrets.
#[async_trait]
pub trait WebhookSecretStore: Send + Sync {
    /// Stores a new secret (as given: the caller encrypts it); secrets that
    /// had no end get `previous_valid_until`.
    async fn rotate_webhook_secret(
        &self,
        user_id: &str,
        sealed_secret: &str,
        now: Timestamp,
        previous_valid_until: Timestamp,
    ) -> StoreResult<()>;
    /// The user's secrets still valid at `now`, newest first.
    async fn webhook_secrets(&self, user_id: &str, now: Timestamp) -> StoreResult<Vec<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RetryConfig {
            max_attempts: 5,
            initial_delay_ms: 100,
            max_delay_ms: 350,
        };
        assert_eq!(r.base_delay_ms(1), 100);
        assert_eq!(r.base_delay_ms(2), 200);
        assert_eq!(r.base_delay_ms(3), 350);
        assert_eq!(r.base_delay_ms(60), 350);
    }

    #[test]
    fn statuses_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!(JobStatus::Expired.is_terminal());
        assert!(!JobStatus::Queued.is_terminal());
    }
}
