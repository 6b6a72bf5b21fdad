//! Per-key rate limits and quotas.

use crate::helpers::*;
use crate::scenarios;
use reqwest::Method;
use serde_json::json;

scenarios!(
    five_per_second_admits_exactly_five_of_twenty,
    daily_quota_is_enforced,
    default_limits_apply_without_a_policy,
);

async fn five_per_second_admits_exactly_five_of_twenty(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("lim", &up.url("/echo"), json!({})).await;
    let policy = app.policy("five", 5.0, 5).await;
    let a = app.caller("a", &["lim"], Some(&policy)).await;
    let other = app.caller("b", &["lim"], Some(&policy)).await;
    // Warm every cache without spending a token: a wrong content type is
    // refused after authorization and before the rate limit.
    for key in [&a.key, &other.key] {
        let resp = app
            .client
            .post(format!("{}/models/lim/predict", app.url))
            .header("Authorization", format!("Api-Key {key}"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 415);
    }
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = format!("{}/models/lim/predict", app.url);
        let key = a.key.clone();
        tasks.push(tokio::spawn(async move {
            json_of(
                client
                    .post(url)
                    .header("Authorization", format!("Api-Key {key}"))
                    .json(&json!({}))
                    .send()
                    .await
                    .expect("sent"),
            )
            .await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (s, body, headers) = t.await.expect("join");
        assert_eq!(headers["ratelimit-limit"], "5");
        assert!(headers.contains_key("ratelimit-remaining"));
        assert!(headers.contains_key("ratelimit-reset"));
        match s.as_u16() {
            200 => ok += 1,
            429 => {
                assert_error(s, &body, 429, "RATE_LIMITED");
                let retry: u64 = headers["retry-after"]
                    .to_str()
                    .expect("ra")
                    .parse()
                    .expect("int");
                assert!((1..=2).contains(&retry), "retry-after {retry}");
                assert_eq!(headers["ratelimit-remaining"], "0");
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, limited), (5, 15));
    let resp = app
        .predict(&other.key, "/models/lim/predict", json!({}))
        .await;
    assert_eq!(
        resp.status(),
        200,
        "another key on the same model is unaffected"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("warder_rate_limited_total"), "{metrics}");
}

async fn daily_quota_is_enforced(b: Backend) {
    let app = spawn_app(b).await;
    let up = fake_upstream().await;
    app.register("q", &up.url("/echo"), json!({})).await;
    let (s, p) = app
        .admin(
            Method::POST,
            "/admin/policies",
            Some(json!({"name": "three-a-day", "daily_calls": 3})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let c = app.caller("u", &["q"], p["id"].as_str()).await;
    for _ in 0..3 {
        assert_eq!(
            app.predict(&c.key, "/models/q/predict", json!({}))
                .await
                .status(),
            200
        );
    }
    let (s, body, headers) =
        json_of(app.predict(&c.key, "/models/q/predict", json!({})).await).await;
    assert_error(s, &body, 429, "QUOTA_EXCEEDED");
    assert!(headers.contains_key("retry-after"));
}

async fn default_limits_apply_without_a_policy(b: Backend) {
    let app = spawn_app_with(b, |c| {
        c.default_rate_limit_per_second = Some(1.0);
        c.default_burst = Some(2);
    })
    .await;
    let up = fake_upstream().await;
    app.register("d", &up.url("/echo"), json!({})).await;
    let c = app.caller("u", &["d"], None).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            app.predict(&c.key, "/models/d/predict", json!({}))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 429]);
}
