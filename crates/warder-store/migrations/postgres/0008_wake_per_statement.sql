-- Wake-ups without a PL/pgSQL call per row. The row triggers of 0005 ran
-- for every inserted job and every finished one: about a tenth of the
-- server's CPU per job in the async benchmark.
-- - A submit batch wakes the workers once per INSERT statement.
-- - A freed slot (a job leaving IN_PROGRESS) is announced by the queue
--   code, once per batch of outcomes (`finish_jobs`, `rescue_expired_leases`).
-- - A job queued again (retry, rescue) and a cancel request stay row
--   triggers: they are rare.
DROP TRIGGER async_jobs_inserted ON async_jobs;
DROP TRIGGER async_jobs_changed ON async_jobs;

CREATE FUNCTION warder_async_notify_work() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('warder_async', 'work');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER async_jobs_inserted AFTER INSERT ON async_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION warder_async_notify_work();
CREATE TRIGGER async_jobs_changed AFTER UPDATE ON async_jobs
    FOR EACH ROW
    WHEN ((NEW.status = 'QUEUED' AND OLD.status <> 'QUEUED')
       OR (NEW.cancel_requested = 1 AND OLD.cancel_requested = 0))
    EXECUTE FUNCTION warder_async_notify();
