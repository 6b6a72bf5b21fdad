-- Queued jobs by version in claim order: a claim's branch for a capped
-- version reads its first ready jobs off this index, in order, instead of
-- sorting every queued job of the version (which cost a claim time in
-- proportion to the backlog). Counts by version read it as before.
DROP INDEX async_jobs_queued_version;
CREATE INDEX async_jobs_queued_version ON async_jobs(version_id, priority, created_at)
    WHERE status = 'QUEUED';
