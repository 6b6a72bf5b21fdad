-- A submit batch wakes the workers only when it queued a job. A job handed
-- to a worker at submit is stored already IN_PROGRESS under that worker, so
-- an INSERT of such jobs alone leaves nothing for any worker to claim.
DROP TRIGGER async_jobs_inserted ON async_jobs;

CREATE FUNCTION warder_async_notify_queued() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE status = 'QUEUED') THEN
        PERFORM pg_notify('warder_async', 'work');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER async_jobs_inserted AFTER INSERT ON async_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION warder_async_notify_queued();
