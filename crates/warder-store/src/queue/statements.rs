//! The SQL texts of the job queue: constant clauses, and the statements
//! whose text depends on a row count or on the dialect, made once per shape.
//!
//! Nothing here runs a statement.

use crate::sql::Dialect;
use std::borrow::Cow;
use std::fmt::Write;
use std::sync::OnceLock;

/// Columns of `async_jobs` in the order `job_row` reads them.
pub(super) const JOB_COLUMNS: &str =
    "id, user_id, key_id, model_id, version_id, status, webhook_status, \
     webhook_url, priority, input, output, errors, attempts, max_attempts, initial_delay_ms, \
     max_delay_ms, idempotency_key, created_at, queue_deadline, run_after, started_at, \
     finished_at, lease_owner, lease_token, lease_expires_at, cancel_requested, expires_at, \
     webhook_attempts, webhook_next_at";

/// The SET clause of a claim; `$1` owner, `$2` lease end, `$3` now.
pub(super) const CLAIM_SET: &str =
    "status = 'IN_PROGRESS', lease_owner = $1, lease_token = lease_token + 1, \
     lease_expires_at = $2, started_at = COALESCE(started_at, $3), attempts = attempts + 1";

/// Ready: queued, past its backoff, and (before a first attempt) within its
/// deadline, on an active version. `$3` is now.
pub(super) const READY: &str = "j.status = 'QUEUED' AND j.run_after <= $3 \
     AND (j.attempts > 0 OR j.queue_deadline > $3) AND v.state = 'active'";

/// Queued and running jobs per version, with the version's model: each
/// half reads one per-version partial index (`async_jobs_queued_version`,
/// `async_jobs_running`) instead of an index over every job ever stored.
pub(super) const DEPTH: &str = "SELECT v.model_id, j.status, COUNT(*) AS n \
     FROM model_versions v JOIN async_jobs j ON j.version_id = v.id AND j.status = 'QUEUED' \
     GROUP BY v.model_id, j.status \
     UNION ALL SELECT v.model_id, j.status, COUNT(*) AS n \
     FROM model_versions v JOIN async_jobs j ON j.version_id = v.id AND j.status = 'IN_PROGRESS' \
     GROUP BY v.model_id, j.status";

/// Rows per multi-row statement. SQLite looks a `$N` parameter's name up by
/// a linear scan, which sqlx does for every parameter, so binding grows with
/// the square of the rows: its statements stay short. On PostgreSQL each
/// statement is a round trip: 256 rows (at most 5 376 values, well under
/// its limit).
pub(super) fn rows_per_statement(dialect: Dialect) -> usize {
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
pub(super) fn padded_rows(dialect: Dialect, n: usize) -> usize {
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
pub(super) struct TextsByRows([OnceLock<String>; MAX_ROWS + 1]);

/// The most rows a multi-row statement carries (see [`rows_per_statement`]).
pub(super) const MAX_ROWS: usize = 256;

impl TextsByRows {
    pub(super) const fn new() -> TextsByRows {
        TextsByRows([const { OnceLock::new() }; MAX_ROWS + 1])
    }

    pub(super) fn get(&self, rows: usize, make: fn(usize) -> String) -> Cow<'_, str> {
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
pub(super) fn insert_sql(rows: usize) -> String {
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
pub(super) fn insert_and_wake_sql(rows: usize) -> String {
    format!(
        "WITH ins AS ({}) SELECT ins.id FROM ins \
         CROSS JOIN (SELECT pg_notify('warder_async', 'work')) AS n",
        insert_sql(rows)
    )
}

/// The columns a submit writes, in the order of [`push_insert_rows`].
pub(super) const INSERT_COLUMNS: &str =
    "id, user_id, key_id, model_id, version_id, status, webhook_status, \
     webhook_url, priority, input, output, errors, attempts, max_attempts, initial_delay_ms, \
     max_delay_ms, idempotency_key, created_at, queue_deadline, run_after, started_at, \
     lease_owner, lease_token, lease_expires_at, cancel_requested, webhook_attempts";

/// `rows` rows of [`INSERT_COLUMNS`], 21 parameters each.
pub(super) fn push_insert_rows(sql: &mut String, rows: usize) {
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
pub(super) fn finish_succeeded_sql(rows: usize) -> String {
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

/// The bookkeeping every path that finishes a job shares: `$now` is
/// finished_at, `$retain` the retention deadline.
pub(super) fn finished_set(now: usize, retain: usize) -> String {
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
pub(super) fn claim_sql(dialect: Dialect, capped: usize) -> String {
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
pub(super) const CLAIM_IN_ORDER: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true)";

/// Takes the advisory locks of `versions` ($1, $2, …) in one statement, in
/// the order of their lock keys and each key once: two claimers whose
/// versions' keys collide cannot then take them in opposite orders.
pub(super) fn lock_versions_sql(versions: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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
