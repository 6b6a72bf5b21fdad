//! Admission of a call: the key's grant, the rate limit (with the
//! `RateLimit-*` fields of its decision) and the daily and monthly quotas.
//! Shared by sync predict and async submits.

use crate::auth::Principal;
use crate::catalog::{Access, Limits, Target};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::telemetry::metrics::{Label, ModelLabels};
use crate::usage::{QuotaPeriod, QuotaRefusal};
use http::header::{HeaderName, HeaderValue};
use warder_core::{ErrorCode, RateDecision};

/// Checks the grant (admin keys need none) and returns the limits to apply.
pub(crate) async fn authorize(
    state: &AppState,
    principal: &Principal,
    target: &Target,
) -> Result<Limits, ApiError> {
    if principal.admin {
        return Ok(state.catalog.default_limits().clone());
    }
    match &*state
        .catalog
        .access(&principal.user_id, &target.model_label)
        .await?
    {
        Access::Granted(limits) => Ok(limits.clone()),
        Access::Denied => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this key has no grant for model '{}'", target.model.name),
        )),
    }
}

/// Applies the rate limit; returns the decision for the `RateLimit-*` headers.
pub(crate) async fn admit(
    state: &AppState,
    principal: &Principal,
    target: &Target,
    limits: &Limits,
) -> Result<Option<RateDecision>, ApiError> {
    let model = &target.model.id;
    let mut decision = None;
    if let Some(rate) = limits.rate_per_second {
        let mut key = String::with_capacity(principal.key_id.len() + 1 + model.len());
        key.push_str(&principal.key_id);
        key.push(':');
        key.push_str(model);
        match state.limiter.check(&key, rate, limits.burst).await {
            Ok(d) if d.allowed => decision = Some(d),
            Ok(d) => return Err(rate_limited(state, model, &d)),
            Err(e) => limiter_unavailable(state, &e)?,
        }
    }
    Ok(decision)
}

fn rate_limited(state: &AppState, model: &str, d: &RateDecision) -> ApiError {
    state
        .metrics
        .rate_limited
        .get_or_create(&ModelLabels {
            model: Label::new(model),
        })
        .inc();
    let mut err = ApiError::new(ErrorCode::RateLimited, "rate limit exceeded")
        .with_retry_after(d.retry_after.as_secs_f64().ceil() as u64);
    for (name, value) in rate_limit_fields(d) {
        err = err.with_header(name.clone(), HeaderValue::from(value));
    }
    err
}

/// Takes one call from the daily and monthly quotas, or refuses. Runs after
/// every other check, so a refused or malformed request costs no quota.
pub(crate) async fn take_quota(
    state: &AppState,
    principal: &Principal,
    target: &Target,
    limits: &Limits,
) -> Result<(), ApiError> {
    let model = &target.model.id;
    if limits.has_quota() {
        match state
            .quotas
            .admit(
                &principal.key_id,
                model,
                limits.daily_calls,
                limits.monthly_calls,
            )
            .await
        {
            Ok(()) => {}
            Err(QuotaRefusal::Exceeded(period)) => {
                state
                    .metrics
                    .quota_exceeded
                    .get_or_create(&ModelLabels {
                        model: target.model_label.clone(),
                    })
                    .inc();
                let (what, retry) = match period {
                    QuotaPeriod::Day => ("daily", seconds_to_next_utc_day()),
                    QuotaPeriod::Month => ("monthly", seconds_to_next_utc_month()),
                };
                return Err(ApiError::new(
                    ErrorCode::QuotaExceeded,
                    format!("{what} call quota exhausted"),
                )
                .with_retry_after(retry));
            }
            Err(QuotaRefusal::Store(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The shared limiter could not be asked: fail open (default, counted) or
/// closed (`rate_limit_fail_closed`).
fn limiter_unavailable(
    state: &AppState,
    e: &warder_core::RateLimiterUnavailable,
) -> Result<(), ApiError> {
    use crate::telemetry::metrics::OutcomeLabels;
    let closed = state.config.rate_limit_fail_closed;
    state
        .metrics
        .rate_limit_unavailable
        .get_or_create(&OutcomeLabels {
            outcome: if closed { "refused" } else { "allowed" }.to_owned(),
        })
        .inc();
    tracing::debug!(error = %e, fail_closed = closed, "rate limiter unavailable");
    if closed {
        Err(ApiError::new(
            ErrorCode::ServiceUnavailable,
            "rate limiting is unavailable; try again shortly",
        )
        .with_retry_after(1))
    } else {
        Ok(())
    }
}

fn seconds_to_next_utc_month() -> u64 {
    use chrono::{Datelike, TimeZone};
    let now = chrono::Utc::now();
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    chrono::Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|next| (next - now).num_seconds().max(1) as u64)
        .unwrap_or(86_400)
}

fn seconds_to_next_utc_day() -> u64 {
    let now = warder_core::now_ms() / 1000;
    (86_400 - now.rem_euclid(86_400)) as u64
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
pub(super) static RATE_LIMIT_NAMES: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];

/// The `RateLimit-*` fields of a decision: each one's name and value.
pub(crate) fn rate_limit_fields(d: &RateDecision) -> [(&'static HeaderName, u64); 3] {
    let [limit, remaining, reset] = &RATE_LIMIT_NAMES;
    [
        (limit, u64::from(d.limit)),
        (remaining, u64::from(d.remaining)),
        (reset, d.reset_after.as_secs_f64().ceil() as u64),
    ]
}
