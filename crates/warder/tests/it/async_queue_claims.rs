//! Claims and submits leased at once, driven through the store: a job
//! leased at submit is stored as a claim would leave it, and a claim takes
//! ready jobs in priority order, passing over those of a full capped
//! version. The in-process worker is off, so only the test claims.

use crate::async_queue_store::{
    job, leased_to, queue_app, request_id, rescue_then_claim, store_new, successes,
};
use crate::helpers::*;
use crate::scenarios;
use serde_json::json;
use warder_core::{Enqueued, JobStatus, Lease, NewJob, Timestamp, FIRST_LEASE_TOKEN};

scenarios!(
    a_job_leased_at_submit_is_stored_as_a_claim_would_leave_it,
    a_claim_passes_over_a_full_capped_version_in_priority_order,
);

async fn a_job_leased_at_submit_is_stored_as_a_claim_would_leave_it(b: Backend) {
    let (app, model, caller) = queue_app(b).await;
    let store = &app.state.store;
    let now = Timestamp::now();
    let a = leased_to(
        job(&model, &caller, &request_id(1), None),
        "w-submit",
        Timestamp(now.0 + 60_000),
    );
    let queued = job(&model, &caller, &request_id(2), Some("k"));
    // A replay of `queued`'s key, leased: it answers the first job and
    // leaves it queued and unleased.
    let replay = leased_to(
        job(&model, &caller, &request_id(3), Some("k")),
        "w-submit",
        Timestamp(now.0 + 60_000),
    );
    // A job leased to the same worker that it never runs (its batch failed
    // as far as the worker could tell): its lease runs out and it is rescued.
    let short = leased_to(
        job(&model, &caller, &request_id(4), None),
        "w-submit",
        Timestamp(now.0 + 50),
    );
    let results = store
        .enqueue_jobs(&[a.clone(), queued.clone(), replay, short.clone()])
        .await
        .expect("enqueue");
    let answers: Vec<Enqueued> = results.into_iter().map(|r| r.expect("stored")).collect();
    assert_eq!(
        answers,
        vec![
            Enqueued::Created(a.id.clone()),
            Enqueued::Created(queued.id.clone()),
            Enqueued::Existing(queued.id.clone()),
            Enqueued::Created(short.id.clone()),
        ]
    );

    // Stored exactly as `leased()` says, which is what the worker runs.
    let lease = a.leased().expect("a lease");
    assert_eq!(lease.token, FIRST_LEASE_TOKEN);
    let stored = store.get_job(&a.id).await.expect("get").expect("job");
    assert_eq!(stored, lease.job);
    assert_eq!(stored.status, JobStatus::InProgress);
    assert_eq!(stored.attempts, 1);
    let first = store.get_job(&queued.id).await.expect("get").expect("job");
    assert_eq!(first.status, JobStatus::Queued);
    assert_eq!(first.lease_owner, None);
    assert_eq!(first.attempts, 0);

    // Another worker's claim takes only the queued job. A job is ready from
    // its creation, which `job()` stamps after `now`: the claim looks at a
    // later clock.
    let claim_at = Timestamp::now();
    let claimed = store
        .claim_jobs("w-other", claim_at, Timestamp(claim_at.0 + 60_000), 10)
        .await
        .expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|l| l.job.id.as_str()).collect();
    assert_eq!(ids, vec![queued.id.as_str()]);

    // The submit lease's owner renews the lease of the job it runs (and
    // only that one) with its heartbeat, and finishes it with the first
    // token.
    let renewed = Timestamp(now.0 + 120_000);
    store
        .heartbeat("w-submit", std::slice::from_ref(&a.id), renewed)
        .await
        .expect("heartbeat");
    let stored = store.get_job(&a.id).await.expect("get").expect("job");
    assert_eq!(stored.lease_expires_at, Some(renewed));
    let unlisted = store.get_job(&short.id).await.expect("get").expect("job");
    assert_eq!(unlisted.lease_expires_at, Some(Timestamp(now.0 + 50)));
    let done = store
        .finish_jobs(
            &successes(std::slice::from_ref(&lease), |_| "\"ok\"".to_owned()),
            now,
            Timestamp(now.0 + 60_000),
        )
        .await
        .expect("finish");
    assert_eq!(done, vec![true]);
    let stored = store.get_job(&a.id).await.expect("get").expect("job");
    assert_eq!(stored.status, JobStatus::Succeeded);
    assert_eq!(stored.output.as_deref(), Some("\"ok\""));

    // The unrenewed lease runs out and the job is rescued like a claimed
    // one; the next claim fences the first lease off.
    let later = Timestamp(now.0 + 1_000);
    let again = rescue_then_claim(store, "w-other", later).await;
    assert_eq!(again[0].job.id, short.id);
    assert_eq!(again[0].token, FIRST_LEASE_TOKEN + 1);
    assert_eq!(again[0].job.attempts, 2);
    let stale = short.leased().expect("a lease");
    assert_eq!(
        store
            .finish_jobs(&successes(&[stale], |_| "1".to_owned()), later, later)
            .await
            .expect("finish stale"),
        vec![false]
    );
}

/// A claim that returns fewer jobs than asked tells the worker the queue is
/// drained (and that it may take submits directly): so the queued jobs of a
/// capped version with no free slot must not take the places of ready jobs
/// behind them. Each claim takes the ready jobs in priority-then-age order,
/// each capped version's only up to its free slots: its cap less its
/// running jobs.
async fn a_claim_passes_over_a_full_capped_version_in_priority_order(b: Backend) {
    let (app, uncapped, _) = queue_app(b).await;
    let two = app
        .register("two", "http://127.0.0.1:9/", json!({"max_concurrency": 2}))
        .await;
    let one = app
        .register("one", "http://127.0.0.1:9/", json!({"max_concurrency": 1}))
        .await;
    let caller = app.caller("all", &["queued", "two", "one"], None).await;
    let store = &app.state.store;
    let now = Timestamp::now();
    let until = Timestamp(now.0 + 60_000);
    let aged = |model: &Registered, n: u8, age_ms: i64, priority: u8| {
        let mut j = job(model, &caller, &request_id(n), None);
        j.created_at = Timestamp(now.0 - age_ms);
        j.priority = priority;
        j
    };
    // Oldest first: the capped versions' jobs, then the uncapped ones, and
    // the youngest of all with the first priority. `two` already runs one.
    let running = leased_to(aged(&two, 1, 9_000, 1), "w-other", until);
    let twos: Vec<NewJob> = (2..=5)
        .map(|n| aged(&two, n, 8_000 - i64::from(n), 1))
        .collect();
    let ones: Vec<NewJob> = (6..=7)
        .map(|n| aged(&one, n, 7_000 - i64::from(n), 1))
        .collect();
    let later: Vec<NewJob> = (8..=10)
        .map(|n| aged(&uncapped, n, 5_000 - i64::from(n), 1))
        .collect();
    let urgent = aged(&uncapped, 11, 1_000, 0);
    store_new(
        store,
        &[
            vec![running],
            twos.clone(),
            ones.clone(),
            later.clone(),
            vec![urgent.clone()],
        ]
        .concat(),
    )
    .await;
    let claim = |limit: u32| async move {
        let mut leases = store
            .claim_jobs("w-one", now, until, limit)
            .await
            .expect("claim");
        leases.sort_by_key(|l| (l.job.priority, l.job.created_at));
        leases
    };
    let ids = |leases: &[Lease]| leases.iter().map(|l| l.job.id.clone()).collect::<Vec<_>>();
    let of = |jobs: &[&NewJob]| jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();

    // The first priority, then by age: one of `two` (its one free slot),
    // one of `one`, and the oldest uncapped job takes the fourth place.
    let first = claim(4).await;
    assert_eq!(ids(&first), of(&[&urgent, &twos[0], &ones[0], &later[0]]));
    // Both capped versions are full: the rest of the uncapped jobs alone.
    assert_eq!(ids(&claim(4).await), of(&[&later[1], &later[2]]));
    assert!(claim(4).await.is_empty());

    // A slot of `two` freed, its next job is claimed.
    let mut done = successes(&first[1..2], |_| "1".to_owned());
    done[0].capped = true;
    assert_eq!(
        store.finish_jobs(&done, now, until).await.expect("finish"),
        vec![true]
    );
    assert_eq!(ids(&claim(4).await), of(&[&twos[1]]));
}
