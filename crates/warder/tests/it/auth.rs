//! Authentication and authorization: every way a key can be wrong, grants,
//! the admin scope, and secrets never stored in clear.

use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

scenarios!(
    bad_keys_are_401_in_the_error_shape,
    revocation_is_effective_on_the_next_request,
    expired_keys_are_refused,
    no_grant_is_403_and_grant_removal_is_immediate,
    admin_routes_need_the_admin_scope,
    admin_scope_needs_an_admin_user,
);

async fn bad_keys_are_401_in_the_error_shape(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("m", &up.url("/echo"), json!({})).await;
    let url = format!("{}/models/m/predict", app.url);
    let unknown = warder_core::ApiKey::generate().expose();
    let c = app.caller("u", &["m"], None).await;
    // Right public id, wrong secret: refused before and after the right
    // secret has been seen (and is recognised without hashing).
    let wrong_secret = format!("wdr_{}_{}", c.key_id, "A".repeat(40));
    let (s, body, _) = json_of(
        app.client
            .post(&url)
            .header("Authorization", format!("Api-Key {wrong_secret}"))
            .json(&json!({}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_error(s, &body, 401, "UNAUTHENTICATED");
    for _ in 0..2 {
        let r = app.predict(&c.key, "/models/m/predict", json!({})).await;
        assert_eq!(r.status(), 200);
    }
    for header in [
        None,
        Some("Api-Key".to_owned()),
        Some("Api-Key not-a-key".to_owned()),
        Some(format!("Basic {}", c.key)),
        Some(format!("Api-Key {unknown}")),
        Some(format!("Api-Key {wrong_secret}")),
    ] {
        let mut req = app.client.post(&url).json(&json!({}));
        if let Some(h) = &header {
            req = req.header("Authorization", h);
        }
        let (s, body, headers) = json_of(req.send().await.expect("sent")).await;
        assert_error(s, &body, 401, "UNAUTHENTICATED");
        assert_eq!(headers["www-authenticate"], "Api-Key", "{header:?}");
    }
    let r = app.predict(&c.key, "/models/m/predict", json!({})).await;
    assert_eq!(r.status(), 200);
    // Only the three calls with the right secret reached the model.
    assert_eq!(up.log.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

async fn revocation_is_effective_on_the_next_request(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("m", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["m"], None).await;
    // Warm the auth cache.
    for _ in 0..3 {
        assert_eq!(
            app.predict(&c.key, "/models/m/predict", json!({}))
                .await
                .status(),
            200
        );
    }
    let (s, revoked) = app
        .admin(Method::DELETE, &format!("/admin/keys/{}", c.key_id), None)
        .await;
    assert_eq!(s, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (s, body, _) = json_of(app.predict(&c.key, "/models/m/predict", json!({})).await).await;
    assert_error(s, &body, 401, "UNAUTHENTICATED");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("revoked")));
    let (s, body) = app
        .admin(Method::DELETE, "/admin/keys/zzzzzzzz", None)
        .await;
    assert_error(s, &body, 404, "NOT_FOUND");
}

async fn expired_keys_are_refused(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("m", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["m"], None).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (s, key) = app
        .admin(
            Method::POST,
            &format!("/admin/users/{}/keys", c.user_id),
            Some(json!({"name": "short", "expires_at": expires.to_rfc3339()})),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let short = key["key"].as_str().expect("key");
    assert_eq!(
        app.predict(short, "/models/m/predict", json!({}))
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (s, body, _) = json_of(app.predict(short, "/models/m/predict", json!({})).await).await;
    assert_error(s, &body, 401, "UNAUTHENTICATED");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("expired")));

    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (s, body) = app
        .admin(
            Method::POST,
            &format!("/admin/users/{}/keys", c.user_id),
            Some(json!({"name": "past", "expires_at": past})),
        )
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
}

async fn no_grant_is_403_and_grant_removal_is_immediate(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("granted", &up.url("/echo"), json!({})).await;
    app.register("secret", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["granted"], None).await;
    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/secret/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 403, "FORBIDDEN");
    let (s, body, _) = json_of(app.predict(&c.key, "/models/nope/predict", json!({})).await).await;
    assert_error(s, &body, 404, "MODEL_NOT_FOUND");

    assert_eq!(
        app.predict(&c.key, "/models/granted/predict", json!({}))
            .await
            .status(),
        200
    );
    let (_, grants) = app
        .admin(
            Method::GET,
            &format!("/admin/grants?user_id={}", c.user_id),
            None,
        )
        .await;
    let gid = grants["grants"][0]["id"].as_str().expect("grant id");
    let (s, _) = app
        .admin(Method::DELETE, &format!("/admin/grants/{gid}"), None)
        .await;
    assert_eq!(s, 200);
    let (s, body, _) = json_of(
        app.predict(&c.key, "/models/granted/predict", json!({}))
            .await,
    )
    .await;
    assert_error(s, &body, 403, "FORBIDDEN");
}

async fn admin_routes_need_the_admin_scope(b: Backend) {
    let app = spawn_app(b).await;
    let c = app.caller("member", &[], None).await;
    for (method, path) in [
        (Method::GET, "/admin/users"),
        (Method::POST, "/admin/models"),
        (Method::GET, "/admin/policies"),
        (Method::DELETE, "/admin/keys/abcdefgh"),
        (Method::GET, "/admin/usage"),
    ] {
        let (s, body) = app
            .call_with_key(&c.key, method, path, Some(json!({})))
            .await;
        assert_error(s, &body, 403, "FORBIDDEN");
    }
    let resp = app
        .client
        .get(format!("{}/admin/users", app.url))
        .send()
        .await
        .expect("sent");
    let (s, body, _) = json_of(resp).await;
    assert_error(s, &body, 401, "UNAUTHENTICATED");
}

async fn admin_scope_needs_an_admin_user(b: Backend) {
    let app = spawn_app(b).await;
    let c = app.caller("member", &[], None).await;
    let (s, body) = app
        .admin(
            Method::POST,
            &format!("/admin/users/{}/keys", c.user_id),
            Some(json!({"name": "x", "scopes": ["admin"]})),
        )
        .await;
    assert_error(s, &body, 422, "INVALID_INPUT");
    let (s, admin) = app
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"name": "ops", "role": "admin"})),
        )
        .await;
    assert_eq!(s, 201);
    let key = app
        .new_key(admin["id"].as_str().expect("id"), &["admin"])
        .await;
    let (s, users) = app
        .call_with_key(
            key["key"].as_str().expect("key"),
            Method::GET,
            "/admin/users",
            None,
        )
        .await;
    assert_eq!(s, 200, "{users}");
    assert!(users["users"].as_array().is_some_and(|u| u.len() >= 3));
}
