//! Sync predict: every route, envelope and raw, streaming passthrough,
//! upstream failures, internal routes, the concurrency cap, forwarded
//! headers and the input schema.

use crate::helpers::*;
use crate::scenarios;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

scenarios!(
    envelope_on_every_route,
    raw_mode_passes_json_untouched,
    raw_mode_answers_carry_the_gateway_s_own_fields,
    sse_is_streamed_chunk_by_chunk,
    binary_is_byte_identical,
    upstream_failures_are_mapped,
    internal_routes_need_the_internal_scope_and_skip_limits,
    concurrency_cap_queues_then_refuses,
    callers_key_is_not_forwarded_and_trace_is,
    input_schema_is_enforced_before_the_upstream,
);

async fn envelope_on_every_route(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let m = app.register("echo", &up.url("/echo"), json!({})).await;
    let caller = app.caller("alice", &["echo"], None).await;
    let internal = app
        .caller_with_scopes("svc", &["echo"], None, &["internal"])
        .await;
    let input = json!({"x": [1, 2, {"y": "z"}]});
    let routes = [
        (format!("/models/{}/predict", m.name), &caller.key),
        (format!("/models/{}/predict", m.model_id), &caller.key),
        (
            format!("/models/{}/environments/production/predict", m.name),
            &caller.key,
        ),
        (
            format!("/model_versions/{}/predict", m.version_id),
            &caller.key,
        ),
        (
            format!("/models/{}/predict_internal", m.name),
            &internal.key,
        ),
        (
            format!("/model_versions/{}/predict_internal", m.version_id),
            &internal.key,
        ),
        (
            format!("/model/{}/{}/predict_internal", m.name, m.version_id),
            &internal.key,
        ),
    ];
    for (path, key) in routes {
        let (status, body, headers) = json_of(app.predict(key, &path, input.clone()).await).await;
        assert_eq!(status, 200, "{path}: {body}");
        let rid = headers["x-request-id"].to_str().expect("header");
        assert_eq!(body["request_id"], rid, "{path}");
        assert_eq!(body["model_id"], m.model_id.as_str());
        assert_eq!(body["model_version_id"], m.version_id.as_str());
        assert_eq!(body["output"], input);
        assert_eq!(body["cached"], false);
    }
    // A version of another model is not reachable through this model's route.
    let other = app.register("other", &up.url("/echo"), json!({})).await;
    let (s, body, _) = json_of(
        app.predict(
            &internal.key,
            &format!("/model/{}/{}/predict_internal", m.name, other.version_id),
            input,
        )
        .await,
    )
    .await;
    assert_error(s, &body, 404, "MODEL_NOT_FOUND");
}

async fn raw_mode_passes_json_untouched(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("raw", &up.url("/echo"), json!({"response": "raw"}))
        .await;
    let caller = app.caller("bob", &["raw"], None).await;
    let resp = app
        .predict(&caller.key, "/models/raw/predict", json!({"a": 1}))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/json"));
    assert_eq!(resp.text().await.expect("text"), r#"{"a":1}"#);
}

async fn raw_mode_answers_carry_the_gateway_s_own_fields(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("own", &up.url("/own_fields"), json!({"response": "raw"}))
        .await;
    let policy = app.policy("seven", 100.0, 7).await;
    let caller = app.caller("ann", &["own"], Some(&policy)).await;
    let internal = app
        .caller_with_scopes("ivy", &["own"], None, &["internal"])
        .await;
    let values = |resp: &reqwest::Response, name: &str| -> Vec<String> {
        resp.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text").to_owned())
            .collect()
    };
    // A limited call: the request id and the limit are the gateway's, once,
    // on the fast lane and through the router (`%6F` is `o`).
    for path in ["/models/own/predict", "/models/%6Fwn/predict"] {
        let resp = app.predict(&caller.key, path, json!({})).await;
        assert_eq!(resp.status(), 200, "{path}");
        let ids = values(&resp, "x-request-id");
        assert_eq!(ids.len(), 1, "{path}: {ids:?}");
        assert_eq!(ids[0].len(), 32, "{path}: {ids:?}");
        assert_eq!(values(&resp, "ratelimit-limit"), ["7"], "{path}");
        assert_eq!(values(&resp, "x-model"), ["kept"], "{path}");
        assert_eq!(
            values(&resp, "content-type"),
            ["application/json"],
            "{path}"
        );
    }
    // An internal call is not limited: the model's own limit field stays.
    let resp = app
        .predict(&internal.key, "/models/own/predict_internal", json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(values(&resp, "x-request-id").len(), 1);
    assert_ne!(values(&resp, "x-request-id"), ["the-model-s-own"]);
    assert_eq!(values(&resp, "ratelimit-limit"), ["99"]);
}

async fn sse_is_streamed_chunk_by_chunk(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("stream", &up.url("/sse"), json!({})).await;
    let caller = app.caller("carol", &["stream"], None).await;
    let resp = app
        .predict(&caller.key, "/models/stream/predict", json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The arrival time of each event is when its last byte is read: an event
    // split over chunks counts once it is whole, chunks holding several
    // events give them all the same time.
    let mut arrivals: Vec<Instant> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut pending = String::new();
    let mut stream = resp.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            let now = Instant::now();
            pending.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            while let Some(end) = pending.find("\n\n") {
                events.push(pending.drain(..end + 2).collect());
                arrivals.push(now);
            }
        }
    })
    .await;
    assert!(read.is_ok(), "stream did not end; got {events:?}");
    assert!(pending.is_empty(), "trailing bytes: {pending:?}");
    let expected: Vec<String> = (0..SSE_EVENTS).map(sse_event).collect();
    assert_eq!(events, expected);
    let sent = up.log.sse_sent.lock().expect("lock").clone();
    assert_eq!(sent.len(), SSE_EVENTS);

    // The upstream pauses SSE_PAUSE between events: a gateway that held any
    // event back until the next one (or the end) would deliver two together.
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= Duration::from_millis(200),
            "events {i} and {} arrived {gap:?} apart (all gaps: {gaps:?})",
            i + 1
        );
    }
    // Causally: each event reached the client before the upstream had even
    // sent the next one, and the first long before the last.
    for i in 0..SSE_EVENTS - 1 {
        assert!(
            arrivals[i] < sent[i + 1],
            "event {i} arrived after event {} was sent",
            i + 1
        );
    }
    let last_sent = sent[SSE_EVENTS - 1];
    assert!(
        last_sent.saturating_duration_since(arrivals[0]) >= Duration::from_millis(800),
        "event 0 arrived only {:?} before the last was sent",
        last_sent.saturating_duration_since(arrivals[0])
    );
}

async fn binary_is_byte_identical(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("bin", &up.url("/binary"), json!({})).await;
    let caller = app.caller("dave", &["bin"], None).await;
    let resp = app
        .predict(&caller.key, "/models/bin/predict", json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let bytes = resp.bytes().await.expect("bytes");
    assert_eq!(bytes.as_ref(), binary_payload().as_slice());
}

async fn upstream_failures_are_mapped(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let dead = refused_addr().await;
    app.register("m422", &up.url("/status/422"), json!({}))
        .await;
    app.register("m404", &up.url("/status/404"), json!({}))
        .await;
    app.register("m500", &up.url("/status/500"), json!({}))
        .await;
    app.register("m503text", &up.url("/text_status/503"), json!({}))
        .await;
    app.register("slow", &up.url("/sleep/2000"), json!({"timeout_ms": 200}))
        .await;
    app.register("dead", &format!("http://{dead}/x"), json!({}))
        .await;
    app.register("badjson", &up.url("/invalid_json"), json!({}))
        .await;
    app.register("badutf8", &up.url("/invalid_utf8"), json!({}))
        .await;
    let c = app
        .caller(
            "erin",
            &[
                "m422", "m404", "m500", "m503text", "slow", "dead", "badjson", "badutf8",
            ],
            None,
        )
        .await;

    let (s, body, _) = json_of(app.predict(&c.key, "/models/m422/predict", json!({})).await).await;
    assert_error(s, &body, 422, "UPSTREAM_ERROR");
    assert_eq!(
        body["error"]["upstream"],
        json!({"detail": "upstream says 422"})
    );

    let (s, body, _) = json_of(app.predict(&c.key, "/models/m404/predict", json!({})).await).await;
    assert_error(s, &body, 404, "UPSTREAM_ERROR");

    let (s, body, _) = json_of(app.predict(&c.key, "/models/m500/predict", json!({})).await).await;
    assert_error(s, &body, 502, "UPSTREAM_ERROR");
    assert_eq!(body["error"]["upstream"]["detail"], "upstream says 500");

    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/m503text/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 502, "UPSTREAM_ERROR");
    assert_eq!(body["error"]["upstream"], "plain failure");

    let started = Instant::now();
    let (s, body, _) = json_of(app.predict(&c.key, "/models/slow/predict", json!({})).await).await;
    assert_error(s, &body, 504, "UPSTREAM_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "timeout honoured"
    );

    let (s, body, _) = json_of(app.predict(&c.key, "/models/dead/predict", json!({})).await).await;
    assert_error(s, &body, 502, "UPSTREAM_ERROR");

    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/badjson/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 502, "UPSTREAM_ERROR");

    // Well-formed but not UTF-8 inside a string: not JSON either.
    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/badutf8/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 502, "UPSTREAM_ERROR");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("warder_upstream_errors_total"),
        "{metrics}"
    );
    assert!(metrics.contains("kind=\"timeout\""), "{metrics}");
    assert!(metrics.contains("kind=\"connect\""), "{metrics}");
}

async fn internal_routes_need_the_internal_scope_and_skip_limits(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("int", &up.url("/echo"), json!({})).await;
    let policy = app.policy("tight", 1.0, 1).await;
    let plain = app.caller("plain", &["int"], Some(&policy)).await;
    let svc = app
        .caller_with_scopes("svc", &["int"], Some(&policy), &["internal"])
        .await;
    let (s, body, _) = json_of(
        app.predict(&plain.key, "/models/int/predict_internal", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 403, "FORBIDDEN");
    for _ in 0..5 {
        let resp = app
            .predict(&svc.key, "/models/int/predict_internal", json!({}))
            .await;
        assert_eq!(resp.status(), 200, "no rate limit on internal routes");
    }
    assert_eq!(
        app.predict(&svc.key, "/models/int/predict", json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.predict(&svc.key, "/models/int/predict", json!({}))
            .await
            .status(),
        429
    );
}

async fn concurrency_cap_queues_then_refuses(b: Backend) {
    let app = spawn_app_with(b, |c| c.concurrency_wait_ms = 250).await;
    let up = fake_upstream().await;
    app.register(
        "capped",
        &up.url("/sleep/600"),
        json!({"max_concurrency": 2}),
    )
    .await;
    let c = app.caller("henry", &["capped"], None).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = app.client.clone();
        let url = format!("{}/models/capped/predict", app.url);
        let key = c.key.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("Authorization", format!("Api-Key {key}"))
                .json(&json!({}))
                .send()
                .await
                .expect("sent");
            json_of(resp).await
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let (s, body, headers) = t.await.expect("join");
        match s.as_u16() {
            200 => ok += 1,
            503 => {
                assert_error(s, &body, 503, "MODEL_BUSY");
                assert!(headers.contains_key("retry-after"));
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, busy), (2, 2));
    assert_eq!(
        up.log
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

async fn callers_key_is_not_forwarded_and_trace_is(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("insp", &up.url("/inspect"), json!({})).await;
    let c = app.caller("ivy", &["insp"], None).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = app
        .client
        .post(format!("{}/models/insp/predict", app.url))
        .header("Authorization", format!("Bearer {}", c.key))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"q": 1}))
        .send()
        .await
        .expect("sent");
    let (s, body, headers) = json_of(resp).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        headers["x-request-id"], trace,
        "incoming trace id is the request id"
    );
    let seen = &body["output"]["headers"];
    assert!(
        seen.get("authorization").is_none(),
        "key forwarded upstream: {seen}"
    );
    assert!(!body.to_string().contains(&c.key));
    let tp = seen["traceparent"]
        .as_str()
        .expect("traceparent propagated");
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
    assert_eq!(seen["x-request-id"], trace);
    assert_eq!(body["output"]["body"], r#"{"q":1}"#);
}

async fn input_schema_is_enforced_before_the_upstream(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let schema = json!({
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "maxLength": 20}},
    });
    let m = app
        .register("typed", &up.url("/echo"), json!({"input_schema": schema}))
        .await;
    let c = app.caller("jo", &["typed"], None).await;
    for bad in [
        json!({}),
        json!({"text": 5}),
        json!({"text": "x".repeat(21)}),
        json!([1]),
    ] {
        let (s, body, _) = json_of(
            app.predict(&c.key, "/models/typed/predict", bad.clone())
                .await,
        )
        .await;
        assert_schema_refusal(s, &body);
    }
    assert_eq!(
        up.log.calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing invalid went upstream"
    );
    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/typed/predict", json!({"text": "fine"}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // A schema that is not a schema is refused when it is set.
    let (s, body) = app
        .admin(
            Method::PATCH,
            &format!("/admin/model_versions/{}", m.version_id),
            Some(json!({"input_schema": {"type": "no-such-type"}})),
        )
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
    // Removing it lifts the check on the next request.
    let (s, _) = app
        .admin(
            Method::PATCH,
            &format!("/admin/model_versions/{}", m.version_id),
            Some(json!({"input_schema": null})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.predict(&c.key, "/models/typed/predict", json!({}))
            .await
            .status(),
        200
    );
}
