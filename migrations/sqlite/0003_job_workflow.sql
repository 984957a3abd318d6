-- The job workflow (DESIGN section 4): routing chosen at claim, attempts with their workers,
-- repository claims, and the local forge's records.

-- Where a job works (chosen by routing when it claims its repository) and how it ended.
ALTER TABLE agent_jobs ADD COLUMN repo TEXT;
ALTER TABLE agent_jobs ADD COLUMN base_branch TEXT;
ALTER TABLE agent_jobs ADD COLUMN forge_repo TEXT;
-- Attempts made before the last `conductor retry`: the quarantine limit counts from here.
ALTER TABLE agent_jobs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_jobs ADD COLUMN run_id BIGINT;
ALTER TABLE agent_jobs ADD COLUMN branch TEXT;
ALTER TABLE agent_jobs ADD COLUMN head_sha TEXT;
ALTER TABLE agent_jobs ADD COLUMN pr_url TEXT;
ALTER TABLE agent_jobs ADD COLUMN issue_url TEXT;
ALTER TABLE agent_jobs ADD COLUMN outcome TEXT;
ALTER TABLE agent_jobs ADD COLUMN started_ms BIGINT;
ALTER TABLE agent_jobs ADD COLUMN finished_ms BIGINT;

-- One row per worker started for a job. Attempt numbers are monotonic per job; the token is
-- the attempt's secret (kept so a retried spawn can start the very same worker).
CREATE TABLE job_attempts (
    worker_id             TEXT    PRIMARY KEY,
    job_id                BIGINT  NOT NULL REFERENCES agent_jobs(id),
    attempt               INTEGER NOT NULL,
    token                 TEXT    NOT NULL,
    state                 TEXT    NOT NULL CHECK (state IN ('spawning', 'spawned', 'handshaken', 'delivered', 'reported', 'failed')),
    spawner               TEXT    NOT NULL,
    handle                TEXT,
    files                 TEXT    NOT NULL,
    created_ms            BIGINT  NOT NULL,
    spawned_ms            BIGINT,
    handshake_deadline_ms BIGINT,
    handshake_ms          BIGINT,
    lease_until_ms        BIGINT,
    last_heartbeat_ms     BIGINT,
    phase                 TEXT,
    reported_ms           BIGINT,
    success               BOOLEAN,
    title                 TEXT,
    report                TEXT,
    branch                TEXT,
    head_sha              TEXT,
    failure               TEXT,
    UNIQUE (job_id, attempt)
);

-- At most one job works on a repository at a time.
CREATE TABLE repo_claims (
    repo       TEXT   PRIMARY KEY,
    job_id     BIGINT NOT NULL REFERENCES agent_jobs(id),
    claimed_ms BIGINT NOT NULL
);

-- Pull requests and failure issues opened by the local forge (the embedded default).
CREATE TABLE forge_records (
    id         INTEGER PRIMARY KEY,
    kind       TEXT   NOT NULL CHECK (kind IN ('pull', 'issue')),
    repo       TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    head       TEXT,
    base       TEXT,
    title      TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (kind, repo, key)
);

-- A step's queueing generation: every (re)queue bumps it, and an apalis task carrying an older
-- one is stale (a timer superseded by a wake-up) and does nothing.
ALTER TABLE steps ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;

DROP VIEW job_history;
CREATE VIEW job_history AS
SELECT j.id AS job_id, j.kind, j.ticket_key, j.incident_id, m.transport_id AS spawned_by, j.state, j.attempts,
       j.repo, j.branch, j.head_sha, j.pr_url, j.issue_url, j.outcome,
       strftime('%Y-%m-%dT%H:%M:%fZ', j.created_ms / 1000.0, 'unixepoch') AS created_at, strftime('%Y-%m-%dT%H:%M:%fZ', j.updated_ms / 1000.0, 'unixepoch') AS updated_at,
       j.finished_ms - j.started_ms AS took_ms
FROM agent_jobs j JOIN messages m ON m.id = j.message_id;

CREATE VIEW attempt_history AS
SELECT a.job_id, a.attempt, a.worker_id, a.state, a.spawner, a.handle, a.phase,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.created_ms / 1000.0, 'unixepoch') AS created_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.handshake_ms / 1000.0, 'unixepoch') AS handshake_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', a.reported_ms / 1000.0, 'unixepoch') AS reported_at,
       CASE WHEN a.success THEN 'true' WHEN NOT a.success THEN 'false' END AS success, a.title, a.branch, a.head_sha, a.failure
FROM job_attempts a;
