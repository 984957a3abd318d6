-- Who answered for an attempt: the host and process id its worker gave in its handshake. A
-- handshake repeated by that same process (its first reply was lost) is answered again
-- instead of refused, and a local worker whose spawn commit was lost is still found to stop.
ALTER TABLE job_attempts ADD COLUMN worker_host TEXT;
ALTER TABLE job_attempts ADD COLUMN worker_pid BIGINT;
