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

use crate::sql::{map_err, Dialect, SqlStore};
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::OnceLock;
use warder_core::*;

/// Columns of `async_jobs` in the order `job_row` reads them.
const JOB_COLUMNS: &str = "id, user_id, key_id, model_id, version_id, status, webhook_status, \
     webhook_url, priority, input, output, errors, attempts, max_attempts, initial_delay_ms, \
     max_delay_ms, idempotency_key, created_at, queue_deadline, run_after, started_at, \
     finished_at, lease_owner, lease_token, lease_expires_at, cancel_requested, expires_at, \
     webhook_attempts, webhook_next_at";

/// The SET clause of a claim; `$1` owner, `$2` lease end, `$3` now.
const CLAIM_SET: &str = "status = 'IN_PROGRESS', lease_owner = $1, lease_token = lease_token + 1, \
     lease_expires_at = $2, started_at = COALESCE(started_at, $3), attempts = attempts + 1";

/// Ready: queued, past its backoff, and (before a first attempt) within its
/// deadline, on an active version. `$3` is now.
const READY: &str = "j.status = 'QUEUED' AND j.run_after <= $3 \
     AND (j.attempts > 0 OR j.queue_deadline > $3) AND v.state = 'active'";

/// Queued and running jobs per version, with the version's model: each
/// half reads one per-version partial index (`async_jobs_queued_version`,
/// `async_jobs_running`) instead of an index over every job ever stored.
const DEPTH: &str = "SELECT v.model_id, j.status, COUNT(*) AS n \
     FROM model_versions v JOIN async_jobs j ON j.version_id = v.id AND j.status = 'QUEUED' \
     GROUP BY v.model_id, j.status \
     UNION ALL SELECT v.model_id, j.status, COUNT(*) AS n \
     FROM model_versions v JOIN async_jobs j ON j.version_id = v.id AND j.status = 'IN_PROGRESS' \
     GROUP BY v.model_id, j.status";

/// Builds `AnyArguments` from values (all bound in order).
macro_rules! args {
    ($($v:expr),* $(,)?) => {{
        let mut a = sqlx::any::AnyArguments::default();
        $( sqlx::Arguments::add(&mut a, $v).map_err(|e| StoreError::Other(e.to_string()))?; )*
        a
    }};
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Other(format!("corrupt async job row: {what}"))
}

fn get<'r, T>(row: &'r AnyRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get::<T, _>(col).map_err(map_err)
}

fn job_row(row: &AnyRow) -> StoreResult<AsyncJob> {
    let status: String = get(row, "status")?;
    let webhook_status: String = get(row, "webhook_status")?;
    let errors: String = get(row, "errors")?;
    let ts = |c: &str| get::<i64>(row, c).map(Timestamp);
    let opt_ts = |c: &str| get::<Option<i64>>(row, c).map(|v| v.map(Timestamp));
    Ok(AsyncJob {
        id: get(row, "id")?,
        user_id: get(row, "user_id")?,
        key_id: get(row, "key_id")?,
        model_id: get(row, "model_id")?,
        version_id: get(row, "version_id")?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        webhook_status: WebhookStatus::parse(&webhook_status)
            .ok_or_else(|| corrupt("webhook_status"))?,
        webhook_url: get(row, "webhook_url")?,
        priority: get::<i64>(row, "priority")?.clamp(0, 255) as u8,
        input: get(row, "input")?,
        output: get(row, "output")?,
        errors: serde_json::from_str(&errors).map_err(|_| corrupt("errors"))?,
        attempts: get::<i64>(row, "attempts")?.max(0) as u32,
        retry: RetryConfig {
            max_attempts: get::<i64>(row, "max_attempts")?.max(0) as u32,
            initial_delay_ms: get::<i64>(row, "initial_delay_ms")?.max(0) as u64,
            max_delay_ms: get::<i64>(row, "max_delay_ms")?.max(0) as u64,
        },
        idempotency_key: get(row, "idempotency_key")?,
        created_at: ts("created_at")?,
        queue_deadline: ts("queue_deadline")?,
        run_after: ts("run_after")?,
        started_at: opt_ts("started_at")?,
        finished_at: opt_ts("finished_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_token: get(row, "lease_token")?,
        lease_expires_at: opt_ts("lease_expires_at")?,
        cancel_requested: get::<i64>(row, "cancel_requested")? != 0,
        expires_at: opt_ts("expires_at")?,
        webhook_attempts: get::<i64>(row, "webhook_attempts")?.max(0) as u32,
        webhook_next_at: opt_ts("webhook_next_at")?,
    })
}

fn leases(rows: &[AnyRow]) -> StoreResult<Vec<Lease>> {
    let mut out = rows
        .iter()
        .map(|r| {
            job_row(r).map(|job| Lease {
                token: job.lease_token,
                job,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    out.sort_by_key(|l| (l.job.priority, l.job.created_at));
    Ok(out)
}

fn errors_json(errors: &[JobError]) -> String {
    serde_json::to_string(errors).unwrap_or_else(|_| "[]".to_owned())
}

/// Terminal-state bookkeeping shared by every path that finishes a job:
/// `$a` finished_at/now, `$b` retain_until.
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

/// Rows per multi-row statement. SQLite looks a `$N` parameter's name up by
/// a linear scan, which sqlx does for every parameter, so binding grows with
/// the square of the rows: its statements stay short. On PostgreSQL each
/// statement is a round trip: 256 rows (at most 5 376 values, well under
/// its limit).
fn rows_per_statement(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Sqlite => 16,
        Dialect::Postgres => MAX_ROWS,
    }
}

/// Rows a multi-row insert of `n` jobs is written with: on PostgreSQL, the
/// next of 16 sizes, filled with copies of the statement's first row.
///
/// Each row count is a statement text of its own, and PostgreSQL plans an
/// execution afresh until one text has run five times: with every batch
/// size its own text, parsing and planning a few thousand parameters was
/// about a tenth of the server's CPU per async job (`perf`, `bench/`).
/// From 4 on each size is a half or a third above the one before, so a
/// statement carries under half as many rows again as asked, and a few
/// texts stay prepared with a cached plan. A padding row, the first row
/// with a NULL id, changes nothing: the statement leaves it out. (A
/// batch of outcomes is planned for each run instead, and not padded: see
/// `finish_succeeded`.) SQLite keeps a compiled statement per text and
/// plans nothing per run.
fn padded_rows(dialect: Dialect, n: usize) -> usize {
    const SIZES: [usize; 16] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256];
    match dialect {
        Dialect::Sqlite => n,
        Dialect::Postgres => SIZES.iter().copied().find(|&s| s >= n).unwrap_or(n),
    }
}

/// Statement texts that depend only on a row count, made once per count
/// (up to [`MAX_ROWS`]; a larger count is made each time). Formatting the
/// `$N` placeholders of every batch anew cost about 7 800 instructions per
/// async job on PostgreSQL (callgrind, `bench/` async scenario), more than
/// a twentieth of warder's own work per job.
struct TextsByRows([OnceLock<String>; MAX_ROWS + 1]);

/// The most rows a multi-row statement carries (see [`rows_per_statement`]).
const MAX_ROWS: usize = 256;

impl TextsByRows {
    const fn new() -> TextsByRows {
        TextsByRows([const { OnceLock::new() }; MAX_ROWS + 1])
    }

    fn get(&self, rows: usize, make: fn(usize) -> String) -> Cow<'_, str> {
        match self.0.get(rows) {
            Some(text) => Cow::Borrowed(text.get_or_init(|| make(rows))),
            None => Cow::Owned(make(rows)),
        }
    }
}

/// The insert of `rows` jobs ([`SqlStore::insert_jobs`] binds 21 values per
/// row, in this order). A row whose id is NULL (the padding of
/// [`padded_rows`]) is left out; a row whose owner used its idempotency key
/// before is skipped; a row whose id is stored already fails the statement.
///
/// Only the idempotency index is checked before each row goes in. `ON
/// CONFLICT DO NOTHING` without a target looks every row up in every unique
/// index first, the primary key included, and then again as it inserts: on
/// PostgreSQL that look-up was about 7 % of the server's CPU per async job
/// (`perf`, `bench/`). Job ids are made by warder, 128 random bits, and a
/// batch's repeats are answered before it is stored
/// ([`SqlStore::enqueue_on`]); the partial idempotency index skips rows
/// without a key.
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO async_jobs ({INSERT_COLUMNS}) SELECT * FROM (VALUES ");
    push_insert_rows(&mut sql, rows);
    sql.push_str(
        ") AS v WHERE v.column1 IS NOT NULL \
         ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
         RETURNING id",
    );
    sql
}

/// [`insert_sql`], and a `NOTIFY` to the workers of every process in the
/// same statement (PostgreSQL): its rows are visible when it is delivered,
/// at commit. Used for rows of which one at least is queued (not handed to
/// a worker). In a statement of its own after the insert, outside a
/// transaction, the `NOTIFY` was a second commit, with its WAL flush, before
/// the submits could be answered.
fn insert_and_wake_sql(rows: usize) -> String {
    format!(
        "WITH ins AS ({}) SELECT ins.id FROM ins \
         CROSS JOIN (SELECT pg_notify('warder_async', 'work')) AS n",
        insert_sql(rows)
    )
}

/// The columns a submit writes, in the order of [`push_insert_rows`].
const INSERT_COLUMNS: &str = "id, user_id, key_id, model_id, version_id, status, webhook_status, \
     webhook_url, priority, input, output, errors, attempts, max_attempts, initial_delay_ms, \
     max_delay_ms, idempotency_key, created_at, queue_deadline, run_after, started_at, \
     lease_owner, lease_token, lease_expires_at, cancel_requested, webhook_attempts";

/// `rows` rows of [`INSERT_COLUMNS`], 21 parameters each.
fn push_insert_rows(sql: &mut String, rows: usize) {
    const PARAMS: usize = 21;
    for n in 0..rows {
        let p = |i: usize| n * PARAMS + i;
        if n > 0 {
            sql.push_str(", ");
        }
        let _ =
            write!(
            sql,
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, NULL, '[]', ${}, ${}, ${}, ${}, \
             ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, 0, 0)",
            p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), p(9), p(10), p(11), p(12), p(13),
            p(14), p(15), p(16), p(17), p(16), p(18), p(19), p(20), p(21)
        );
    }
}

/// The update recording `rows` successes: `$1` now, `$2` the retention
/// deadline, then id, lease token, output and errors per row.
fn finish_succeeded_sql(rows: usize) -> String {
    let mut values = String::new();
    for n in 0..rows {
        let p = 3 + n * 4;
        if n > 0 {
            values.push_str(", ");
        }
        let _ = write!(
            values,
            "(${}, CAST(${} AS BIGINT), ${}, ${})",
            p,
            p + 1,
            p + 2,
            p + 3
        );
    }
    // `columnN` names the VALUES columns in both dialects; the `f_` names
    // keep `RETURNING id` unambiguous. `status || ''` keeps the planner
    // from reading the batch's jobs off `async_jobs_running`: with a
    // batch of more than about 20 rows, PostgreSQL took a bitmap scan of
    // that whole index (every running job) hashed against the batch as
    // cheaper than a look-up by id per row. A bitmap scan never marks the
    // entries of finished jobs dead, so each such scan read all of them
    // again: about 6 000 index entries, 3–4 ms, per batch in `bench/`.
    // Looked up by id, a batch takes what it names.
    format!(
        "UPDATE async_jobs SET status = 'SUCCEEDED', output = v.f_output, errors = v.f_errors, {} \
         FROM (SELECT column1 AS f_id, column2 AS f_token, column3 AS f_output, column4 AS f_errors \
               FROM (VALUES {values}) AS vals) AS v \
         WHERE id = v.f_id AND lease_token = v.f_token AND status || '' = 'IN_PROGRESS' \
         RETURNING id",
        finished_set(1, 2)
    )
}

fn finished_set(now: usize, retain: usize) -> String {
    format!(
        "finished_at = ${now}, expires_at = ${retain}, lease_owner = NULL, lease_expires_at = NULL, \
         webhook_next_at = CASE WHEN webhook_status = 'PENDING' THEN ${now} ELSE NULL END"
    )
}

/// The claim of `SqlStore::claim`, with `capped` capped versions: one
/// branch takes the first ready jobs of uncapped versions, one per capped
/// version (`$5`, `$6`, …) its first ready jobs up to its free slots (its
/// `max_concurrency`, read in the statement, less its running jobs), and
/// the first `$4` of them all in priority order are claimed.
fn claim_sql(dialect: Dialect, capped: usize) -> String {
    let (lock, greatest, least) = match dialect {
        Dialect::Sqlite => ("", "MAX", "MIN"),
        Dialect::Postgres => (" FOR UPDATE OF j SKIP LOCKED", "GREATEST", "LEAST"),
    };
    let branch = |filter: &str, limit: &str| {
        format!(
            "SELECT j.id, j.priority, j.created_at FROM async_jobs j \
             JOIN model_versions v ON v.id = j.version_id WHERE {READY} AND {filter} \
             ORDER BY j.priority, j.created_at LIMIT {limit}{lock}"
        )
    };
    // The uncapped branch walks the ready index in claim order, locking
    // (and skipping locked) rows as it goes, so it locks no more than it
    // may take. (One pass per uncapped version, through `LATERAL`, read less
    // behind a backlog of capped versions' jobs, but locked up to `$4` rows
    // per version while taking `$4` in all: a concurrent claimer then came
    // back short with ready jobs left, which the worker reads as drained.)
    let mut ctes = vec![format!(
        "c0 AS ({})",
        branch("v.max_concurrency IS NULL", "$4")
    )];
    for i in 0..capped {
        let version = 5 + i;
        // A version whose cap was lifted since it was listed has its jobs
        // in `c0`: no free slots here, so none is listed twice.
        let free = format!(
            "(SELECT {greatest}(0, {least}($4, COALESCE((SELECT max_concurrency \
               FROM model_versions WHERE id = ${version}), 0) - COUNT(*))) \
             FROM async_jobs r WHERE r.version_id = ${version} AND r.status = 'IN_PROGRESS')"
        );
        ctes.push(format!(
            "c{} AS ({})",
            i + 1,
            branch(
                &format!("j.version_id = ${version} AND v.max_concurrency IS NOT NULL"),
                &free
            )
        ));
    }
    let union = (0..=capped)
        .map(|i| format!("SELECT id, priority, created_at FROM c{i}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let with = format!(
        "WITH {}, picked AS (SELECT id FROM ({union}) AS c ORDER BY priority, created_at LIMIT $4)",
        ctes.join(", ")
    );
    match dialect {
        Dialect::Sqlite => format!(
            "{with} UPDATE async_jobs SET {CLAIM_SET} WHERE id IN (SELECT id FROM picked) \
             RETURNING {JOB_COLUMNS}"
        ),
        Dialect::Postgres => {
            let columns = JOB_COLUMNS
                .split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{with} UPDATE async_jobs j SET {CLAIM_SET} FROM picked WHERE j.id = picked.id \
                 RETURNING {columns}"
            )
        }
    }
}

/// Run before a claim on PostgreSQL, in its transaction: its branches then
/// read their first ready jobs off the ready index (or, for a capped
/// version, `async_jobs_queued_version`) in claim order, instead of sorting
/// every queued job. The planner chooses the sort when the table's
/// statistics are stale or missing (autovacuum off, or not yet run on a
/// table that filled quickly): a claim then took time in proportion to the
/// backlog, and a backlog of 50 000 jobs drained at about 1 000 jobs/s
/// (PostgreSQL 15, loopback, `bench/`'s upstream). Sorting the few claimed rows stays possible:
/// the setting makes a sort costly to the planner, not forbidden. That
/// cost would also start the JIT compiler (about 300 ms a claim), hence
/// `jit` off, for this transaction only as well.
const CLAIM_IN_ORDER: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true)";

/// Takes the advisory locks of `versions` ($1, $2, …) in one statement, in
/// the order of their lock keys and each key once: two claimers whose
/// versions' keys collide cannot then take them in opposite orders.
fn lock_versions_sql(versions: usize) -> String {
    let values = (1..=versions)
        .map(|i| format!("(${i})"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT COUNT(*) AS n FROM (SELECT pg_advisory_xact_lock(k) FROM ( \
           SELECT DISTINCT hashtext('warder:' || x) AS k FROM (VALUES {values}) AS t(x)) AS d \
         ORDER BY k) AS l"
    )
}

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
    async fn claim(
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
    async fn capped_with_ready_jobs(&self, now: Timestamp) -> StoreResult<Vec<String>> {
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
    async fn insert_jobs(
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
    async fn existing_job(conn: &mut sqlx::AnyConnection, job: &NewJob) -> StoreResult<Enqueued> {
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
    async fn finish_succeeded(
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
    async fn finish_on(
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
    async fn announce_freed_slots(&self, conn: &mut sqlx::AnyConnection) {
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
    async fn enqueue_on(
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

    async fn finish_one(
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
            let sql = format!(
                "UPDATE async_jobs SET lease_expires_at = $1 \
                 WHERE lease_owner = $2 AND status = 'IN_PROGRESS' AND id IN ({list}) \
                 RETURNING id, cancel_requested"
            );
            let mut query = sqlx::query(&sql).bind(lease_until.0).bind(owner);
            for id in chunk {
                query = query.bind(id);
            }
            let rows = query.fetch_all(self.writer()).await.map_err(map_err)?;
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

#[async_trait]
impl WebhookSecretStore for SqlStore {
    async fn rotate_webhook_secret(
        &self,
        user_id: &str,
        sealed_secret: &str,
        now: Timestamp,
        previous_valid_until: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.writer().begin().await.map_err(map_err)?;
        sqlx::query(
            "UPDATE webhook_secrets SET valid_until = $1 WHERE user_id = $2 AND valid_until IS NULL",
        )
        .bind(previous_valid_until.0)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO webhook_secrets (id, user_id, created_at, sealed_secret, valid_until) \
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(new_id(16))
        .bind(user_id)
        .bind(now.0)
        .bind(sealed_secret)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn webhook_secrets(&self, user_id: &str, now: Timestamp) -> StoreResult<Vec<String>> {
        sqlx::query_scalar(
            "SELECT sealed_secret FROM webhook_secrets WHERE user_id = $1 \
             AND (valid_until IS NULL OR valid_until > $2) ORDER BY created_at DESC, id",
        )
        .bind(user_id)
        .bind(now.0)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_rows_are_few_texts_and_never_fewer_rows() {
        let mut texts = HashSet::new();
        for n in 1..=rows_per_statement(Dialect::Postgres) {
            let rows = padded_rows(Dialect::Postgres, n);
            assert!(rows >= n && 2 * rows < 3 * n, "{n} rows written as {rows}");
            texts.insert(rows);
            assert_eq!(padded_rows(Dialect::Sqlite, n), n, "SQLite is not padded");
        }
        assert_eq!(texts.len(), 16, "{texts:?}");
    }
}
