-- Conductor's own tables (SQLite). Times are epoch milliseconds (UTC) in *_ms columns;
-- the views at the end render them as ISO-8601 text for people reading history.

-- Every message a transport delivered, once per transport message id.
CREATE TABLE messages (
    id                INTEGER PRIMARY KEY,
    transport_id      TEXT    NOT NULL UNIQUE,
    source            TEXT    NOT NULL,
    body              TEXT    NOT NULL,
    received_ms       BIGINT  NOT NULL,
    deliveries        INTEGER NOT NULL DEFAULT 1,
    last_delivered_ms BIGINT  NOT NULL
);

-- Messages that could not be understood, with the specific reason.
CREATE TABLE rejected (
    message_id  BIGINT PRIMARY KEY REFERENCES messages(id),
    reason      TEXT   NOT NULL,
    rejected_ms BIGINT NOT NULL
);

-- One row per ticket identity (Jira key, else id): its first sighting.
CREATE TABLE tickets (
    key              TEXT   PRIMARY KEY,
    jira_id          TEXT,
    project          TEXT,
    summary          TEXT,
    first_message_id BIGINT NOT NULL REFERENCES messages(id),
    first_seen_ms    BIGINT NOT NULL
);

-- Incidents: single-linkage chains of ALARM transitions of one account.
-- first/last_event_ms span the member alarms' event times; because every member is within the
-- window of another, "holds an alarm within W of t" is exactly "span overlaps [t-W, t+W]".
CREATE TABLE incidents (
    id                   INTEGER PRIMARY KEY,
    account              TEXT    NOT NULL,
    first_event_ms       BIGINT  NOT NULL,
    last_event_ms        BIGINT  NOT NULL,
    alarm_count          INTEGER NOT NULL DEFAULT 1,
    opened_by_message_id BIGINT  NOT NULL REFERENCES messages(id),
    opened_ms            BIGINT  NOT NULL,
    merged_into          BIGINT  REFERENCES incidents(id),
    merged_by_message_id BIGINT  REFERENCES messages(id),
    merged_ms            BIGINT
);
CREATE INDEX incidents_open_by_account ON incidents(account, last_event_ms) WHERE merged_into IS NULL;

-- Every alarm event (any state), once per source event id.
CREATE TABLE alarms (
    id                   INTEGER PRIMARY KEY,
    event_id             TEXT   NOT NULL UNIQUE,
    message_id           BIGINT NOT NULL REFERENCES messages(id),
    account              TEXT   NOT NULL,
    alarm_name           TEXT   NOT NULL,
    state                TEXT   NOT NULL,
    event_ms             BIGINT NOT NULL,
    incident_id          BIGINT REFERENCES incidents(id),
    original_incident_id BIGINT REFERENCES incidents(id)
);
CREATE INDEX alarms_by_incident ON alarms(incident_id);

-- One agent job per spawn decision (named agent_jobs: apalis owns "Jobs", and SQLite names are case-insensitive).
CREATE TABLE agent_jobs (
    id          INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('ticket', 'incident')),
    ticket_key  TEXT    REFERENCES tickets(key),
    incident_id BIGINT  REFERENCES incidents(id),
    message_id  BIGINT  NOT NULL REFERENCES messages(id),
    state       TEXT    NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_ms  BIGINT  NOT NULL,
    updated_ms  BIGINT  NOT NULL,
    CHECK ((kind = 'ticket') = (ticket_key IS NOT NULL)),
    CHECK ((kind = 'incident') = (incident_id IS NOT NULL))
);
CREATE UNIQUE INDEX agent_jobs_one_per_ticket ON agent_jobs(ticket_key) WHERE ticket_key IS NOT NULL;
CREATE UNIQUE INDEX agent_jobs_one_per_incident ON agent_jobs(incident_id) WHERE incident_id IS NOT NULL;

-- Exactly one scheduling decision per message (redeliveries get none: see messages.deliveries).
CREATE TABLE decisions (
    message_id          BIGINT PRIMARY KEY REFERENCES messages(id),
    decision            TEXT   NOT NULL CHECK (decision IN ('spawn', 'duplicate', 'chained', 'merged', 'ignored', 'rejected')),
    kind                TEXT   CHECK (kind IN ('ticket', 'alarm')),
    ticket_key          TEXT,
    account             TEXT,
    incident_id         BIGINT REFERENCES incidents(id),
    job_id              BIGINT REFERENCES agent_jobs(id),
    duplicate_of        BIGINT REFERENCES messages(id),
    merged_incident_ids TEXT,
    reason              TEXT,
    policy              TEXT   NOT NULL,
    decided_ms          BIGINT NOT NULL
);

-- Operational flags shared by every replica (DESIGN section 8).
CREATE TABLE flags (
    name       TEXT   PRIMARY KEY,
    value      TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL,
    updated_by TEXT   NOT NULL
);

-- The workflow layer: a run and its steps, each step one apalis task addressed by name.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    workflow    TEXT   NOT NULL,
    status      TEXT   NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    input       TEXT   NOT NULL,
    created_ms  BIGINT NOT NULL,
    finished_ms BIGINT
);
CREATE INDEX runs_by_status ON runs(status) WHERE status = 'running';

CREATE TABLE steps (
    run_id      BIGINT  NOT NULL REFERENCES runs(id),
    step        TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    queued_ms   BIGINT  NOT NULL,
    started_ms  BIGINT,
    finished_ms BIGINT,
    error       TEXT,
    output      TEXT,
    PRIMARY KEY (run_id, step)
);
