//! Webhooks of async requests: the SSRF guard end to end (loopback targets
//! only, with `webhook_allowed_cidrs` empty, so a broken guard could only
//! ever reach this machine), the retry schedule, 3xx not followed, manual
//! redelivery, and what failed or canceled requests send.

use crate::async_support::*;
use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

scenarios!(
    a_name_resolving_to_loopback_fails_at_delivery_without_a_connection,
    retries_on_schedule_then_fails_and_redelivers_on_demand,
    redirects_are_not_followed_and_failures_are_reported,
);

async fn a_name_resolving_to_loopback_fails_at_delivery_without_a_connection(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    assert!(app.state.config.webhook_allowed_cidrs.is_empty());
    let model = scripted_model().await;
    let hooks = receiver().await;
    app.register("m", &model.url("/flaky/0/503"), json!({}))
        .await;
    let c = app.caller("c", &["m"], None).await;
    // Literal loopback forms are refused at submit…
    for host in ["[::1]", "[::ffff:127.0.0.1]", "127.0.0.1"] {
        let (s, body, _) = submit(
            &app,
            &c.key,
            "m",
            json!({"model_input": {}, "webhook_endpoint": hooks.url(host)}),
        )
        .await;
        assert_error(s, &body, 400, "BAD_REQUEST");
    }
    // …a name is resolved at delivery, and refused there, once, for good.
    let id = submit_ok(
        &app,
        &c.key,
        "m",
        json!({"model_input": {}, "webhook_endpoint": hooks.url("localhost")}),
    )
    .await;
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["webhook_status"] == "FAILED"
    })
    .await;
    assert_eq!(done["status"], "WEBHOOK_FAILED", "{done}");
    assert_eq!(
        done["output"]["echo"],
        json!({}),
        "the result is still kept"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(hooks.received().is_empty(), "no connection was made");
    let (_, d) = app
        .admin(
            Method::GET,
            &format!("/admin/async_requests/{id}/webhook_deliveries"),
            None,
        )
        .await;
    let deliveries = d["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "refusals are not retried: {d}");
    assert_eq!(deliveries[0]["status_code"], json!(null));
    assert!(
        deliveries[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("internal")),
        "{d}"
    );
}

async fn retries_on_schedule_then_fails_and_redelivers_on_demand(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.webhook_allowed_cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    let model = scripted_model().await;
    let hooks = receiver().await;
    hooks.status.store(500, Ordering::SeqCst);
    app.register("m", &model.url("/flaky/0/503"), json!({}))
        .await;
    let c = app.caller("c", &["m"], None).await;
    app.admin(
        Method::POST,
        &format!("/admin/users/{}/webhook_secret", c.user_id),
        None,
    )
    .await;
    let id = submit_ok(
        &app,
        &c.key,
        "m",
        json!({"model_input": {"v": 1}, "webhook_endpoint": hooks.url("127.0.0.1")}),
    )
    .await;
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["webhook_status"] == "FAILED"
    })
    .await;
    assert_eq!(done["status"], "WEBHOOK_FAILED", "{done}");
    let got = hooks.received();
    assert_eq!(got.len(), 3, "one delivery per schedule entry");
    assert!(
        got.iter().all(|r| r.header("webhook-id") == id),
        "stable webhook-id"
    );
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "same body on every retry"
    );

    hooks.status.store(204, Ordering::SeqCst);
    let (s, r) = app
        .admin(
            Method::POST,
            &format!("/admin/async_requests/{id}/redeliver"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["webhook_status"] == "SUCCEEDED"
    })
    .await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(hooks.received().len(), 4);
    let (_, d) = app
        .admin(
            Method::GET,
            &format!("/admin/async_requests/{id}/webhook_deliveries"),
            None,
        )
        .await;
    let codes: Vec<_> = d["deliveries"]
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x["status_code"].clone())
        .collect();
    assert_eq!(
        codes,
        vec![json!(500), json!(500), json!(500), json!(204)],
        "{d}"
    );
    // A delivery that is not finished cannot be redelivered twice at once.
    let (s, _) = app
        .admin(Method::POST, "/admin/async_requests/nope/redeliver", None)
        .await;
    assert_eq!(s, 404);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("warder_webhook_deliveries_total{outcome=\"retry\"} 2"),
        "{metrics}"
    );
}

async fn redirects_are_not_followed_and_failures_are_reported(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.webhook_allowed_cidrs = vec!["127.0.0.1/32".into()];
        c.async_queue.webhook_retry_schedule_ms = vec![0];
    })
    .await;
    let model = scripted_model().await;
    let hooks = receiver().await;
    hooks.status.store(302, Ordering::SeqCst);
    app.register("ok", &model.url("/flaky/0/503"), json!({}))
        .await;
    let bad = scripted_model().await;
    app.register("bad", &bad.url("/status/400"), json!({}))
        .await;
    let slow = scripted_model().await;
    app.register(
        "slow",
        &slow.url("/slow/5000"),
        json!({"max_concurrency": 1}),
    )
    .await;
    let c = app.caller("c", &["ok", "bad", "slow"], None).await;
    let hook = hooks.url("127.0.0.1");

    let id = submit_ok(
        &app,
        &c.key,
        "ok",
        json!({"model_input": {}, "webhook_endpoint": hook}),
    )
    .await;
    wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["webhook_status"] == "FAILED"
    })
    .await;
    let got = hooks.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/hook", "the 3xx was not followed");

    // A failed request still reports, with its errors and no data.
    hooks.status.store(200, Ordering::SeqCst);
    let id = submit_ok(
        &app,
        &c.key,
        "bad",
        json!({"model_input": {}, "webhook_endpoint": hook}),
    )
    .await;
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["webhook_status"] == "SUCCEEDED"
    })
    .await;
    assert_eq!(done["status"], "FAILED");
    let payload = hooks.received().pop().expect("webhook").json();
    assert_eq!(payload["data"], json!(null));
    assert_eq!(payload["errors"][0]["code"], "UPSTREAM_ERROR", "{payload}");

    // A canceled request sends nothing.
    let running = submit_ok(&app, &c.key, "slow", json!({"model_input": {}})).await;
    wait_for_status(&app, &c.key, &running, "IN_PROGRESS").await;
    let queued = submit_ok(
        &app,
        &c.key,
        "slow",
        json!({"model_input": {}, "webhook_endpoint": hook}),
    )
    .await;
    app.call_with_key(
        &c.key,
        Method::DELETE,
        &format!("/async_request/{queued}"),
        None,
    )
    .await;
    let v = status_of(&app, &c.key, &queued).await;
    assert_eq!(v["status"], "CANCELED");
    assert_eq!(v["webhook_status"], "CANCELED");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hooks.received().len(), 2);
}
