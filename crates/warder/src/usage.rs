//! Usage counting off the hot path, and daily/monthly quotas.
//!
//! A request only adds one to an in-memory counter (a short, uncontended
//! mutex, never held across `.await`); a background task takes the counters
//! and writes them to the store once a second (and at shutdown), so a slow
//! database never slows a predict, and a request wakes no other task. Quotas
//! keep in-memory counters per key × model × period, seeded once from the
//! store when a period is first seen.

use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warder_core::{Store, StoreError, UsageKey};

/// Calls counted but not yet written: (user, key, model, UTC day number).
type Pending = HashMap<(Arc<str>, Arc<str>, Arc<str>, i64), u64, crate::FastHash>;

/// At most this many distinct counters wait for the writer; beyond it a call
/// is not counted (with a warning) rather than memory growing without bound
/// while the store is down.
const MAX_PENDING: usize = 1_000_000;

/// The counting side, held by request handlers; cheap to clone.
#[derive(Clone)]
pub struct UsageRecorder {
    pending: Arc<Mutex<Pending>>,
}

/// The writing side, run as a background task by the app.
pub struct UsageWriter {
    pending: Arc<Mutex<Pending>>,
    store: Arc<dyn Store>,
}

/// A recorder and the writer that drains it.
pub fn usage_channel(store: Arc<dyn Store>) -> (UsageRecorder, UsageWriter) {
    let pending = Arc::new(Mutex::new(HashMap::default()));
    (
        UsageRecorder {
            pending: pending.clone(),
        },
        UsageWriter { pending, store },
    )
}

/// Today as `YYYY-MM-DD` (UTC).
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

fn day_number(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000)
}

fn day_text(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(today)
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // Counters are plain integers: a panic elsewhere cannot leave them torn.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

impl UsageRecorder {
    /// Counts one call on the current UTC day.
    pub fn record(&self, user_id: &Arc<str>, key_id: &Arc<str>, model_id: &Arc<str>) {
        let day = day_number(warder_core::now_ms());
        let mut pending = lock(&self.pending);
        let key = (user_id.clone(), key_id.clone(), model_id.clone(), day);
        if let Some(n) = pending.get_mut(&key) {
            *n += 1;
        } else if pending.len() < MAX_PENDING {
            pending.insert(key, 1);
        } else {
            drop(pending);
            tracing::warn!("too many usage counters waiting for the store; a call was not counted");
        }
    }
}

impl UsageWriter {
    /// Writes the counters every second until `shutdown` fires; then writes
    /// what is left.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = &mut shutdown => break,
            }
        }
        self.flush().await;
        tracing::info!("usage writer stopped");
    }

    async fn flush(&self) {
        let taken = std::mem::take(&mut *lock(&self.pending));
        if taken.is_empty() {
            return;
        }
        let batch: Vec<(UsageKey, u64)> = taken
            .iter()
            .map(|((user, key, model, day), n)| {
                (
                    UsageKey {
                        user_id: user.to_string(),
                        key_id: key.to_string(),
                        model_id: model.to_string(),
                        day: day_text(*day),
                    },
                    *n,
                )
            })
            .collect();
        if let Err(e) = self.store.add_usage(&batch).await {
            tracing::warn!(error = %e, "usage not written; will retry");
            let mut pending = lock(&self.pending);
            for (k, n) in taken {
                *pending.entry(k).or_default() += n;
            }
        }
    }
}

/// Which quota was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    /// The UTC day.
    Day,
    /// The UTC month.
    Month,
}

/// Daily and monthly call quotas per key × model.
pub struct Quotas {
    store: Arc<dyn Store>,
    counters: Cache<String, Arc<AtomicU64>, crate::FastHash>,
}

impl Quotas {
    /// Quotas over the usage in `store`.
    pub fn new(store: Arc<dyn Store>) -> Quotas {
        Quotas {
            store,
            counters: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(35 * 24 * 3600))
                .build_with_hasher(crate::FastHash::new()),
        }
    }

    /// Takes one call from each configured quota, or refuses.
    pub async fn admit(
        &self,
        key_id: &str,
        model_id: &str,
        daily: Option<u64>,
        monthly: Option<u64>,
    ) -> Result<(), QuotaRefusal> {
        let day = today();
        let month = &day[..7];
        let mut taken: Vec<Arc<AtomicU64>> = Vec::new();
        for (limit, period, from, to) in [
            (daily, QuotaPeriod::Day, day.clone(), day.clone()),
            (
                monthly,
                QuotaPeriod::Month,
                format!("{month}-01"),
                format!("{month}-31"),
            ),
        ] {
            let Some(limit) = limit else { continue };
            let counter = self.counter(key_id, model_id, &from, &to).await?;
            if counter.fetch_add(1, Ordering::AcqRel) >= limit {
                counter.fetch_sub(1, Ordering::AcqRel);
                for t in taken {
                    t.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(QuotaRefusal::Exceeded(period));
            }
            taken.push(counter);
        }
        Ok(())
    }

    /// Gives back the calls `admit` took (a submit that turned out to be an
    /// idempotent replay, or that could not be stored).
    pub fn refund(&self, key_id: &str, model_id: &str, daily: Option<u64>, monthly: Option<u64>) {
        let day = today();
        let month = &day[..7];
        for (limit, from, to) in [
            (daily, day.clone(), day.clone()),
            (monthly, format!("{month}-01"), format!("{month}-31")),
        ] {
            if limit.is_none() {
                continue;
            }
            let name = format!("{key_id}/{model_id}/{from}/{to}");
            if let Some(c) = self.counters.get(&name) {
                // Never below zero, even if the period turned meanwhile.
                let _ = c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
    }

    async fn counter(
        &self,
        key_id: &str,
        model_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Arc<AtomicU64>, QuotaRefusal> {
        let name = format!("{key_id}/{model_id}/{from}/{to}");
        if let Some(c) = self.counters.get(&name) {
            return Ok(c);
        }
        let used = self.store.calls_between(key_id, model_id, from, to).await?;
        Ok(self
            .counters
            .get_with(name, || Arc::new(AtomicU64::new(used))))
    }
}

/// Why a quota check refused.
#[derive(Debug, thiserror::Error)]
pub enum QuotaRefusal {
    /// The quota of the period is used up.
    #[error("quota exceeded")]
    Exceeded(QuotaPeriod),
    /// The store could not be asked for the period's usage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_numbers_render_as_utc_dates() {
        // 2026-02-28T23:59:59.999Z and the next millisecond.
        let before = 1_772_323_199_999;
        assert_eq!(day_text(day_number(before)), "2026-02-28");
        assert_eq!(day_text(day_number(before + 1)), "2026-03-01");
        assert_eq!(day_text(day_number(0)), "1970-01-01");
    }

    #[test]
    fn calls_are_summed_per_user_key_model_and_day() {
        let pending = Arc::new(Mutex::new(HashMap::default()));
        let recorder = UsageRecorder {
            pending: pending.clone(),
        };
        let (u, k, m1, m2): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) =
            ("u".into(), "k".into(), "m1".into(), "m2".into());
        for _ in 0..3 {
            recorder.record(&u, &k, &m1);
        }
        recorder.record(&u, &k, &m2);
        let pending = lock(&pending);
        let mut counts: Vec<(String, u64)> = pending
            .iter()
            .map(|((_, _, m, _), n)| (m.to_string(), *n))
            .collect();
        counts.sort();
        assert_eq!(counts, vec![("m1".to_owned(), 3), ("m2".to_owned(), 1)]);
    }
}
