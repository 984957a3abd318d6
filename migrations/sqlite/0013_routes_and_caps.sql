-- Routes with matchers, development environments, caps and budgets, continuing work
-- (docs/design.md section 12).

-- Where a job was routed (the route's label) and the environment its agent runs in (JSON),
-- fixed at claim like its repository; its AWS account (incident jobs), for the account caps;
-- why it waits (a busy repository, a cap), and since when it queues for a slot; when it was
-- admitted (took its slot: the budget counts these); whether an operator's retry waived the
-- daily budget.
ALTER TABLE agent_jobs ADD COLUMN route TEXT;
ALTER TABLE agent_jobs ADD COLUMN environment TEXT;
ALTER TABLE agent_jobs ADD COLUMN account TEXT;
ALTER TABLE agent_jobs ADD COLUMN wait_reason TEXT;
ALTER TABLE agent_jobs ADD COLUMN queued_ms BIGINT;
ALTER TABLE agent_jobs ADD COLUMN admitted_ms BIGINT;
ALTER TABLE agent_jobs ADD COLUMN budget_waived BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE agent_jobs SET account = (SELECT account FROM incidents i WHERE i.id = agent_jobs.incident_id)
WHERE incident_id IS NOT NULL;
CREATE INDEX agent_jobs_admitted ON agent_jobs(account, admitted_ms);
-- Admission looks at the jobs still to start, before its own.
CREATE INDEX agent_jobs_unstarted ON agent_jobs(id) WHERE state IN ('pending', 'waiting');

-- A claim is a job's slot on its repository: one row per running job (caps.per_repo of
-- them per repository, 1 by default), with the account it counts against.
CREATE TABLE job_slots (
    repo       TEXT   NOT NULL,
    job_id     BIGINT NOT NULL PRIMARY KEY REFERENCES agent_jobs(id),
    claimed_ms BIGINT NOT NULL,
    account    TEXT
);
INSERT INTO job_slots (job_id, repo, account, claimed_ms)
SELECT c.job_id, c.repo, j.account, c.claimed_ms FROM repo_claims c JOIN agent_jobs j ON j.id = c.job_id;
DROP TABLE repo_claims;
ALTER TABLE job_slots RENAME TO repo_claims;
CREATE INDEX repo_claims_by_repo ON repo_claims(repo);
CREATE INDEX repo_claims_by_account ON repo_claims(account);

DROP VIEW job_history;
CREATE VIEW job_history AS
SELECT j.id AS job_id, j.kind, j.ticket_key, j.incident_id, m.transport_id AS spawned_by, j.state, j.attempts,
       j.repo, j.branch, j.head_sha, j.pr_url, j.issue_url, j.outcome,
       strftime('%Y-%m-%dT%H:%M:%fZ', j.created_ms / 1000.0, 'unixepoch') AS created_at, strftime('%Y-%m-%dT%H:%M:%fZ', j.updated_ms / 1000.0, 'unixepoch') AS updated_at,
       j.finished_ms - j.started_ms AS took_ms,
       j.account, j.route, j.wait_reason
FROM agent_jobs j JOIN messages m ON m.id = j.message_id;

-- Agent time by account (tickets: '-') and UTC day of the agent's start: agents started,
-- attempts, and seconds from handshake to report (or last heartbeat, while it runs).
CREATE VIEW agent_time_daily AS
SELECT COALESCE(j.account, '-') AS account,
       strftime('%Y-%m-%d', a.handshake_ms / 1000.0, 'unixepoch') AS day,
       COUNT(DISTINCT a.job_id) AS jobs,
       COUNT(*) AS attempts,
       SUM(COALESCE(a.reported_ms, a.last_heartbeat_ms, a.handshake_ms) - a.handshake_ms) / 1000.0 AS agent_seconds
FROM job_attempts a JOIN agent_jobs j ON j.id = a.job_id
WHERE a.handshake_ms IS NOT NULL
GROUP BY 1, 2;
