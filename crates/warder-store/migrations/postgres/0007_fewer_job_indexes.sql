-- Fewer index entries per job. A claim and a finish both change `status`,
-- which the indexes below name, so neither update can be HOT: each writes a
-- new entry into every index whose predicate the new row meets.
--
-- - Queue depth by model is counted through the versions (the two
--   per-version partial indexes), so `async_jobs_model`, an entry per row
--   version for every job ever stored, goes.
-- - Running jobs by version and by lease owner share one index: the
--   heartbeat scans this worker's few running jobs in it.
-- - The retention purge only looks at finished jobs, and the idempotency
--   check only at jobs that have a key: both indexes skip the other rows.
DROP INDEX async_jobs_model;
DROP INDEX async_jobs_lease;
DROP INDEX async_jobs_running;
DROP INDEX async_jobs_retention;
DROP INDEX async_jobs_idempotency;
CREATE INDEX async_jobs_running ON async_jobs(version_id, lease_owner) WHERE status = 'IN_PROGRESS';
CREATE INDEX async_jobs_retention ON async_jobs(expires_at) WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX async_jobs_idempotency ON async_jobs(user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
