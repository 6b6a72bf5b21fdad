//! [`SqlStore`]: the storage traits over a SQLite file or a PostgreSQL database.
//!
//! This file connects, migrates and holds the pools; the traits are
//! implemented in `control` (the control plane) and `queue` (async jobs and
//! webhook secrets).

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use warder_core::*;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite queue write waits for the writer connection, at least.
const WRITER_WAIT: Duration = Duration::from_secs(10);
/// A pooled connection idle this long is pinged before it is handed out.
const PING_WHEN_IDLE: Duration = Duration::from_secs(1);

/// Which SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// A SQLite file (embedded mode).
    Sqlite,
    /// PostgreSQL (cluster mode).
    Postgres,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path` or `postgres://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a connection (and thus for an unreachable database).
    pub acquire_timeout: Duration,
}

impl StoreOptions {
    /// Options with defaults suited to `url`.
    pub fn new(url: impl Into<String>) -> StoreOptions {
        StoreOptions {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The storage traits over SQL.
pub struct SqlStore {
    pool: AnyPool,
    /// Where the job queue writes. On SQLite, one connection of its own:
    /// SQLite runs one writer at a time anyway, and a writer that waits in
    /// the pool's queue instead of in `busy_timeout`'s sleeps is served in
    /// order at once; and a connection that made the last write keeps its
    /// page cache, which every other connection must drop and read again
    /// from the file. On PostgreSQL, the shared pool.
    writer: AnyPool,
    dialect: Dialect,
    /// Read queries issued; lets operators (and tests) see that the hot path
    /// is served from caches.
    reads: AtomicU64,
}

pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(db.message().to_owned())
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

impl SqlStore {
    /// Connects and runs the dialect's migrations.
    pub async fn connect(options: StoreOptions) -> StoreResult<SqlStore> {
        let store = SqlStore::connect_without_migrating(options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without touching the schema.
    pub async fn connect_without_migrating(options: StoreOptions) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let dialect =
            if options.url.starts_with("postgres://") || options.url.starts_with("postgresql://") {
                Dialect::Postgres
            } else if options.url.starts_with("sqlite:") {
                Dialect::Sqlite
            } else {
                return Err(StoreError::Other(
                    "unsupported database_url scheme (expected sqlite: or postgres://)".to_owned(),
                ));
            };
        let pool_options = |max: u32, acquire_timeout: Duration| {
            // sqlx pings a connection on every acquire by default: on
            // PostgreSQL a round trip, and a wake-up of its server process,
            // before every statement or transaction. A connection that was
            // in use within the last second is handed out as it is; one idle
            // longer is pinged first, so a server restart is still noticed
            // before a caller's statement fails on a dead connection.
            let mut pool = AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_WHEN_IDLE {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                });
            if dialect == Dialect::Sqlite {
                // WAL lets readers proceed during a write; busy_timeout makes
                // a second writer (another process) wait instead of failing
                // at once. The queue rewrites the same few pages over and
                // over: checkpointing every 8 192 pages instead of 1 000
                // writes each page (and syncs) less often. Statement journals
                // stay in memory. (Reads through `mmap_size` were tried: each
                // connection's mapping counts in the resident size, about
                // 1 GiB for sixteen connections over a 60 MB file.)
                pool = pool.after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000; \
                             PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; \
                             PRAGMA wal_autocheckpoint=8192; PRAGMA temp_store=MEMORY;",
                        )
                        .await?;
                        Ok(())
                    })
                });
            }
            pool
        };
        let pool = pool_options(options.max_connections, options.acquire_timeout)
            .connect(&options.url)
            .await
            .map_err(map_err)?;
        let writer = match dialect {
            // Queue writes wait here for one another, where they used to
            // wait in `busy_timeout` (5 s): at least as long before giving up.
            Dialect::Sqlite => pool_options(1, options.acquire_timeout.max(WRITER_WAIT))
                .connect(&options.url)
                .await
                .map_err(map_err)?,
            Dialect::Postgres => pool.clone(),
        };
        Ok(SqlStore {
            pool,
            writer,
            dialect,
            reads: AtomicU64::new(0),
        })
    }

    /// Applies pending migrations of this dialect.
    pub async fn migrate(&self) -> StoreResult<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(format!("migration failed: {e}")))
    }

    /// The dialect in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool, for modules (such as the job queue) that share it.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Where the job queue writes (see the field).
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Counts a control-plane read made other than by
    /// [`Self::fetch_optional`] or [`Self::fetch_all`].
    pub(crate) fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// A control-plane read of at most one row, counted for `read_count`.
    pub(crate) async fn fetch_optional<'q, T>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        decode: fn(&AnyRow) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        q.fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(decode)
            .transpose()
    }

    /// A control-plane read of any number of rows, counted for `read_count`.
    pub(crate) async fn fetch_all<'q, T>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        decode: fn(&AnyRow) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        q.fetch_all(&self.pool)
            .await
            .map_err(map_err)?
            .iter()
            .map(decode)
            .collect()
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn read_count(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn backend(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}
