//! Async submits count against the daily quota of the caller's policy, like
//! sync predicts and from the same counter; an idempotent retry of an
//! accepted submit answers its first request and costs nothing.

use crate::helpers::*;
use crate::scenarios;
use reqwest::StatusCode;
use serde_json::{json, Value};

scenarios!(async_submits_count_against_the_daily_quota);

async fn submit_with_key(app: &TestApp, key: &str, idem: &str) -> (StatusCode, Value, bool) {
    let resp = app
        .client
        .post(format!("{}/models/quoted/async_predict", app.url))
        .header("Authorization", format!("Api-Key {key}"))
        .header("Idempotency-Key", idem)
        .json(&json!({"model_input": {"n": idem}}))
        .send()
        .await
        .expect("submit");
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body, replayed)
}

async fn async_submits_count_against_the_daily_quota(b: Backend) {
    // No worker: the jobs stay queued, only the submits matter here.
    let app = spawn_app_with(b, |c| c.worker_enabled = false).await;
    app.register("quoted", "http://127.0.0.1:9/", json!({}))
        .await;
    let (s, policy) = app
        .admin(
            reqwest::Method::POST,
            "/admin/policies",
            Some(json!({"name": "two-a-day", "daily_calls": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{policy}");
    let caller = app.caller("q", &["quoted"], policy["id"].as_str()).await;

    let (s, first, replayed) = submit_with_key(&app, &caller.key, "one").await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert!(!replayed);
    let (s, second, _) = submit_with_key(&app, &caller.key, "two").await;
    assert_eq!(s, StatusCode::CREATED, "{second}");

    // The quota is used up: a new submit is refused and nothing is stored…
    let (s, refused, _) = submit_with_key(&app, &caller.key, "three").await;
    assert_error(s, &refused, 429, "QUOTA_EXCEEDED");
    let queued = status_of_queue(&app, &caller.key).await;
    assert_eq!(queued, 2, "a refused submit is not stored");
    // …and so is a sync predict on the same model: one counter for both.
    let resp = app
        .predict(&caller.key, "/models/quoted/predict", json!({}))
        .await;
    assert_eq!(resp.status().as_u16(), 429);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "QUOTA_EXCEEDED", "{body}");

    // A retry of an accepted submit still answers its first request.
    let (s, again, replayed) = submit_with_key(&app, &caller.key, "one").await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert!(replayed);
    assert_eq!(again["request_id"], first["request_id"]);
    assert_eq!(status_of_queue(&app, &caller.key).await, 2);
}

async fn status_of_queue(app: &TestApp, key: &str) -> u64 {
    let (s, q) = app
        .call_with_key(
            key,
            reqwest::Method::GET,
            "/models/quoted/async_queue_status",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    q["num_queued_requests"].as_u64().expect("count")
}
