//! Storage traits, one per concern, implemented once per backend.
//!
//! Implementations persist data as given: validation and defaults belong to
//! the callers. Every method may fail with [`StoreError::Unavailable`] when the
//! backend cannot be reached; callers decide what that means for a request.

use crate::jobs::{JobQueue, WebhookSecretStore};
use crate::records::*;
use async_trait::async_trait;

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was violated (e.g. a name already taken).
    #[error("already exists: {0}")]
    Conflict(String),
    /// A referenced row does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend could not be reached or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (corrupt row, driver bug).
    #[error("store error: {0}")]
    Other(String),
}

/// Shorthand for storage results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique name.
    pub name: String,
    /// Contact address.
    pub email: Option<String>,
    /// Role.
    pub role: Role,
}

/// Users of the control plane.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; `Conflict` when the name is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    /// Reads one user by id.
    async fn get_user(&self, id: &str) -> StoreResult<Option<User>>;
    /// Reads one user by name.
    async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    /// Lists all users, oldest first.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
}

/// API keys (public id + secret hash).
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a key record as given.
    async fn insert_key(&self, key: KeyRecord) -> StoreResult<()>;
    /// Reads one key by public id, revoked or not.
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    /// Lists a user's keys.
    async fn list_keys(&self, user_id: &str) -> StoreResult<Vec<KeyRecord>>;
    /// Marks a key revoked; `false` when no such key.
    async fn revoke_key(&self, id: &str, at: Timestamp) -> StoreResult<bool>;
}

/// A model to create.
#[derive(Debug, Clone)]
pub struct NewModel {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
}

/// Changes to a version; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct VersionPatch {
    /// New upstream.
    pub upstream_url: Option<String>,
    /// New timeout.
    pub timeout_ms: Option<u64>,
    /// New concurrency cap (`Some(None)` removes it).
    pub max_concurrency: Option<Option<u32>>,
    /// New input schema (`Some(None)` removes it).
    pub input_schema: Option<Option<serde_json::Value>>,
    /// New cache lifetime (`Some(None)` removes it).
    pub cache_ttl_s: Option<Option<u64>>,
    /// New response mode.
    pub response: Option<ResponseMode>,
    /// New state.
    pub state: Option<VersionState>,
}

/// Models, their versions and environments.
#[async_trait]
pub trait ModelStore: Send + Sync {
    /// Creates a model; `Conflict` when the name is taken.
    async fn create_model(&self, model: NewModel) -> StoreResult<Model>;
    /// Reads a model by id or by unique name.
    async fn find_model(&self, id_or_name: &str) -> StoreResult<Option<Model>>;
    /// Lists all models.
    async fn list_models(&self) -> StoreResult<Vec<Model>>;
    /// Stores a version as given; when the model has no `production`
    /// environment yet, points `production` at it in the same transaction.
    async fn insert_version(&self, version: ModelVersion) -> StoreResult<()>;
    /// Reads one version.
    async fn get_version(&self, id: &str) -> StoreResult<Option<ModelVersion>>;
    /// Lists a model's versions, oldest first.
    async fn list_versions(&self, model_id: &str) -> StoreResult<Vec<ModelVersion>>;
    /// Applies a patch; returns the updated version, `None` when unknown.
    async fn update_version(
        &self,
        id: &str,
        patch: VersionPatch,
    ) -> StoreResult<Option<ModelVersion>>;
    /// Points an environment at a version (creating the environment).
    async fn set_environment(
        &self,
        model_id: &str,
        name: &str,
        version_id: &str,
    ) -> StoreResult<Environment>;
    /// Reads one environment.
    async fn get_environment(&self, model_id: &str, name: &str)
        -> StoreResult<Option<Environment>>;
    /// Lists a model's environments.
    async fn list_environments(&self, model_id: &str) -> StoreResult<Vec<Environment>>;
}

/// A policy to create.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    /// Unique name.
    pub name: String,
    /// Sustained rate.
    pub rate_limit_per_second: Option<f64>,
    /// Burst.
    pub burst: Option<u32>,
    /// Daily quota.
    pub daily_calls: Option<u64>,
    /// Monthly quota.
    pub monthly_calls: Option<u64>,
}

/// Access policies and grants.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Creates a policy; `Conflict` when the name is taken.
    async fn create_policy(&self, policy: NewPolicy) -> StoreResult<Policy>;
    /// Reads one policy.
    async fn get_policy(&self, id: &str) -> StoreResult<Option<Policy>>;
    /// Lists policies.
    async fn list_policies(&self) -> StoreResult<Vec<Policy>>;
    /// Creates a grant; `Conflict` when the user already has one for the model.
    async fn create_grant(
        &self,
        user_id: &str,
        model_id: &str,
        policy_id: Option<&str>,
    ) -> StoreResult<Grant>;
    /// The grant of a user for a model, if any.
    async fn find_grant(&self, user_id: &str, model_id: &str) -> StoreResult<Option<Grant>>;
    /// Reads one grant.
    async fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>>;
    /// Lists grants, optionally of one user.
    async fn list_grants(&self, user_id: Option<&str>) -> StoreResult<Vec<Grant>>;
    /// Deletes a grant; `false` when unknown.
    async fn delete_grant(&self, id: &str) -> StoreResult<bool>;
}

/// One batch entry of counted calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKey {
    /// Caller.
    pub user_id: String,
    /// Key used.
    pub key_id: String,
    /// Model called.
    pub model_id: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
}

/// Filter for usage reports.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    /// Only this user.
    pub user_id: Option<String>,
    /// Only this model.
    pub model_id: Option<String>,
    /// From this day (inclusive, `YYYY-MM-DD`).
    pub from: Option<String>,
    /// To this day (inclusive, `YYYY-MM-DD`).
    pub to: Option<String>,
}

/// Call counters per user × key × model × day.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds counts (upsert-increment).
    async fn add_usage(&self, batch: &[(UsageKey, u64)]) -> StoreResult<()>;
    /// Reads counts.
    async fn usage(&self, filter: UsageFilter) -> StoreResult<Vec<UsageRow>>;
    /// Sum of a key's calls to a model over days in `[from, to]`.
    async fn calls_between(
        &self,
        key_id: &str,
        model_id: &str,
        from: &str,
        to: &str,
    ) -> StoreResult<u64>;
}

/// Everything the gateway persists, as one handle.
#[async_trait]
pub trait Store:
    UserStore + KeyStore + ModelStore + AccessStore + UsageStore + JobQueue + WebhookSecretStore
{
    /// Checks that the backend answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;
    /// Number of read queries issued so far (observability and tests).
    fn read_count(&self) -> u64;
    /// Backend name (`sqlite` or `postgres`).
    fn backend(&self) -> &'static str;
}
