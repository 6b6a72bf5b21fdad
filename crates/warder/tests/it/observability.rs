//! Request ids, metrics, docs, bad input, and the warm path reading no store.

use crate::counting_store::CountingStore;
use crate::helpers::*;
use crate::scenarios;
use serde_json::json;
use std::time::{Duration, Instant};

scenarios!(
    bad_predict_input_is_refused_in_the_error_shape,
    a_warm_predict_does_not_touch_the_store,
    metrics_and_health_are_served_on_the_ops_listener,
    request_series_count_each_request_once,
    openapi_and_docs_are_served_without_a_key,
);

async fn bad_predict_input_is_refused_in_the_error_shape(b: Backend) {
    let limit = 1024;
    let app = spawn_app_with(b, |c| c.max_body_bytes = limit).await;
    let up = fake_upstream().await;
    app.register("m", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["m"], None).await;
    let post = |body: Vec<u8>, ct: &'static str| {
        app.client
            .post(format!("{}/models/m/predict", app.url))
            .header("Authorization", format!("Api-Key {}", c.key))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (s, body, h) = json_of(
        post(b"{\"a\": ".to_vec(), "application/json")
            .await
            .expect("sent"),
    )
    .await;
    assert_error(s, &body, 400, "INVALID_JSON");
    assert_eq!(
        h["x-request-id"],
        body["error"]["request_id"].as_str().expect("rid")
    );
    // Well-formed, but a string that is not UTF-8.
    let (s, body, _) = json_of(
        post(b"{\"a\": \"\xff\"}".to_vec(), "application/json")
            .await
            .expect("sent"),
    )
    .await;
    assert_error(s, &body, 400, "INVALID_JSON");

    let (s, body, _) = json_of(post(b"{}".to_vec(), "text/plain").await.expect("sent")).await;
    assert_error(s, &body, 415, "UNSUPPORTED_MEDIA_TYPE");

    // Exactly the limit passes; one byte more is refused.
    let fits = format!("\"{}\"", "a".repeat(limit - 2)).into_bytes();
    assert_eq!(fits.len(), limit);
    let resp = post(fits, "application/json").await.expect("sent");
    assert_eq!(resp.status(), 200);
    let over = format!("\"{}\"", "a".repeat(limit - 1)).into_bytes();
    assert_eq!(over.len(), limit + 1);
    let (s, body, _) = json_of(post(over, "application/json").await.expect("sent")).await;
    assert_error(s, &body, 413, "PAYLOAD_TOO_LARGE");

    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/unknown/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 404, "MODEL_NOT_FOUND");
    let (s, body, _) = json_of(
        app.predict(&c.key, "/model_versions/zzzz/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 404, "MODEL_NOT_FOUND");

    let resp = app
        .client
        .get(format!("{}/models/m/predict", app.url))
        .header("Authorization", format!("Api-Key {}", c.key))
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_error(s, &body, 405, "METHOD_NOT_ALLOWED");
    // A path that is not valid UTF-8 is refused by the router, in the same shape.
    let resp = app
        .client
        .post(format!("{}/models/%FF/predict", app.url))
        .header("Authorization", format!("Api-Key {}", c.key))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_error(s, &body, 400, "BAD_REQUEST");
    assert_eq!(
        up.log.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the valid call went upstream"
    );
}

async fn a_warm_predict_does_not_touch_the_store(b: Backend) {
    // Background tasks that reach the store on their own clock, whatever the
    // requests: the async worker's claim loop, heartbeat and sweeper
    // (`claim_jobs`, `heartbeat`, `expire_overdue`, `rescue_expired_leases`,
    // `purge_expired`, `depth_by_model`) and its webhook loop
    // (`claim_deliveries`). The worker is off here, so none of them runs.
    // What is left is the usage writer's once-a-second `add_usage`, the one
    // call excused below, and `/metrics` (`read_count`), scraped only
    // outside the measured window.
    let counted = std::sync::Mutex::new(None);
    let app = spawn_app_over(
        b,
        |c| c.worker_enabled = false,
        |inner| {
            let store = CountingStore::new(inner);
            *counted.lock().expect("lock") = Some(store.clone());
            store
        },
    )
    .await;
    let store = counted.lock().expect("lock").take().expect("store wrapped");
    let up = fake_upstream().await;
    app.register("warm", &up.url("/echo"), json!({})).await;
    // Rate limit and both quotas, so every per-request check is on the path.
    let (s, policy) = app
        .admin(
            reqwest::Method::POST,
            "/admin/policies",
            Some(json!({
                "name": "p", "rate_limit_per_second": 1000.0, "burst": 1000,
                "daily_calls": 10_000, "monthly_calls": 100_000,
            })),
        )
        .await;
    assert_eq!(s, 201, "{policy}");
    let c = app
        .caller("u", &["warm"], Some(policy["id"].as_str().expect("id")))
        .await;

    let before_cold = store.mark();
    let flushes = store.count_of("add_usage");
    assert_eq!(
        app.predict(&c.key, "/models/warm/predict", json!({}))
            .await
            .status(),
        200
    );
    let cold = store.since(before_cold);
    for read in ["get_key", "find_model", "find_grant", "calls_between"] {
        assert!(
            cold.contains(&read),
            "a cold predict calls {read}: {cold:?}"
        );
    }
    // Start right after the cold call's usage is written, so at most one
    // more flush can fall in a window shorter than a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.count_of("add_usage") == flushes {
        assert!(Instant::now() < deadline, "usage never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits = metric_value(
        &app.metrics().await,
        "warder_auth_cache_total{result=\"hit\"}",
    );

    let mark = store.mark();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            app.predict(&c.key, "/models/warm/predict", json!({"n": 1}))
                .await
                .status(),
            200
        );
    }
    let window = started.elapsed();
    let during = store.since(mark);

    let others: Vec<&str> = during
        .iter()
        .copied()
        .filter(|name| *name != "add_usage")
        .collect();
    assert!(
        others.is_empty(),
        "warm predicts called the store: {others:?}"
    );
    // The usage writer flushes once a second, not once per request.
    let usage_writes = during.len() as u64;
    assert!(
        usage_writes <= window.as_secs() + 1,
        "{usage_writes} usage writes in {window:?}"
    );
    let hits_after = metric_value(
        &app.metrics().await,
        "warder_auth_cache_total{result=\"hit\"}",
    );
    assert_eq!(hits_after - hits, 20.0);
}

/// The per-route series are looked up once and then recorded from a cache:
/// every request still counts once, in its own status, whichever way it was
/// dispatched, the histograms see exactly the requests they should, and a
/// series nothing was recorded in is not exported.
async fn request_series_count_each_request_once(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let m = app.register("ser", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["ser"], None).await;
    for _ in 0..3 {
        let r = app.predict(&c.key, "/models/ser/predict", json!({})).await;
        assert_eq!(r.status(), 200);
    }
    // Refused before the upstream: counted, timed, but no upstream time.
    for _ in 0..2 {
        let r = app
            .client
            .post(format!("{}/models/ser/predict", app.url))
            .header("Authorization", format!("Api-Key {}", c.key))
            .header("Content-Type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 400);
    }
    // The router's way (a percent-encoded path) records into the same series.
    let r = app
        .predict(&c.key, "/models/%73er/predict", json!({}))
        .await;
    assert_eq!(r.status(), 200);
    // Refused before the model is known: no empty 200 or overhead series.
    let r = app
        .client
        .post(format!("{}/models/ser/predict", app.url))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    let text = app.metrics().await;
    let id = &m.model_id;
    let route = "route=\"/models/{model}/predict\"";
    for absent in [
        format!("warder_http_requests_total{{{route},model=\"\",status=\"200\"}}"),
        format!("warder_gateway_overhead_seconds_count{{{route},model=\"\"}}"),
    ] {
        assert!(!text.contains(&absent), "{absent} in\n{text}");
    }
    assert_eq!(
        metric_value(
            &text,
            &format!("warder_http_requests_total{{{route},model=\"\",status=\"401\"}}")
        ),
        1.0,
        "{text}"
    );
    let series = |name: &str, extra: &str| {
        metric_value(&text, &format!("{name}{{{route},model=\"{id}\"{extra}}}"))
    };
    assert_eq!(
        series("warder_http_requests_total", ",status=\"200\""),
        4.0,
        "{text}"
    );
    assert_eq!(
        series("warder_http_requests_total", ",status=\"400\""),
        2.0,
        "{text}"
    );
    assert_eq!(
        series("warder_http_request_duration_seconds_count", ""),
        6.0,
        "{text}"
    );
    assert_eq!(
        series("warder_gateway_overhead_seconds_count", ""),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("warder_upstream_duration_seconds_count{{model=\"{id}\"}}")
        ),
        4.0,
        "{text}"
    );
}

async fn metrics_and_health_are_served_on_the_ops_listener(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let m = app.register("met", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["met"], None).await;
    assert_eq!(
        app.predict(&c.key, "/models/met/predict", json!({}))
            .await
            .status(),
        200
    );
    let metrics = app.metrics().await;
    for needle in [
        format!("warder_http_requests_total{{route=\"/models/{{model}}/predict\",model=\"{}\",status=\"200\"}} 1", m.model_id),
        "warder_http_request_duration_seconds_bucket".to_owned(),
        "warder_gateway_overhead_seconds_bucket".to_owned(),
        "warder_upstream_duration_seconds_bucket".to_owned(),
        "warder_auth_cache_total{result=\"miss\"}".to_owned(),
        "warder_store_reads_total".to_owned(),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    let ops = format!("http://{}", app.ops_addr);
    let (s, health) = app.get_json(&format!("{ops}/healthz")).await;
    assert_eq!(s, 200, "{health}");
    let (s, ready) = app.get_json(&format!("{ops}/readyz")).await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["checks"]["store"]["ok"], true);
    // The ops routes are not on the public listener.
    let resp = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 404);
}

async fn openapi_and_docs_are_served_without_a_key(b: Backend) {
    let app = spawn_app(b).await;
    let (s, doc, _) = json_of(
        app.client
            .get(format!("{}/openapi.json", app.url))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/models/{model}/predict",
        "/models/{model}/environments/{env}/predict",
        "/model_versions/{version_id}/predict",
        "/models/{model}/predict_internal",
        "/model_versions/{version_id}/predict_internal",
        "/model/{model}/{version_id}/predict_internal",
        "/admin/users",
        "/admin/users/{user_id}/keys",
        "/admin/keys/{key_id}",
        "/admin/models",
        "/admin/models/{model}/versions",
        "/admin/model_versions/{version_id}",
        "/admin/models/{model}/environments/{env}",
        "/admin/policies",
        "/admin/grants",
        "/admin/grants/{grant_id}",
        "/admin/usage",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    let resp = app
        .client
        .get(format!("{}/docs/", app.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.expect("html");
    assert!(html.contains("swagger"), "docs UI served");
    assert!(!html.contains("cdn") && !html.contains("unpkg"), "no CDN");
    let (s, listing, _) = json_of(
        app.client
            .get(format!("{}/", app.url))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(listing["routes"].is_array());
}
