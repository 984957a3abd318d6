-- A step's due time (docs/design.md section 4): when its task should run (queued) — now, or
-- after a timer. A step still queued well past it, or running far longer than any step
-- takes, has lost its queue task (a database restart can cut an acknowledgement that apalis
-- then never retries); the runtime's stall sweep queues it again. NULL (rows from before):
-- queued_ms.
ALTER TABLE steps ADD COLUMN due_ms BIGINT;
CREATE INDEX steps_unfinished ON steps(status, run_id) WHERE status IN ('queued', 'running');
