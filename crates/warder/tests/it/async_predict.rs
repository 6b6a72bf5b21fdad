//! Async inference over HTTP: submit → status → signed webhook, retries
//! with backoff, failures, queue deadlines, cancel and the queue's status.

use crate::async_support::*;
use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

scenarios!(
    end_to_end_with_a_verified_webhook,
    retries_503_twice_then_succeeds,
    a_422_fails_after_one_attempt,
    expires_behind_a_busy_model_without_running,
    cancel_queued_and_in_progress,
    queue_status_counts_queued_and_running,
);

#[test]
fn receiver_verifier_accepts_the_standard_webhooks_test_vector() {
    assert!(verify_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
    assert!(!verify_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265331",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
}

async fn end_to_end_with_a_verified_webhook(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.webhook_allowed_cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    let model = scripted_model().await;
    let hooks = receiver().await;
    let m = app
        .register("echo", &model.url("/flaky/0/503"), json!({}))
        .await;
    let alice = app.caller("alice", &["echo"], None).await;
    let (s, secret) = app
        .admin(
            Method::POST,
            &format!("/admin/users/{}/webhook_secret", alice.user_id),
            None,
        )
        .await;
    assert_eq!(s, 201, "{secret}");
    let secret = secret["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));

    let (s, body, headers) = submit(
        &app,
        &alice.key,
        "echo",
        json!({"model_input": {"x": 1}, "webhook_endpoint": hooks.url("127.0.0.1")}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let id = body["request_id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        headers["x-request-id"].to_str().expect("hdr"),
        id,
        "the request id is the trace id"
    );

    let done = wait_until(&app, &alice.key, &id, Duration::from_secs(20), |v| {
        v["webhook_status"] == "SUCCEEDED"
    })
    .await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["model_id"], m.model_id.as_str());
    assert_eq!(done["model_version_id"], m.version_id.as_str());
    assert_eq!(done["output"]["echo"], json!({"x": 1}));
    assert_eq!(done["errors"], json!([]));
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(done[field].is_string(), "{field}: {done}");
    }
    // The model got model_input as its body and the request id as its trace.
    let upstream = model
        .log
        .last_headers
        .lock()
        .expect("lock")
        .clone()
        .expect("called");
    let tp = upstream["traceparent"].to_str().expect("traceparent");
    assert!(tp.starts_with(&format!("00-{id}-")), "{tp}");

    let got = hooks.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let w = &got[0];
    assert_eq!(w.header("webhook-id"), id);
    assert!(verify_signature(
        &secret,
        w.header("webhook-id"),
        w.header("webhook-timestamp"),
        &w.body,
        w.header("webhook-signature")
    ));
    let payload = w.json();
    assert_eq!(payload["type"], "async_request_completed");
    assert_eq!(payload["request_id"], id.as_str());
    assert_eq!(payload["model_id"], m.model_id.as_str());
    assert_eq!(payload["model_version_id"], m.version_id.as_str());
    assert_eq!(payload["data"]["echo"], json!({"x": 1}));
    assert_eq!(payload["errors"], json!([]));
    assert!(payload["time"].is_string());

    // After a rotation both secrets sign, each verifiable on its own.
    let (_, rotated) = app
        .admin(
            Method::POST,
            &format!("/admin/users/{}/webhook_secret", alice.user_id),
            None,
        )
        .await;
    let new_secret = rotated["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new_secret, secret);
    let id2 = submit_ok(
        &app,
        &alice.key,
        "echo",
        json!({"model_input": {"x": 2}, "webhook_endpoint": hooks.url("127.0.0.1")}),
    )
    .await;
    wait_until(&app, &alice.key, &id2, Duration::from_secs(20), |v| {
        v["webhook_status"] == "SUCCEEDED"
    })
    .await;
    let w = hooks.received().pop().expect("second webhook");
    let sigs = w.header("webhook-signature");
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    for s in [&secret, &new_secret] {
        assert!(verify_signature(
            s,
            &id2,
            w.header("webhook-timestamp"),
            &w.body,
            sigs
        ));
    }

    // Admin views: the request and its delivery attempts.
    let (s, list) = app
        .admin(Method::GET, "/admin/async_requests?model=echo", None)
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["async_requests"].as_array().map(Vec::len), Some(2));
    let (s, d) = app
        .admin(
            Method::GET,
            &format!("/admin/async_requests/{id}/webhook_deliveries"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["deliveries"][0]["status_code"], 200, "{d}");
    assert_eq!(d["deliveries"][0]["success"], true);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("warder_async_attempts_total{"),
        "{metrics}"
    );
    // Submits count under the model they were queued for, like predicts.
    let submits = format!(
        "warder_http_requests_total{{route=\"/models/{{model}}/async_predict\",model=\"{}\",status=\"201\"}} 2",
        m.model_id
    );
    assert!(metrics.contains(&submits), "{submits} in {metrics}");
    assert!(
        metrics.contains("warder_webhook_deliveries_total{outcome=\"succeeded\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warder_async_time_in_queue_seconds_bucket"),
        "{metrics}"
    );
}

async fn retries_503_twice_then_succeeds(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    app.register("flaky", &model.url("/flaky/2/503"), json!({}))
        .await;
    let c = app.caller("c", &["flaky"], None).await;
    let id = submit_ok(
        &app,
        &c.key,
        "flaky",
        json!({"model_input": {"n": 7},
               "inference_retry_config": {"max_attempts": 3, "initial_delay_ms": 300, "max_delay_ms": 5000}}),
    )
    .await;
    let done = wait_for_status(&app, &c.key, &id, "SUCCEEDED").await;
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["output"]["echo"], json!({"n": 7}));
    let errors = done["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{done}");
    assert!(
        errors.iter().all(|e| e["code"] == "UPSTREAM_ERROR"),
        "{done}"
    );
    // Delays: 300 ms then 600 ms, each with jitter in [80 %, 100 %]; the
    // upper bound allows for the poll of the test and scheduling.
    let calls = model.log.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 3);
    let gaps: Vec<u128> = calls
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert!((240..=300 + 150).contains(&gaps[0]), "{gaps:?}");
    assert!((480..=600 + 150).contains(&gaps[1]), "{gaps:?}");
}

async fn a_422_fails_after_one_attempt(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    app.register("picky", &model.url("/status/422"), json!({}))
        .await;
    let limited = scripted_model().await;
    app.register("limited", &limited.url("/flaky/1/429"), json!({}))
        .await;
    let c = app.caller("c", &["picky", "limited"], None).await;
    let id = submit_ok(&app, &c.key, "picky", json!({"model_input": {}})).await;
    let done = wait_for_status(&app, &c.key, &id, "FAILED").await;
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(done["errors"][0]["code"], "UPSTREAM_ERROR");
    assert!(
        done["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .contains("422"),
        "{done}"
    );
    assert_eq!(done["webhook_status"], "NO_WEBHOOK_PROVIDED");
    assert_eq!(done["output"], json!(null));
    assert_eq!(model.log.count(), 1);

    // 429 is retried like a 5xx.
    let id = submit_ok(
        &app,
        &c.key,
        "limited",
        json!({"model_input": {}, "inference_retry_config": {"initial_delay_ms": 0}}),
    )
    .await;
    let done = wait_for_status(&app, &c.key, &id, "SUCCEEDED").await;
    assert_eq!(done["attempts"], 2, "{done}");
}

async fn expires_behind_a_busy_model_without_running(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    app.register(
        "busy",
        &model.url("/slow/2500"),
        json!({"max_concurrency": 1}),
    )
    .await;
    let c = app.caller("c", &["busy"], None).await;
    let first = submit_ok(&app, &c.key, "busy", json!({"model_input": {"i": 1}})).await;
    wait_for_status(&app, &c.key, &first, "IN_PROGRESS").await;
    let stuck = submit_ok(
        &app,
        &c.key,
        "busy",
        json!({"model_input": {"i": 2}, "max_time_in_queue_seconds": 1}),
    )
    .await;
    let done = wait_for_status(&app, &c.key, &stuck, "EXPIRED").await;
    assert_eq!(done["attempts"], 0, "{done}");
    assert_eq!(done["started_at"], json!(null));
    assert_eq!(done["errors"][0]["code"], "QUEUE_TIMEOUT", "{done}");
    wait_for_status(&app, &c.key, &first, "SUCCEEDED").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        model.log.count(),
        1,
        "the expired request never reached the model"
    );
}

async fn cancel_queued_and_in_progress(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    app.register(
        "busy",
        &model.url("/slow/10000"),
        json!({"max_concurrency": 1}),
    )
    .await;
    let c = app.caller("c", &["busy"], None).await;
    let running = submit_ok(&app, &c.key, "busy", json!({"model_input": {"i": 1}})).await;
    wait_for_status(&app, &c.key, &running, "IN_PROGRESS").await;
    let queued = submit_ok(&app, &c.key, "busy", json!({"model_input": {"i": 2}})).await;

    let (s, body) = app
        .call_with_key(
            &c.key,
            Method::DELETE,
            &format!("/async_request/{queued}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["canceled"], true);
    assert_eq!(body["request_id"], queued.as_str());
    assert_eq!(status_of(&app, &c.key, &queued).await["status"], "CANCELED");

    let (s, body) = app
        .call_with_key(
            &c.key,
            Method::DELETE,
            &format!("/async_request/{running}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["canceled"], true);
    let done = wait_until(&app, &c.key, &running, Duration::from_secs(5), |v| {
        v["status"] == "CANCELED"
    })
    .await;
    assert_eq!(done["attempts"], 1);
    // The model saw its caller hang up, long before its 10 s answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while model.log.dropped.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream connection was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        model
            .log
            .completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        model.log.count(),
        1,
        "the canceled queued request was never sent"
    );

    // Canceling a finished request changes nothing.
    let (s, body) = app
        .call_with_key(
            &c.key,
            Method::DELETE,
            &format!("/async_request/{queued}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["canceled"], false, "{body}");
}

async fn queue_status_counts_queued_and_running(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    let m = app
        .register(
            "busy",
            &model.url("/slow/2500"),
            json!({"max_concurrency": 2}),
        )
        .await;
    let c = app.caller("c", &["busy"], None).await;
    let ids: Vec<String> = futures::future::join_all(
        (0..5).map(|i| submit_ok(&app, &c.key, "busy", json!({"model_input": {"i": i}}))),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, q) = app
        .call_with_key(&c.key, Method::GET, "/models/busy/async_queue_status", None)
        .await;
    assert_eq!(s, 200, "{q}");
    assert_eq!(q["model_id"], m.model_id.as_str());
    assert_eq!(q["num_in_progress_requests"], 2, "the cap holds: {q}");
    assert_eq!(q["num_queued_requests"], 3, "{q}");
    // The depth gauges (refreshed by the sweeper every 100 ms here) show the
    // same, per model and status.
    let queued = format!(
        "warder_async_queue_depth{{model=\"{}\",status=\"QUEUED\"}} 3",
        m.model_id
    );
    let running = format!(
        "warder_async_queue_depth{{model=\"{}\",status=\"IN_PROGRESS\"}} 2",
        m.model_id
    );
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let metrics = app.metrics().await;
        if metrics.contains(&queued) && metrics.contains(&running) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {queued} and {running} in {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        wait_for_status(&app, &c.key, id, "SUCCEEDED").await;
    }
    assert!(model.log.count() == 5);
}
