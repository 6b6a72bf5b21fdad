//! Reading rows of `async_jobs` back into [`AsyncJob`]s and [`Lease`]s.
//!
//! A row that does not decode is a corrupt store, reported as such, never
//! skipped.

use crate::sql::map_err;
use sqlx::any::AnyRow;
use sqlx::Row;
use warder_core::*;

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Other(format!("corrupt async job row: {what}"))
}

pub(super) fn get<'r, T>(row: &'r AnyRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get::<T, _>(col).map_err(map_err)
}

pub(super) fn job_row(row: &AnyRow) -> StoreResult<AsyncJob> {
    let status: String = get(row, "status")?;
    let webhook_status: String = get(row, "webhook_status")?;
    let errors: String = get(row, "errors")?;
    let ts = |c: &str| get::<i64>(row, c).map(Timestamp);
    let opt_ts = |c: &str| get::<Option<i64>>(row, c).map(|v| v.map(Timestamp));
    Ok(AsyncJob {
        id: get(row, "id")?,
        user_id: get(row, "user_id")?,
        key_id: get(row, "key_id")?,
        model_id: get(row, "model_id")?,
        version_id: get(row, "version_id")?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        webhook_status: WebhookStatus::parse(&webhook_status)
            .ok_or_else(|| corrupt("webhook_status"))?,
        webhook_url: get(row, "webhook_url")?,
        priority: get::<i64>(row, "priority")?.clamp(0, 255) as u8,
        input: get(row, "input")?,
        output: get(row, "output")?,
        errors: serde_json::from_str(&errors).map_err(|_| corrupt("errors"))?,
        attempts: get::<i64>(row, "attempts")?.max(0) as u32,
        retry: RetryConfig {
            max_attempts: get::<i64>(row, "max_attempts")?.max(0) as u32,
            initial_delay_ms: get::<i64>(row, "initial_delay_ms")?.max(0) as u64,
            max_delay_ms: get::<i64>(row, "max_delay_ms")?.max(0) as u64,
        },
        idempotency_key: get(row, "idempotency_key")?,
        created_at: ts("created_at")?,
        queue_deadline: ts("queue_deadline")?,
        run_after: ts("run_after")?,
        started_at: opt_ts("started_at")?,
        finished_at: opt_ts("finished_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_token: get(row, "lease_token")?,
        lease_expires_at: opt_ts("lease_expires_at")?,
        cancel_requested: get::<i64>(row, "cancel_requested")? != 0,
        expires_at: opt_ts("expires_at")?,
        webhook_attempts: get::<i64>(row, "webhook_attempts")?.max(0) as u32,
        webhook_next_at: opt_ts("webhook_next_at")?,
    })
}

pub(super) fn leases(rows: &[AnyRow]) -> StoreResult<Vec<Lease>> {
    let mut out = rows
        .iter()
        .map(|r| {
            job_row(r).map(|job| Lease {
                token: job.lease_token,
                job,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    out.sort_by_key(|l| (l.job.priority, l.job.created_at));
    Ok(out)
}

pub(super) fn errors_json(errors: &[JobError]) -> String {
    serde_json::to_string(errors).unwrap_or_else(|_| "[]".to_owned())
}
