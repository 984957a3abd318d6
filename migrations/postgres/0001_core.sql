-- Conductor's own tables (Postgres). Same shape as migrations/sqlite; times are epoch
-- milliseconds (UTC) in *_ms columns, rendered as timestamptz by the views.

CREATE TABLE messages (
    id                BIGSERIAL PRIMARY KEY,
    transport_id      TEXT    NOT NULL UNIQUE,
    source            TEXT    NOT NULL,
    body              TEXT    NOT NULL,
    received_ms       BIGINT  NOT NULL,
    deliveries        INTEGER NOT NULL DEFAULT 1,
    last_delivered_ms BIGINT  NOT NULL
);

CREATE TABLE rejected (
    message_id  BIGINT PRIMARY KEY REFERENCES messages(id),
    reason      TEXT   NOT NULL,
    rejected_ms BIGINT NOT NULL
);

CREATE TABLE tickets (
    key              TEXT   PRIMARY KEY,
    jira_id          TEXT,
    project          TEXT,
    summary          TEXT,
    first_message_id BIGINT NOT NULL REFERENCES messages(id),
    first_seen_ms    BIGINT NOT NULL
);

CREATE TABLE incidents (
    id                   BIGSERIAL PRIMARY KEY,
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

CREATE TABLE alarms (
    id                   BIGSERIAL PRIMARY KEY,
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

CREATE TABLE agent_jobs (
    id          BIGSERIAL PRIMARY KEY,
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

CREATE TABLE flags (
    name       TEXT   PRIMARY KEY,
    value      TEXT   NOT NULL,
    updated_ms BIGINT NOT NULL,
    updated_by TEXT   NOT NULL
);

CREATE TABLE runs (
    id          BIGSERIAL PRIMARY KEY,
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
