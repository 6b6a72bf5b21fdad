//! The durable job queue and webhook secrets over SQL ([`JobQueue`],
//! [`WebhookSecretStore`] for [`SqlStore`]).
//!
//! A claim is one `UPDATE … RETURNING` statement on both dialects
//! (`SqlStore::claim`); they differ in how it stays atomic:
//! - PostgreSQL claims with `FOR UPDATE SKIP LOCKED`, so workers claim
//!   disjoint batches of uncapped versions' jobs without waiting on each
//!   other; when versions with a `max_concurrency` take part, the claim
//!   first takes their advisory locks, so that the count of running jobs
//!   and the claim are one atomic step (and such claims wait in turn);
//! - SQLite takes the database's write lock before the statement reads, so
//!   it is atomic across processes sharing the file.
//!
//! Every worker write is fenced: it names the lease token it was given and
//! only applies while the job is still IN_PROGRESS under that token.
//!
//! The parts: `statements` holds the SQL texts, `decode` reads rows back
//! into jobs and leases, `writes` the multi-statement write paths (claims,
//! batches of submits and of outcomes) and `secrets` the webhook secrets.
//! This file implements [`JobQueue`] on top of them.

use crate::sql::{map_err, Dialect, SqlStore};
use async_trait::async_trait;
use warder_core::*;

/// Builds `AnyArguments` from values (all bound in order).
macro_rules! args {
    ($($v:expr),* $(,)?) => {{
        let mut a = sqlx::any::AnyArguments::default();
        $( sqlx::Arguments::add(&mut a, $v).map_err(|e| StoreError::Other(e.to_string()))?; )*
        a
    }};
}

mod decode;
mod secrets;
mod statements;
mod writes;

use decode::{corrupt, errors_json, get, job_row};
use statements::*;

#[async_trait]
impl JobQueue for SqlStore {
    async fn enqueue_job(&self, job: NewJob) -> StoreResult<Enqueued> {
        let mut results = self.enqueue_jobs(std::slice::from_ref(&job)).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Other("no answer for an enqueued job".into())))
    }

    async fn enqueue_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        if jobs.len() <= rows_per_statement(self.dialect()) {
            // One INSERT is a transaction of its own: no BEGIN and COMMIT
            // round trips. The lookups of idempotent replays that may
            // follow read committed rows, and answer per job.
            let mut conn = self.writer().acquire().await.map_err(map_err)?;
            return self.enqueue_on(&mut conn, jobs).await;
        }
        // One transaction for the batch: each page of the table and of its
        // indexes is written once per commit instead of once per job.
        let mut tx = self.writer().begin().await.map_err(map_err)?;
        let out = self.enqueue_on(&mut tx, jobs).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(out)
    }

    async fn job_by_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT id FROM async_jobs WHERE user_id = $1 AND idempotency_key = $2")
            .bind(user_id)
            .bind(key)
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)
    }

    async fn get_job(&self, id: &str) -> StoreResult<Option<AsyncJob>> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM async_jobs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(map_err)?
        .as_ref()
        .map(job_row)
        .transpose()
    }

    async fn list_jobs(&self, f: JobFilter) -> StoreResult<Vec<AsyncJob>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM async_jobs \
             WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR model_id = $2) \
             AND ($3 IS NULL OR status = $3) ORDER BY created_at DESC, id LIMIT $4"
        ))
        .bind(f.user_id)
        .bind(f.model_id)
        .bind(f.status.map(|s| s.as_str()))
        .bind(i64::from(f.limit.max(1)))
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        rows.iter().map(job_row).collect()
    }

    async fn queue_counts(&self, model_id: &str) -> StoreResult<QueueCounts> {
        // Through the model's versions, so that each count reads one
        // per-version partial index (see `DEPTH`).
        let rows = sqlx::query(&format!(
            "SELECT status, CAST(SUM(n) AS BIGINT) AS n FROM ({DEPTH}) AS d WHERE model_id = $1 GROUP BY status"
        ))
        .bind(model_id)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        let mut counts = QueueCounts::default();
        for r in rows {
            let status: String = get(&r, "status")?;
            let n = get::<i64>(&r, "n")?.max(0) as u64;
            match status.as_str() {
                "QUEUED" => counts.queued = n,
                _ => counts.in_progress = n,
            }
        }
        Ok(counts)
    }

    async fn depth_by_model(&self) -> StoreResult<Vec<(String, JobStatus, u64)>> {
        let rows = sqlx::query(&format!(
            "SELECT model_id, status, CAST(SUM(n) AS BIGINT) AS n FROM ({DEPTH}) AS d GROUP BY model_id, status"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let status: String = get(r, "status")?;
                Ok((
                    get(r, "model_id")?,
                    JobStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
                    get::<i64>(r, "n")?.max(0) as u64,
                ))
            })
            .collect()
    }

    async fn claim_jobs(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Lease>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.claim(owner, now, lease_until, limit).await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let mut cancels = Vec::new();
        for chunk in ids.chunks(rows_per_statement(self.dialect())) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let mine = format!("lease_owner = $2 AND status = 'IN_PROGRESS' AND id IN ({list})");
            // On PostgreSQL a job another transaction holds is passed over,
            // not waited for: that one is recording its outcome (or a
            // cancel, whose wake-up runs the heartbeat again once it has
            // committed). Waiting, the heartbeat and a batch of outcomes
            // could each hold a job the other wanted, in opposite orders:
            // PostgreSQL broke that deadlock after `deadlock_timeout` (1 s)
            // by failing the batch, which was then written again.
            let sql = match self.dialect() {
                Dialect::Sqlite => format!(
                    "UPDATE async_jobs SET lease_expires_at = $1 WHERE {mine} \
                     RETURNING id, cancel_requested"
                ),
                Dialect::Postgres => format!(
                    "UPDATE async_jobs SET lease_expires_at = $1 WHERE id IN \
                     (SELECT id FROM async_jobs WHERE {mine} FOR UPDATE SKIP LOCKED) \
                     RETURNING id, cancel_requested"
                ),
            };
            let mut query = sqlx::query(&sql).bind(lease_until.0).bind(owner);
            for id in chunk {
                query = query.bind(id);
            }
            // Planned for each run on PostgreSQL, like a batch of outcomes
            // (`finish_succeeded`): a kept plan, chosen while the table was
            // small, could join the list to a scan of the whole table.
            // One heartbeat every few seconds plans little.
            let rows = query
                .persistent(self.dialect() == Dialect::Sqlite)
                .fetch_all(self.writer())
                .await
                .map_err(map_err)?;
            for row in &rows {
                if get::<i64>(row, "cancel_requested")? != 0 {
                    cancels.push(get::<String>(row, "id")?);
                }
            }
        }
        Ok(cancels)
    }

    async fn finish_jobs(
        &self,
        items: &[Finish],
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        let per = rows_per_statement(self.dialect());
        let succeeded = items
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Succeeded(_)))
            .count();
        let statements = succeeded.div_ceil(per) + (items.len() - succeeded);
        if statements <= 1 {
            // One statement is a transaction of its own: no BEGIN and
            // COMMIT round trips.
            let mut conn = self.writer().acquire().await.map_err(map_err)?;
            return self.finish_on(&mut conn, items, now, retain_until).await;
        }
        let mut tx = self.writer().begin().await.map_err(map_err)?;
        let applied = self.finish_on(&mut tx, items, now, retain_until).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(applied)
    }

    async fn cancel_job(
        &self,
        id: &str,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<CancelResult> {
        let done = sqlx::query(&format!(
            "UPDATE async_jobs SET status = 'CANCELED', \
             webhook_status = CASE WHEN webhook_status = 'PENDING' THEN 'CANCELED' ELSE webhook_status END, \
             {} WHERE id = $3 AND status = 'QUEUED'",
            finished_set(1, 2)
        ))
        .bind(now.0)
        .bind(retain_until.0)
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 1 {
            return Ok(CancelResult::Canceled);
        }
        let flagged = sqlx::query(
            "UPDATE async_jobs SET cancel_requested = 1 WHERE id = $1 AND status = 'IN_PROGRESS'",
        )
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(map_err)?;
        if flagged.rows_affected() == 1 {
            return Ok(CancelResult::Requested);
        }
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM async_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(map_err)?;
        let status = status.ok_or_else(|| StoreError::NotFound(format!("async request {id}")))?;
        Ok(CancelResult::AlreadyFinished(
            JobStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        ))
    }

    async fn expire_overdue(
        &self,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<String>> {
        let errors = errors_json(&[JobError::new(
            JobErrorCode::QueueTimeout,
            "the request was not started before its max_time_in_queue_seconds",
        )]);
        sqlx::query_scalar(&format!(
            "UPDATE async_jobs SET status = 'EXPIRED', errors = $3, {} \
             WHERE status = 'QUEUED' AND attempts = 0 AND queue_deadline <= $1 RETURNING id",
            finished_set(1, 2)
        ))
        .bind(now.0)
        .bind(retain_until.0)
        .bind(errors)
        .fetch_all(self.writer())
        .await
        .map_err(map_err)
    }

    async fn rescue_expired_leases(
        &self,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<u64> {
        let lost = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM async_jobs WHERE status = 'IN_PROGRESS' \
             AND lease_expires_at < $1 LIMIT 1000"
        ))
        .bind(now.0)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        let mut rescued = 0;
        for row in &lost {
            let job = job_row(row)?;
            let mut errors = job.errors.clone();
            let (set, outcome) = if job.cancel_requested {
                ("status = 'CANCELED', webhook_status = CASE WHEN webhook_status = 'PENDING' THEN 'CANCELED' ELSE webhook_status END", true)
            } else if job.attempts >= job.retry.max_attempts {
                errors.push(JobError::new(
                    JobErrorCode::WorkerLost,
                    "the worker running the last attempt stopped responding",
                ));
                ("status = 'FAILED'", true)
            } else {
                ("status = 'QUEUED', run_after = $3", false)
            };
            let finished = if outcome {
                format!(", {}", finished_set(3, 4))
            } else {
                ", lease_owner = NULL, lease_expires_at = NULL".to_owned()
            };
            // Fenced on the token and on the lease still being expired, so a
            // worker that renewed it meanwhile keeps its job.
            let done = sqlx::query(&format!(
                "UPDATE async_jobs SET {set}, errors = $5{finished} \
                 WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS' AND lease_expires_at < $3"
            ))
            .bind(&job.id)
            .bind(job.lease_token)
            .bind(now.0)
            .bind(retain_until.0)
            .bind(errors_json(&errors))
            .execute(self.writer())
            .await
            .map_err(map_err)?;
            rescued += done.rows_affected();
        }
        if rescued > 0 {
            let mut conn = self.writer().acquire().await.map_err(map_err)?;
            self.announce_freed_slots(&mut conn).await;
        }
        Ok(rescued)
    }

    async fn purge_expired(&self, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.writer().begin().await.map_err(map_err)?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE request_id IN \
             (SELECT id FROM async_jobs WHERE expires_at <= $1 AND webhook_status <> 'PENDING')",
        )
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let done = sqlx::query(
            "DELETE FROM async_jobs WHERE expires_at <= $1 AND webhook_status <> 'PENDING'",
        )
        .bind(now.0)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<AsyncJob>> {
        let pick = match self.dialect() {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT id FROM async_jobs WHERE webhook_status = 'PENDING' \
               AND webhook_next_at <= $1 \
               AND (webhook_lease_until IS NULL OR webhook_lease_until < $1) \
               ORDER BY webhook_next_at LIMIT $3 {pick}) \
             UPDATE async_jobs SET webhook_lease_until = $2 \
             WHERE id IN (SELECT id FROM due) AND webhook_status = 'PENDING' \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(now.0)
        .bind(lease_until.0)
        .bind(i64::from(limit))
        .fetch_all(self.writer())
        .await
        .map_err(map_err)?;
        rows.iter().map(job_row).collect()
    }

    async fn record_delivery(&self, d: Delivery, next: DeliveryNext) -> StoreResult<()> {
        let mut tx = self.writer().begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (request_id, attempt, at, status_code, success, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (request_id, attempt) DO NOTHING",
        )
        .bind(&d.request_id)
        .bind(i64::from(d.attempt))
        .bind(d.at.0)
        .bind(d.status_code.map(i64::from))
        .bind(i64::from(d.success))
        .bind(&d.error)
        .bind(d.duration_ms as i64)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let q = match next {
            DeliveryNext::Done => sqlx::query(
                "UPDATE async_jobs SET webhook_status = 'SUCCEEDED', webhook_attempts = $2, \
                 webhook_next_at = NULL, webhook_lease_until = NULL WHERE id = $1",
            )
            .bind(&d.request_id)
            .bind(i64::from(d.attempt)),
            DeliveryNext::RetryAt(at) => sqlx::query(
                "UPDATE async_jobs SET webhook_attempts = $2, webhook_next_at = $3, \
                 webhook_lease_until = NULL WHERE id = $1",
            )
            .bind(&d.request_id)
            .bind(i64::from(d.attempt))
            .bind(at.0),
            DeliveryNext::GiveUp => sqlx::query(
                "UPDATE async_jobs SET webhook_status = 'FAILED', webhook_attempts = $2, \
                 webhook_next_at = NULL, webhook_lease_until = NULL, \
                 status = CASE WHEN status = 'SUCCEEDED' THEN 'WEBHOOK_FAILED' ELSE status END \
                 WHERE id = $1",
            )
            .bind(&d.request_id)
            .bind(i64::from(d.attempt)),
        };
        q.execute(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn list_deliveries(&self, id: &str) -> StoreResult<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT request_id, attempt, at, status_code, success, error, duration_ms \
             FROM webhook_deliveries WHERE request_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    request_id: get(r, "request_id")?,
                    attempt: get::<i64>(r, "attempt")?.max(0) as u32,
                    at: Timestamp(get(r, "at")?),
                    status_code: get::<Option<i64>>(r, "status_code")?.map(|c| c as u16),
                    success: get::<i64>(r, "success")? != 0,
                    error: get(r, "error")?,
                    duration_ms: get::<i64>(r, "duration_ms")?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn redeliver(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE async_jobs SET webhook_status = 'PENDING', webhook_next_at = $2, \
             webhook_lease_until = NULL, \
             status = CASE WHEN status = 'WEBHOOK_FAILED' THEN 'SUCCEEDED' ELSE status END \
             WHERE id = $1 AND webhook_url IS NOT NULL AND webhook_status <> 'PENDING' \
             AND status NOT IN ('QUEUED', 'IN_PROGRESS', 'CANCELED')",
        )
        .bind(id)
        .bind(now.0)
        .execute(self.writer())
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }
}
