//! The one typed configuration of warder and how it is loaded.
//!
//! Precedence: defaults < TOML file (`--config`) < environment (`WARDER_`
//! prefix, `__` for nesting) < command-line flags. Loading never touches the
//! network or the data dir; it only describes what to do.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default when stdout is not a terminal).
    Json,
    /// Human-readable (default on a terminal).
    Pretty,
}

/// A caching relay in front of an upstream HTTP API (`[[relays]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayConfig {
    /// The `{name}` in `/relay/{name}/…`.
    pub name: String,
    /// Base URL the relay forwards to.
    pub upstream: String,
    /// Seconds an answer may be served from cache.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// Open to callers without a key.
    #[serde(default)]
    pub public: bool,
    /// Forward the caller's `Authorization` upstream.
    #[serde(default)]
    pub forward_auth: bool,
}

/// Everything warder can be told, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Public listener (data plane and admin API).
    pub listen: SocketAddr,
    /// Ops listener (`/metrics`, `/healthz`, `/readyz`), unauthenticated.
    pub ops_listen: SocketAddr,
    /// Ops listener of `warder worker` (the same routes); unset = none, so
    /// a worker beside `serve` on one machine does not take `ops_listen`.
    pub worker_ops_listen: Option<SocketAddr>,
    /// Where embedded mode keeps its SQLite file and blobs.
    pub data_dir: PathBuf,
    /// `postgres://…` for cluster mode; unset = SQLite in the data dir.
    pub database_url: Option<String>,
    /// Redis for shared caches and rate limits; unset = in process.
    pub redis_url: Option<String>,
    /// Namespace of every Redis key (several deployments may share a Redis).
    pub redis_prefix: String,
    /// Upper bound of one Redis call; past it the call counts as failed.
    pub redis_timeout_ms: u64,
    /// When the shared rate limiter is unreachable: refuse (503) instead of
    /// the default of letting requests through.
    pub rate_limit_fail_closed: bool,
    /// `file://…` (default: the data dir) or `s3://bucket/prefix`.
    pub blob_store: Option<String>,
    /// An admin key installed at start-up when not yet in the store.
    pub bootstrap_admin_key: Option<String>,
    /// Where unmatched routes are reverse-proxied; unset = 404.
    pub fallback_upstream: Option<String>,
    /// Rate for grants without a policy; unset = unlimited.
    pub default_rate_limit_per_second: Option<f64>,
    /// Burst for grants without a policy (default: the rate, at least 1).
    pub default_burst: Option<u32>,
    /// Largest accepted request body on predict and admin routes.
    pub max_body_bytes: usize,
    /// Largest upstream JSON answer wrapped in the envelope.
    pub max_upstream_response_bytes: usize,
    /// Time allowed to receive a request's headers.
    pub header_read_timeout_ms: u64,
    /// Timeout of versions created without one.
    pub default_upstream_timeout_ms: u64,
    /// How long a request waits for a slot of a saturated version before 503.
    pub concurrency_wait_ms: u64,
    /// Lifetime of cached authentication results (revocations through this
    /// node take effect at once regardless).
    pub auth_cache_ttl_s: u64,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout_s: u64,
    /// Threads that serve requests; unset = the CPUs this process may run
    /// on. With one, everything runs on a single-threaded scheduler (no
    /// work stealing to pay for).
    pub worker_threads: Option<usize>,
    /// CIDRs webhook targets may resolve into despite being private.
    #[serde(deserialize_with = "comma_list")]
    pub webhook_allowed_cidrs: Vec<String>,
    /// OTLP trace export; unset = none.
    pub otlp_endpoint: Option<String>,
    /// Log format; unset = by terminal detection.
    pub log_format: Option<LogFormat>,
    /// `tracing` filter directive (e.g. `info,warder=debug`).
    pub log_level: String,
    /// Run the async worker inside `serve`.
    pub worker_enabled: bool,
    /// Start and register the demo models.
    pub demo: bool,
    /// Caching relays.
    pub relays: Vec<RelayConfig>,
    /// Async inference: queue, workers and webhooks (`[async_queue]`).
    pub async_queue: AsyncConfig,
}

/// The `[async_queue]` table: limits and timings of async inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AsyncConfig {
    /// Largest accepted async submit body.
    pub max_body_bytes: usize,
    /// How long finished requests (and their outputs) are kept.
    pub retention_s: u64,
    /// Smallest accepted `max_time_in_queue_seconds` (10 per the API; tests lower it).
    pub min_queue_seconds: u64,
    /// Lease of a claimed job; renewed by heartbeats, rescued after it runs out.
    pub lease_ms: u64,
    /// Heartbeat period (also how often remote cancels are noticed without NOTIFY).
    pub heartbeat_ms: u64,
    /// Jobs one worker process runs at once.
    pub worker_concurrency: u32,
    /// Jobs claimed per query.
    pub claim_batch: u32,
    /// Longest a worker idles before looking at the queue without a wake-up.
    pub poll_ms: u64,
    /// Period of the sweeper (deadlines, lost leases, retention).
    pub sweep_ms: u64,
    /// Delay before each webhook delivery attempt (the first is usually 0).
    pub webhook_retry_schedule_ms: Vec<u64>,
    /// Timeout of one webhook delivery.
    pub webhook_timeout_ms: u64,
    /// Base64 of 32 bytes sealing webhook secrets at rest; unset = a key
    /// file in the data dir (set it explicitly when several nodes share a database).
    pub secrets_key: Option<String>,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            max_body_bytes: 256 * 1024,
            retention_s: 24 * 3600,
            min_queue_seconds: 10,
            lease_ms: 30_000,
            heartbeat_ms: 5_000,
            worker_concurrency: 256,
            claim_batch: 64,
            poll_ms: 1_000,
            sweep_ms: 1_000,
            webhook_retry_schedule_ms: vec![0, 5_000, 30_000, 300_000, 1_800_000],
            webhook_timeout_ms: 15_000,
            secrets_key: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            worker_ops_listen: None,
            data_dir: PathBuf::from("./warder-data"),
            database_url: None,
            redis_url: None,
            redis_prefix: "warder".to_owned(),
            redis_timeout_ms: 250,
            rate_limit_fail_closed: false,
            blob_store: None,
            bootstrap_admin_key: None,
            fallback_upstream: None,
            default_rate_limit_per_second: None,
            default_burst: None,
            max_body_bytes: 10 * 1024 * 1024,
            max_upstream_response_bytes: 64 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            default_upstream_timeout_ms: 60_000,
            concurrency_wait_ms: 5_000,
            auth_cache_ttl_s: 60,
            drain_timeout_s: 30,
            worker_threads: None,
            webhook_allowed_cidrs: Vec::new(),
            otlp_endpoint: None,
            log_format: None,
            log_level: "info".to_owned(),
            worker_enabled: true,
            demo: false,
            relays: Vec::new(),
            async_queue: AsyncConfig::default(),
        }
    }
}

/// Accepts a list or a comma-separated string (the env form).
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(v) => v,
        ListOrString::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Values given on the command line; `None` = not given.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagOverrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--ops-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<SocketAddr>,
    /// `warder worker --ops-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_ops_listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--demo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo: Option<bool>,
    /// `--no-worker` (as `worker_enabled = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_enabled: Option<bool>,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults < `file` < `WARDER_*` env < `flags`.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "config file {} not found",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only `WARDER_*` variables naming a configuration key are read: the
        // CLI's own variables (`WARDER_URL`, `WARDER_KEY`, `WARDER_CONFIG`)
        // and unrelated ones must not be taken for unknown keys.
        let known: Vec<String> = match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let env = Env::prefixed("WARDER_")
            .filter(move |k| {
                let top = k.as_str().split("__").next().unwrap_or("");
                known.iter().any(|f| f.eq_ignore_ascii_case(top))
            })
            .split("__");
        figment = figment.merge(env).merge(Serialized::defaults(flags));
        let config: Config = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = self.default_rate_limit_per_second {
            if !(r.is_finite() && r > 0.0) {
                return Err(ConfigError(
                    "default_rate_limit_per_second must be a positive number".into(),
                ));
            }
        }
        if let Some(u) = &self.fallback_upstream {
            let parsed =
                url::Url::parse(u).map_err(|e| ConfigError(format!("fallback_upstream: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError("fallback_upstream must be http(s)".into()));
            }
        }
        if let Some(key) = &self.bootstrap_admin_key {
            if warder_core::ApiKey::parse(key).is_none() {
                return Err(ConfigError(
                    "bootstrap_admin_key must look like wdr_<8 lowercase alphanumerics>_<32+ alphanumerics>"
                        .into(),
                ));
            }
        }
        for cidr in &self.webhook_allowed_cidrs {
            cidr.parse::<ipnet::IpNet>()
                .map_err(|e| ConfigError(format!("webhook_allowed_cidrs: {cidr}: {e}")))?;
        }
        let q = &self.async_queue;
        if q.lease_ms < 100 || q.heartbeat_ms == 0 || q.heartbeat_ms >= q.lease_ms {
            return Err(ConfigError(
                "async_queue: lease_ms must be at least 100 and heartbeat_ms between 1 and lease_ms"
                    .into(),
            ));
        }
        if q.webhook_retry_schedule_ms.is_empty() || q.worker_concurrency == 0 || q.claim_batch == 0
        {
            return Err(ConfigError(
                "async_queue: webhook_retry_schedule_ms, worker_concurrency and claim_batch must not be empty or zero"
                    .into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError("max_body_bytes must be positive".into()));
        }
        if self.worker_threads == Some(0) {
            return Err(ConfigError("worker_threads must be at least 1".into()));
        }
        Ok(())
    }

    /// The threads to serve with: `worker_threads`, else the CPUs this
    /// process may run on (its affinity mask and cgroup quota).
    pub fn effective_worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The database URL in effect: the configured one or SQLite in the data dir.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("warder.db").display()
            ),
        }
    }

    /// The configuration as TOML with secrets replaced by `***`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.bootstrap_admin_key.is_some() {
            shown.bootstrap_admin_key = Some("***".into());
        }
        if shown.async_queue.secrets_key.is_some() {
            shown.async_queue.secrets_key = Some("***".into());
        }
        shown.database_url = shown.database_url.map(|u| redact_url(&u));
        shown.redis_url = shown.redis_url.map(|u| redact_url(&u));
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Hides the password of a URL (`postgres://user:***@host/db`).
fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => u.to_owned(),
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail's closure signature is fixed"
)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "listen = \"127.0.0.1:1000\"\nmax_body_bytes = 5\nlog_level = \"debug\"\n",
            )?;
            jail.set_env("WARDER_MAX_BODY_BYTES", "7");
            jail.set_env("WARDER_LISTEN", "127.0.0.1:2000");
            jail.set_env("WARDER_WEBHOOK_ALLOWED_CIDRS", "127.0.0.0/8, ::1/128");
            jail.set_env("WARDER_WORKER_OPS_LISTEN", "127.0.0.1:9191");
            // Variables of the CLI and of the test scripts are not config keys.
            jail.set_env("WARDER_URL", "http://127.0.0.1:1");
            jail.set_env("WARDER_KEY", "wdr_x");
            jail.set_env("WARDER_TEST_SKIP_POSTGRES", "1");
            let flags = FlagOverrides {
                listen: Some("127.0.0.1:3000".parse().expect("addr")),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("w.toml")), &flags).expect("loads");
            assert_eq!(c.listen.port(), 3000, "flag beats env");
            assert_eq!(c.max_body_bytes, 7, "env beats file");
            assert_eq!(c.log_level, "debug", "file beats default");
            assert_eq!(c.ops_listen.port(), 9090, "default");
            assert_eq!(c.worker_ops_listen.map(|a| a.port()), Some(9191), "env");
            assert_eq!(c.webhook_allowed_cidrs, vec!["127.0.0.0/8", "::1/128"]);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("w.toml", "lisen = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(Path::new("w.toml")), &FlagOverrides::default());
            assert!(err.is_err());
            jail.create_file("x.toml", "bootstrap_admin_key = \"nope\"\n")?;
            let err = Config::load(Some(Path::new("x.toml")), &FlagOverrides::default());
            assert!(err.is_err());
            jail.set_env("WARDER_WORKER_THREADS", "0");
            let err = Config::load(None, &FlagOverrides::default());
            assert!(err.is_err_and(|e| e.to_string().contains("worker_threads")));
            Ok(())
        });
    }

    #[test]
    fn worker_threads_default_to_the_cpus_this_process_may_use() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::default().effective_worker_threads(), cpus);
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARDER_WORKER_THREADS", "3");
            let c = Config::load(None, &FlagOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.effective_worker_threads(), 3);
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config {
            bootstrap_admin_key: Some("wdr_abcdefgh_0123456789abcdef0123456789abcdef".into()),
            database_url: Some("postgres://u:hunter2@localhost/db".into()),
            ..Config::default()
        };
        let shown = c.redacted_toml();
        assert!(!shown.contains("0123456789abcdef0123456789abcdef"));
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("***"));
    }
}
