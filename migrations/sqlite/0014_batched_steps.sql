-- A step's queued executions in run order: what a batch takes along (engine::batch::claim_queued),
-- without reading past the other steps' queued rows (settling jobs' timers can be many).
CREATE INDEX steps_queued_by_step ON steps(step, run_id) WHERE status = 'queued';
