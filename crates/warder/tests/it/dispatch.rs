//! The public listener's two ways to a sync predict and an async submit:
//! the fast path in front of the router and the router itself (taken, among
//! others, by percent-encoded paths) answer alike, share one limiter and one
//! set of metrics; and a caller hanging up leaves nothing counted in flight.

use crate::async_support::{fast_queue, status_of};
use crate::fake_upstream::fake_upstream;
use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

scenarios!(
    both_ways_to_a_predict_answer_alike,
    both_ways_to_an_async_submit_answer_alike,
    a_caller_hanging_up_leaves_nothing_in_flight,
);

async fn both_ways_to_a_predict_answer_alike(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let m = app.register("m", &up.url("/echo"), json!({})).await;
    let (s, p) = app
        .admin(
            Method::POST,
            "/admin/policies",
            Some(json!({"name": "ten", "rate_limit_per_second": 0.001, "burst": 10})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let c = app.caller("u", &["m"], p["id"].as_str()).await;

    // `%6D` is `m`: the router decodes it; the fast path never sees it.
    let mut remaining = Vec::new();
    for path in ["/models/m/predict", "/models/%6D/predict"] {
        let input = json!({"path": path});
        let (s, body, h) = json_of(app.predict(&c.key, path, input.clone()).await).await;
        assert_eq!(s, 200, "{path}: {body}");
        assert_eq!(body["model_id"], m.model_id.as_str(), "{path}");
        assert_eq!(body["model_version_id"], m.version_id.as_str(), "{path}");
        assert_eq!(body["output"], input, "{path}");
        assert_eq!(body["cached"], false, "{path}");
        assert_eq!(
            h["x-request-id"],
            body["request_id"].as_str().expect("request id"),
            "{path}"
        );
        assert_eq!(h["ratelimit-limit"], "10", "{path}");
        assert_eq!(h["content-type"], "application/json", "{path}");
        // Each field of the head once, whoever wrote it.
        for name in [
            "content-type",
            "x-request-id",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "content-length",
        ] {
            assert_eq!(h.get_all(name).iter().count(), 1, "{path}: {name}");
        }
        remaining.push(
            h["ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .parse::<u32>()
                .expect("number"),
        );

        // Without a key, both refuse in the same shape.
        let resp = app
            .client
            .post(format!("{}{path}", app.url))
            .json(&json!({}))
            .send()
            .await
            .expect("sent");
        let www = resp.headers().get("www-authenticate").cloned();
        let (s, body, h) = json_of(resp).await;
        assert_error(s, &body, 401, "UNAUTHENTICATED");
        assert_eq!(www.expect("www-authenticate"), "Api-Key", "{path}");
        assert_eq!(
            h["x-request-id"],
            body["error"]["request_id"].as_str().expect("rid"),
            "{path}"
        );
    }
    assert_eq!(remaining, vec![9, 8], "one limiter for both ways");

    let text = app.metrics().await;
    let ok = format!(
        "warder_http_requests_total{{route=\"/models/{{model}}/predict\",model=\"{}\",status=\"200\"}}",
        m.model_id
    );
    assert_eq!(metric_value(&text, &ok), 2.0, "{text}");
    let refused =
        "warder_http_requests_total{route=\"/models/{model}/predict\",model=\"\",status=\"401\"}";
    assert_eq!(metric_value(&text, refused), 2.0, "{text}");
}

async fn both_ways_to_an_async_submit_answer_alike(b: Backend) {
    let app = spawn_app_with(b, fast_queue).await;
    let up = fake_upstream().await;
    let m = app.register("m", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["m"], None).await;
    let version = m.version_id.as_str();
    // Each route once on the fast path and once, percent-encoded, through
    // the router (`%6D` is `m`; `%{:02X}` the version id's first byte).
    let encoded_version = format!("%{:02X}{}", version.as_bytes()[0], &version[1..]);
    let routes = [
        (
            "/models/{model}/async_predict",
            "/models/m/async_predict".to_owned(),
            "/models/%6D/async_predict".to_owned(),
        ),
        (
            "/models/{model}/environments/{env}/async_predict",
            "/models/m/environments/production/async_predict".to_owned(),
            "/models/%6D/environments/production/async_predict".to_owned(),
        ),
        (
            "/model_versions/{version_id}/async_predict",
            format!("/model_versions/{version}/async_predict"),
            format!("/model_versions/{encoded_version}/async_predict"),
        ),
    ];
    for (route, fast, routed) in &routes {
        for path in [fast, routed] {
            let resp = app
                .predict(&c.key, path, json!({"model_input": {"path": path}}))
                .await;
            let (s, body, h) = json_of(resp).await;
            assert_eq!(s, 201, "{path}: {body}");
            let id = body["request_id"].as_str().expect("request id");
            assert_eq!(h["x-request-id"], id, "{path}");
            let job = status_of(&app, &c.key, id).await;
            assert_eq!(job["model_version_id"], version, "{path}: {job}");

            let resp = app
                .client
                .post(format!("{}{path}", app.url))
                .json(&json!({"model_input": {}}))
                .send()
                .await
                .expect("sent");
            let (s, body, _) = json_of(resp).await;
            assert_error(s, &body, 401, "UNAUTHENTICATED");
        }
        let text = app.metrics().await;
        let created = format!(
            "warder_http_requests_total{{route=\"{route}\",model=\"{}\",status=\"201\"}}",
            m.model_id
        );
        assert_eq!(metric_value(&text, &created), 2.0, "{route}: {text}");
    }
}

async fn a_caller_hanging_up_leaves_nothing_in_flight(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    // The model would answer long after the test's deadline: only dropping
    // the hung-up request can bring the gauge back to 0 in time.
    app.register("slow", &up.url("/sleep/30000"), json!({}))
        .await;
    let c = app.caller("u", &["slow"], None).await;
    let gauge = "warder_http_requests_in_flight";

    let call = {
        let request = app
            .client
            .post(format!("{}/models/slow/predict", app.url))
            .header("Authorization", format!("Api-Key {}", c.key))
            .json(&json!({}))
            .send();
        tokio::spawn(request)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_value(&app.metrics().await, gauge) != 1.0 {
        assert!(Instant::now() < deadline, "the call was never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The caller hangs up while the model still works.
    call.abort();
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric_value(&app.metrics().await, gauge) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "a hung-up call stayed counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
