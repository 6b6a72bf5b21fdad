//! What an async submit is held to: other tenants' requests are not found,
//! the limits and defaults of a submit, idempotency keys, and the model's
//! input schema.

use crate::async_support::*;
use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;

scenarios!(
    another_users_request_is_not_found,
    limits_defaults_and_idempotency,
    the_input_schema_is_checked_and_the_input_sent_as_written,
);

async fn another_users_request_is_not_found(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    app.register("m", &model.url("/flaky/0/503"), json!({}))
        .await;
    let alice = app.caller("alice", &["m"], None).await;
    let mallory = app.caller("mallory", &["m"], None).await;
    let id = submit_ok(&app, &alice.key, "m", json!({"model_input": {}})).await;
    for method in [Method::GET, Method::DELETE] {
        let (s, body) = app
            .call_with_key(
                &mallory.key,
                method.clone(),
                &format!("/async_request/{id}"),
                None,
            )
            .await;
        assert_error(s, &body, 404, "NOT_FOUND");
        let (s, body) = app
            .call_with_key(
                &mallory.key,
                method,
                &format!("/async_request/{}", "ab".repeat(16)),
                None,
            )
            .await;
        assert_error(s, &body, 404, "NOT_FOUND");
    }
    wait_for_status(&app, &alice.key, &id, "SUCCEEDED").await;
    // Without a key nothing is answered at all.
    let resp = app
        .client
        .get(format!("{}/async_request/{id}", app.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 401);
}

async fn limits_defaults_and_idempotency(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.async_queue.min_queue_seconds = 10;
    })
    .await;
    let model = scripted_model().await;
    app.register("m", &model.url("/flaky/0/503"), json!({}))
        .await;
    app.register("other", &model.url("/flaky/0/503"), json!({}))
        .await;
    let c = app.caller("c", &["m"], None).await;
    for (body, field) in [
        (json!({"model_input": {}, "priority": 3}), "priority"),
        (json!({"model_input": {}, "priority": -1}), "priority"),
        (
            json!({"model_input": {}, "max_time_in_queue_seconds": 9}),
            "max_time_in_queue_seconds",
        ),
        (
            json!({"model_input": {}, "max_time_in_queue_seconds": 259_201}),
            "max_time_in_queue_seconds",
        ),
        (
            json!({"model_input": {}, "inference_retry_config": {"max_attempts": 0}}),
            "max_attempts",
        ),
        (
            json!({"model_input": {}, "inference_retry_config": {"max_attempts": 11}}),
            "max_attempts",
        ),
        (
            json!({"model_input": {}, "inference_retry_config": {"initial_delay_ms": 10_001}}),
            "initial_delay_ms",
        ),
        (
            json!({"model_input": {}, "inference_retry_config": {"max_delay_ms": 60_001}}),
            "max_delay_ms",
        ),
        (json!({"priority": 1}), "model_input"),
    ] {
        let (s, b, _) = submit(&app, &c.key, "m", body).await;
        assert_error(s, &b, 422, "INVALID_INPUT");
        assert!(
            b["error"]["message"].as_str().expect("msg").contains(field),
            "{b}"
        );
    }
    // Loopback webhook targets are refused at submit while not allowed.
    for url in [
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://127.0.0.1:9/",
    ] {
        let (s, b, _) = submit(
            &app,
            &c.key,
            "m",
            json!({"model_input": {}, "webhook_endpoint": url}),
        )
        .await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }
    let (s, b, _) = submit(
        &app,
        &c.key,
        "m",
        json!({"model_input": {}, "webhook_endpoint": "ftp://x/"}),
    )
    .await;
    assert_error(s, &b, 422, "INVALID_INPUT");
    // Body limit: 256 KiB by default.
    let big = "x".repeat(300 * 1024);
    let (s, b, _) = submit(&app, &c.key, "m", json!({"model_input": {"t": big}})).await;
    assert_error(s, &b, 413, "PAYLOAD_TOO_LARGE");
    // No grant, no model.
    let (s, b, _) = submit(&app, &c.key, "other", json!({"model_input": {}})).await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b, _) = submit(&app, &c.key, "nope", json!({"model_input": {}})).await;
    assert_error(s, &b, 404, "MODEL_NOT_FOUND");

    // Defaults as documented.
    let id = submit_ok(&app, &c.key, "m", json!({"model_input": {"a": 1}})).await;
    let (s, v) = app
        .admin(Method::GET, &format!("/admin/async_requests/{id}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["priority"], 0);
    assert_eq!(v["webhook_status"], "NO_WEBHOOK_PROVIDED");
    let created =
        chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str().expect("t")).expect("t");
    let deadline =
        chrono::DateTime::parse_from_rfc3339(v["queue_deadline"].as_str().expect("t")).expect("t");
    assert_eq!((deadline - created).num_seconds(), 600);

    // Idempotency-Key: a retried submit returns the first request.
    let send = || {
        app.client
            .post(format!("{}/models/m/async_predict", app.url))
            .header("Authorization", format!("Api-Key {}", c.key))
            .header("Idempotency-Key", "order-42")
            .json(&json!({"model_input": {"b": 2}}))
            .send()
    };
    let (s1, b1, _) = json_of(send().await.expect("sent")).await;
    let (s2, b2, h2) = json_of(send().await.expect("sent")).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 201), "{b1} {b2}");
    assert_eq!(b1["request_id"], b2["request_id"]);
    assert_eq!(h2["idempotent-replayed"], "true");
    let (_, list) = app
        .admin(Method::GET, "/admin/async_requests?model=m", None)
        .await;
    assert_eq!(
        list["async_requests"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
}

async fn the_input_schema_is_checked_and_the_input_sent_as_written(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let up = fake_upstream().await;
    let schema = json!({
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "maxLength": 20}},
    });
    app.register(
        "typed",
        &up.url("/inspect"),
        json!({"input_schema": schema}),
    )
    .await;
    let c = app.caller("jo", &["typed"], None).await;
    for bad in [json!({}), json!({"text": 5}), json!([1]), json!(null)] {
        let (s, body, _) = submit(&app, &c.key, "typed", json!({"model_input": bad})).await;
        assert_schema_refusal(s, &body);
    }
    let (_, list) = app
        .admin(Method::GET, "/admin/async_requests?model=typed", None)
        .await;
    assert_eq!(
        list["async_requests"].as_array().map(Vec::len),
        Some(0),
        "nothing refused was queued: {list}"
    );

    // A valid input reaches the model byte for byte: key order and spacing
    // as the caller wrote them.
    let input = r#"{"text": "fine", "b": [1,  2.50], "a": {"z": 1, "y": 2}}"#;
    let resp = app
        .client
        .post(format!("{}/models/typed/async_predict", app.url))
        .header("Authorization", format!("Api-Key {}", c.key))
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"priority": 1, "model_input": {input}}}"#))
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_eq!(s, 201, "{body}");
    let id = body["request_id"].as_str().expect("id").to_owned();
    let done = wait_for_status(&app, &c.key, &id, "SUCCEEDED").await;
    assert_eq!(done["output"]["body"], input, "{done}");
    assert_eq!(up.log.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
