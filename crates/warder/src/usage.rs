//! Usage counting off the hot path, and daily/monthly quotas.
//!
//! A request only sends an event into a channel; a background task sums the
//! events and writes them to the store once a second (and at shutdown), so a
//! slow database never slows a predict. Quotas keep in-memory counters per
//! key × model × period, seeded once from the store when a period is first
//! seen.

use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use warder_core::{Store, StoreError, UsageKey};

/// One answered call.
#[derive(Debug)]
struct UsageEvent {
    user_id: Arc<str>,
    key_id: Arc<str>,
    model_id: String,
}

/// The sending side, held by request handlers.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: mpsc::Sender<UsageEvent>,
}

/// The receiving side, run as a background task by the app.
pub struct UsageWriter {
    rx: mpsc::Receiver<UsageEvent>,
    store: Arc<dyn Store>,
}

/// A recorder and the writer that drains it.
pub fn usage_channel(store: Arc<dyn Store>) -> (UsageRecorder, UsageWriter) {
    let (tx, rx) = mpsc::channel(65_536);
    (UsageRecorder { tx }, UsageWriter { rx, store })
}

/// Today as `YYYY-MM-DD` (UTC).
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

impl UsageRecorder {
    /// Counts one call; drops the event (with a warning) if the writer lags
    /// far behind, rather than slowing the request.
    pub fn record(&self, user_id: &Arc<str>, key_id: &Arc<str>, model_id: &str) {
        let event = UsageEvent {
            user_id: user_id.clone(),
            key_id: key_id.clone(),
            model_id: model_id.to_owned(),
        };
        if self.tx.try_send(event).is_err() {
            tracing::warn!("usage channel full; a call was not counted");
        }
    }
}

impl UsageWriter {
    /// Writes batches every second until every recorder is dropped or
    /// `shutdown` fires; then writes what is left.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut pending: HashMap<UsageKey, u64> = HashMap::new();
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(e) => add(&mut pending, e),
                    None => break,
                },
                _ = tick.tick() => self.flush(&mut pending).await,
                _ = &mut shutdown => break,
            }
        }
        while let Ok(e) = self.rx.try_recv() {
            add(&mut pending, e);
        }
        self.flush(&mut pending).await;
        tracing::info!("usage writer stopped");
    }

    async fn flush(&self, pending: &mut HashMap<UsageKey, u64>) {
        if pending.is_empty() {
            return;
        }
        let batch: Vec<(UsageKey, u64)> = pending.drain().collect();
        if let Err(e) = self.store.add_usage(&batch).await {
            tracing::warn!(error = %e, "usage not written; will retry");
            pending.extend(batch);
        }
    }
}

fn add(pending: &mut HashMap<UsageKey, u64>, e: UsageEvent) {
    let key = UsageKey {
        user_id: e.user_id.to_string(),
        key_id: e.key_id.to_string(),
        model_id: e.model_id,
        day: today(),
    };
    *pending.entry(key).or_default() += 1;
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
    counters: Cache<String, Arc<AtomicU64>>,
}

impl Quotas {
    /// Quotas over the usage in `store`.
    pub fn new(store: Arc<dyn Store>) -> Quotas {
        Quotas {
            store,
            counters: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(Duration::from_secs(35 * 24 * 3600))
                .build(),
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
