//! Submits handed to the worker of the same process: while it has a free
//! slot and left nothing ready in the queue at its last claim, a submit is
//! stored already leased to it and started without a claim. A worker
//! without free slots, or with a backlog, and any job of a capped version,
//! go through the queue as before.

use crate::async_support::*;
use crate::counting_store::CountingStore;
use crate::helpers::*;
use crate::scenarios;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

scenarios!(
    an_idle_worker_runs_submits_without_claiming_them,
    a_full_worker_leaves_the_rest_to_the_queue_in_order,
    a_capped_version_always_goes_through_a_claim,
    a_handed_over_job_is_canceled_like_a_claimed_one,
);

/// A gateway whose store counts its calls, with a poll timer far beyond the
/// test: every claim is one the code asked for.
async fn counted_app(b: Backend, concurrency: u32) -> (TestApp, Arc<CountingStore>) {
    let counted = std::sync::Mutex::new(None);
    let app = spawn_app_over(
        b,
        |c| {
            fast_queue(c);
            c.async_queue.poll_ms = 600_000;
            c.async_queue.worker_concurrency = concurrency;
        },
        |inner| {
            let store = CountingStore::new(inner);
            *counted.lock().expect("lock") = Some(store.clone());
            store
        },
    )
    .await;
    let store = counted.lock().expect("lock").take().expect("store wrapped");
    // The worker's first claim, at its start, finds the queue empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.count_of("claim_jobs") == 0 {
        assert!(Instant::now() < deadline, "the worker never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (app, store)
}

async fn finished(app: &TestApp, key: &str, id: &str) -> Value {
    wait_until(app, key, id, Duration::from_secs(20), |v| {
        v["status"] != "QUEUED" && v["status"] != "IN_PROGRESS"
    })
    .await
}

async fn an_idle_worker_runs_submits_without_claiming_them(b: Backend) {
    let (app, store) = counted_app(b, 4).await;
    let model = gate_model().await;
    app.register("echo", &model.url("/slow/0"), json!({})).await;
    let c = app.caller("c", &["echo"], None).await;
    let claims = store.count_of("claim_jobs");
    for i in 0..5 {
        let id = submit_ok(&app, &c.key, "echo", json!({"model_input": {"i": i}})).await;
        let v = finished(&app, &c.key, &id).await;
        assert_eq!(v["status"], "SUCCEEDED", "{v}");
        assert_eq!(v["attempts"], 1, "{v}");
        assert_eq!(v["output"], json!({"echo": {"i": i}}), "{v}");
        assert_eq!(
            v["started_at"], v["created_at"],
            "started as it was stored: {v}"
        );
    }
    assert_eq!(
        store.count_of("claim_jobs"),
        claims,
        "no submit needed a claim: each was stored leased and run"
    );
    assert_eq!(model.log.bodies().len(), 5);
}

async fn a_full_worker_leaves_the_rest_to_the_queue_in_order(b: Backend) {
    // One slot: the first submit takes it; the next ones find none and are
    // queued, then claimed in priority order once it is free.
    let (app, store) = counted_app(b, 1).await;
    let model = gate_model().await;
    app.register("gated", &model.url("/gate"), json!({})).await;
    let c = app.caller("c", &["gated"], None).await;
    let claims = store.count_of("claim_jobs");
    let first = submit_ok(
        &app,
        &c.key,
        "gated",
        json!({"model_input": {"tag": "first"}, "priority": 2}),
    )
    .await;
    model.wait_calls(1, Duration::from_secs(10)).await;
    assert_eq!(
        store.count_of("claim_jobs"),
        claims,
        "the first ran without a claim"
    );
    let mut rest = Vec::new();
    for (tag, priority) in [("low", 2), ("high", 0)] {
        rest.push(
            submit_ok(
                &app,
                &c.key,
                "gated",
                json!({"model_input": {"tag": tag}, "priority": priority}),
            )
            .await,
        );
        let v = status_of(&app, &c.key, rest.last().expect("id")).await;
        assert_eq!(v["status"], "QUEUED", "no slot was free: {v}");
    }
    model.open();
    for id in std::iter::once(&first).chain(&rest) {
        assert_eq!(finished(&app, &c.key, id).await["status"], "SUCCEEDED");
    }
    let order: Vec<Value> = model
        .log
        .bodies()
        .iter()
        .map(|b| b["tag"].clone())
        .collect();
    assert_eq!(order, vec![json!("first"), json!("high"), json!("low")]);
    assert!(
        store.count_of("claim_jobs") > claims,
        "the queued ones were claimed"
    );
    assert_eq!(model.log.peak.load(std::sync::atomic::Ordering::SeqCst), 1);
}

async fn a_capped_version_always_goes_through_a_claim(b: Backend) {
    // Only a claim counts a capped version's running jobs across workers,
    // so its submits are queued even when this worker is idle. The model
    // holds each call, so no finished job wakes a claim before the check.
    let (app, store) = counted_app(b, 4).await;
    let model = gate_model().await;
    app.register("capped", &model.url("/gate"), json!({"max_concurrency": 1}))
        .await;
    let c = app.caller("c", &["capped"], None).await;
    let claims = store.count_of("claim_jobs");
    let id = submit_ok(&app, &c.key, "capped", json!({"model_input": {}})).await;
    model.wait_calls(1, Duration::from_secs(10)).await;
    assert!(
        store.count_of("claim_jobs") > claims,
        "the model was called for a job no claim took"
    );
    model.open();
    assert_eq!(finished(&app, &c.key, &id).await["status"], "SUCCEEDED");
}

async fn a_handed_over_job_is_canceled_like_a_claimed_one(b: Backend) {
    let (app, store) = counted_app(b, 2).await;
    let model = gate_model().await;
    app.register("gated", &model.url("/gate"), json!({})).await;
    let c = app.caller("c", &["gated"], None).await;
    let claims = store.count_of("claim_jobs");
    let id = submit_ok(&app, &c.key, "gated", json!({"model_input": {}})).await;
    model.wait_calls(1, Duration::from_secs(10)).await;
    let (s, body) = app
        .call_with_key(
            &c.key,
            reqwest::Method::DELETE,
            &format!("/async_request/{id}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["canceled"], true);
    let v = finished(&app, &c.key, &id).await;
    assert_eq!(v["status"], "CANCELED", "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while model
        .log
        .in_flight
        .load(std::sync::atomic::Ordering::SeqCst)
        > 0
    {
        assert!(Instant::now() < deadline, "the model call was not dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.count_of("claim_jobs"), claims);
}
