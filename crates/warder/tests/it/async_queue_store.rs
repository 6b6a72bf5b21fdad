//! The job queue of the store, driven directly: the lease token fences off a
//! worker whose lease was rescued and handed to another, while the job is
//! running again; a batch of submits is stored in one group commit with the
//! same idempotency answers as one-by-one submits; a batch of outcomes is
//! fenced item by item; queue depth is counted per model and status. The
//! in-process worker is off, so only the test claims.

use crate::helpers::*;
use crate::scenarios;
use serde_json::json;
use std::sync::Arc;
use warder_core::{
    Enqueued, Finish, JobStatus, Lease, NewJob, Outcome, RetryConfig, Store, StoreError,
    SubmitLease, Timestamp,
};

scenarios!(
    a_stale_lease_cannot_finish_a_job_running_under_a_new_one,
    a_batch_of_submits_is_one_group_commit_with_idempotency,
    a_batch_of_outcomes_is_fenced_item_by_item,
    batches_of_any_size_write_exactly_their_own_jobs,
    queue_depth_is_counted_per_model_and_status,
);

pub(crate) async fn queue_app(b: Backend) -> (TestApp, Registered, Caller) {
    let app = spawn_app_with(b, |c| c.worker_enabled = false).await;
    let model = app
        .register("queued", "http://127.0.0.1:9/", json!({}))
        .await;
    let caller = app.caller("owner", &["queued"], None).await;
    (app, model, caller)
}

pub(crate) fn job(model: &Registered, caller: &Caller, id: &str, key: Option<&str>) -> NewJob {
    let now = Timestamp::now();
    NewJob {
        id: id.to_owned(),
        user_id: caller.user_id.clone(),
        key_id: caller.key_id.clone(),
        model_id: model.model_id.clone(),
        version_id: model.version_id.clone(),
        webhook_url: None,
        priority: 1,
        input: "{}".to_owned(),
        retry: RetryConfig::default(),
        idempotency_key: key.map(str::to_owned),
        created_at: now,
        queue_deadline: Timestamp(now.0 + 600_000),
        lease: None,
    }
}

/// A success for each lease, with the output `output` gives it.
pub(crate) fn successes(leases: &[Lease], output: impl Fn(&Lease) -> String) -> Vec<Finish> {
    leases
        .iter()
        .map(|l| Finish {
            id: l.job.id.clone(),
            token: l.token,
            outcome: Outcome::Succeeded(output(l)),
            errors: Vec::new(),
            capped: false,
        })
        .collect()
}

/// At `at`, rescues the one job whose lease has run out and lets `owner`
/// claim what is ready: that job.
pub(crate) async fn rescue_then_claim(
    store: &Arc<dyn Store>,
    owner: &str,
    at: Timestamp,
) -> Vec<Lease> {
    assert_eq!(
        store
            .rescue_expired_leases(at, Timestamp(at.0 + 60_000))
            .await
            .expect("rescue"),
        1
    );
    let claimed = store
        .claim_jobs(owner, at, Timestamp(at.0 + 60_000), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    claimed
}

/// `job`, to be stored leased to `owner` until `until`.
pub(crate) fn leased_to(mut job: NewJob, owner: &str, until: Timestamp) -> NewJob {
    job.lease = Some(SubmitLease {
        owner: owner.to_owned(),
        until,
    });
    job
}

/// Stores `jobs` in one batch, each a new job.
pub(crate) async fn store_new(store: &Arc<dyn Store>, jobs: &[NewJob]) {
    for r in store.enqueue_jobs(jobs).await.expect("enqueue") {
        r.expect("created");
    }
}

pub(crate) fn request_id(n: u8) -> String {
    format!("{:032x}", 0xabc0_0000_u64 + u64::from(n))
}

async fn a_stale_lease_cannot_finish_a_job_running_under_a_new_one(b: Backend) {
    let (app, model, caller) = queue_app(b).await;
    let store = &app.state.store;
    let id = request_id(1);
    assert_eq!(
        store
            .enqueue_job(job(&model, &caller, &id, None))
            .await
            .expect("enqueue"),
        Enqueued::Created(id.clone())
    );

    // Worker A claims with a lease that runs out; the job is rescued and
    // claimed again by worker B, so it is IN_PROGRESS under B's lease.
    let now = Timestamp::now();
    let first = store
        .claim_jobs("worker-a", now, Timestamp(now.0 + 50), 10)
        .await
        .expect("claim a");
    assert_eq!(first.len(), 1);
    let later = Timestamp(now.0 + 1_000);
    let second = rescue_then_claim(store, "worker-b", later).await;
    assert_ne!(first[0].token, second[0].token, "a new lease, a new token");

    let finish = |token: i64, output: &str| Finish {
        id: id.clone(),
        token,
        outcome: Outcome::Succeeded(output.to_owned()),
        errors: Vec::new(),
        capped: false,
    };
    // A's late result, while the job runs under B: refused, nothing changes.
    let running = store.get_job(&id).await.expect("get").expect("job");
    assert_eq!(running.status, JobStatus::InProgress);
    assert_eq!(
        store
            .finish_jobs(&[finish(first[0].token, "\"from a\"")], later, later)
            .await
            .expect("finish a"),
        vec![false]
    );
    assert_eq!(
        store.get_job(&id).await.expect("get").expect("job"),
        running
    );

    // B's result is recorded, once.
    assert_eq!(
        store
            .finish_jobs(&[finish(second[0].token, "\"from b\"")], later, later)
            .await
            .expect("finish b"),
        vec![true]
    );
    let done = store.get_job(&id).await.expect("get").expect("job");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.output.as_deref(), Some("\"from b\""));
    assert_eq!(done.attempts, 2);
    assert_eq!(
        store
            .finish_jobs(&[finish(second[0].token, "\"again\"")], later, later)
            .await
            .expect("finish b twice"),
        vec![false],
        "a finished job takes no second result"
    );
}

async fn a_batch_of_submits_is_one_group_commit_with_idempotency(b: Backend) {
    let (app, model, caller) = queue_app(b).await;
    let store = &app.state.store;
    let earlier = request_id(10);
    store
        .enqueue_job(job(&model, &caller, &earlier, Some("stored-before")))
        .await
        .expect("enqueue");

    let batch = vec![
        job(&model, &caller, &request_id(11), None),
        job(&model, &caller, &request_id(12), Some("in-batch")),
        job(&model, &caller, &request_id(13), Some("in-batch")),
        job(&model, &caller, &request_id(14), Some("stored-before")),
        // The same request id again: a conflict for that one job only.
        job(&model, &caller, &request_id(11), None),
    ];
    let results = store.enqueue_jobs(&batch).await.expect("batch");
    assert_eq!(results.len(), 5);
    assert_eq!(results[0], Ok(Enqueued::Created(request_id(11))));
    assert_eq!(results[1], Ok(Enqueued::Created(request_id(12))));
    assert_eq!(
        results[2],
        Ok(Enqueued::Existing(request_id(12))),
        "a key repeated inside the batch finds the batch's own job"
    );
    assert_eq!(results[3], Ok(Enqueued::Existing(earlier.clone())));
    assert!(
        matches!(results[4], Err(StoreError::Conflict(_))),
        "{:?}",
        results[4]
    );

    // Exactly the created jobs exist, all queued.
    for n in [10, 11, 12] {
        let j = store
            .get_job(&request_id(n))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(j.status, JobStatus::Queued);
    }
    for n in [13, 14] {
        assert!(store.get_job(&request_id(n)).await.expect("get").is_none());
    }
    let counts = store.queue_counts(&model.model_id).await.expect("counts");
    assert_eq!(counts.queued, 3);

    // An id stored before fails its batch whole: nothing of it is stored.
    let clash = vec![
        job(&model, &caller, &request_id(15), None),
        job(&model, &caller, &request_id(16), Some("fresh")),
        job(&model, &caller, &request_id(12), None),
    ];
    assert!(
        matches!(
            store.enqueue_jobs(&clash).await,
            Err(StoreError::Conflict(_))
        ),
        "a stored id is a conflict"
    );
    for n in [15, 16] {
        assert!(store.get_job(&request_id(n)).await.expect("get").is_none());
    }
    assert_eq!(
        store
            .queue_counts(&model.model_id)
            .await
            .expect("counts")
            .queued,
        3
    );
}

/// One `finish_jobs` call with many outcomes (successes are written
/// together): each is applied or refused on its own lease token, in order.
async fn a_batch_of_outcomes_is_fenced_item_by_item(b: Backend) {
    let (app, model, caller) = queue_app(b).await;
    let store = &app.state.store;
    let ids: Vec<String> = (20..60).map(request_id).collect();
    let jobs: Vec<NewJob> = ids
        .iter()
        .map(|id| job(&model, &caller, id, None))
        .collect();
    store.enqueue_jobs(&jobs).await.expect("enqueue");
    let now = Timestamp::now();
    let leases = store
        .claim_jobs("worker", now, Timestamp(now.0 + 60_000), 100)
        .await
        .expect("claim");
    assert_eq!(leases.len(), ids.len());
    let token = |id: &str| {
        leases
            .iter()
            .find(|l| l.job.id == id)
            .map(|l| l.token)
            .expect("leased")
    };
    // Job n: even → success with its token, n % 3 == 1 → success with a
    // stale token, the rest → failed; job 20 is listed twice.
    let mut items: Vec<Finish> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| Finish {
            id: id.clone(),
            token: if n % 2 == 1 && n % 3 == 1 {
                token(id) + 7
            } else {
                token(id)
            },
            outcome: if n % 2 == 0 || n % 3 == 1 {
                Outcome::Succeeded(format!("{{\"n\":{n}}}"))
            } else {
                Outcome::Failed
            },
            errors: Vec::new(),
            capped: false,
        })
        .collect();
    items.push(Finish {
        id: ids[0].clone(),
        token: token(&ids[0]),
        outcome: Outcome::Succeeded("\"again\"".into()),
        errors: Vec::new(),
        capped: false,
    });
    let applied = store
        .finish_jobs(&items, now, Timestamp(now.0 + 60_000))
        .await
        .expect("finish");
    assert_eq!(applied.len(), items.len());
    for (n, id) in ids.iter().enumerate() {
        let j = store.get_job(id).await.expect("get").expect("job");
        let stale = n % 2 == 1 && n % 3 == 1;
        assert_eq!(applied[n], !stale, "job {n}");
        if stale {
            assert_eq!(j.status, JobStatus::InProgress, "job {n} untouched");
            assert_eq!(j.output, None);
        } else if n % 2 == 0 {
            assert_eq!(j.status, JobStatus::Succeeded, "job {n}");
            assert_eq!(j.output.as_deref(), Some(format!("{{\"n\":{n}}}").as_str()));
            assert!(j.finished_at.is_some());
        } else {
            assert_eq!(j.status, JobStatus::Failed, "job {n}");
        }
    }
    assert!(
        !applied[ids.len()],
        "a second result for the same lease is refused"
    );
}

/// Batches of submits and of successes of many sizes (on PostgreSQL a
/// statement's rows are padded to the next of a few sizes with a repeated
/// row; 257 takes two statements): every job is stored once with its own
/// input and finished with its own output, and no other job appears.
async fn batches_of_any_size_write_exactly_their_own_jobs(b: Backend) {
    let (app, model, caller) = queue_app(b).await;
    let store = &app.state.store;
    let mut next = 0_u64;
    for size in [
        1_u64, 2, 3, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257,
    ] {
        let ids: Vec<String> = (next..next + size)
            .map(|n| format!("{:032x}", 0xbee0_0000_u64 + n))
            .collect();
        next += size;
        let jobs: Vec<NewJob> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| NewJob {
                input: format!("{{\"in\":{n}}}"),
                ..job(&model, &caller, id, Some(&format!("key-{id}")))
            })
            .collect();
        let results = store.enqueue_jobs(&jobs).await.expect("enqueue");
        let created: Vec<_> = ids
            .iter()
            .map(|id| Ok(Enqueued::Created(id.clone())))
            .collect();
        assert_eq!(results, created, "batch of {size}");

        let now = Timestamp::now();
        let leases = store
            .claim_jobs("worker", now, Timestamp(now.0 + 60_000), 1000)
            .await
            .expect("claim");
        assert_eq!(
            leases.len(),
            ids.len(),
            "batch of {size}: only its jobs are queued"
        );
        let items = successes(&leases, |l| format!("{{\"out\":\"{}\"}}", l.job.id));
        let applied = store
            .finish_jobs(&items, now, Timestamp(now.0 + 60_000))
            .await
            .expect("finish");
        assert!(applied.iter().all(|a| *a), "batch of {size}: {applied:?}");
        for (n, id) in ids.iter().enumerate() {
            let j = store.get_job(id).await.expect("get").expect("stored");
            assert_eq!(j.status, JobStatus::Succeeded, "batch of {size}, job {n}");
            assert_eq!(
                j.input,
                format!("{{\"in\":{n}}}"),
                "batch of {size}, job {n}"
            );
            assert_eq!(
                j.output.as_deref(),
                Some(format!("{{\"out\":\"{id}\"}}").as_str()),
                "batch of {size}, job {n}"
            );
        }
    }
    let counts = store.queue_counts(&model.model_id).await.expect("counts");
    assert_eq!((counts.queued, counts.in_progress), (0, 0));
}

/// Queue counts and the depth gauges' figures are per model and status: a
/// job of one model never counts for another, finished jobs count nowhere,
/// and a model with two versions counts both.
async fn queue_depth_is_counted_per_model_and_status(b: Backend) {
    let (app, a, caller) = queue_app(b).await;
    let store = &app.state.store;
    let other = app
        .register("other", "http://127.0.0.1:9/", json!({}))
        .await;
    let (_, second) = app
        .admin(
            reqwest::Method::POST,
            "/admin/models/queued/versions",
            Some(json!({"upstream_url": "http://127.0.0.1:9/"})),
        )
        .await;
    let a2 = Registered {
        model_id: a.model_id.clone(),
        name: a.name.clone(),
        version_id: second["id"].as_str().expect("version id").to_owned(),
    };
    let mut jobs = Vec::new();
    for n in 0..3 {
        jobs.push(job(&a, &caller, &request_id(40 + n), None));
    }
    jobs.push(job(&a2, &caller, &request_id(43), None));
    for n in 0..2 {
        jobs.push(job(&other, &caller, &request_id(50 + n), None));
    }
    store_new(store, &jobs).await;
    // Two running (the oldest, both of model `queued`), one of them finished.
    let now = Timestamp::now();
    let leases = store
        .claim_jobs("w", now, Timestamp(now.0 + 60_000), 2)
        .await
        .expect("claim");
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().all(|l| l.job.model_id == a.model_id));
    let done = store
        .finish_jobs(
            &[Finish {
                id: leases[0].job.id.clone(),
                token: leases[0].token,
                outcome: Outcome::Succeeded("{}".to_owned()),
                errors: Vec::new(),
                capped: false,
            }],
            now,
            Timestamp(now.0 + 60_000),
        )
        .await
        .expect("finish");
    assert_eq!(done, vec![true]);

    let counts = store.queue_counts(&a.model_id).await.expect("counts");
    assert_eq!((counts.queued, counts.in_progress), (2, 1));
    let counts = store.queue_counts(&other.model_id).await.expect("counts");
    assert_eq!((counts.queued, counts.in_progress), (2, 0));

    let mut depth = store.depth_by_model().await.expect("depth");
    depth.sort_by(|x, y| (&x.0, x.1.as_str()).cmp(&(&y.0, y.1.as_str())));
    let mut expected = vec![
        (a.model_id.clone(), JobStatus::InProgress, 1),
        (a.model_id.clone(), JobStatus::Queued, 2),
        (other.model_id.clone(), JobStatus::Queued, 2),
    ];
    expected.sort_by(|x, y| (&x.0, x.1.as_str()).cmp(&(&y.0, y.1.as_str())));
    assert_eq!(depth, expected);
}
