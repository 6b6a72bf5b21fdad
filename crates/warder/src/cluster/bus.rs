//! The invalidation bus: a Redis stream that every node reads.
//!
//! A node that changes the control plane applies the change to its own
//! caches and appends it to the stream; every node's consumer applies what
//! it reads. A consumer that loses its connection drops all of its
//! in-process caches when it reconnects, so a message missed during an
//! outage cannot leave stale state behind. Entries are capped (MAXLEN ~).

use super::{Invalidation, Invalidator, RedisLink};
use crate::telemetry::metrics::Metrics;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::AsyncConnectionConfig;
use std::sync::Arc;
use std::time::Duration;

const FIELD: &str = "c";
const MAX_LEN: usize = 10_000;
const BLOCK_MS: u64 = 1_000;

/// Publishes invalidations to the other nodes.
#[derive(Clone)]
pub struct Bus {
    link: RedisLink,
    stream: Arc<str>,
}

impl Bus {
    /// The bus on `link`'s stream `<prefix>:invalidations`.
    pub fn new(link: RedisLink) -> Bus {
        let stream = Arc::from(link.key("invalidations"));
        Bus { link, stream }
    }

    /// Appends a change; a failure is logged (the other nodes drop their
    /// caches when their own connection recovers, and entries expire).
    pub async fn publish(&self, change: &Invalidation) {
        let stream = self.stream.to_string();
        let payload = change.encode();
        let sent = self
            .link
            .run("bus_publish", move |mut conn| {
                Box::pin(async move {
                    redis::cmd("XADD")
                        .arg(&stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(MAX_LEN)
                        .arg("*")
                        .arg(FIELD)
                        .arg(payload)
                        .query_async::<String>(&mut conn)
                        .await
                })
            })
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, change = change.kind(), "invalidation not published");
        }
    }

    /// Reads the stream until `shutdown`, applying every change locally.
    pub async fn consume(
        self,
        invalidator: Invalidator,
        metrics: Arc<Metrics>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut first = true;
        loop {
            let session = self.session(&invalidator, &metrics, first);
            tokio::select! {
                reason = session => {
                    tracing::warn!(error = %reason, "invalidation bus disconnected; reconnecting");
                    metrics.bus_reconnects.inc();
                }
                _ = &mut shutdown => return,
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    /// One connected session: returns why it ended.
    async fn session(&self, invalidator: &Invalidator, metrics: &Metrics, first: bool) -> String {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_millis(BLOCK_MS + 2_000));
        let mut conn = match self
            .link
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        // Start after the newest entry; everything before it is already
        // reflected in the store this node reads on a cache miss.
        let last: redis::RedisResult<StreamRangeReply> = redis::cmd("XREVRANGE")
            .arg(&*self.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await;
        let mut last_id = match last {
            Ok(r) => r
                .ids
                .first()
                .map(|e| e.id.clone())
                .unwrap_or_else(|| "0-0".to_owned()),
            Err(e) => return e.to_string(),
        };
        if !first {
            // Messages may have been missed while disconnected.
            invalidator.drop_all_local();
            tracing::info!("invalidation bus reconnected; in-process caches dropped");
        }
        loop {
            let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(256)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&*self.stream)
                .arg(&last_id)
                .query_async(&mut conn)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => return e.to_string(),
            };
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    last_id = entry.id.clone();
                    let Some(change) = entry
                        .get::<String>(FIELD)
                        .as_deref()
                        .and_then(Invalidation::decode)
                    else {
                        continue;
                    };
                    metrics.invalidation_received(change.kind());
                    invalidator.apply_local(&change);
                }
            }
        }
    }
}
