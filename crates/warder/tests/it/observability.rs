//! Request ids, metrics, docs, bad input, and the warm path reading no store.

use crate::helpers::*;
use crate::scenarios;
use serde_json::json;

scenarios!(
    bad_predict_input_is_refused_in_the_error_shape,
    a_warm_predict_does_not_touch_the_store,
    metrics_and_health_are_served_on_the_ops_listener,
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
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("warm", &up.url("/echo"), json!({})).await;
    let policy = app.policy("p", 1000.0, 1000).await;
    let c = app.caller("u", &["warm"], Some(&policy)).await;
    let before_cold = app.state.store.read_count();
    assert_eq!(
        app.predict(&c.key, "/models/warm/predict", json!({}))
            .await
            .status(),
        200
    );
    let after_cold = app.state.store.read_count();
    assert!(after_cold > before_cold, "a cold predict reads the store");
    let hits = metric_value(
        &app.metrics().await,
        "warder_auth_cache_total{result=\"hit\"}",
    );
    for _ in 0..20 {
        assert_eq!(
            app.predict(&c.key, "/models/warm/predict", json!({"n": 1}))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        app.state.store.read_count(),
        after_cold,
        "warm predicts read the store"
    );
    let hits_after = metric_value(
        &app.metrics().await,
        "warder_auth_cache_total{result=\"hit\"}",
    );
    assert_eq!(hits_after - hits, 20.0);
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
    let h = app
        .client
        .get(format!("{ops}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), 200);
    let (s, ready, _) = json_of(
        app.client
            .get(format!("{ops}/readyz"))
            .send()
            .await
            .expect("readyz"),
    )
    .await;
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
