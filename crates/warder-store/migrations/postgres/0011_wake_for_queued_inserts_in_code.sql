-- A submit batch that queued a job wakes the workers from the queue code
-- (`enqueue_jobs`), which knows whether it did, once per batch. The
-- statement trigger of 0009 found out by reading a transition table: every
-- inserted row was copied into it, handed-off jobs too, and the trigger and
-- its PL/pgSQL function ran for every INSERT.
DROP TRIGGER async_jobs_inserted ON async_jobs;
DROP FUNCTION warder_async_notify_queued();
