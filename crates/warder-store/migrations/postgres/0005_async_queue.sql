-- Async inference: the durable job queue, webhook delivery log and the
-- per-user webhook signing secrets. Times are Unix milliseconds.
CREATE TABLE async_jobs (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    status TEXT NOT NULL,
    webhook_status TEXT NOT NULL,
    webhook_url TEXT,
    priority BIGINT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    errors TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    initial_delay_ms BIGINT NOT NULL,
    max_delay_ms BIGINT NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    queue_deadline BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    lease_owner TEXT,
    lease_token BIGINT NOT NULL,
    lease_expires_at BIGINT,
    cancel_requested BIGINT NOT NULL,
    expires_at BIGINT,
    webhook_attempts BIGINT NOT NULL,
    webhook_next_at BIGINT,
    webhook_lease_until BIGINT
);
-- The claim scans ready jobs in priority-then-age order.
CREATE INDEX async_jobs_ready ON async_jobs(priority, created_at) WHERE status = 'QUEUED';
CREATE INDEX async_jobs_running ON async_jobs(version_id) WHERE status = 'IN_PROGRESS';
CREATE INDEX async_jobs_lease ON async_jobs(lease_owner) WHERE status = 'IN_PROGRESS';
CREATE INDEX async_jobs_model ON async_jobs(model_id, status);
CREATE INDEX async_jobs_user ON async_jobs(user_id, created_at);
CREATE INDEX async_jobs_webhook ON async_jobs(webhook_next_at) WHERE webhook_status = 'PENDING';
CREATE INDEX async_jobs_retention ON async_jobs(expires_at);
CREATE UNIQUE INDEX async_jobs_idempotency ON async_jobs(user_id, idempotency_key);

CREATE TABLE webhook_deliveries (
    request_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status_code BIGINT,
    success BIGINT NOT NULL,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

CREATE TABLE webhook_secrets (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    sealed_secret TEXT NOT NULL,
    valid_until BIGINT
);
CREATE INDEX webhook_secrets_user ON webhook_secrets(user_id, created_at);

-- Prompt wake-up of workers in every process: a job became ready (new,
-- retried, rescued), a slot was freed, or a cancel was asked for.
CREATE FUNCTION warder_async_notify() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.cancel_requested = 1 AND OLD.cancel_requested = 0 THEN
        PERFORM pg_notify('warder_async', 'cancel');
    ELSE
        PERFORM pg_notify('warder_async', 'work');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER async_jobs_inserted AFTER INSERT ON async_jobs
    FOR EACH ROW EXECUTE FUNCTION warder_async_notify();
CREATE TRIGGER async_jobs_changed AFTER UPDATE ON async_jobs
    FOR EACH ROW
    WHEN ((NEW.status = 'QUEUED' AND OLD.status <> 'QUEUED')
       OR (OLD.status = 'IN_PROGRESS' AND NEW.status <> 'IN_PROGRESS')
       OR (NEW.cancel_requested = 1 AND OLD.cancel_requested = 0))
    EXECUTE FUNCTION warder_async_notify();
