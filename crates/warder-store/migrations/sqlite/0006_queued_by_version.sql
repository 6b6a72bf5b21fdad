-- Queued jobs by version: lets a claim find the capped versions that have
-- work without scanning the whole queue.
CREATE INDEX async_jobs_queued_version ON async_jobs(version_id) WHERE status = 'QUEUED';
