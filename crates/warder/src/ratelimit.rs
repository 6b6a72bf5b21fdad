//! The in-process GCRA rate limiter (embedded mode).
//!
//! One `governor` limiter per (key, model) pair, created on first use and
//! kept in a bounded cache (the least used go first when it is full). A
//! policy change replaces the pair's limiter (the next request starts from a
//! full bucket under the new policy).

use crate::ttl_cache::TtlCache;
use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warder_core::{RateDecision, RateLimiter, RateLimiterUnavailable};

type Limiter =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Bucket {
    rate: f64,
    burst: u32,
    limiter: Limiter,
}

/// GCRA limits kept in this process.
pub struct LocalRateLimiter {
    buckets: TtlCache<String, Arc<Bucket>>,
    /// Held while a bucket is replaced after a policy change.
    replacing: Mutex<()>,
    clock: DefaultClock,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        LocalRateLimiter::new()
    }
}

impl LocalRateLimiter {
    /// An empty limiter.
    pub fn new() -> LocalRateLimiter {
        LocalRateLimiter {
            // The least used go first when it is full; a bucket dropped
            // and made again starts full, as a long idle one would be.
            buckets: TtlCache::unexpiring(1_000_000),
            replacing: Mutex::new(()),
            clock: DefaultClock::default(),
        }
    }

    fn bucket(&self, key: &str, rate: f64, burst: u32) -> Arc<Bucket> {
        let same = |b: &Bucket| b.rate == rate && b.burst == burst;
        // One bucket for callers that miss together (each making its own
        // would admit a burst each).
        let b = self
            .buckets
            .get_or_insert_with(key, || Arc::new(Bucket::new(rate, burst)));
        if same(&b) {
            return b;
        }
        // A policy change replaces it once, starting from a full bucket:
        // callers that see the old one together take turns here, and all
        // but the first find the new one.
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let b = self
            .buckets
            .get_or_insert_with(key, || Arc::new(Bucket::new(rate, burst)));
        if same(&b) {
            return b;
        }
        let fresh = Arc::new(Bucket::new(rate, burst));
        self.buckets.insert(key.to_owned(), fresh.clone());
        fresh
    }
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Bucket {
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
        let burst_nz = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst_nz);
        Bucket {
            rate,
            burst,
            limiter: governor::RateLimiter::direct(quota)
                .with_middleware::<StateInformationMiddleware>(),
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(
        &self,
        key: &str,
        rate_per_second: f64,
        burst: u32,
    ) -> Result<RateDecision, RateLimiterUnavailable> {
        let bucket = self.bucket(key, rate_per_second, burst);
        let burst = burst.max(1);
        let per_token = Duration::from_secs_f64(1.0 / rate_per_second.max(1e-6));
        Ok(match bucket.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    limit: burst,
                    remaining,
                    reset_after: per_token * (burst - remaining.min(burst)),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateDecision {
                    allowed: false,
                    limit: burst,
                    remaining: 0,
                    reset_after: per_token * burst,
                    retry_after: wait,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_the_burst_then_refuses_with_a_wait() {
        let limiter = LocalRateLimiter::new();
        let mut allowed = 0;
        let mut last = None;
        for _ in 0..8 {
            let d = limiter.check("k", 5.0, 5).await.expect("local");
            if d.allowed {
                allowed += 1;
            } else {
                last = Some(d);
            }
        }
        assert_eq!(allowed, 5);
        let refused = last.expect("some refused");
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_millis(200));
        assert!(
            limiter.check("other", 5.0, 5).await.expect("local").allowed,
            "keys are independent"
        );
    }

    /// Eight threads ask for `k` (0.001/s, burst 5) four times each, all
    /// starting at once; answers how many were admitted.
    fn admitted_together(limiter: &Arc<LocalRateLimiter>) -> usize {
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, start) = (limiter.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..4)
                        .filter(|_| {
                            futures::executor::block_on(limiter.check("k", 0.001, 5))
                                .expect("local")
                                .allowed
                        })
                        .count()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("thread")).sum()
    }

    #[test]
    fn concurrent_requests_after_a_policy_change_share_one_new_bucket() {
        for round in 0..20 {
            let limiter = Arc::new(LocalRateLimiter::new());
            let old = futures::executor::block_on(limiter.check("k", 1.0, 1)).expect("local");
            assert!(old.allowed);
            assert_eq!(admitted_together(&limiter), 5, "round {round}");
        }
    }

    #[tokio::test]
    async fn a_policy_change_takes_effect() {
        let limiter = LocalRateLimiter::new();
        assert!(limiter.check("k", 1.0, 1).await.expect("local").allowed);
        assert!(!limiter.check("k", 1.0, 1).await.expect("local").allowed);
        assert!(limiter.check("k", 100.0, 10).await.expect("local").allowed);
    }

    /// The first requests of a key, arriving together, share one bucket: a
    /// bucket made by each of them would admit a burst each.
    #[test]
    fn concurrent_first_requests_share_one_bucket() {
        for round in 0..20 {
            let limiter = Arc::new(LocalRateLimiter::new());
            assert_eq!(admitted_together(&limiter), 5, "round {round}");
        }
    }
}
