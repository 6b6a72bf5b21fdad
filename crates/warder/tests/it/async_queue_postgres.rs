//! The job queue's statements on PostgreSQL, driven through the store:
//! outcomes keep looking jobs up by id, and claims reading the ready index
//! in claim order, however the table has grown and whatever its statistics
//! say; a heartbeat passes over a job another transaction holds; other
//! processes' workers are woken once per batch, and only when there is
//! something to claim. Index scans and rows read are counted by the server.
//! The in-process worker is off, so only the test claims.

use crate::async_queue_store::{job, leased_to, queue_app, request_id, store_new, successes};
use crate::helpers::*;
use std::sync::Arc;
use warder_core::{Finish, Lease, NewJob, Outcome, Store, Timestamp};

/// On PostgreSQL outcomes look their jobs up by id however the job table
/// has grown: a prepared statement's generic plan, chosen while the table
/// was nearly empty, walked the index of running jobs instead (and was kept
/// as the table grew), for a batch of successes and for a single failure
/// alike. One connection runs every statement, so a prepared statement
/// would be reused; the index scans are counted by the server.
#[tokio::test]
async fn postgres_finishes_look_jobs_up_by_id_as_the_table_grows() {
    let Some((_app, model, caller, sql, store)) = pg_plan().await else {
        return;
    };
    // No analyze of the grown table: the statistics stay those of a small one.
    without_autovacuum(&sql).await;
    let (leases, now, until) = claimed(&store, &model, &caller, 100, 40).await;
    // A success and a failure, each a statement of its own.
    let finish = |pair: &[Lease]| {
        let mut done = successes(pair, |_| "1".to_owned());
        done[1].outcome = Outcome::Failed;
        let store = store.clone();
        async move {
            for item in done {
                assert_eq!(
                    store
                        .finish_jobs(std::slice::from_ref(&item), now, until)
                        .await
                        .expect("finish"),
                    vec![true]
                );
            }
        }
    };
    // Beyond the five runs after which PostgreSQL may keep a generic plan.
    for pair in leases[..14].chunks(2) {
        finish(pair).await;
    }
    // The table grows by many finished jobs.
    generated_jobs(&sql, &model, &caller, "grown-", "SUCCEEDED", 100_000).await;

    let before = index_scans(&sql).await;
    for pair in leases[14..].chunks(2) {
        finish(pair).await;
    }
    read_by_id_since(&sql, before, 26).await;
}

/// A large batch of successes looks its jobs up by id even when the index
/// of running jobs is full of entries of finished ones. With statistics
/// that say few jobs run (true, once analyzed), PostgreSQL had hashed the
/// batch against a bitmap scan of that whole index, which never marks the
/// entries it finds dead, so each batch read all of them again (3–4 ms a
/// batch in `bench/`).
#[tokio::test]
async fn postgres_a_large_batch_of_successes_reads_its_jobs_by_id() {
    let Some((_app, model, caller, sql, store)) = pg_plan().await else {
        return;
    };
    without_autovacuum(&sql).await;
    let (leases, now, until) = claimed(&store, &model, &caller, 150, 64).await;
    // Many jobs ran and finished: their entries stay in the running index.
    generated_jobs(&sql, &model, &caller, "ran-", "IN_PROGRESS", 100_000).await;
    sqlx::query(
        "UPDATE async_jobs SET status = 'SUCCEEDED', lease_owner = NULL WHERE id LIKE 'ran-%'",
    )
    .execute(sql.pool())
    .await
    .expect("jobs that finished");
    sqlx::query("ANALYZE async_jobs")
        .execute(sql.pool())
        .await
        .expect("analyze");

    let before = index_scans(&sql).await;
    let done = store
        .finish_jobs(&successes(&leases, |_| "1".to_owned()), now, until)
        .await
        .expect("finish");
    assert_eq!(done, vec![true; 64]);
    read_by_id_since(&sql, before, 1).await;
}

/// A heartbeat on PostgreSQL passes over a job another transaction holds
/// (one recording its outcome) instead of waiting for it, and renews the
/// others. Waiting, it could deadlock with a batch of outcomes that holds
/// that job and wants one the heartbeat holds: PostgreSQL broke the
/// deadlock only after a second by failing the batch.
#[tokio::test]
async fn postgres_a_heartbeat_passes_over_a_job_being_finished() {
    let Some((app, model, caller, sql, store)) = pg_plan().await else {
        return;
    };
    let (leases, _, until) = claimed(&store, &model, &caller, 60, 2).await;
    let (held, free) = (&leases[0].job.id, &leases[1].job.id);
    let url = app.state.config.effective_database_url();
    let mut other = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("a second connection");
    sqlx::query("BEGIN")
        .execute(&mut other)
        .await
        .expect("begin");
    sqlx::query("SELECT id FROM async_jobs WHERE id = $1 FOR UPDATE")
        .bind(held)
        .execute(&mut other)
        .await
        .expect("hold one job");

    let renewed = Timestamp(until.0 + 60_000);
    let ids = [held.clone(), free.clone()];
    let cancels = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.heartbeat("w-one", &ids, renewed),
    )
    .await
    .expect("the heartbeat does not wait for the held job")
    .expect("heartbeat");
    assert!(cancels.is_empty());
    sqlx::query("ROLLBACK")
        .execute(&mut other)
        .await
        .expect("rollback");
    let lease_end = |id: &str| {
        sqlx::query_scalar::<_, i64>("SELECT lease_expires_at FROM async_jobs WHERE id = $1")
            .bind(id.to_owned())
            .fetch_one(sql.pool())
    };
    assert_eq!(lease_end(free).await.expect("free job"), renewed.0);
    assert_eq!(lease_end(held).await.expect("held job"), until.0);
}

/// `n` new jobs (request ids from `first` on), stored and claimed by
/// `w-one`; with the claim's time and lease end.
async fn claimed(
    store: &Arc<dyn Store>,
    model: &Registered,
    caller: &Caller,
    first: u8,
    n: u8,
) -> (Vec<Lease>, Timestamp, Timestamp) {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| job(model, caller, &request_id(first + i), None))
        .collect();
    store_new(store, &jobs).await;
    let now = Timestamp::now();
    let until = Timestamp(now.0 + 60_000);
    let leases = store
        .claim_jobs("w-one", now, until, u32::from(n))
        .await
        .expect("claim");
    assert_eq!(leases.len(), usize::from(n));
    (leases, now, until)
}

/// No statistics for the job table but those a test takes: autovacuum,
/// which would analyze it meanwhile, is off for it.
async fn without_autovacuum(sql: &warder_store::SqlStore) {
    sqlx::query("ALTER TABLE async_jobs SET (autovacuum_enabled = off)")
        .execute(sql.pool())
        .await
        .expect("autovacuum off");
}

/// Stores `count` jobs with ids `{prefix}1`… and `status`, straight into
/// the table in one statement: created and runnable at `i` ms, never past
/// their queue deadline, so ready to claim when QUEUED.
async fn generated_jobs(
    sql: &warder_store::SqlStore,
    model: &Registered,
    caller: &Caller,
    prefix: &str,
    status: &str,
    count: i64,
) {
    sqlx::query(
        "INSERT INTO async_jobs (id, user_id, key_id, model_id, version_id, status, \
         webhook_status, priority, input, errors, attempts, max_attempts, initial_delay_ms, \
         max_delay_ms, created_at, queue_deadline, run_after, lease_token, cancel_requested, \
         webhook_attempts) \
         SELECT $1 || i, $2, $3, $4, $5, $6, 'NO_WEBHOOK_PROVIDED', 1, '{}', '[]', \
         0, 1, 0, 0, i, 9000000000000000, i, 0, 0, 0 FROM generate_series(1, $7) AS i",
    )
    .bind(prefix)
    .bind(&caller.user_id)
    .bind(&caller.key_id)
    .bind(&model.model_id)
    .bind(&model.version_id)
    .bind(status)
    .bind(count)
    .execute(sql.pool())
    .await
    .expect("generated jobs");
}

/// What the PostgreSQL plan tests work on, on a fresh database: a queue app
/// (no worker), its model and caller, and its store over one connection, as
/// itself and as a `Store`. `None` when PostgreSQL is skipped.
async fn pg_plan() -> Option<(
    TestApp,
    Registered,
    Caller,
    Arc<warder_store::SqlStore>,
    Arc<dyn Store>,
)> {
    let (app, model, caller) = queue_app(Backend::postgres()?).await;
    let sql = one_connection(&app).await;
    let store: Arc<dyn Store> = sql.clone();
    Some((app, model, caller, sql, store))
}

/// The app's database through a store of one connection: every statement
/// runs on it, so a prepared statement is reused and the server's counts
/// for that connection can be flushed from it.
async fn one_connection(app: &TestApp) -> Arc<warder_store::SqlStore> {
    Arc::new(
        warder_store::SqlStore::connect(warder_store::StoreOptions {
            url: app.state.config.effective_database_url(),
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(5),
        })
        .await
        .expect("connect"),
    )
}

/// Asserts that since `before` (from [`index_scans`]) the job table's
/// primary key was scanned at least `lookups` times and the index of
/// running jobs not at all.
async fn read_by_id_since(sql: &warder_store::SqlStore, before: (i64, i64), lookups: i64) {
    let after = index_scans(sql).await;
    assert_eq!(after.1, before.1, "no scan of the running-jobs index");
    assert!(
        after.0 >= before.0 + lookups,
        "{before:?} → {after:?}: at least {lookups} look-ups by id"
    );
}

/// Scans so far of the job table's primary key and of its index of running
/// jobs, as the server counts them, after the store's one connection has
/// reported its own.
async fn index_scans(sql: &warder_store::SqlStore) -> (i64, i64) {
    sqlx::query("SELECT 1 FROM (SELECT pg_stat_force_next_flush()) AS f")
        .execute(sql.pool())
        .await
        .expect("flush");
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(idx_scan) FILTER (WHERE indexrelname = 'async_jobs_pkey'), 0) AS BIGINT) AS pkey, \
         CAST(COALESCE(SUM(idx_scan) FILTER (WHERE indexrelname = 'async_jobs_running'), 0) AS BIGINT) AS running \
         FROM pg_stat_user_indexes WHERE relname = 'async_jobs'",
    )
    .fetch_one(sql.pool())
    .await
    .expect("index scans");
    use sqlx::Row;
    (row.get("pkey"), row.get("running"))
}

/// On PostgreSQL a claim reads its first ready jobs off the ready index in
/// claim order, whatever the table's statistics say: with none (a table
/// that filled before it was analyzed, or autovacuum off), the planner
/// sorted every queued job for each claim, and the probe for capped
/// versions with work read every queued job's entry too, so a backlog of
/// 50 000 jobs drained at about 1 000 jobs/s. Checked as the server counts
/// rows read, through indexes and sequential scans.
#[tokio::test]
async fn postgres_claims_read_a_deep_backlog_in_order() {
    let Some((_app, model, caller, sql, store)) = pg_plan().await else {
        return;
    };
    // No statistics, whatever the server's autovacuum does meanwhile.
    without_autovacuum(&sql).await;
    const BACKLOG: i64 = 20_000;
    generated_jobs(&sql, &model, &caller, "queued-", "QUEUED", BACKLOG).await;

    let now = Timestamp::now();
    let until = Timestamp(now.0 + 60_000);
    let before = rows_read(&sql).await;
    let leases = store
        .claim_jobs("w-one", now, until, 10)
        .await
        .expect("claim");
    let read = rows_read(&sql).await - before;
    assert!(
        read < 1_000,
        "{read} rows read to claim 10 of {BACKLOG} queued jobs"
    );
    // In claim order: the oldest first.
    let mut numbers: Vec<u32> = leases
        .iter()
        .map(|l| l.job.id["queued-".len()..].parse().expect("a backlog job"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=10).collect::<Vec<u32>>());
}

/// Rows of the job table read so far, through its indexes and by
/// sequential scans, as the server counts them, after the store's one
/// connection has reported its own.
async fn rows_read(sql: &warder_store::SqlStore) -> i64 {
    sqlx::query("SELECT 1 FROM (SELECT pg_stat_force_next_flush()) AS f")
        .execute(sql.pool())
        .await
        .expect("flush");
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(idx_tup_read), 0) + \
         (SELECT COALESCE(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = 'async_jobs') \
         AS BIGINT) FROM pg_stat_user_indexes WHERE relname = 'async_jobs'",
    )
    .fetch_one(sql.pool())
    .await
    .expect("rows read")
}

/// On PostgreSQL the queue wakes other processes' workers once per batch,
/// and only when there is something to claim: a stored batch that queued a
/// job (alone or beside jobs leased at submit), and a recorded batch of
/// outcomes that freed a capped version's slot, each send one `NOTIFY`. A
/// batch of jobs leased at submit, a claim, and outcomes that free no
/// capped slot send none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wakes_workers_once_per_batch_and_not_on_claims() {
    let Some(b) = Backend::postgres() else {
        return;
    };
    let (app, model, caller) = queue_app(b).await;
    let store = &app.state.store;
    let url = app.state.config.effective_database_url();
    let mut listener = sqlx::postgres::PgListener::connect(&url)
        .await
        .expect("listen");
    listener.listen("warder_async").await.expect("listen");
    let quiet = std::time::Duration::from_millis(300);
    let mut next = async || {
        tokio::time::timeout(quiet, listener.recv())
            .await
            .ok()
            .map(|n| n.expect("notification").payload().to_owned())
    };

    let jobs: Vec<NewJob> = (0..3)
        .map(|n| job(&model, &caller, &request_id(60 + n), None))
        .collect();
    store_new(store, &jobs).await;
    assert_eq!(
        next().await.as_deref(),
        Some("work"),
        "a stored batch wakes"
    );
    assert_eq!(next().await, None, "once per batch");

    let until = Timestamp(Timestamp::now().0 + 60_000);
    let leased: Vec<NewJob> = (0..2)
        .map(|n| {
            leased_to(
                job(&model, &caller, &request_id(70 + n), None),
                "w-submit",
                until,
            )
        })
        .collect();
    store_new(store, &leased).await;
    assert_eq!(next().await, None, "jobs leased at submit wake nobody");

    let mixed = vec![
        leased_to(
            job(&model, &caller, &request_id(80), None),
            "w-submit",
            until,
        ),
        job(&model, &caller, &request_id(81), None),
    ];
    store_new(store, &mixed).await;
    assert_eq!(
        next().await.as_deref(),
        Some("work"),
        "a batch that also queued a job wakes"
    );
    assert_eq!(next().await, None, "once per batch");

    let now = Timestamp::now();
    let leases = store
        .claim_jobs("w", now, Timestamp(now.0 + 60_000), 3)
        .await
        .expect("claim");
    assert_eq!(leases.len(), 3);
    assert_eq!(next().await, None, "a claim wakes nobody");

    let mut items = successes(&leases, |_| "{}".to_owned());
    let capped = items.split_off(1);
    let done = store
        .finish_jobs(&items, now, Timestamp(now.0 + 60_000))
        .await
        .expect("finish");
    assert_eq!(done, vec![true]);
    assert_eq!(next().await, None, "no capped slot freed, nobody woken");
    let capped: Vec<Finish> = capped
        .into_iter()
        .map(|f| Finish { capped: true, ..f })
        .collect();
    let done = store
        .finish_jobs(&capped, now, Timestamp(now.0 + 60_000))
        .await
        .expect("finish");
    assert_eq!(done, vec![true; 2]);
    assert_eq!(
        next().await.as_deref(),
        Some("work"),
        "freed capped slots wake"
    );
    assert_eq!(next().await, None, "once per batch");
}
