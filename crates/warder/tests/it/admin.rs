//! The admin API: the documented shapes, listings, and refusals.

use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;

scenarios!(
    documented_shapes,
    keys_are_listed_without_secrets,
    bad_admin_input_is_refused_clearly,
    usage_counts_calls_per_user_model_and_day,
);

async fn documented_shapes(b: Backend) {
    let app = spawn_app(b).await;
    let (s, user) = app
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"name": "ann", "email": "ann@example.org"})),
        )
        .await;
    assert_eq!(s, 201);
    for f in ["id", "name", "email", "role", "created_at"] {
        assert!(user.get(f).is_some(), "user lacks {f}: {user}");
    }
    assert_eq!(user["role"], "member");
    let uid = user["id"].as_str().expect("id");

    let (s, key) = app
        .admin(
            Method::POST,
            &format!("/admin/users/{uid}/keys"),
            Some(json!({"name": "k", "scopes": ["internal"]})),
        )
        .await;
    assert_eq!(s, 201);
    for f in ["id", "key", "name", "scopes", "created_at", "expires_at"] {
        assert!(key.get(f).is_some(), "key lacks {f}: {key}");
    }
    let clear = key["key"].as_str().expect("key");
    assert!(clear.starts_with(&format!("wdr_{}_", key["id"].as_str().expect("id"))));
    assert_eq!(key["scopes"], json!(["internal"]));

    let (s, model) = app
        .admin(
            Method::POST,
            "/admin/models",
            Some(json!({"name": "m", "description": "d"})),
        )
        .await;
    assert_eq!(s, 201);
    assert!(model["id"].is_string() && model["name"] == "m");

    let (s, version) = app
        .admin(
            Method::POST,
            "/admin/models/m/versions",
            Some(json!({"upstream_url": "http://127.0.0.1:9/x", "timeout_ms": 1234, "max_concurrency": 3, "cache_ttl_s": 10, "response": "raw", "state": "inactive", "input_schema": {"type": "object"}})),
        )
        .await;
    assert_eq!(s, 201, "{version}");
    assert_eq!(version["model_id"], model["id"]);
    assert_eq!(version["timeout_ms"], 1234);
    assert_eq!(version["max_concurrency"], 3);
    assert_eq!(version["response"], "raw");
    assert_eq!(version["state"], "inactive");
    let vid = version["id"].as_str().expect("id");

    let (s, patched) = app
        .admin(
            Method::PATCH,
            &format!("/admin/model_versions/{vid}"),
            Some(json!({"state": "active", "max_concurrency": null})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(patched["state"], "active");
    assert_eq!(patched["max_concurrency"], json!(null));
    assert_eq!(patched["timeout_ms"], 1234, "absent fields stay");

    let (s, got) = app.admin(Method::GET, "/admin/models/m", None).await;
    assert_eq!(s, 200);
    assert_eq!(got["environments"][0]["name"], "production");
    assert_eq!(got["environments"][0]["version_id"], vid);

    let (s, policy) = app
        .admin(Method::POST, "/admin/policies", Some(json!({"name": "p", "rate_limit_per_second": 2.5, "burst": 4, "daily_calls": 100, "monthly_calls": 1000})))
        .await;
    assert_eq!(s, 201);
    assert_eq!(policy["rate_limit_per_second"], 2.5);
    let pid = policy["id"].as_str().expect("id");

    let (s, grant) = app
        .admin(
            Method::POST,
            "/admin/grants",
            Some(json!({"user_id": uid, "model": "m", "policy_id": pid})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(grant["model_id"], model["id"]);
    assert_eq!(grant["policy_id"], pid);
    let (s, body) = app
        .admin(
            Method::POST,
            "/admin/grants",
            Some(json!({"user_id": uid, "model": "m"})),
        )
        .await;
    assert_error(s, &body, 409, "CONFLICT");

    for (path, field) in [
        ("/admin/users", "users"),
        ("/admin/models", "models"),
        ("/admin/policies", "policies"),
        ("/admin/grants", "grants"),
        ("/admin/models/m/versions", "versions"),
        ("/admin/models/m/environments", "environments"),
    ] {
        let (s, list) = app.admin(Method::GET, path, None).await;
        assert_eq!(s, 200, "{path}");
        assert!(
            list[field].as_array().is_some_and(|a| !a.is_empty()),
            "{path}: {list}"
        );
    }
}

async fn keys_are_listed_without_secrets(b: Backend) {
    let app = spawn_app(b).await;
    let c = app.caller("u", &[], None).await;
    let (s, keys) = app
        .admin(
            Method::GET,
            &format!("/admin/users/{}/keys", c.user_id),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let text = keys.to_string();
    assert!(keys["keys"][0]["id"] == c.key_id.as_str());
    assert!(keys["keys"][0].get("key").is_none());
    assert!(keys["keys"][0].get("secret_hash").is_none());
    let secret = c.key.rsplit('_').next().expect("secret");
    assert!(!text.contains(secret));
    // Embedded mode: not in any file of the data dir either.
    if app.data_dir.exists() {
        assert!(files_containing(&app.data_dir, secret.as_bytes()).is_empty());
    }
}

async fn bad_admin_input_is_refused_clearly(b: Backend) {
    let app = spawn_app(b).await;
    let raw = |body: &'static str, ct: &'static str| {
        app.client
            .post(format!("{}/admin/users", app.url))
            .header("Authorization", format!("Api-Key {}", app.admin_key))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (s, body, _) = json_of(raw("{\"name\": ", "application/json").await.expect("sent")).await;
    assert_error(s, &body, 400, "INVALID_JSON");
    let (s, body, _) = json_of(
        raw("{\"name\": 5}", "application/json")
            .await
            .expect("sent"),
    )
    .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
    let (s, body, _) = json_of(raw("{\"name\": \"x\"}", "text/plain").await.expect("sent")).await;
    assert_error(s, &body, 415, "UNSUPPORTED_MEDIA_TYPE");
    let (s, body, _) = json_of(
        raw("{\"name\": \"x\", \"nope\": 1}", "application/json")
            .await
            .expect("sent"),
    )
    .await;
    assert_error(s, &body, 422, "INVALID_INPUT");

    let (s, body) = app
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"name": "has space"})),
        )
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
    let (s, _) = app
        .admin(Method::POST, "/admin/users", Some(json!({"name": "dup"})))
        .await;
    assert_eq!(s, 201);
    let (s, body) = app
        .admin(Method::POST, "/admin/users", Some(json!({"name": "dup"})))
        .await;
    assert_error(s, &body, 409, "CONFLICT");
    let (s, body) = app.admin(Method::GET, "/admin/users/nobody", None).await;
    assert_error(s, &body, 404, "NOT_FOUND");
    let (s, body) = app
        .admin(
            Method::POST,
            "/admin/models/ghost/versions",
            Some(json!({"upstream_url": "http://127.0.0.1:1/"})),
        )
        .await;
    assert_error(s, &body, 404, "MODEL_NOT_FOUND");
    let (s, _) = app
        .admin(Method::POST, "/admin/models", Some(json!({"name": "m"})))
        .await;
    assert_eq!(s, 201);
    for bad in [
        json!({"upstream_url": "ftp://x/y"}),
        json!({"upstream_url": "not a url"}),
        json!({"upstream_url": "http://127.0.0.1:1/", "timeout_ms": 0}),
        json!({"upstream_url": "http://127.0.0.1:1/", "max_concurrency": 0}),
        json!({"upstream_url": "http://127.0.0.1:1/", "response": "xml"}),
    ] {
        let (s, body) = app
            .admin(Method::POST, "/admin/models/m/versions", Some(bad.clone()))
            .await;
        assert_error(s, &body, 422, "INVALID_INPUT");
    }
    let (s, body) = app
        .admin(
            Method::POST,
            "/admin/policies",
            Some(json!({"name": "p", "rate_limit_per_second": -1})),
        )
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
    let (s, body) = app
        .admin(
            Method::POST,
            "/admin/grants",
            Some(json!({"user_id": "nobody", "model": "m"})),
        )
        .await;
    assert_error(s, &body, 404, "NOT_FOUND");
    let (s, body) = app
        .admin(Method::GET, "/admin/usage?from=yesterday", None)
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
}

async fn usage_counts_calls_per_user_model_and_day(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("u1", &up.url("/echo"), json!({})).await;
    let c = app.caller("counted", &["u1"], None).await;
    for _ in 0..4 {
        assert_eq!(
            app.predict(&c.key, "/models/u1/predict", json!({}))
                .await
                .status(),
            200
        );
    }
    // Usage is written off the hot path, about once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (s, usage) = app
            .admin(
                Method::GET,
                &format!("/admin/usage?user_id={}&model=u1", c.user_id),
                None,
            )
            .await;
        assert_eq!(s, 200);
        if usage["usage"][0]["calls"] == 4 {
            assert_eq!(usage["usage"][0]["key_id"], c.key_id.as_str());
            assert_eq!(
                usage["usage"][0]["day"],
                chrono::Utc::now().format("%Y-%m-%d").to_string()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage not recorded: {usage}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
