//! The rate-limiter trait: GCRA per (key, model), local or shared.

use async_trait::async_trait;
use std::time::Duration;

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The burst size (the `RateLimit-Limit` header).
    pub limit: u32,
    /// Requests that could still be made at once after this one.
    pub remaining: u32,
    /// Time until the bucket is full again (`RateLimit-Reset`).
    pub reset_after: Duration,
    /// When refused: time until one request would be allowed.
    pub retry_after: Duration,
}

/// The shared limiter could not be asked (e.g. Redis is down); the caller
/// decides whether to fail open or closed.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct RateLimiterUnavailable(pub String);

/// A GCRA rate limiter keyed by an opaque string.
///
/// Implementations must be atomic per key: concurrent checks of one key
/// never admit more than `burst` requests at once, whichever node they run on.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Checks (and on success, consumes) one request of `key` under a sustained
    /// `rate_per_second` with `burst`.
    async fn check(
        &self,
        key: &str,
        rate_per_second: f64,
        burst: u32,
    ) -> Result<RateDecision, RateLimiterUnavailable>;
}
