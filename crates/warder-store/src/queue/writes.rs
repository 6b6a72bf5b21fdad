//! The job queue's write paths that take more than one statement or a
//! statement built per batch: claims, batches of submits and batches of
//! outcomes. [`JobQueue`](warder_core::JobQueue) calls them, the batch
//! writes on a connection (or a transaction) of its choosing.

use super::decode::{errors_json, get, leases};
use super::statements::*;
use crate::sql::{map_err, Dialect, SqlStore};
use std::collections::HashSet;
use warder_core::*;

impl SqlStore {
    /// Claims up to `limit` ready jobs in priority order, passing over jobs
    /// of capped versions beyond their free slots, in one statement. Fewer
    /// than `limit` means no other job is ready now, bar jobs of capped
    /// versions at their cap: the worker counts that as drained and then
    /// takes submits directly (`Worker::take_slots`). So the jobs of a full
    /// capped version must not take the places of ready jobs behind them,
    /// as they would if the claim took the first `limit` ready jobs and
    /// then dropped those over a cap.
    ///
    /// Bar two windows, both closed by a claim soon after:
    /// - beyond 64 capped versions with free slots and ready jobs at once,
    ///   the others wait for a later claim;
    /// - on PostgreSQL, a claim that takes part of what its uncapped branch
    ///   locked holds the rest until it commits, and another claimer skips
    ///   those; the first came back full, so its worker claims again at once.
    pub(super) async fn claim(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Lease>> {
        let capped = self.capped_with_ready_jobs(now).await?;
        let sql = claim_sql(self.dialect(), capped.len());
        let mut query = sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until.0)
            .bind(now.0)
            .bind(i64::from(limit));
        for version in &capped {
            query = query.bind(version);
        }
        let rows = if self.dialect() == Dialect::Sqlite {
            // SQLite runs one statement at a time: no other claimer's can
            // come between a running count and the claim it limits.
            query.fetch_all(self.writer()).await.map_err(map_err)?
        } else {
            // On PostgreSQL, one claimer per capped version at a time: it
            // waits for the one ahead (its whole claim) rather than skip the
            // version, which could leave its free slots unclaimed until the
            // next wake-up. The claim's snapshot, taken after the locks,
            // counts what that one claimed: READ COMMITTED, whatever the
            // server's default.
            let mut tx = self
                .writer()
                .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await
                .map_err(map_err)?;
            if !capped.is_empty() {
                let lock = lock_versions_sql(capped.len());
                let mut locks = sqlx::query(&lock);
                for version in &capped {
                    locks = locks.bind(version);
                }
                locks.execute(&mut *tx).await.map_err(map_err)?;
            }
            sqlx::query(CLAIM_IN_ORDER)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let rows = query.fetch_all(&mut *tx).await.map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            rows
        };
        leases(&rows)
    }

    /// Capped versions with a free slot and a ready job (64 at most), from
    /// the (small) versions table, probing the per-version indexes of queued
    /// and running jobs: scanning the ready jobs for their versions cost a
    /// pass over the whole backlog on every claim. The probe for a ready job
    /// is a scalar subquery, run per capped version: as `EXISTS` the planner
    /// could make it a semi-join, and without statistics it read every
    /// queued job's entry of `async_jobs_queued_version` (even with no
    /// version capped) before each claim. On SQLite from the read
    /// pool, so the writer connection is not taken for it: the claim counts
    /// again anyway.
    pub(super) async fn capped_with_ready_jobs(&self, now: Timestamp) -> StoreResult<Vec<String>> {
        let sql = format!(
            "SELECT v.id AS version_id FROM model_versions v \
             WHERE v.max_concurrency IS NOT NULL \
               AND v.max_concurrency > (SELECT COUNT(*) FROM async_jobs r \
                 WHERE r.version_id = v.id AND r.status = 'IN_PROGRESS') \
               AND (SELECT 1 FROM async_jobs j WHERE j.version_id = v.id AND {} LIMIT 1) = 1 \
             LIMIT 64",
            READY.replace("$3", "$1")
        );
        let rows = sqlx::query(&sql)
            .bind(now.0)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(|v| get(v, "version_id")).collect()
    }

    /// Inserts `jobs` in one statement, skipping those whose owner used
    /// their idempotency key before; answers, per job, whether it was
    /// inserted. `DO NOTHING` instead of catching the error, because a
    /// failed statement aborts a PostgreSQL transaction and the batch around
    /// it; one statement instead of one per job, because on PostgreSQL each
    /// is a round trip and an executor start. With `wake`, the statement
    /// also wakes the workers of every process ([`insert_and_wake_sql`]).
    pub(super) async fn insert_jobs(
        conn: &mut sqlx::AnyConnection,
        jobs: &[&NewJob],
        rows: usize,
        wake: bool,
    ) -> StoreResult<Vec<bool>> {
        static TEXTS: TextsByRows = TextsByRows::new();
        static WAKING_TEXTS: TextsByRows = TextsByRows::new();
        let rows = rows.max(jobs.len());
        let sql = match wake {
            false => TEXTS.get(rows, insert_sql),
            true => WAKING_TEXTS.get(rows, insert_and_wake_sql),
        };
        let mut args = sqlx::any::AnyArguments::default();
        macro_rules! bind {
            ($($v:expr),* $(,)?) => {
                $( sqlx::Arguments::add(&mut args, $v)
                    .map_err(|e| StoreError::Other(e.to_string()))?; )*
            };
        }
        // Padding repeats the first row with a NULL id, which the statement
        // leaves out.
        let first = jobs.iter().take(1).cycle();
        for (n, job) in jobs.iter().chain(first).take(rows).enumerate() {
            let webhook_status = if job.webhook_url.is_some() {
                WebhookStatus::Pending
            } else {
                WebhookStatus::NoWebhookProvided
            };
            // A job leased at submit is stored as a claim would leave it.
            let (status, attempts, started_at, owner, token, lease_until) = match &job.lease {
                Some(l) => (
                    JobStatus::InProgress,
                    1_i64,
                    Some(job.created_at.0),
                    Some(l.owner.clone()),
                    FIRST_LEASE_TOKEN,
                    Some(l.until.0),
                ),
                None => (JobStatus::Queued, 0, None, None, 0, None),
            };
            bind!(
                (n < jobs.len()).then(|| job.id.clone()),
                job.user_id.clone(),
                job.key_id.clone(),
                job.model_id.clone(),
                job.version_id.clone(),
                status.as_str().to_owned(),
                webhook_status.as_str().to_owned(),
                job.webhook_url.clone(),
                i64::from(job.priority),
                job.input.clone(),
                attempts,
                i64::from(job.retry.max_attempts),
                job.retry.initial_delay_ms as i64,
                job.retry.max_delay_ms as i64,
                job.idempotency_key.clone(),
                job.created_at.0,
                job.queue_deadline.0,
                started_at,
                owner,
                token,
                lease_until,
            );
        }
        returned_ids(conn, &sql, args, jobs.iter().map(|j| j.id.as_str()), true).await
    }

    /// What a job that was not inserted is: the owner's earlier job with the
    /// same idempotency key (a job without a key is always inserted, or
    /// fails its statement; a conflict answers it should that change).
    pub(super) async fn existing_job(
        conn: &mut sqlx::AnyConnection,
        job: &NewJob,
    ) -> StoreResult<Enqueued> {
        let Some(key) = &job.idempotency_key else {
            return Err(StoreError::Conflict(format!("async request '{}'", job.id)));
        };
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM async_jobs WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(&job.user_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        existing
            .map(Enqueued::Existing)
            .ok_or_else(|| StoreError::Conflict(format!("idempotency key of '{}'", job.id)))
    }

    /// Records the successes `items[i]` for `i` in `chunk` with one
    /// statement, each fenced by its lease token like [`Self::finish_one`];
    /// answers, per item, whether it was applied.
    pub(super) async fn finish_succeeded(
        conn: &mut sqlx::AnyConnection,
        dialect: Dialect,
        items: &[Finish],
        chunk: &[usize],
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        let mut args = sqlx::any::AnyArguments::default();
        for r in [
            sqlx::Arguments::add(&mut args, now.0),
            sqlx::Arguments::add(&mut args, retain_until.0),
        ] {
            r.map_err(|e| StoreError::Other(e.to_string()))?;
        }
        let mut rows = 0;
        for &i in chunk {
            let item = &items[i];
            let Outcome::Succeeded(output) = &item.outcome else {
                continue;
            };
            rows += 1;
            for r in [
                sqlx::Arguments::add(&mut args, item.id.clone()),
                sqlx::Arguments::add(&mut args, item.token),
                sqlx::Arguments::add(&mut args, output.clone()),
                sqlx::Arguments::add(&mut args, errors_json(&item.errors)),
            ] {
                r.map_err(|e| StoreError::Other(e.to_string()))?;
            }
        }
        static TEXTS: TextsByRows = TextsByRows::new();
        let sql = TEXTS.get(rows, finish_succeeded_sql);
        // On PostgreSQL planned for each run, never prepared: it chooses a
        // prepared statement's generic plan once, for the tables as they
        // were, and keeps it until they are analyzed again (never, with
        // autovacuum off). Chosen while the job table is nearly empty, this
        // one walks the index of running jobs (every worker's, and entries
        // of finished ones until they are pruned) instead of looking its
        // jobs up by id: one statement took 6.9 ms after 50 000 jobs had
        // finished, against 0.08 ms by id (PostgreSQL 15). In `bench/`,
        // async on PostgreSQL, two A/B runs: 7.8 k → 9.8 k and 7.5 k →
        // 8.4 k jobs/s; 108 → 84 and 120 → 102 µs of server CPU per job.
        // SQLite plans nothing per run; it keeps the statement compiled.
        returned_ids(
            conn,
            &sql,
            args,
            chunk.iter().map(|&i| items[i].id.as_str()),
            dialect == Dialect::Sqlite,
        )
        .await
    }

    /// The statements of [`JobQueue::finish_jobs`], on `conn`.
    pub(super) async fn finish_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        items: &[Finish],
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        let mut applied = vec![false; items.len()];
        // Successes, the common case, are written a chunk per statement;
        // the other outcomes one by one.
        let (succeeded, others): (Vec<usize>, Vec<usize>) =
            (0..items.len()).partition(|&i| matches!(items[i].outcome, Outcome::Succeeded(_)));
        // A job listed twice under one lease is written with its first
        // listing only: which of several matching rows an `UPDATE … FROM`
        // takes is undefined. (Under different leases at most one matches.)
        let mut listed = HashSet::new();
        let succeeded: Vec<usize> = succeeded
            .into_iter()
            .filter(|&i| listed.insert((items[i].id.as_str(), items[i].token)))
            .collect();
        for chunk in succeeded.chunks(rows_per_statement(self.dialect())) {
            let done =
                Self::finish_succeeded(conn, self.dialect(), items, chunk, now, retain_until)
                    .await?;
            for (&i, ok) in chunk.iter().zip(done) {
                applied[i] = ok;
            }
        }
        for i in others {
            applied[i] = self.finish_one(conn, &items[i], now, retain_until).await?;
        }
        // Only a capped version's freed slot lets another worker claim:
        // workers with free capacity claim on their own.
        if (0..items.len()).any(|i| applied[i] && items[i].capped) {
            self.announce_freed_slots(conn).await;
        }
        Ok(applied)
    }

    /// Tells every worker (PostgreSQL `NOTIFY`, delivered at commit) that
    /// jobs left IN_PROGRESS: a capped version may have a free slot. Once
    /// per batch, where a row trigger would run once per job (see migration
    /// 0008; a submit batch that queued a job wakes the workers in its
    /// insert, [`insert_and_wake_sql`]). SQLite has no channel: its workers
    /// poll.
    ///
    /// A failure is logged, not returned: the writes before it may be
    /// committed already, and a missed wake-up only leaves other workers to
    /// their poll timer. Inside a transaction, the failed statement aborts
    /// it and the commit reports the error.
    pub(super) async fn announce_freed_slots(&self, conn: &mut sqlx::AnyConnection) {
        if self.dialect() != Dialect::Postgres {
            return;
        }
        if let Err(e) = sqlx::query("SELECT 1 FROM (SELECT pg_notify('warder_async', 'work')) AS n")
            .execute(conn)
            .await
        {
            tracing::warn!(error = %e, "announcing freed async slots failed");
        }
    }

    /// The statements of [`JobQueue::enqueue_jobs`], on `conn`.
    pub(super) async fn enqueue_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        jobs: &[NewJob],
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        // Rows go in in one order everywhere (jobs with an idempotency key
        // first, by owner and key, then by id), so that two batches
        // committing at once, in this process or on another node, that share
        // a key wait for each other instead of deadlocking.
        //
        // An id given twice is a conflict for the later job, answered here:
        // in a statement, the second row would fail the whole batch.
        let mut out: Vec<Option<StoreResult<Enqueued>>> = vec![None; jobs.len()];
        let mut ids = HashSet::with_capacity(jobs.len());
        let mut order: Vec<usize> = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            if ids.insert(job.id.as_str()) {
                order.push(i);
            } else {
                out[i] = Some(Err(StoreError::Conflict(format!(
                    "async request '{}'",
                    job.id
                ))));
            }
        }
        order.sort_by_key(|&i| {
            let j = &jobs[i];
            (
                j.idempotency_key.is_none(),
                &j.user_id,
                &j.idempotency_key,
                &j.id,
            )
        });
        for chunk in order.chunks(rows_per_statement(self.dialect())) {
            let rows: Vec<&NewJob> = chunk.iter().map(|&i| &jobs[i]).collect();
            let padded = padded_rows(self.dialect(), rows.len());
            // Jobs handed to a worker at submit leave nothing to claim.
            let wake =
                self.dialect() == Dialect::Postgres && rows.iter().any(|j| j.lease.is_none());
            let inserted = Self::insert_jobs(conn, &rows, padded, wake).await?;
            for ((&i, job), new) in chunk.iter().zip(&rows).zip(inserted) {
                out[i] = Some(if new {
                    Ok(Enqueued::Created(job.id.clone()))
                } else {
                    Self::existing_job(conn, job).await
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(StoreError::Other("a job was not stored".into()))))
            .collect())
    }

    pub(super) async fn finish_one(
        &self,
        conn: &mut sqlx::AnyConnection,
        item: &Finish,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<bool> {
        let errors = errors_json(&item.errors);
        let fence = "WHERE id = $1 AND lease_token = $2 AND status = 'IN_PROGRESS'";
        let (sql, args) = match &item.outcome {
            Outcome::Succeeded(output) => (
                format!(
                    "UPDATE async_jobs SET status = 'SUCCEEDED', output = $3, errors = $4, {} {fence}",
                    finished_set(5, 6)
                ),
                args![item.id.clone(), item.token, output.clone(), errors, now.0, retain_until.0],
            ),
            Outcome::Failed => (
                format!(
                    "UPDATE async_jobs SET status = 'FAILED', errors = $3, {} {fence}",
                    finished_set(4, 5)
                ),
                args![item.id.clone(), item.token, errors, now.0, retain_until.0],
            ),
            Outcome::Canceled => (
                format!(
                    "UPDATE async_jobs SET status = 'CANCELED', errors = $3, \
                     webhook_status = CASE WHEN webhook_status = 'PENDING' THEN 'CANCELED' ELSE webhook_status END, \
                     {} {fence}",
                    finished_set(4, 5)
                ),
                args![item.id.clone(), item.token, errors, now.0, retain_until.0],
            ),
            Outcome::Retry(run_after) => (
                format!(
                    "UPDATE async_jobs SET status = 'QUEUED', errors = $3, run_after = $4, \
                     lease_owner = NULL, lease_expires_at = NULL {fence}"
                ),
                args![item.id.clone(), item.token, errors, run_after.0],
            ),
        };
        // Planned for each run on PostgreSQL, like `finish_succeeded`: the
        // generic plan of this one walked the running jobs' index as well
        // (10.8 ms for one statement after 50 000 jobs had finished).
        let done = sqlx::query_with(&sql, args)
            .persistent(self.dialect() == Dialect::Sqlite)
            .execute(conn)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }
}

/// Runs a multi-row statement that ends `RETURNING id` and tells, for each
/// of `ids` in order, whether the statement wrote it. A job listed twice is
/// written at most once: its first listing stands for the returned id.
async fn returned_ids(
    conn: &mut sqlx::AnyConnection,
    sql: &str,
    args: sqlx::any::AnyArguments<'_>,
    ids: impl Iterator<Item = &str>,
    prepared: bool,
) -> StoreResult<Vec<bool>> {
    let written: HashSet<String> = sqlx::query_scalar_with(sql, args)
        .persistent(prepared)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?
        .into_iter()
        .collect();
    let mut seen = HashSet::new();
    Ok(ids
        .map(|id| seen.insert(id) && written.contains(id))
        .collect())
}
