//! Control-plane operations: validation, persistence and cache invalidation.
//!
//! The admin API, the demo and the bootstrap all go through these functions,
//! so a rule (a name's shape, an admin key needing an admin user) holds
//! whichever door a change comes in by. Every change that affects the hot
//! path clears the matching in-process cache before it returns, so the next
//! request on this node sees it. Nothing here knows about HTTP.

use crate::cluster::{Invalidation, Invalidator};
use crate::config::Config;
use std::sync::Arc;
use warder_core::*;

/// A refused control-plane operation.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl ControlError {
    fn invalid(message: impl Into<String>) -> ControlError {
        ControlError {
            code: ErrorCode::InvalidInput,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> ControlError {
        ControlError {
            code: ErrorCode::NotFound,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> ControlError {
        match e {
            StoreError::Conflict(_) => ControlError {
                code: ErrorCode::Conflict,
                message: "a resource with that name already exists".into(),
            },
            StoreError::NotFound(m) => ControlError::not_found(m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                ControlError {
                    code: ErrorCode::ServiceUnavailable,
                    message: "the gateway's store is unavailable".into(),
                }
            }
            StoreError::Other(m) => {
                tracing::error!(error = %m, "store error");
                ControlError {
                    code: ErrorCode::Internal,
                    message: "internal error".into(),
                }
            }
        }
    }
}

/// Shorthand for control-plane results.
pub type ControlResult<T> = Result<T, ControlError>;

/// Fields of a new version; `None` = default.
#[derive(Debug, Clone, Default)]
pub struct VersionSpec {
    /// Where predictions go.
    pub upstream_url: String,
    /// Call timeout.
    pub timeout_ms: Option<u64>,
    /// Concurrency cap.
    pub max_concurrency: Option<u32>,
    /// Input JSON Schema.
    pub input_schema: Option<serde_json::Value>,
    /// Response-cache lifetime.
    pub cache_ttl_s: Option<u64>,
    /// Envelope or raw.
    pub response: Option<ResponseMode>,
    /// Active or inactive.
    pub state: Option<VersionState>,
}

/// The control plane over a store and the caches it must keep true.
#[derive(Clone)]
pub struct ControlPlane {
    store: Arc<dyn Store>,
    caches: Invalidator,
    config: Arc<Config>,
}

const MAX_TIMEOUT_MS: u64 = 3_600_000;

fn check_name(kind: &str, name: &str) -> ControlResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ControlError::invalid(format!(
            "{kind} name must be 1-64 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

fn check_upstream_url(url: &str) -> ControlResult<()> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(ControlError::invalid(
            "upstream_url must be an absolute http:// or https:// URL",
        )),
    }
}

fn check_timeout(t: u64) -> ControlResult<u64> {
    if (1..=MAX_TIMEOUT_MS).contains(&t) {
        Ok(t)
    } else {
        Err(ControlError::invalid(format!(
            "timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"
        )))
    }
}

fn check_schema(schema: Option<&serde_json::Value>) -> ControlResult<()> {
    match schema {
        Some(s) => jsonschema::validator_for(s).map(|_| ()).map_err(|e| {
            ControlError::invalid(format!("input_schema is not a valid JSON Schema: {e}"))
        }),
        None => Ok(()),
    }
}

fn check_concurrency(c: Option<u32>) -> ControlResult<Option<u32>> {
    match c {
        Some(0) => Err(ControlError::invalid("max_concurrency must be at least 1")),
        other => Ok(other),
    }
}

impl ControlPlane {
    /// A control plane over `store` that keeps the caches behind `caches`
    /// true on this node and (when clustered) on every other.
    pub fn new(store: Arc<dyn Store>, caches: Invalidator, config: Arc<Config>) -> ControlPlane {
        ControlPlane {
            store,
            caches,
            config,
        }
    }

    /// Creates a user.
    pub async fn create_user(
        &self,
        name: String,
        email: Option<String>,
        role: Option<Role>,
    ) -> ControlResult<User> {
        check_name("user", &name)?;
        if let Some(e) = &email {
            if !e.contains('@') || e.len() > 254 {
                return Err(ControlError::invalid("email is not an address"));
            }
        }
        Ok(self
            .store
            .create_user(NewUser {
                name,
                email,
                role: role.unwrap_or(Role::Member),
            })
            .await?)
    }

    /// Reads a user; `NOT_FOUND` when unknown.
    pub async fn user(&self, id: &str) -> ControlResult<User> {
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("user '{id}' not found")))
    }

    /// Lists users.
    pub async fn users(&self) -> ControlResult<Vec<User>> {
        Ok(self.store.list_users().await?)
    }

    /// Creates a key; returns the record and the clear key (shown once).
    pub async fn create_key(
        &self,
        user_id: &str,
        name: String,
        scopes: Vec<Scope>,
        expires_at: Option<Timestamp>,
    ) -> ControlResult<(KeyRecord, ApiKey)> {
        let user = self.user(user_id).await?;
        if name.is_empty() || name.len() > 100 {
            return Err(ControlError::invalid("key name must be 1-100 characters"));
        }
        if scopes.contains(&Scope::Admin) && user.role != Role::Admin {
            return Err(ControlError::invalid(
                "only users with role 'admin' may hold keys with the 'admin' scope",
            ));
        }
        if let Some(t) = expires_at {
            if t.0 <= now_ms() {
                return Err(ControlError::invalid("expires_at must be in the future"));
            }
        }
        let mut scopes = scopes;
        scopes.sort_by_key(|s| s.as_str());
        scopes.dedup();
        let key = ApiKey::generate();
        let record = KeyRecord {
            id: key.id().to_string(),
            user_id: user.id,
            name,
            scopes,
            secret_hash: key.secret_hash(),
            created_at: Timestamp::now(),
            expires_at,
            revoked_at: None,
        };
        self.store.insert_key(record.clone()).await?;
        // A negative cache entry for this id may exist from a probe.
        self.caches
            .changed(Invalidation::Key(record.id.clone()))
            .await;
        Ok((record, key))
    }

    /// Lists a user's keys.
    pub async fn keys(&self, user_id: &str) -> ControlResult<Vec<KeyRecord>> {
        self.user(user_id).await?;
        Ok(self.store.list_keys(user_id).await?)
    }

    /// Revokes a key; effective on this node's next request.
    pub async fn revoke_key(&self, key_id: &str) -> ControlResult<KeyRecord> {
        if !self.store.revoke_key(key_id, Timestamp::now()).await? {
            return Err(ControlError::not_found(format!("key '{key_id}' not found")));
        }
        self.caches
            .changed(Invalidation::Key(key_id.to_owned()))
            .await;
        self.store
            .get_key(key_id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("key '{key_id}' not found")))
    }

    /// Installs `bootstrap_admin_key` as a key of the built-in `admin` user
    /// when it is not in the store yet.
    pub async fn bootstrap_admin(&self, key: &ApiKey) -> ControlResult<bool> {
        if self.store.get_key(key.id().as_str()).await?.is_some() {
            return Ok(false);
        }
        let admin = self.ensure_user("admin", Role::Admin).await?;
        let inserted = self
            .store
            .insert_key(KeyRecord {
                id: key.id().to_string(),
                user_id: admin.id,
                name: "bootstrap".into(),
                scopes: vec![Scope::Admin],
                secret_hash: key.secret_hash(),
                created_at: Timestamp::now(),
                expires_at: None,
                revoked_at: None,
            })
            .await;
        match inserted {
            // Another node starting at the same time installed it first.
            Err(StoreError::Conflict(_)) => return Ok(false),
            other => other?,
        }
        self.caches
            .changed(Invalidation::Key(key.id().to_string()))
            .await;
        Ok(true)
    }

    /// The user with this name, created with `role` if missing.
    pub async fn ensure_user(&self, name: &str, role: Role) -> ControlResult<User> {
        if let Some(u) = self.store.find_user_by_name(name).await? {
            return Ok(u);
        }
        match self.create_user(name.into(), None, Some(role)).await {
            Err(e) if e.code == ErrorCode::Conflict => self
                .store
                .find_user_by_name(name)
                .await?
                .ok_or_else(|| ControlError::not_found(format!("user '{name}' not found"))),
            other => other,
        }
    }

    /// Creates a model.
    pub async fn create_model(
        &self,
        name: String,
        description: Option<String>,
    ) -> ControlResult<Model> {
        check_name("model", &name)?;
        let model = self
            .store
            .create_model(NewModel { name, description })
            .await?;
        self.caches.changed(Invalidation::Targets).await;
        Ok(model)
    }

    /// Reads a model by id or name.
    pub async fn model(&self, id_or_name: &str) -> ControlResult<Model> {
        self.store
            .find_model(id_or_name)
            .await?
            .ok_or_else(|| ControlError {
                code: ErrorCode::ModelNotFound,
                message: format!("model '{id_or_name}' not found"),
            })
    }

    /// Lists models.
    pub async fn models(&self) -> ControlResult<Vec<Model>> {
        Ok(self.store.list_models().await?)
    }

    /// Adds a version to a model; the first becomes `production`.
    pub async fn create_version(
        &self,
        model: &str,
        spec: VersionSpec,
    ) -> ControlResult<ModelVersion> {
        let model = self.model(model).await?;
        check_upstream_url(&spec.upstream_url)?;
        check_schema(spec.input_schema.as_ref())?;
        let version = ModelVersion {
            id: new_id(8),
            model_id: model.id,
            upstream_url: spec.upstream_url,
            timeout_ms: check_timeout(
                spec.timeout_ms
                    .unwrap_or(self.config.default_upstream_timeout_ms),
            )?,
            max_concurrency: check_concurrency(spec.max_concurrency)?,
            input_schema: spec.input_schema,
            cache_ttl_s: spec.cache_ttl_s,
            response: spec.response.unwrap_or(ResponseMode::Envelope),
            state: spec.state.unwrap_or(VersionState::Active),
            created_at: Timestamp::now(),
        };
        self.store.insert_version(version.clone()).await?;
        self.caches.changed(Invalidation::Targets).await;
        Ok(version)
    }

    /// Reads a version.
    pub async fn version(&self, id: &str) -> ControlResult<ModelVersion> {
        self.store
            .get_version(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("model version '{id}' not found")))
    }

    /// Lists a model's versions.
    pub async fn versions(&self, model: &str) -> ControlResult<Vec<ModelVersion>> {
        let model = self.model(model).await?;
        Ok(self.store.list_versions(&model.id).await?)
    }

    /// Changes a version.
    pub async fn update_version(
        &self,
        id: &str,
        patch: VersionPatch,
    ) -> ControlResult<ModelVersion> {
        if let Some(u) = &patch.upstream_url {
            check_upstream_url(u)?;
        }
        if let Some(t) = patch.timeout_ms {
            check_timeout(t)?;
        }
        if let Some(c) = patch.max_concurrency {
            check_concurrency(c)?;
        }
        if let Some(schema) = &patch.input_schema {
            check_schema(schema.as_ref())?;
        }
        let updated =
            self.store.update_version(id, patch).await?.ok_or_else(|| {
                ControlError::not_found(format!("model version '{id}' not found"))
            })?;
        self.caches.changed(Invalidation::Targets).await;
        Ok(updated)
    }

    /// Points an environment of a model at one of its versions.
    pub async fn promote(
        &self,
        model: &str,
        env: &str,
        version_id: &str,
    ) -> ControlResult<Environment> {
        check_name("environment", env)?;
        let model = self.model(model).await?;
        let version = self.version(version_id).await?;
        if version.model_id != model.id {
            return Err(ControlError::invalid(format!(
                "version '{version_id}' does not belong to model '{}'",
                model.name
            )));
        }
        let env = self
            .store
            .set_environment(&model.id, env, version_id)
            .await?;
        self.caches.changed(Invalidation::Targets).await;
        Ok(env)
    }

    /// Lists a model's environments.
    pub async fn environments(&self, model: &str) -> ControlResult<Vec<Environment>> {
        let model = self.model(model).await?;
        Ok(self.store.list_environments(&model.id).await?)
    }

    /// Creates a policy.
    pub async fn create_policy(&self, p: NewPolicy) -> ControlResult<Policy> {
        check_name("policy", &p.name)?;
        if let Some(r) = p.rate_limit_per_second {
            if !(r.is_finite() && r > 0.0 && r <= 1_000_000.0) {
                return Err(ControlError::invalid(
                    "rate_limit_per_second must be a number in (0, 1000000]",
                ));
            }
        }
        if p.burst == Some(0) {
            return Err(ControlError::invalid("burst must be at least 1"));
        }
        if p.burst.is_some() && p.rate_limit_per_second.is_none() {
            return Err(ControlError::invalid("burst needs rate_limit_per_second"));
        }
        Ok(self.store.create_policy(p).await?)
    }

    /// Reads a policy.
    pub async fn policy(&self, id: &str) -> ControlResult<Policy> {
        self.store
            .get_policy(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("policy '{id}' not found")))
    }

    /// Lists policies.
    pub async fn policies(&self) -> ControlResult<Vec<Policy>> {
        Ok(self.store.list_policies().await?)
    }

    /// Grants a user access to a model, under a policy.
    pub async fn create_grant(
        &self,
        user_id: &str,
        model: &str,
        policy_id: Option<&str>,
    ) -> ControlResult<Grant> {
        let user = self.user(user_id).await?;
        let model = self.model(model).await?;
        if let Some(p) = policy_id {
            self.policy(p).await?;
        }
        let grant = self
            .store
            .create_grant(&user.id, &model.id, policy_id)
            .await?;
        self.caches.changed(Invalidation::Access).await;
        Ok(grant)
    }

    /// Reads a grant.
    pub async fn grant(&self, id: &str) -> ControlResult<Grant> {
        self.store
            .get_grant(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("grant '{id}' not found")))
    }

    /// Lists grants.
    pub async fn grants(&self, user_id: Option<&str>) -> ControlResult<Vec<Grant>> {
        Ok(self.store.list_grants(user_id).await?)
    }

    /// Deletes a grant; effective on this node's next request.
    pub async fn delete_grant(&self, id: &str) -> ControlResult<()> {
        if !self.store.delete_grant(id).await? {
            return Err(ControlError::not_found(format!("grant '{id}' not found")));
        }
        self.caches.changed(Invalidation::Access).await;
        Ok(())
    }

    /// Usage rows.
    pub async fn usage(&self, filter: UsageFilter) -> ControlResult<Vec<UsageRow>> {
        Ok(self.store.usage(filter).await?)
    }
}
