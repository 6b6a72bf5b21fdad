//! The admin API (`/admin/…`): thin handlers over [`crate::control`].
//!
//! Every route here sits behind the authentication layer and the
//! admin-scope check of [`crate::http::middleware::require_admin`]; the shapes
//! are the contract of DESIGN §4 (fields may be added, never renamed).

use crate::control::{ControlError, VersionSpec};
use crate::http::error::ApiError;
use crate::http::json::ApiJson;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use warder_core::*;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        ApiError::new(e.code, e.message)
    }
}

type AdminResult<T> = Result<T, ApiError>;

/// The admin routes (authentication and the admin check are added by the caller).
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/admin/users", post(create_user).get(list_users))
        .route("/admin/users/{user_id}", get(get_user))
        .route(
            "/admin/users/{user_id}/keys",
            post(create_key).get(list_keys),
        )
        .route("/admin/keys/{key_id}", delete(revoke_key))
        .route("/admin/models", post(create_model).get(list_models))
        .route("/admin/models/{model}", get(get_model))
        .route(
            "/admin/models/{model}/versions",
            post(create_version).get(list_versions),
        )
        .route(
            "/admin/model_versions/{version_id}",
            get(get_version).patch(update_version),
        )
        .route("/admin/models/{model}/environments", get(list_environments))
        .route("/admin/models/{model}/environments/{env}", put(promote))
        .route("/admin/policies", post(create_policy).get(list_policies))
        .route("/admin/policies/{policy_id}", get(get_policy))
        .route("/admin/grants", post(create_grant).get(list_grants))
        .route(
            "/admin/grants/{grant_id}",
            get(get_grant).delete(delete_grant),
        )
        .route("/admin/usage", get(usage))
        .route("/admin/whoami", get(whoami))
}

/// Body of `POST /admin/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Unique name.
    pub name: String,
    /// Contact address.
    pub email: Option<String>,
    /// `admin` or `member` (default).
    pub role: Option<Role>,
}

/// Create a user.
#[utoipa::path(post, path = "/admin/users", tag = "admin", request_body = CreateUser,
    responses((status = 201, body = User), (status = 409, description = "name taken")),
    security(("api_key" = [])))]
async fn create_user(
    State(s): State<SharedState>,
    ApiJson(b): ApiJson<CreateUser>,
) -> AdminResult<(StatusCode, ApiJson<User>)> {
    let user = s.control.create_user(b.name, b.email, b.role).await?;
    Ok((StatusCode::CREATED, ApiJson(user)))
}

/// List users.
#[utoipa::path(get, path = "/admin/users", tag = "admin",
    responses((status = 200, description = "`{users: [...]}`")), security(("api_key" = [])))]
async fn list_users(State(s): State<SharedState>) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(json!({ "users": s.control.users().await? })))
}

/// Read a user.
#[utoipa::path(get, path = "/admin/users/{user_id}", tag = "admin",
    responses((status = 200, body = User), (status = 404)), security(("api_key" = [])))]
async fn get_user(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> AdminResult<ApiJson<User>> {
    Ok(ApiJson(s.control.user(&id).await?))
}

/// Body of `POST /admin/users/{user_id}/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Human label.
    pub name: String,
    /// `admin` and/or `internal`.
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// RFC 3339 expiry.
    pub expires_at: Option<Timestamp>,
}

/// A created key: the only answer that contains the clear key.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// Public id.
    pub id: String,
    /// The clear key; shown only here.
    pub key: String,
    /// Owner.
    pub user_id: String,
    /// Label.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
}

/// Create a key for a user.
#[utoipa::path(post, path = "/admin/users/{user_id}/keys", tag = "admin", request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 404)), security(("api_key" = [])))]
async fn create_key(
    State(s): State<SharedState>,
    Path(user_id): Path<String>,
    ApiJson(b): ApiJson<CreateKey>,
) -> AdminResult<(StatusCode, ApiJson<CreatedKey>)> {
    let (record, key) = s
        .control
        .create_key(&user_id, b.name, b.scopes, b.expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedKey {
            id: record.id,
            key: key.expose(),
            user_id: record.user_id,
            name: record.name,
            scopes: record.scopes,
            created_at: record.created_at,
            expires_at: record.expires_at,
        }),
    ))
}

/// List a user's keys (never their secrets).
#[utoipa::path(get, path = "/admin/users/{user_id}/keys", tag = "admin",
    responses((status = 200, description = "`{keys: [...]}`")), security(("api_key" = [])))]
async fn list_keys(
    State(s): State<SharedState>,
    Path(user_id): Path<String>,
) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(json!({ "keys": s.control.keys(&user_id).await? })))
}

/// Revoke a key.
#[utoipa::path(delete, path = "/admin/keys/{key_id}", tag = "admin",
    responses((status = 200, body = KeyRecord), (status = 404)), security(("api_key" = [])))]
async fn revoke_key(
    State(s): State<SharedState>,
    Path(key_id): Path<String>,
) -> AdminResult<ApiJson<KeyRecord>> {
    Ok(ApiJson(s.control.revoke_key(&key_id).await?))
}

/// Body of `POST /admin/models`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
}

/// Create a model.
#[utoipa::path(post, path = "/admin/models", tag = "admin", request_body = CreateModel,
    responses((status = 201, body = Model), (status = 409)), security(("api_key" = [])))]
async fn create_model(
    State(s): State<SharedState>,
    ApiJson(b): ApiJson<CreateModel>,
) -> AdminResult<(StatusCode, ApiJson<Model>)> {
    Ok((
        StatusCode::CREATED,
        ApiJson(s.control.create_model(b.name, b.description).await?),
    ))
}

/// List models.
#[utoipa::path(get, path = "/admin/models", tag = "admin",
    responses((status = 200, description = "`{models: [...]}`")), security(("api_key" = [])))]
async fn list_models(State(s): State<SharedState>) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(json!({ "models": s.control.models().await? })))
}

/// Read a model (by id or name), with its environments.
#[utoipa::path(get, path = "/admin/models/{model}", tag = "admin",
    responses((status = 200, body = Model), (status = 404)), security(("api_key" = [])))]
async fn get_model(
    State(s): State<SharedState>,
    Path(model): Path<String>,
) -> AdminResult<ApiJson<Value>> {
    let m = s.control.model(&model).await?;
    let envs = s.control.environments(&m.id).await?;
    let mut v = serde_json::to_value(&m).map_err(|e| ApiError::internal(&e))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("environments".into(), json!(envs));
    }
    Ok(ApiJson(v))
}

fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `POST /admin/models/{model}/versions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVersion {
    /// Where predictions are POSTed.
    pub upstream_url: String,
    /// Upstream timeout (default `default_upstream_timeout_ms`).
    pub timeout_ms: Option<u64>,
    /// Calls in flight at most (sync and async together).
    pub max_concurrency: Option<u32>,
    /// JSON Schema of the input.
    pub input_schema: Option<Value>,
    /// Response-cache lifetime.
    pub cache_ttl_s: Option<u64>,
    /// `envelope` (default) or `raw`.
    pub response: Option<ResponseMode>,
    /// `active` (default) or `inactive`.
    pub state: Option<VersionState>,
}

/// Add a version to a model (the first becomes `production`).
#[utoipa::path(post, path = "/admin/models/{model}/versions", tag = "admin", request_body = CreateVersion,
    responses((status = 201, body = ModelVersion), (status = 404), (status = 422)), security(("api_key" = [])))]
async fn create_version(
    State(s): State<SharedState>,
    Path(model): Path<String>,
    ApiJson(b): ApiJson<CreateVersion>,
) -> AdminResult<(StatusCode, ApiJson<ModelVersion>)> {
    let spec = VersionSpec {
        upstream_url: b.upstream_url,
        timeout_ms: b.timeout_ms,
        max_concurrency: b.max_concurrency,
        input_schema: b.input_schema,
        cache_ttl_s: b.cache_ttl_s,
        response: b.response,
        state: b.state,
    };
    Ok((
        StatusCode::CREATED,
        ApiJson(s.control.create_version(&model, spec).await?),
    ))
}

/// List a model's versions.
#[utoipa::path(get, path = "/admin/models/{model}/versions", tag = "admin",
    responses((status = 200, description = "`{versions: [...]}`")), security(("api_key" = [])))]
async fn list_versions(
    State(s): State<SharedState>,
    Path(model): Path<String>,
) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(
        json!({ "versions": s.control.versions(&model).await? }),
    ))
}

/// Read a version.
#[utoipa::path(get, path = "/admin/model_versions/{version_id}", tag = "admin",
    responses((status = 200, body = ModelVersion), (status = 404)), security(("api_key" = [])))]
async fn get_version(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> AdminResult<ApiJson<ModelVersion>> {
    Ok(ApiJson(s.control.version(&id).await?))
}

/// Body of `PATCH /admin/model_versions/{version_id}`; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVersion {
    /// New upstream.
    pub upstream_url: Option<String>,
    /// New timeout.
    pub timeout_ms: Option<u64>,
    /// New cap (`null` removes it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub max_concurrency: Option<Option<u32>>,
    /// New schema (`null` removes it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Option<Value>>,
    /// New cache lifetime (`null` removes it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub cache_ttl_s: Option<Option<u64>>,
    /// New response mode.
    pub response: Option<ResponseMode>,
    /// New state.
    pub state: Option<VersionState>,
}

/// Change a version (e.g. its `state`).
#[utoipa::path(patch, path = "/admin/model_versions/{version_id}", tag = "admin", request_body = UpdateVersion,
    responses((status = 200, body = ModelVersion), (status = 404)), security(("api_key" = [])))]
async fn update_version(
    State(s): State<SharedState>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateVersion>,
) -> AdminResult<ApiJson<ModelVersion>> {
    let patch = VersionPatch {
        upstream_url: b.upstream_url,
        timeout_ms: b.timeout_ms,
        max_concurrency: b.max_concurrency,
        input_schema: b.input_schema,
        cache_ttl_s: b.cache_ttl_s,
        response: b.response,
        state: b.state,
    };
    Ok(ApiJson(s.control.update_version(&id, patch).await?))
}

/// List a model's environments.
#[utoipa::path(get, path = "/admin/models/{model}/environments", tag = "admin",
    responses((status = 200, description = "`{environments: [...]}`")), security(("api_key" = [])))]
async fn list_environments(
    State(s): State<SharedState>,
    Path(model): Path<String>,
) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(
        json!({ "environments": s.control.environments(&model).await? }),
    ))
}

/// Body of `PUT /admin/models/{model}/environments/{env}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// The version the environment should serve.
    pub version_id: String,
}

/// Point an environment at a version (promote).
#[utoipa::path(put, path = "/admin/models/{model}/environments/{env}", tag = "admin", request_body = Promote,
    responses((status = 200, body = Environment), (status = 404), (status = 422)), security(("api_key" = [])))]
async fn promote(
    State(s): State<SharedState>,
    Path((model, env)): Path<(String, String)>,
    ApiJson(b): ApiJson<Promote>,
) -> AdminResult<ApiJson<Environment>> {
    Ok(ApiJson(
        s.control.promote(&model, &env, &b.version_id).await?,
    ))
}

/// Body of `POST /admin/policies`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    /// Unique name.
    pub name: String,
    /// Sustained requests per second per key × model.
    pub rate_limit_per_second: Option<f64>,
    /// Requests allowed at once (default: the rate, rounded up).
    pub burst: Option<u32>,
    /// Calls per UTC day.
    pub daily_calls: Option<u64>,
    /// Calls per UTC month.
    pub monthly_calls: Option<u64>,
}

/// Create an access policy.
#[utoipa::path(post, path = "/admin/policies", tag = "admin", request_body = CreatePolicy,
    responses((status = 201, body = Policy), (status = 422)), security(("api_key" = [])))]
async fn create_policy(
    State(s): State<SharedState>,
    ApiJson(b): ApiJson<CreatePolicy>,
) -> AdminResult<(StatusCode, ApiJson<Policy>)> {
    let p = NewPolicy {
        name: b.name,
        rate_limit_per_second: b.rate_limit_per_second,
        burst: b.burst,
        daily_calls: b.daily_calls,
        monthly_calls: b.monthly_calls,
    };
    Ok((
        StatusCode::CREATED,
        ApiJson(s.control.create_policy(p).await?),
    ))
}

/// List policies.
#[utoipa::path(get, path = "/admin/policies", tag = "admin",
    responses((status = 200, description = "`{policies: [...]}`")), security(("api_key" = [])))]
async fn list_policies(State(s): State<SharedState>) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(json!({ "policies": s.control.policies().await? })))
}

/// Read a policy.
#[utoipa::path(get, path = "/admin/policies/{policy_id}", tag = "admin",
    responses((status = 200, body = Policy), (status = 404)), security(("api_key" = [])))]
async fn get_policy(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> AdminResult<ApiJson<Policy>> {
    Ok(ApiJson(s.control.policy(&id).await?))
}

/// Body of `POST /admin/grants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// Who.
    pub user_id: String,
    /// Model id or name.
    pub model: String,
    /// Limits (default: the configured defaults).
    pub policy_id: Option<String>,
}

/// Grant a user access to a model.
#[utoipa::path(post, path = "/admin/grants", tag = "admin", request_body = CreateGrant,
    responses((status = 201, body = Grant), (status = 404), (status = 409)), security(("api_key" = [])))]
async fn create_grant(
    State(s): State<SharedState>,
    ApiJson(b): ApiJson<CreateGrant>,
) -> AdminResult<(StatusCode, ApiJson<Grant>)> {
    let g = s
        .control
        .create_grant(&b.user_id, &b.model, b.policy_id.as_deref())
        .await?;
    Ok((StatusCode::CREATED, ApiJson(g)))
}

/// Filter of `GET /admin/grants`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GrantFilter {
    /// Only this user's grants.
    pub user_id: Option<String>,
}

/// List grants.
#[utoipa::path(get, path = "/admin/grants", tag = "admin", params(GrantFilter),
    responses((status = 200, description = "`{grants: [...]}`")), security(("api_key" = [])))]
async fn list_grants(
    State(s): State<SharedState>,
    Query(f): Query<GrantFilter>,
) -> AdminResult<ApiJson<Value>> {
    Ok(ApiJson(
        json!({ "grants": s.control.grants(f.user_id.as_deref()).await? }),
    ))
}

/// Read a grant.
#[utoipa::path(get, path = "/admin/grants/{grant_id}", tag = "admin",
    responses((status = 200, body = Grant), (status = 404)), security(("api_key" = [])))]
async fn get_grant(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> AdminResult<ApiJson<Grant>> {
    Ok(ApiJson(s.control.grant(&id).await?))
}

/// Delete a grant.
#[utoipa::path(delete, path = "/admin/grants/{grant_id}", tag = "admin",
    responses((status = 200, description = "`{id, deleted: true}`"), (status = 404)), security(("api_key" = [])))]
async fn delete_grant(
    State(s): State<SharedState>,
    Path(id): Path<String>,
) -> AdminResult<ApiJson<Value>> {
    s.control.delete_grant(&id).await?;
    Ok(ApiJson(json!({ "id": id, "deleted": true })))
}

/// Filter of `GET /admin/usage`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct UsageQuery {
    /// Only this user.
    pub user_id: Option<String>,
    /// Only this model (id or name).
    pub model: Option<String>,
    /// First day, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD`.
    pub to: Option<String>,
}

fn check_day(d: &Option<String>) -> AdminResult<()> {
    match d {
        Some(d) if chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() => {
            Err(ApiError::invalid("from/to must be YYYY-MM-DD"))
        }
        _ => Ok(()),
    }
}

/// Calls per user, key, model and UTC day.
#[utoipa::path(get, path = "/admin/usage", tag = "admin", params(UsageQuery),
    responses((status = 200, description = "`{usage: [{user_id, key_id, model_id, day, calls}]}`")),
    security(("api_key" = [])))]
async fn usage(
    State(s): State<SharedState>,
    Query(q): Query<UsageQuery>,
) -> AdminResult<ApiJson<Value>> {
    check_day(&q.from)?;
    check_day(&q.to)?;
    let model_id = match &q.model {
        Some(m) => Some(s.control.model(m).await?.id),
        None => None,
    };
    let rows = s
        .control
        .usage(UsageFilter {
            user_id: q.user_id,
            model_id,
            from: q.from,
            to: q.to,
        })
        .await?;
    Ok(ApiJson(json!({ "usage": rows })))
}

/// The calling key (a quick check that an admin key works).
#[utoipa::path(get, path = "/admin/whoami", tag = "admin",
    responses((status = 200, description = "`{key_id, user_id}`")), security(("api_key" = [])))]
async fn whoami(
    axum::Extension(p): axum::Extension<std::sync::Arc<crate::auth::Principal>>,
) -> ApiJson<Value> {
    ApiJson(json!({ "key_id": &*p.key_id, "user_id": &*p.user_id }))
}
