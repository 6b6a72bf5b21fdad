//! Row → record decoding, kept apart from the queries that fetch the rows.

use sqlx::{any::AnyRow, Row};
use warder_core::*;

type DecodeResult<T> = Result<T, StoreError>;

fn bad(what: &str, value: &str) -> StoreError {
    StoreError::Other(format!("corrupt row: {what} = {value:?}"))
}

fn ts(row: &AnyRow, col: &str) -> DecodeResult<Timestamp> {
    Ok(Timestamp(
        row.try_get::<i64, _>(col).map_err(crate::sql::map_err)?,
    ))
}

fn opt_ts(row: &AnyRow, col: &str) -> DecodeResult<Option<Timestamp>> {
    Ok(row
        .try_get::<Option<i64>, _>(col)
        .map_err(crate::sql::map_err)?
        .map(Timestamp))
}

fn text(row: &AnyRow, col: &str) -> DecodeResult<String> {
    row.try_get::<String, _>(col).map_err(crate::sql::map_err)
}

fn opt_text(row: &AnyRow, col: &str) -> DecodeResult<Option<String>> {
    row.try_get::<Option<String>, _>(col)
        .map_err(crate::sql::map_err)
}

fn opt_i64(row: &AnyRow, col: &str) -> DecodeResult<Option<i64>> {
    row.try_get::<Option<i64>, _>(col)
        .map_err(crate::sql::map_err)
}

pub(crate) fn user(row: &AnyRow) -> DecodeResult<User> {
    let role = text(row, "role")?;
    Ok(User {
        id: text(row, "id")?,
        name: text(row, "name")?,
        email: opt_text(row, "email")?,
        role: Role::parse(&role).ok_or_else(|| bad("role", &role))?,
        created_at: ts(row, "created_at")?,
    })
}

pub(crate) fn key(row: &AnyRow) -> DecodeResult<KeyRecord> {
    let scopes = text(row, "scopes")?;
    let scopes = scopes
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Scope::parse(s).ok_or_else(|| bad("scope", s)))
        .collect::<DecodeResult<Vec<_>>>()?;
    Ok(KeyRecord {
        id: text(row, "id")?,
        user_id: text(row, "user_id")?,
        name: text(row, "name")?,
        scopes,
        secret_hash: text(row, "secret_hash")?,
        created_at: ts(row, "created_at")?,
        expires_at: opt_ts(row, "expires_at")?,
        revoked_at: opt_ts(row, "revoked_at")?,
    })
}

pub(crate) fn model(row: &AnyRow) -> DecodeResult<Model> {
    Ok(Model {
        id: text(row, "id")?,
        name: text(row, "name")?,
        description: opt_text(row, "description")?,
        created_at: ts(row, "created_at")?,
    })
}

pub(crate) fn version(row: &AnyRow) -> DecodeResult<ModelVersion> {
    let response = text(row, "response")?;
    let state = text(row, "state")?;
    let schema = opt_text(row, "input_schema")?
        .map(|s| serde_json::from_str(&s).map_err(|_| bad("input_schema", &s)))
        .transpose()?;
    Ok(ModelVersion {
        id: text(row, "id")?,
        model_id: text(row, "model_id")?,
        upstream_url: text(row, "upstream_url")?,
        timeout_ms: row
            .try_get::<i64, _>("timeout_ms")
            .map_err(crate::sql::map_err)? as u64,
        max_concurrency: opt_i64(row, "max_concurrency")?.map(|v| v as u32),
        input_schema: schema,
        cache_ttl_s: opt_i64(row, "cache_ttl_s")?.map(|v| v as u64),
        response: ResponseMode::parse(&response).ok_or_else(|| bad("response", &response))?,
        state: VersionState::parse(&state).ok_or_else(|| bad("state", &state))?,
        created_at: ts(row, "created_at")?,
    })
}

pub(crate) fn environment(row: &AnyRow) -> DecodeResult<Environment> {
    Ok(Environment {
        model_id: text(row, "model_id")?,
        name: text(row, "name")?,
        version_id: text(row, "version_id")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(crate) fn policy(row: &AnyRow) -> DecodeResult<Policy> {
    Ok(Policy {
        id: text(row, "id")?,
        name: text(row, "name")?,
        rate_limit_per_second: row
            .try_get::<Option<f64>, _>("rate_limit_per_second")
            .map_err(crate::sql::map_err)?,
        burst: opt_i64(row, "burst")?.map(|v| v as u32),
        daily_calls: opt_i64(row, "daily_calls")?.map(|v| v as u64),
        monthly_calls: opt_i64(row, "monthly_calls")?.map(|v| v as u64),
        created_at: ts(row, "created_at")?,
    })
}

pub(crate) fn grant(row: &AnyRow) -> DecodeResult<Grant> {
    Ok(Grant {
        id: text(row, "id")?,
        user_id: text(row, "user_id")?,
        model_id: text(row, "model_id")?,
        policy_id: opt_text(row, "policy_id")?,
        created_at: ts(row, "created_at")?,
    })
}

pub(crate) fn usage(row: &AnyRow) -> DecodeResult<UsageRow> {
    Ok(UsageRow {
        user_id: text(row, "user_id")?,
        key_id: text(row, "key_id")?,
        model_id: text(row, "model_id")?,
        day: text(row, "day")?,
        calls: row
            .try_get::<i64, _>("calls")
            .map_err(crate::sql::map_err)? as u64,
    })
}
