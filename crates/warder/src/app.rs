//! [`App`]: build a gateway from a configuration, then run it until told to stop.
//!
//! `build` does everything that can fail at start-up — open and migrate the
//! store, bootstrap the admin key, bind both listeners (port 0 works, for
//! tests), start the demo models — so that `run` only serves. The caller owns
//! the shutdown signal.

use crate::auth::AuthService;
use crate::catalog::Catalog;
use crate::cluster::authcache::AuthL2;
use crate::cluster::bus::Bus;
use crate::cluster::ratelimit::RedisRateLimiter;
use crate::cluster::{Invalidator, RedisDown, RedisLink};
use crate::config::Config;
use crate::control::ControlPlane;
use crate::demo::{self, DemoKeys};
use crate::http;
use crate::http::ops::OpsState;
use crate::queue::submit::Submitter;
use crate::queue::worker::{Worker, WorkerDeps};
use crate::queue::Signals;
use crate::ratelimit::LocalRateLimiter;
use crate::server::{self, ServeOptions};
use crate::state::{AppState, SharedState};
use crate::telemetry::metrics::Metrics;
use crate::upstream::UpstreamClient;
use crate::usage::{usage_channel, Quotas, UsageWriter};
use crate::webhooks::{WebhookSetupError, Webhooks};
use futures::future::BoxFuture;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use warder_core::{ApiKey, RateLimiter, Store, StoreError};
use warder_store::{SqlStore, StoreOptions};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The data dir could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened or migrated.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Redis (cluster mode) could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] RedisDown),
    /// A start-up step of the control plane failed.
    #[error("start-up: {0}")]
    Control(#[from] crate::control::ControlError),
    /// Webhook delivery could not be set up.
    #[error("webhooks: {0}")]
    Webhooks(#[from] WebhookSetupError),
}

/// A built gateway, listening but not yet serving.
pub struct App {
    state: SharedState,
    public: TcpListener,
    ops: TcpListener,
    background: Vec<BoxFuture<'static, ()>>,
    usage_writer: UsageWriter,
    demo_keys: Option<DemoKeys>,
    /// The async worker of `serve`, unless disabled.
    worker: Option<Arc<Worker>>,
}

/// Opens the store named by the configuration (creating the data dir for SQLite).
pub async fn open_store(config: &Config) -> Result<SqlStore, StartupError> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartupError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
    }
    Ok(SqlStore::connect(StoreOptions::new(config.effective_database_url())).await?)
}

impl App {
    /// Builds from configuration, opening the configured store.
    pub async fn build(config: Config) -> Result<App, StartupError> {
        let store = open_store(&config).await?;
        App::build_with_store(config, Arc::new(store)).await
    }

    /// Builds over a given store (tests wrap stores to observe them).
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<App, StartupError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let cache_ttl = Duration::from_secs(config.auth_cache_ttl_s.max(1));
        let redis = match &config.redis_url {
            Some(url) => Some(
                RedisLink::connect(
                    url,
                    &config.redis_prefix,
                    Duration::from_millis(config.redis_timeout_ms.max(1)),
                    metrics.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let mut auth = AuthService::new(store.clone(), cache_ttl, metrics.clone());
        if let Some(link) = &redis {
            auth = auth.with_l2(AuthL2::new(link.clone(), cache_ttl));
        }
        let catalog = Arc::new(Catalog::new(store.clone(), &config));
        let bus = redis.as_ref().map(|link| Bus::new(link.clone()));
        let invalidator = Invalidator::new(auth.clone(), catalog.clone(), bus.clone());
        let control = ControlPlane::new(store.clone(), invalidator.clone(), config.clone());
        let limiter: Arc<dyn RateLimiter> = match &redis {
            Some(link) => Arc::new(RedisRateLimiter::new(link.clone())),
            None => Arc::new(LocalRateLimiter::new()),
        };
        let mut background: Vec<BoxFuture<'static, ()>> = Vec::new();
        if let (Some(link), Some(bus)) = (&redis, bus) {
            background.push(Box::pin(link.clone().monitor(std::future::pending())));
            background.push(Box::pin(bus.consume(
                invalidator,
                metrics.clone(),
                std::future::pending(),
            )));
        }
        let (usage, usage_writer) = usage_channel(store.clone());
        let webhooks = Arc::new(Webhooks::new(store.clone(), &config, metrics.clone())?);
        let upstream = UpstreamClient::new();
        let signals = Arc::new(Signals::default());
        // Built here, run by `run`: the submitter hands jobs to it.
        let worker = config.worker_enabled.then(|| {
            Worker::new(WorkerDeps {
                store: store.clone(),
                catalog: catalog.clone(),
                upstream: upstream.clone(),
                metrics: metrics.clone(),
                config: config.clone(),
                signals: signals.clone(),
                webhooks: webhooks.clone(),
            })
        });
        let state = Arc::new(AppState {
            config: config.clone(),
            store: store.clone(),
            auth,
            catalog,
            limiter,
            quotas: Arc::new(Quotas::new(store.clone())),
            upstream,
            metrics,
            usage,
            control,
            redis,
            submitter: Submitter::start(store.clone(), signals.clone(), worker.clone()),
            signals,
            webhooks,
        });

        if let Some(key) = config
            .bootstrap_admin_key
            .as_deref()
            .and_then(ApiKey::parse)
        {
            if state.control.bootstrap_admin(&key).await? {
                tracing::info!(key_id = %key.id(), "bootstrap admin key installed");
            }
        }

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })
        };
        let public = bind(config.listen).await?;
        let ops = bind(config.ops_listen).await?;

        let demo_keys = if config.demo {
            let (keys, server) = demo::start(&state).await?;
            background.push(server);
            Some(keys)
        } else {
            None
        };
        Ok(App {
            state,
            public,
            ops,
            background,
            usage_writer,
            demo_keys,
            worker,
        })
    }

    /// The bound public address.
    pub fn public_addr(&self) -> SocketAddr {
        server::local_addr(&self.public)
    }

    /// The bound ops address.
    pub fn ops_addr(&self) -> SocketAddr {
        server::local_addr(&self.ops)
    }

    /// The shared state (tests reach the store and caches through it).
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The keys created by `--demo`, if it ran.
    pub fn demo_keys(&self) -> Option<&DemoKeys> {
        self.demo_keys.as_ref()
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let options = serve_options(&self.state.config);
        let runtime = tokio::runtime::Handle::current();
        let scheduler = match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        };
        tracing::info!(
            public = %self.public_addr(),
            ops = %self.ops_addr(),
            store = self.state.store.backend(),
            threads = runtime.metrics().num_workers(),
            scheduler,
            "warder listening"
        );
        let public = server::serve(
            "public",
            self.public,
            {
                let public = http::hot::PublicService::new(
                    self.state.clone(),
                    http::router(self.state.clone()),
                );
                move |peer| public.for_peer(peer)
            },
            options,
            signal(),
        );
        let ops = server::serve(
            "ops",
            self.ops,
            server::with_connect_info(http::ops::router(OpsState::of(&self.state))),
            options,
            signal(),
        );
        // The usage writer stops only after both listeners have drained, so
        // the calls of draining requests are still counted.
        let (usage_stop, usage_stopped) = tokio::sync::oneshot::channel::<()>();
        let usage = tokio::spawn(self.usage_writer.run(async {
            let _ = usage_stopped.await;
        }));
        let mut background: Vec<_> = self.background.into_iter().map(tokio::spawn).collect();
        let worker = self.worker.map(|w| tokio::spawn(w.run(signal())));
        let trigger = async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            let _ = tx.send(true);
        };
        tokio::join!(public, ops, trigger);
        if let Some(w) = worker {
            // The worker drains its running attempts on the same signal.
            let _ = w.await;
        }
        let _ = usage_stop.send(());
        let _ = usage.await;
        for task in background.drain(..) {
            task.abort();
        }
        tracing::info!("warder stopped");
    }
}

/// How the listeners of `serve` and `warder worker` serve connections.
fn serve_options(config: &Config) -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        drain_timeout: Duration::from_secs(config.drain_timeout_s),
    }
}

/// `warder worker`, built: the store open and migrated, the ops listener
/// (when `worker_ops_listen` is set) bound, the worker ready to run.
pub struct WorkerApp {
    worker: Arc<Worker>,
    ops: Option<(TcpListener, OpsState)>,
    options: ServeOptions,
    /// The store's backend, for the start-up line.
    backend: &'static str,
}

impl WorkerApp {
    /// Opens the configured store, builds the worker and binds its ops
    /// listener: everything that can fail at start-up.
    pub async fn build(config: Config) -> Result<WorkerApp, StartupError> {
        let store: Arc<dyn Store> = Arc::new(open_store(&config).await?);
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let ops = match config.worker_ops_listen {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
                OpsState {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    redis: None,
                    draining: Arc::default(),
                },
            )),
            None => None,
        };
        let options = serve_options(&config);
        let backend = store.backend();
        let worker = Worker::new(WorkerDeps {
            catalog: Arc::new(Catalog::new(store.clone(), &config)),
            upstream: UpstreamClient::new(),
            webhooks: Arc::new(Webhooks::new(store.clone(), &config, metrics.clone())?),
            signals: Arc::new(Signals::default()),
            metrics,
            config,
            store,
        });
        Ok(WorkerApp {
            worker,
            ops,
            options,
            backend,
        })
    }

    /// The bound ops address, if the worker has one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(l, _)| server::local_addr(l))
    }

    /// Works until `shutdown` resolves, then lets its running attempts
    /// finish (up to `drain_timeout_s`) and returns. The ops listener stays
    /// up until they have, so the worker can still be scraped while they
    /// run; meanwhile `/readyz` answers 503 `draining`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
        let draining = self.ops.as_ref().map(|(_, state)| state.draining.clone());
        tracing::info!(
            ops = %self
                .ops_addr()
                .map_or_else(|| "none".to_owned(), |a| a.to_string()),
            store = self.backend,
            "warder worker running"
        );
        let worker = async {
            let mut rx = stop_rx;
            self.worker
                .run(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await;
            let _ = ops_stop.send(());
        };
        let ops = async {
            if let Some((listener, state)) = self.ops {
                server::serve(
                    "ops",
                    listener,
                    server::with_connect_info(http::ops::router(state)),
                    self.options,
                    async {
                        let _ = ops_stopped.await;
                    },
                )
                .await;
            }
        };
        let trigger = async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            if let Some(d) = draining {
                d.store(true, std::sync::atomic::Ordering::Release);
            }
            let _ = stop_tx.send(true);
        };
        tokio::join!(worker, ops, trigger);
        tracing::info!("warder worker stopped");
    }
}

/// `warder worker`: only the async worker, over the configured store,
/// until `shutdown` resolves ([`WorkerApp::build`], then
/// [`WorkerApp::run`]).
pub async fn run_worker(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    WorkerApp::build(config).await?.run(shutdown).await;
    Ok(())
}
