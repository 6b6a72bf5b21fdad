//! GCRA over Redis: one Lua script per check, atomic per key on the server,
//! with the server's clock, so every node sees one bucket per key × model.
//!
//! Same semantics as [`crate::ratelimit::LocalRateLimiter`]: a key may make
//! `burst` requests at once and then one per `1/rate` seconds.

use super::{RedisDown, RedisLink};
use async_trait::async_trait;
use std::time::Duration;
use warder_core::{RateDecision, RateLimiter, RateLimiterUnavailable};

/// Returns `{allowed, remaining, retry_after_us, reset_after_us}`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local window = interval * burst
if new_tat - now > window then
  local retry = new_tat - now - window
  return {0, 0, math.floor(retry), math.floor(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
local remaining = math.floor((window - (new_tat - now)) / interval)
return {1, remaining, 0, math.floor(new_tat - now)}
"#;

/// Rate limits shared by every node through Redis.
pub struct RedisRateLimiter {
    link: RedisLink,
    script: redis::Script,
}

impl RedisRateLimiter {
    /// A limiter over `link`.
    pub fn new(link: RedisLink) -> RedisRateLimiter {
        RedisRateLimiter {
            link,
            script: redis::Script::new(GCRA),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(
        &self,
        key: &str,
        rate_per_second: f64,
        burst: u32,
    ) -> Result<RateDecision, RateLimiterUnavailable> {
        let burst = burst.max(1);
        let interval_us = (1_000_000.0 / rate_per_second.max(1e-6)).round().max(1.0) as i64;
        let redis_key = self.link.key(&format!("rl:{key}"));
        let script = self.script.clone();
        let reply: Vec<i64> = self
            .link
            .run("ratelimit", move |mut conn| {
                Box::pin(async move {
                    script
                        .key(redis_key)
                        .arg(interval_us)
                        .arg(burst)
                        .invoke_async(&mut conn)
                        .await
                })
            })
            .await
            .map_err(|RedisDown(e)| RateLimiterUnavailable(e))?;
        let [allowed, remaining, retry_us, reset_us] = reply[..] else {
            return Err(RateLimiterUnavailable("unexpected script reply".into()));
        };
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: burst,
            remaining: remaining.clamp(0, i64::from(burst)) as u32,
            reset_after: Duration::from_micros(reset_us.max(0) as u64),
            retry_after: Duration::from_micros(retry_us.max(0) as u64),
        })
    }
}
