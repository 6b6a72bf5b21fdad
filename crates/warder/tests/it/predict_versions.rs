//! Sync predict and the model's versions: the fallback route for paths no
//! route matches, a version that is not active, and promotion.

use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;

scenarios!(
    fallback_proxies_unmatched_routes,
    no_fallback_answers_404,
    inactive_version_is_not_ready,
    promote_switches_the_target,
);

async fn fallback_proxies_unmatched_routes(b: Backend) {
    let up = fake_upstream().await;
    let base = up.url("/fallback");
    let app = spawn_app_with(b, |c| c.fallback_upstream = Some(base)).await;
    let resp = app
        .client
        .get(format!("{}/api/v2/things?b=2&a=1&x=%20y", app.url))
        .header("Authorization", "Bearer control-plane-token")
        .send()
        .await
        .expect("sent");
    let (s, body, headers) = json_of(resp).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["uri"], "/fallback/api/v2/things?b=2&a=1&x=%20y");
    assert_eq!(body["authorization"], "Bearer control-plane-token");
    // The caller's address, from the connection, is appended to theirs.
    assert_eq!(body["x_forwarded_for"], "127.0.0.1");
    assert!(headers.contains_key("x-request-id"));
    let resp = app
        .client
        .post(format!("{}/api/v2/things", app.url))
        .header("X-Forwarded-For", "192.0.2.7")
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["x_forwarded_for"], "192.0.2.7, 127.0.0.1");

    let big = "z".repeat(300_000);
    let resp = app
        .client
        .put(format!("{}/upload/here", app.url))
        .body(big.clone())
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_eq!(s, 200);
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["body"].as_str().map(str::len), Some(big.len()));

    // Known routes are not proxied: a predict without a key is refused here.
    let resp = app
        .client
        .post(format!("{}/models/x/predict", app.url))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_error(s, &body, 401, "UNAUTHENTICATED");
}

async fn no_fallback_answers_404(b: Backend) {
    let app = spawn_app(b).await;
    let resp = app
        .client
        .get(format!("{}/nothing/here", app.url))
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_error(s, &body, 404, "NOT_FOUND");
}

async fn inactive_version_is_not_ready(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let m = app
        .register("idle", &up.url("/echo"), json!({"state": "inactive"}))
        .await;
    let c = app.caller("frank", &["idle"], None).await;
    let (s, body, headers) =
        json_of(app.predict(&c.key, "/models/idle/predict", json!({})).await).await;
    assert_error(s, &body, 503, "MODEL_NOT_READY");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(up.log.calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    let (s, _) = app
        .admin(
            Method::PATCH,
            &format!("/admin/model_versions/{}", m.version_id),
            Some(json!({"state": "active"})),
        )
        .await;
    assert_eq!(s, 200);
    let resp = app
        .predict(&c.key, "/models/idle/predict", json!({"ok": 1}))
        .await;
    assert_eq!(
        resp.status(),
        200,
        "activation takes effect on the next request"
    );
}

async fn promote_switches_the_target(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    let m = app.register("prom", &up.url("/echo"), json!({})).await;
    let c = app.caller("gina", &["prom"], None).await;
    let (s, v2) = app
        .admin(
            Method::POST,
            "/admin/models/prom/versions",
            Some(json!({"upstream_url": up.url("/inspect"), "response": "raw"})),
        )
        .await;
    assert_eq!(s, 201, "{v2}");
    let v2 = v2["id"].as_str().expect("id").to_owned();

    let (_, body, _) = json_of(
        app.predict(&c.key, "/models/prom/predict", json!({"n": 1}))
            .await,
    )
    .await;
    assert_eq!(
        body["model_version_id"],
        m.version_id.as_str(),
        "first version is production"
    );

    // Staging before promotion; then production moves.
    let (s, env) = app
        .admin(
            Method::PUT,
            "/admin/models/prom/environments/staging",
            Some(json!({"version_id": v2})),
        )
        .await;
    assert_eq!(s, 200, "{env}");
    let (s, body, _) = json_of(
        app.predict(
            &c.key,
            "/models/prom/environments/staging/predict",
            json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert!(body["headers"].is_object(), "staging serves v2: {body}");

    let (s, _) = app
        .admin(
            Method::PUT,
            "/admin/models/prom/environments/production",
            Some(json!({"version_id": v2})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, body, _) = json_of(app.predict(&c.key, "/models/prom/predict", json!({})).await).await;
    assert_eq!(s, 200);
    assert!(
        body["headers"].is_object(),
        "production now serves v2: {body}"
    );

    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/prom/environments/nope/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 404, "MODEL_NOT_FOUND");

    // A version of another model cannot be promoted here.
    let other = app.register("other", &up.url("/echo"), json!({})).await;
    let (s, body) = app
        .admin(
            Method::PUT,
            "/admin/models/prom/environments/production",
            Some(json!({"version_id": other.version_id})),
        )
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
}
