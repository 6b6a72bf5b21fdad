//! Resolution of predict targets and access policies, cached in process.
//!
//! Maps "model X, environment Y" (or a version id) to the version to call,
//! and "user U on model M" to the policy that applies. Both answers are
//! cached so a warm request reads no database; any control-plane change made
//! through this node clears them. The per-version concurrency semaphores
//! live here too, outside the caches, so clearing a cache never resets a
//! version's in-flight count.

use crate::config::Config;
use crate::telemetry::metrics::Label;
use crate::ttl_cache::TtlCache;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use warder_core::{Model, ModelVersion, Policy, Store, StoreError};

/// What a predict route names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// A model's environment (`production` for the plain route).
    Environment {
        /// Model id or name.
        model: String,
        /// Environment name.
        env: String,
    },
    /// A version by id.
    Version {
        /// Version id.
        version: String,
    },
    /// A version by id that must belong to the model.
    ModelVersion {
        /// Model id or name.
        model: String,
        /// Version id.
        version: String,
    },
}

/// A resolved predict target.
#[derive(Debug)]
pub struct Target {
    /// The model.
    pub model: Model,
    /// The model id as a shared label (metrics, cache keys) — no per-request copy.
    pub model_label: Label,
    /// The version id as a shared label (access log) — no per-request copy.
    pub version_label: Label,
    /// The constant middle of this target's envelope, from after the request
    /// id to the output: `","model_id":…,"model_version_id":…,"output":`.
    pub envelope_middle: bytes::Bytes,
    /// The version's upstream URL, parsed once.
    pub upstream_uri: http::Uri,
    /// The version to call.
    pub version: ModelVersion,
    /// The compiled `input_schema`, when the version has one.
    pub validator: Option<Arc<jsonschema::Validator>>,
    /// Slots of the version's concurrency cap, when it has one.
    pub slots: Option<Arc<Semaphore>>,
}

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Unknown model, environment or version.
    #[error("{0}")]
    NotFound(String),
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The limits that apply to one user on one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Sustained rate; `None` = unlimited.
    pub rate_per_second: Option<f64>,
    /// Burst size.
    pub burst: u32,
    /// Daily quota.
    pub daily_calls: Option<u64>,
    /// Monthly quota.
    pub monthly_calls: Option<u64>,
}

impl Limits {
    /// Whether a daily or monthly call quota applies.
    pub fn has_quota(&self) -> bool {
        self.daily_calls.is_some() || self.monthly_calls.is_some()
    }

    fn from_policy(p: &Policy) -> Limits {
        Limits {
            rate_per_second: p.rate_limit_per_second,
            burst: p
                .burst
                .unwrap_or_else(|| default_burst(p.rate_limit_per_second)),
            daily_calls: p.daily_calls,
            monthly_calls: p.monthly_calls,
        }
    }
}

fn default_burst(rate: Option<f64>) -> u32 {
    rate.map(|r| r.ceil().max(1.0) as u32).unwrap_or(1)
}

/// Access of a user to a model.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// No grant.
    Denied,
    /// Granted, under these limits.
    Granted(Limits),
}

type TargetResult = Result<Arc<Target>, Arc<str>>;

/// Cached resolution of targets and access.
pub struct Catalog {
    store: Arc<dyn Store>,
    targets: TtlCache<Selector, TargetResult>,
    access: TtlCache<(Arc<str>, Arc<str>), Arc<Access>>,
    slots: RwLock<HashMap<String, (u32, Arc<Semaphore>)>>,
    default_limits: Limits,
}

impl Catalog {
    /// A catalog over `store`, with the configured default limits.
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Catalog {
        let ttl = Duration::from_secs(config.auth_cache_ttl_s.max(1));
        Catalog {
            store,
            targets: TtlCache::new(50_000, ttl),
            access: TtlCache::new(200_000, ttl),
            slots: RwLock::new(HashMap::new()),
            default_limits: Limits {
                rate_per_second: config.default_rate_limit_per_second,
                burst: config
                    .default_burst
                    .unwrap_or_else(|| default_burst(config.default_rate_limit_per_second)),
                daily_calls: None,
                monthly_calls: None,
            },
        }
    }

    /// The version a selector names, from cache when possible.
    pub async fn resolve(&self, selector: &Selector) -> Result<Arc<Target>, ResolveError> {
        if let Some(cached) = self.targets.get(selector) {
            return cached.map_err(|m| ResolveError::NotFound(m.to_string()));
        }
        let resolved = match self.load(selector).await {
            Ok(t) => Ok(Arc::new(t)),
            Err(ResolveError::NotFound(m)) => Err(Arc::<str>::from(m)),
            Err(e) => return Err(e),
        };
        self.targets.insert(selector.clone(), resolved.clone());
        resolved.map_err(|m| ResolveError::NotFound(m.to_string()))
    }

    async fn load(&self, selector: &Selector) -> Result<Target, ResolveError> {
        let (model, version) = match selector {
            Selector::Environment { model, env } => {
                let model = self.model(model).await?;
                let env_row = self
                    .store
                    .get_environment(&model.id, env)
                    .await?
                    .ok_or_else(|| {
                        ResolveError::NotFound(format!(
                            "model '{}' has no environment '{env}'",
                            model.name
                        ))
                    })?;
                let version = self.version(&env_row.version_id).await?;
                (model, version)
            }
            Selector::Version { version } => {
                let version = self.version(version).await?;
                let model = self.model(&version.model_id).await?;
                (model, version)
            }
            Selector::ModelVersion { model, version } => {
                let model = self.model(model).await?;
                let version = self.version(version).await?;
                if version.model_id != model.id {
                    return Err(ResolveError::NotFound(format!(
                        "model version '{}' not found",
                        version.id
                    )));
                }
                (model, version)
            }
        };
        let slots = self.slots_for(&version);
        let upstream_uri = version.upstream_url.parse::<http::Uri>().map_err(|_| {
            ResolveError::NotFound(format!(
                "model version '{}' has an unusable upstream_url",
                version.id
            ))
        })?;
        let validator = match &version.input_schema {
            None => None,
            Some(schema) => Some(Arc::new(jsonschema::validator_for(schema).map_err(
                |e| {
                    ResolveError::NotFound(format!(
                        "model version '{}' has an unusable input_schema: {e}",
                        version.id
                    ))
                },
            )?)),
        };
        let envelope_middle = bytes::Bytes::from(format!(
            "\",\"model_id\":{},\"model_version_id\":{},\"output\":",
            serde_json::Value::from(model.id.as_str()),
            serde_json::Value::from(version.id.as_str()),
        ));
        Ok(Target {
            validator,
            model_label: Label::new(&model.id),
            version_label: Label::new(&version.id),
            envelope_middle,
            model,
            upstream_uri,
            version,
            slots,
        })
    }

    async fn model(&self, id_or_name: &str) -> Result<Model, ResolveError> {
        self.store
            .find_model(id_or_name)
            .await?
            .ok_or_else(|| ResolveError::NotFound(format!("model '{id_or_name}' not found")))
    }

    async fn version(&self, id: &str) -> Result<ModelVersion, ResolveError> {
        self.store
            .get_version(id)
            .await?
            .ok_or_else(|| ResolveError::NotFound(format!("model version '{id}' not found")))
    }

    /// The semaphore of a version's concurrency cap; replaced when the cap
    /// changes (requests holding old permits finish on the old one).
    fn slots_for(&self, version: &ModelVersion) -> Option<Arc<Semaphore>> {
        let cap = version.max_concurrency?;
        if let Ok(map) = self.slots.read() {
            if let Some((c, s)) = map.get(&version.id) {
                if *c == cap {
                    return Some(s.clone());
                }
            }
        }
        let sem = Arc::new(Semaphore::new(cap as usize));
        if let Ok(mut map) = self.slots.write() {
            match map.get(&version.id) {
                Some((c, s)) if *c == cap => return Some(s.clone()),
                _ => {
                    map.insert(version.id.clone(), (cap, sem.clone()));
                }
            }
        }
        Some(sem)
    }

    /// The access of a user to a model, from cache when possible.
    pub async fn access(
        &self,
        user_id: &Arc<str>,
        model_id: &Label,
    ) -> Result<Arc<Access>, StoreError> {
        let key = (user_id.clone(), model_id.0.clone());
        let model_id = &*model_id.0;
        if let Some(a) = self.access.get(&key) {
            return Ok(a);
        }
        let access = match self.store.find_grant(user_id, model_id).await? {
            None => Access::Denied,
            Some(grant) => match &grant.policy_id {
                None => Access::Granted(self.default_limits.clone()),
                Some(pid) => match self.store.get_policy(pid).await? {
                    Some(p) => Access::Granted(Limits::from_policy(&p)),
                    None => Access::Granted(self.default_limits.clone()),
                },
            },
        };
        let access = Arc::new(access);
        self.access.insert(key, access.clone());
        Ok(access)
    }

    /// The limits applied to callers that need no grant (admin keys).
    pub fn default_limits(&self) -> &Limits {
        &self.default_limits
    }

    /// Forgets cached targets (after a model, version or environment change).
    pub fn invalidate_targets(&self) {
        self.targets.invalidate_all();
    }

    /// Forgets cached access (after a grant or policy change).
    pub fn invalidate_access(&self) {
        self.access.invalidate_all();
    }
}
