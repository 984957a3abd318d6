-- Flags and shadow scheduling (DESIGN section 8).

-- An incident opened by a policy that groups alarms by account and alarm name carries that
-- name; account-wide incidents (the default policy's) leave it NULL. A policy only chains
-- into incidents of its own grouping.
ALTER TABLE incidents ADD COLUMN alarm_name TEXT;

-- Every change of a flag (the gate included): who, when, from what, to what.
CREATE TABLE flag_changes (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT   NOT NULL,
    old_value  TEXT,
    new_value  TEXT   NOT NULL,
    changed_ms BIGINT NOT NULL,
    changed_by TEXT   NOT NULL
);
CREATE INDEX flag_changes_by_name ON flag_changes(name, id);

-- A candidate policy's own state, kept apart from the real tickets, alarms and incidents:
-- rows are keyed by the candidate's name, and nothing here is ever read by the real decision.
CREATE TABLE shadow_tickets (
    policy           TEXT   NOT NULL,
    key              TEXT   NOT NULL,
    first_message_id BIGINT NOT NULL REFERENCES messages(id),
    PRIMARY KEY (policy, key)
);

CREATE TABLE shadow_incidents (
    id                   BIGSERIAL PRIMARY KEY,
    policy               TEXT    NOT NULL,
    account              TEXT    NOT NULL,
    alarm_name           TEXT,
    first_event_ms       BIGINT  NOT NULL,
    last_event_ms        BIGINT  NOT NULL,
    alarm_count          INTEGER NOT NULL DEFAULT 1,
    opened_by_message_id BIGINT  NOT NULL REFERENCES messages(id),
    merged_into          BIGINT  REFERENCES shadow_incidents(id)
);
CREATE INDEX shadow_incidents_open ON shadow_incidents(policy, account, last_event_ms) WHERE merged_into IS NULL;

CREATE TABLE shadow_alarms (
    id          BIGSERIAL PRIMARY KEY,
    policy      TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    incident_id BIGINT REFERENCES shadow_incidents(id),
    UNIQUE (policy, event_id)
);
CREATE INDEX shadow_alarms_by_incident ON shadow_alarms(incident_id);

-- One row per message and candidate: both decisions side by side and the verdict.
-- AGREE: same decision. DIVERGE: both spawn or both do not, but decide differently (chained
-- against merged, say). CANDIDATE_EMPTY: the authoritative policy spawns, the candidate would
-- not. AUTHORITATIVE_EMPTY: the reverse. ERROR: the candidate failed (error says why); the
-- real decision was unaffected.
CREATE TABLE shadow_evaluations (
    message_id             BIGINT NOT NULL REFERENCES messages(id),
    candidate              TEXT   NOT NULL,
    candidate_spec         TEXT   NOT NULL,
    authoritative_policy   TEXT   NOT NULL,
    incidents              TEXT   NOT NULL,
    verdict                TEXT   NOT NULL CHECK (verdict IN ('AGREE', 'DIVERGE', 'CANDIDATE_EMPTY', 'AUTHORITATIVE_EMPTY', 'ERROR')),
    authoritative_decision TEXT   NOT NULL,
    candidate_decision     TEXT,
    authoritative_detail   TEXT   NOT NULL,
    candidate_detail       TEXT,
    error                  TEXT,
    evaluated_ms           BIGINT NOT NULL,
    PRIMARY KEY (message_id, candidate)
);
CREATE INDEX shadow_evaluations_by_verdict ON shadow_evaluations(candidate, verdict, message_id);
