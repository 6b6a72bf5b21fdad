//! Cluster mode: what several nodes share through Redis.
//!
//! - [`RedisLink`]: one multiplexed connection with short timeouts and a
//!   health flag, so that while Redis is down callers fall back at once
//!   instead of each waiting for a timeout;
//! - [`bus`]: the invalidation bus (a Redis stream every node reads);
//! - [`authcache`]: the shared L2 cache of authentication results;
//! - [`ratelimit`]: GCRA as one atomic Lua script, so a key's limit holds
//!   across all nodes.
//!
//! Nothing here decides whether a request is allowed; it only shares state.

pub mod authcache;
pub mod bus;
pub mod ratelimit;

use crate::auth::AuthService;
use crate::catalog::Catalog;
use crate::telemetry::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A change that makes cached state stale somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One key changed (revoked, created).
    Key(String),
    /// Grants or policies changed.
    Access,
    /// Models, versions or environments changed.
    Targets,
}

impl Invalidation {
    /// Wire form: `key:<id>`, `access`, `targets`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Key(id) => format!("key:{id}"),
            Invalidation::Access => "access".to_owned(),
            Invalidation::Targets => "targets".to_owned(),
        }
    }

    /// Parses the wire form.
    pub fn decode(s: &str) -> Option<Invalidation> {
        match s {
            "access" => Some(Invalidation::Access),
            "targets" => Some(Invalidation::Targets),
            _ => s
                .strip_prefix("key:")
                .map(|id| Invalidation::Key(id.to_owned())),
        }
    }

    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Invalidation::Key(_) => "key",
            Invalidation::Access => "access",
            Invalidation::Targets => "targets",
        }
    }
}

/// Keeps this node's caches true, and tells the other nodes.
#[derive(Clone)]
pub struct Invalidator {
    auth: AuthService,
    catalog: Arc<Catalog>,
    bus: Option<bus::Bus>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator")
            .field("clustered", &self.bus.is_some())
            .finish()
    }
}

impl Invalidator {
    /// An invalidator over this node's caches; `bus` when clustered.
    pub fn new(auth: AuthService, catalog: Arc<Catalog>, bus: Option<bus::Bus>) -> Invalidator {
        Invalidator { auth, catalog, bus }
    }

    /// Applies a change to this node's caches only.
    pub fn apply_local(&self, change: &Invalidation) {
        match change {
            Invalidation::Key(id) => self.auth.invalidate(id),
            Invalidation::Access => self.catalog.invalidate_access(),
            Invalidation::Targets => self.catalog.invalidate_targets(),
        }
    }

    /// Drops every cached result of this node (after a missed message).
    pub fn drop_all_local(&self) {
        self.auth.invalidate_all();
        self.catalog.invalidate_access();
        self.catalog.invalidate_targets();
    }

    /// Applies a change here and publishes it to the other nodes.
    pub async fn changed(&self, change: Invalidation) {
        self.apply_local(&change);
        if let (Invalidation::Key(id), Some(l2)) = (&change, self.auth.l2()) {
            l2.forget(id).await;
        }
        if let Some(bus) = &self.bus {
            bus.publish(&change).await;
        }
    }
}

/// A shared Redis connection with a health flag.
#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    conn: ConnectionManager,
    up: Arc<AtomicBool>,
    prefix: Arc<str>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisDown(pub String);

impl RedisLink {
    /// Connects (Redis must answer at start-up) and starts nothing yet.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<RedisLink, RedisDown> {
        let client = redis::Client::open(url).map_err(|e| RedisDown(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(timeout)
            .set_connection_timeout(timeout.max(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(200);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| RedisDown("timed out connecting".into()))?
        .map_err(|e| RedisDown(e.to_string()))?;
        metrics.redis_up.set(1);
        Ok(RedisLink {
            client,
            conn,
            up: Arc::new(AtomicBool::new(true)),
            prefix: Arc::from(prefix),
            timeout,
            metrics,
        })
    }

    /// Whether the last contact succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A namespaced key: `<prefix>:<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// The underlying client, for dedicated (blocking) connections.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs a command on the shared connection, failing fast while Redis is
    /// known to be down and marking it down on a failure.
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: impl FnOnce(
            ConnectionManager,
        ) -> futures::future::BoxFuture<'static, redis::RedisResult<T>>,
    ) -> Result<T, RedisDown> {
        if !self.is_up() {
            return Err(RedisDown("marked down".into()));
        }
        match tokio::time::timeout(self.timeout, cmd(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                Err(RedisDown(e.to_string()))
            }
            Err(_) => {
                self.failed(op, "timeout");
                Err(RedisDown("timeout".into()))
            }
        }
    }

    fn failed(&self, op: &'static str, error: &str) {
        self.metrics.redis_error(op);
        if self.up.swap(false, Ordering::Relaxed) {
            self.metrics.redis_up.set(0);
            tracing::warn!(
                op,
                error,
                "redis unreachable; falling back until it answers"
            );
        }
    }

    /// Pings Redis every 200 ms and marks it up again as soon as it answers,
    /// so service returns to normal well within 2 s of Redis coming back.
    pub async fn monitor(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => return,
            }
            let mut conn = self.conn.clone();
            let ping = tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            match ping {
                Ok(Ok(_)) => {
                    if !self.up.swap(true, Ordering::Relaxed) {
                        self.metrics.redis_up.set(1);
                        tracing::info!("redis reachable again");
                    }
                }
                _ => {
                    if self.up.swap(false, Ordering::Relaxed) {
                        self.metrics.redis_up.set(0);
                        tracing::warn!("redis ping failed");
                    }
                }
            }
        }
    }

    /// Checks Redis for `/readyz`.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        matches!(
            tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }
}
