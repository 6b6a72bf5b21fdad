//! Async queue behaviour across its moving parts: the order jobs are run
//! in, a version's concurrency cap shared by several workers, retries of
//! timeouts and refused connections, retention of finished requests,
//! rotated webhook secrets, the PostgreSQL wake-up of an idle worker, and
//! submits that share a caller's trace.

use crate::async_support::*;
use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use warder_core::Timestamp;

scenarios!(
    priority_first_then_age_within_a_priority,
    max_concurrency_holds_across_two_workers,
    a_timed_out_attempt_is_retried_and_recorded,
    a_refused_connection_is_retried_until_attempts_run_out,
    finished_requests_are_kept_until_retention_then_gone,
    a_rotated_out_secret_stops_signing_once_its_validity_ends,
    submits_under_one_caller_trace_are_separate_requests,
);

async fn priority_first_then_age_within_a_priority(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = gate_model().await;
    app.register("one", &model.url("/gate"), json!({"max_concurrency": 1}))
        .await;
    let c = app.caller("c", &["one"], None).await;
    // The only slot is taken, so everything after it waits in the queue.
    submit_ok(
        &app,
        &c.key,
        "one",
        json!({"model_input": {"tag": "blocker"}, "priority": 2}),
    )
    .await;
    model.wait_calls(1, Duration::from_secs(10)).await;
    for (tag, priority) in [
        ("2a", 2),
        ("1a", 1),
        ("0a", 0),
        ("2b", 2),
        ("1b", 1),
        ("0b", 0),
        ("1c", 1),
    ] {
        submit_ok(
            &app,
            &c.key,
            "one",
            json!({"model_input": {"tag": tag}, "priority": priority}),
        )
        .await;
        // Distinct creation times, so age alone orders a priority.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    model.open();
    model.wait_calls(8, Duration::from_secs(20)).await;
    let order: Vec<Value> = model
        .log
        .bodies()
        .iter()
        .map(|b| b["tag"].clone())
        .collect();
    assert_eq!(
        order,
        json!(["blocker", "0a", "0b", "1a", "1b", "1c", "2a", "2b"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    );
}

async fn max_concurrency_holds_across_two_workers(b: Backend) {
    // Each worker could run 4 at once; only the version's cap of 2, counted
    // in the shared store, keeps the two of them at 2 together.
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.async_queue.worker_concurrency = 4;
    })
    .await;
    let second = ExtraWorker::start((*app.state.config).clone());
    let model = gate_model().await;
    app.register(
        "capped",
        &model.url("/slow/300"),
        json!({"max_concurrency": 2}),
    )
    .await;
    let c = app.caller("c", &["capped"], None).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(submit_ok(&app, &c.key, "capped", json!({"model_input": {"i": i}})).await);
    }
    for id in &ids {
        let v = wait_until(&app, &c.key, id, Duration::from_secs(30), |v| {
            v["status"] != "QUEUED" && v["status"] != "IN_PROGRESS"
        })
        .await;
        assert_eq!(v["status"], "SUCCEEDED", "{v}");
    }
    assert_eq!(model.log.bodies().len(), 8);
    assert_eq!(
        model.log.peak.load(Ordering::SeqCst),
        2,
        "the cap is used, never exceeded"
    );
    second.stop().await;
}

async fn a_timed_out_attempt_is_retried_and_recorded(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = gate_model().await;
    app.register(
        "hangs",
        &model.url("/hang_first/10000"),
        json!({"timeout_ms": 300}),
    )
    .await;
    let c = app.caller("c", &["hangs"], None).await;
    let id = submit_ok(
        &app,
        &c.key,
        "hangs",
        json!({"model_input": {"n": 1},
               "inference_retry_config": {"max_attempts": 3, "initial_delay_ms": 0}}),
    )
    .await;
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["status"] == "SUCCEEDED" || v["status"] == "FAILED"
    })
    .await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["output"]["echo"], json!({"n": 1}));
    let errors = done["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 1, "{done}");
    assert_eq!(errors[0]["code"], "UPSTREAM_TIMEOUT", "{done}");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("300 ms")),
        "{done}"
    );
    assert_eq!(model.log.bodies().len(), 2);
}

/// A loopback port nothing listens on: bound by the kernel, then released.
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn a_refused_connection_is_retried_until_attempts_run_out(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let port = refused_port();
    let m = app
        .register(
            "gone",
            &format!("http://127.0.0.1:{port}/predict"),
            json!({}),
        )
        .await;
    let c = app.caller("c", &["gone"], None).await;
    let id = submit_ok(
        &app,
        &c.key,
        "gone",
        json!({"model_input": {},
               "inference_retry_config": {"max_attempts": 3, "initial_delay_ms": 10}}),
    )
    .await;
    let done = wait_until(&app, &c.key, &id, Duration::from_secs(20), |v| {
        v["status"] == "SUCCEEDED" || v["status"] == "FAILED"
    })
    .await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["attempts"], 3, "{done}");
    assert_eq!(done["output"], Value::Null);
    let errors = done["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 3, "{done}");
    for e in &errors {
        assert_eq!(e["code"], "UPSTREAM_ERROR", "{done}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not be reached")),
            "{done}"
        );
    }
    let metrics = app.metrics().await;
    let connects = metrics
        .lines()
        .find(|l| {
            l.starts_with("warder_upstream_errors_total{")
                && l.contains(&format!("model=\"{}\"", m.model_id))
                && l.contains("kind=\"connect\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(connects, Some(3.0), "{metrics}");
}

async fn finished_requests_are_kept_until_retention_then_gone(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.async_queue.retention_s = 2;
        // The sweeper purges every 60th round: every 3 s here.
        c.async_queue.sweep_ms = 50;
    })
    .await;
    let model = gate_model().await;
    app.register("echo", &model.url("/slow/0"), json!({})).await;
    let c = app.caller("c", &["echo"], None).await;
    let id = submit_ok(&app, &c.key, "echo", json!({"model_input": {"k": 1}})).await;
    let done = wait_for_status(&app, &c.key, &id, "SUCCEEDED").await;
    let (s, admin_view) = app
        .admin(Method::GET, &format!("/admin/async_requests/{id}"), None)
        .await;
    assert_eq!(s, 200, "{admin_view}");
    let at = |field: &str| {
        admin_view[field]
            .as_str()
            .and_then(Timestamp::parse_rfc3339)
            .unwrap_or_else(|| panic!("{field}: {admin_view}"))
            .0
    };
    let (finished, expires) = (at("finished_at"), at("expires_at"));
    assert_eq!(expires - finished, 2_000, "{admin_view}");
    assert_eq!(done["output"]["echo"], json!({"k": 1}));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body) = app
            .call_with_key(&c.key, Method::GET, &format!("/async_request/{id}"), None)
            .await;
        let now = Timestamp::now().0;
        if s == 404 {
            assert!(
                now >= expires,
                "gone {} ms before retention ended",
                expires - now
            );
            assert_eq!(body["error"]["code"], "NOT_FOUND", "{body}");
            break;
        }
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            body["output"]["echo"],
            json!({"k": 1}),
            "kept whole: {body}"
        );
        assert!(
            Instant::now() < deadline,
            "still there long after retention"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = app
        .admin(Method::GET, &format!("/admin/async_requests/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

async fn a_rotated_out_secret_stops_signing_once_its_validity_ends(b: Backend) {
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.webhook_allowed_cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    let model = gate_model().await;
    let hooks = receiver().await;
    app.register("echo", &model.url("/slow/0"), json!({})).await;
    let alice = app.caller("alice", &["echo"], None).await;
    let rotate = || async {
        let (s, v) = app
            .admin(
                Method::POST,
                &format!("/admin/users/{}/webhook_secret", alice.user_id),
                None,
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["secret"].as_str().expect("secret").to_owned()
    };
    let old = rotate().await;
    let new = rotate().await;
    let deliver = || async {
        let id = submit_ok(
            &app,
            &alice.key,
            "echo",
            json!({"model_input": {}, "webhook_endpoint": hooks.url("127.0.0.1")}),
        )
        .await;
        wait_until(&app, &alice.key, &id, Duration::from_secs(20), |v| {
            v["webhook_status"] == "SUCCEEDED"
        })
        .await;
        hooks
            .received()
            .into_iter()
            .rfind(|r| r.header("webhook-id") == id)
            .expect("delivered")
    };
    let verifies = |secret: &str, r: &Received, sigs: &str| {
        verify_signature(
            secret,
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            &r.body,
            sigs,
        )
    };

    // During the overlap both secrets sign.
    let r = deliver().await;
    let sigs = r.header("webhook-signature").to_owned();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    assert!(verifies(&old, &r, &sigs) && verifies(&new, &r, &sigs));

    // The store keeps the previous secret valid for 24 h, then only the new one.
    let store = &app.state.store;
    let sealer = warder::webhooks::signing::Sealer::from_config(None, &app.state.config.data_dir)
        .expect("sealer");
    let now = Timestamp::now();
    let opened = |sealed: Vec<String>| -> Vec<String> {
        sealed
            .iter()
            .map(|s| sealer.open(s).expect("opens").expose())
            .collect()
    };
    let during = store
        .webhook_secrets(&alice.user_id, now)
        .await
        .expect("secrets");
    assert_eq!(opened(during), vec![new.clone(), old.clone()]);
    let hour = 3_600_000;
    let almost = Timestamp(now.0 + 23 * hour);
    let later = Timestamp(now.0 + 24 * hour + 60_000);
    assert_eq!(
        store
            .webhook_secrets(&alice.user_id, almost)
            .await
            .expect("secrets")
            .len(),
        2
    );
    let after = store
        .webhook_secrets(&alice.user_id, later)
        .await
        .expect("secrets");
    assert_eq!(opened(after), vec![new.clone()]);

    // Deliveries read the secrets at send time: once the previous secret's
    // validity has passed (moved into the past, as 24 h going by would),
    // only the new secret signs.
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = app.state.config.effective_database_url();
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
        let changed = sqlx::query(
            "UPDATE webhook_secrets SET valid_until = $1 WHERE user_id = $2 AND valid_until IS NOT NULL",
        )
        .bind(Timestamp::now().0 - 1_000)
        .bind(&alice.user_id)
        .execute(&mut conn)
        .await
        .expect("update");
        assert_eq!(changed.rows_affected(), 1);
        let _ = conn.close().await;
    }
    let r = deliver().await;
    let sigs = r.header("webhook-signature").to_owned();
    assert_eq!(sigs.split(' ').count(), 1, "{sigs}");
    assert!(verifies(&new, &r, &sigs));
    assert!(!verifies(&old, &r, &sigs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_an_idle_worker_long_before_its_poll() {
    let Some(b) = Backend::postgres() else {
        return;
    };
    let app = spawn_app_with(b, |c| {
        fast_queue(c);
        c.worker_enabled = false;
    })
    .await;
    let model = gate_model().await;
    app.register("echo", &model.url("/slow/0"), json!({})).await;
    let c = app.caller("c", &["echo"], None).await;
    let mut config = (*app.state.config).clone();
    config.async_queue.poll_ms = 30_000;
    config.worker_enabled = true;
    let url = config.effective_database_url();
    let worker = ExtraWorker::start(config);

    // Ready once its LISTEN connection is up (and its first claim is past).
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listening: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query ILIKE 'LISTEN%warder_async%'",
            )
            .fetch_one(&mut conn)
            .await
            .expect("pg_stat_activity");
            if listening > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the worker never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    for i in 0..2 {
        let sent = Instant::now();
        let id = submit_ok(&app, &c.key, "echo", json!({"model_input": {"i": i}})).await;
        let done = wait_until(&app, &c.key, &id, Duration::from_secs(3), |v| {
            v["status"] == "SUCCEEDED"
        })
        .await;
        assert_eq!(done["attempts"], 1);
        assert!(sent.elapsed() < Duration::from_secs(3));
        // Let the worker go idle again before the next submit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    worker.stop().await;
}

/// A caller's `traceparent` names a trace that may hold many submits, and
/// another tenant may send any trace id: each submit is a request of its
/// own, and the trace id answers as `X-Request-Id` as on every route.
async fn submits_under_one_caller_trace_are_separate_requests(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let model = scripted_model().await;
    app.register("m", &model.url("/flaky/0/503"), json!({}))
        .await;
    let alice = app.caller("alice", &["m"], None).await;
    let bob = app.caller("bob", &["m"], None).await;
    let traced = |key: &str, trace: &str, parent: &str| {
        app.client
            .post(format!("{}/models/m/async_predict", app.url))
            .header("Authorization", format!("Api-Key {key}"))
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .json(&json!({"model_input": {"n": parent}}))
            .send()
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut ids = Vec::new();
    for parent in ["00f067aa0ba902b7", "00f067aa0ba902b8"] {
        let resp = traced(&alice.key, trace, parent).await.expect("sent");
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["x-request-id"], trace);
        let body: Value = resp.json().await.expect("JSON");
        let id = body["request_id"].as_str().expect("id").to_owned();
        assert_eq!(id.len(), 32);
        assert_ne!(id, trace, "a caller's trace id is not taken as a job's id");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    // Another tenant sending alice's request id as its trace learns nothing
    // and disturbs nothing.
    let resp = traced(&bob.key, &ids[0], "00f067aa0ba902b9")
        .await
        .expect("sent");
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.expect("JSON");
    let bobs = body["request_id"].as_str().expect("id").to_owned();
    assert!(!ids.contains(&bobs));
    for (key, id) in [
        (&alice.key, &ids[0]),
        (&alice.key, &ids[1]),
        (&bob.key, &bobs),
    ] {
        let done = wait_for_status(&app, key, id, "SUCCEEDED").await;
        assert_eq!(done["request_id"], id.as_str());
    }
    let (s, _) = app
        .call_with_key(
            &bob.key,
            Method::GET,
            &format!("/async_request/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(s, 404, "alice's request stays hers");
    // Each job's model call carries the job's own trace.
    let tp = model
        .log
        .last_headers
        .lock()
        .expect("lock")
        .clone()
        .expect("called")["traceparent"]
        .to_str()
        .expect("traceparent")
        .to_owned();
    assert!(
        [&ids[0], &ids[1], &bobs]
            .iter()
            .any(|id| tp.starts_with(&format!("00-{id}-"))),
        "{tp}"
    );
}
