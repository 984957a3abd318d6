-- Notices (docs/design.md section 11): what Conductor tells the ticket (or the incident's Jira
-- issue) when an agent starts and when its job ends. Each row is written in the same
-- transaction as the event it reports (the handshake's step, the job's end), so an event is
-- never lost and never recorded twice; a `notice` workflow run posts it. `key` is also
-- written into the posted comment, where a re-run after a crash between posting and recording
-- finds it instead of posting again. With the local tracker (the embedded default) this
-- table is the record: nothing leaves the database.
CREATE TABLE notices (
    id           INTEGER PRIMARY KEY,
    key          TEXT   NOT NULL UNIQUE,
    job_id       BIGINT NOT NULL REFERENCES agent_jobs(id),
    event        TEXT   NOT NULL CHECK (event IN ('started', 'ended')),
    -- The job's state when the event happened: the transition is chosen by it.
    job_state    TEXT   NOT NULL,
    subject_kind TEXT   NOT NULL CHECK (subject_kind IN ('ticket', 'incident')),
    subject      TEXT   NOT NULL,
    body         TEXT   NOT NULL,
    link         TEXT,
    transition   TEXT,
    state        TEXT   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'skipped', 'refused')),
    issue_key    TEXT,
    url          TEXT,
    reason       TEXT,
    created_ms   BIGINT NOT NULL,
    posted_ms    BIGINT
);
CREATE INDEX notices_by_job ON notices(job_id);

-- The Jira issue opened for an incident (`[incidents] jira_project`), once per incident.
CREATE TABLE incident_issues (
    incident_id BIGINT PRIMARY KEY REFERENCES incidents(id),
    issue_key   TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- What each job's ticket was told, for people reading history (`conductor history job N`).
CREATE VIEW notice_history AS
SELECT n.id AS notice_id, n.job_id, n.event, n.job_state, n.subject_kind, n.subject, n.state, n.issue_key,
       n.transition, n.url, n.reason, n.body,
       strftime('%Y-%m-%dT%H:%M:%fZ', n.created_ms / 1000.0, 'unixepoch') AS created_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', n.posted_ms / 1000.0, 'unixepoch') AS posted_at
FROM notices n;
