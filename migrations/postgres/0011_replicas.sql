-- Replicas (docs/design.md section 6): each `conductor run` records itself here when it starts
-- and every few seconds while it runs, so `conductor status`, `/metrics` and the console can
-- say which replicas are alive, which version each runs and whether its intake is open. A
-- replica unseen for a minute is taken as gone; its row stays until the same id starts again.
CREATE TABLE replicas (
    id           TEXT   PRIMARY KEY,
    version      TEXT   NOT NULL,
    started_ms   BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    intake       TEXT   NOT NULL CHECK (intake IN ('open', 'closed', 'draining', 'paused', 'stopped')),
    http         TEXT
);

-- "Failures of the last hour" (`conductor status`, `/metrics`): runs that failed, by when.
CREATE INDEX runs_failed_by_time ON runs(finished_ms) WHERE status = 'failed';
