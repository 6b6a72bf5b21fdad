//! The demo models of `--demo`: `echo`, `sentiment`, `temperature`, `slow`.
//!
//! They are served by a small HTTP server inside this process on a loopback
//! port and registered as ordinary model versions, so every demo request
//! takes the real path: authentication, rate limit, upstream call, envelope.

use crate::app::StartupError;
use crate::control::VersionSpec;
use crate::state::AppState;
use axum::routing::post;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use warder_core::{NewPolicy, Role, Scope, VersionPatch};

/// Names of the demo models, in the order they are registered.
pub const DEMO_MODELS: [&str; 4] = ["echo", "sentiment", "temperature", "slow"];

/// Keys created for the demo; printed once at start-up.
#[derive(Debug, Clone)]
pub struct DemoKeys {
    /// A key of the `admin` user with the admin scope.
    pub admin_key: String,
    /// A key of the `demo` user, granted every demo model.
    pub user_key: String,
}

/// The demo model server's routes.
pub fn models_router() -> Router {
    Router::new()
        .route("/echo", post(echo))
        .route("/sentiment", post(sentiment))
        .route("/temperature", post(temperature))
        .route("/slow", post(slow))
}

async fn echo(Json(v): Json<Value>) -> Json<Value> {
    Json(v)
}

#[derive(Deserialize)]
struct SentimentInput {
    text: String,
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "love",
    "happy",
    "wonderful",
    "fantastic",
    "nice",
    "best",
    "amazing",
    "like",
    "enjoy",
    "awesome",
    "brilliant",
    "pleased",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "hate",
    "sad",
    "horrible",
    "worst",
    "poor",
    "angry",
    "boring",
    "dislike",
    "ugly",
    "broken",
    "disappointing",
    "slow",
];

/// Lexicon scorer: (positive − negative) / matched words, in −1…1.
pub fn score_sentiment(text: &str) -> (&'static str, f64) {
    let (mut pos, mut neg) = (0i32, 0i32);
    let mut negate = false;
    for word in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
    {
        let w = word.to_lowercase();
        if matches!(
            w.as_str(),
            "not" | "never" | "no" | "don't" | "isn't" | "wasn't"
        ) {
            negate = true;
            continue;
        }
        let sign = if POSITIVE.contains(&w.as_str()) {
            1
        } else if NEGATIVE.contains(&w.as_str()) {
            -1
        } else {
            0
        };
        let sign = if negate { -sign } else { sign };
        if sign != 0 {
            negate = false;
        }
        match sign {
            1 => pos += 1,
            -1 => neg += 1,
            _ => {}
        }
    }
    let total = pos + neg;
    let score = if total == 0 {
        0.0
    } else {
        f64::from(pos - neg) / f64::from(total)
    };
    let label = if score > 0.05 {
        "positive"
    } else if score < -0.05 {
        "negative"
    } else {
        "neutral"
    };
    (label, (score * 1000.0).round() / 1000.0)
}

async fn sentiment(Json(input): Json<SentimentInput>) -> Json<Value> {
    let (label, score) = score_sentiment(&input.text);
    Json(json!({ "label": label, "score": score }))
}

#[derive(Deserialize)]
struct TemperatureInput {
    latitude: f64,
    longitude: f64,
    month: f64,
    hour: f64,
}

/// A toy regressor: warmer near the equator, in local summer and mid-afternoon.
pub fn predict_temperature(lat: f64, lon: f64, month: f64, hour: f64) -> f64 {
    use std::f64::consts::PI;
    let base = 27.0 - 0.4 * lat.abs();
    // Seasons are opposite in the two hemispheres; peak in July (north).
    let season = (2.0 * PI * (month - 4.0) / 12.0).sin() * (lat.abs() / 90.0) * 15.0;
    let season = if lat >= 0.0 { season } else { -season };
    // Local solar hour from UTC hour and longitude; peak near 15:00.
    let local = (hour + lon / 15.0).rem_euclid(24.0);
    let daily = (2.0 * PI * (local - 9.0) / 24.0).sin() * 5.0;
    ((base + season + daily) * 10.0).round() / 10.0
}

async fn temperature(Json(i): Json<TemperatureInput>) -> Json<Value> {
    Json(json!({ "temperature": predict_temperature(i.latitude, i.longitude, i.month, i.hour) }))
}

#[derive(Deserialize)]
struct SlowInput {
    ms: u64,
}

async fn slow(Json(i): Json<SlowInput>) -> Json<Value> {
    let ms = i.ms.min(600_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "slept_ms": ms }))
}

/// Starts the demo model server, registers (or re-points) the demo models,
/// and creates an admin key and a user key.
pub async fn start(state: &AppState) -> Result<(DemoKeys, BoxFuture<'static, ()>), StartupError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })?;
    let bound = crate::server::local_addr(&listener);
    let server: BoxFuture<'static, ()> = Box::pin(async move {
        if let Err(e) = axum::serve(listener, models_router()).await {
            tracing::error!(error = %e, "demo model server stopped");
        }
    });

    let control = &state.control;
    let policy = match control
        .policies()
        .await?
        .into_iter()
        .find(|p| p.name == "demo")
    {
        Some(p) => p,
        None => {
            control
                .create_policy(NewPolicy {
                    name: "demo".into(),
                    rate_limit_per_second: Some(10.0),
                    burst: Some(20),
                    daily_calls: None,
                    monthly_calls: None,
                })
                .await?
        }
    };
    let user = control.ensure_user("demo", Role::Member).await?;
    let admin = control.ensure_user("admin", Role::Admin).await?;
    for name in DEMO_MODELS {
        let url = format!("http://{bound}/{name}");
        let model = match control.model(name).await {
            Ok(m) => m,
            Err(_) => {
                control
                    .create_model(name.into(), Some(format!("demo model '{name}'")))
                    .await?
            }
        };
        let versions = control.versions(&model.id).await?;
        if versions.is_empty() {
            control
                .create_version(
                    &model.id,
                    VersionSpec {
                        upstream_url: url,
                        timeout_ms: Some(if name == "slow" { 120_000 } else { 10_000 }),
                        ..VersionSpec::default()
                    },
                )
                .await?;
        } else {
            // The demo server gets a new port on every start.
            for v in versions {
                control
                    .update_version(
                        &v.id,
                        VersionPatch {
                            upstream_url: Some(url.clone()),
                            ..VersionPatch::default()
                        },
                    )
                    .await?;
            }
        }
        if control
            .grants(Some(&user.id))
            .await?
            .iter()
            .all(|g| g.model_id != model.id)
        {
            control
                .create_grant(&user.id, &model.id, Some(&policy.id))
                .await?;
        }
    }
    let (_, admin_key) = control
        .create_key(&admin.id, "demo-admin".into(), vec![Scope::Admin], None)
        .await?;
    let (_, user_key) = control
        .create_key(&user.id, "demo".into(), Vec::new(), None)
        .await?;
    tracing::info!(models = ?DEMO_MODELS, upstream = %bound, "demo models registered");
    Ok((
        DemoKeys {
            admin_key: admin_key.expose(),
            user_key: user_key.expose(),
        },
        server,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_labels() {
        assert_eq!(score_sentiment("I love this, it is great").0, "positive");
        assert_eq!(score_sentiment("terrible and awful").0, "negative");
        assert_eq!(score_sentiment("the sky is blue").0, "neutral");
        assert_eq!(score_sentiment("not good").0, "negative");
        let (_, s) = score_sentiment("good bad good");
        assert!((-1.0..=1.0).contains(&s));
    }

    #[test]
    fn temperature_is_warmer_at_the_equator_and_in_summer() {
        let equator = predict_temperature(0.0, 0.0, 7.0, 14.0);
        let arctic = predict_temperature(70.0, 0.0, 7.0, 14.0);
        assert!(equator > arctic);
        let july = predict_temperature(48.0, 2.0, 7.0, 14.0);
        let january = predict_temperature(48.0, 2.0, 1.0, 14.0);
        assert!(july > january);
    }
}
