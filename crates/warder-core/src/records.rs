//! The records of the control plane: users, keys, models, versions,
//! environments, policies, grants and usage.
//!
//! These are plain data, serialized as-is by the admin API. Validation of
//! values coming from outside happens where they are parsed (the admin
//! module), not here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A point in time, stored as Unix milliseconds, shown as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[schema(value_type = String, format = DateTime)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp(crate::now_ms())
    }

    /// Parses RFC 3339 text.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Timestamp(t.timestamp_millis()))
    }

    /// The time as RFC 3339 text in UTC, millisecond precision.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 timestamp"))
    }
}

/// What a user may do in the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May be given admin-scoped keys.
    Admin,
    /// An ordinary caller of models.
    Member,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A person or service that owns keys and receives grants.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct User {
    /// Stable id.
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Contact address, if given.
    pub email: Option<String>,
    /// Control-plane role.
    pub role: Role,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A capability of a key beyond calling granted models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// May call every `/admin` route.
    Admin,
    /// May call the `predict_internal` routes (no rate limit, no quota).
    Internal,
}

impl Scope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Internal => "internal",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "internal" => Some(Scope::Internal),
            _ => None,
        }
    }
}

/// An API key as stored: public id and secret hash, never the clear key.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct KeyRecord {
    /// The public id (`wdr_<id>_…`).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Human label.
    pub name: String,
    /// Extra capabilities.
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the secret.
    #[serde(skip)]
    pub secret_hash: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// After this instant the key is refused.
    pub expires_at: Option<Timestamp>,
    /// Set when the key was revoked.
    pub revoked_at: Option<Timestamp>,
}

impl KeyRecord {
    /// Whether the key carries a scope.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the key may be used at `now_ms`.
    pub fn is_usable_at(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t.0 > now_ms)
    }
}

/// A named model; its versions hold the upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Model {
    /// Stable id.
    pub id: String,
    /// Unique name, usable wherever the id is.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// How a successful upstream JSON answer is returned to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMode {
    /// Wrapped in `{request_id, model_id, model_version_id, output, cached}`.
    Envelope,
    /// Passed through untouched.
    Raw,
}

impl ResponseMode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Envelope => "envelope",
            ResponseMode::Raw => "raw",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ResponseMode> {
        match s {
            "envelope" => Some(ResponseMode::Envelope),
            "raw" => Some(ResponseMode::Raw),
            _ => None,
        }
    }
}

/// Whether a version takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Serves requests.
    Active,
    /// Answers 503 MODEL_NOT_READY.
    Inactive,
}

impl VersionState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::Inactive => "inactive",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<VersionState> {
        match s {
            "active" => Some(VersionState::Active),
            "inactive" => Some(VersionState::Inactive),
            _ => None,
        }
    }
}

/// One deployable upstream of a model.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ModelVersion {
    /// Stable id.
    pub id: String,
    /// The model it belongs to.
    pub model_id: String,
    /// Where predictions are sent (HTTP POST).
    pub upstream_url: String,
    /// Upper bound of one upstream call.
    pub timeout_ms: u64,
    /// Upper bound of calls in flight to this version; `None` = unbounded.
    pub max_concurrency: Option<u32>,
    /// JSON Schema the input must satisfy, if any.
    pub input_schema: Option<serde_json::Value>,
    /// Response-cache lifetime, if the model is deterministic.
    pub cache_ttl_s: Option<u64>,
    /// Envelope or raw answers.
    pub response: ResponseMode,
    /// Active or not.
    pub state: VersionState,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A named pointer from a model to one of its versions (`production`, …).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Environment {
    /// The model.
    pub model_id: String,
    /// Environment name.
    pub name: String,
    /// The version it serves.
    pub version_id: String,
    /// Last promotion.
    pub updated_at: Timestamp,
}

/// Limits applied per key × model to the holders of a grant.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Policy {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Sustained rate; `None` = unlimited.
    pub rate_limit_per_second: Option<f64>,
    /// Requests allowed at once above the sustained rate.
    pub burst: Option<u32>,
    /// Calls per UTC day; `None` = unlimited.
    pub daily_calls: Option<u64>,
    /// Calls per UTC month; `None` = unlimited.
    pub monthly_calls: Option<u64>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Permission for a user to call a model, under a policy.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Grant {
    /// Stable id.
    pub id: String,
    /// Who.
    pub user_id: String,
    /// Which model.
    pub model_id: String,
    /// Limits; `None` = the configured default.
    pub policy_id: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Calls counted for one user × key × model × UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageRow {
    /// Caller.
    pub user_id: String,
    /// Key used.
    pub key_id: String,
    /// Model called.
    pub model_id: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// Number of calls sent to the model (whatever it answered).
    pub calls: u64,
}
