-- A candidate policy's tables get the real tables' columns, so one store
-- (src/scheduling/store/sql.rs, `Tables`) reads and writes both scopes with the same named
-- queries: the candidate's rows are the real ones' plus the `policy` they belong to.
-- A candidate decides as if incidents were on, so its incidents count as having an agent.
ALTER TABLE shadow_tickets ADD COLUMN jira_id TEXT;
ALTER TABLE shadow_tickets ADD COLUMN project TEXT;
ALTER TABLE shadow_tickets ADD COLUMN summary TEXT;
ALTER TABLE shadow_tickets ADD COLUMN first_seen_ms BIGINT NOT NULL DEFAULT 0;

ALTER TABLE shadow_incidents ADD COLUMN opened_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE shadow_incidents ADD COLUMN merged_by_message_id BIGINT REFERENCES messages(id);
ALTER TABLE shadow_incidents ADD COLUMN merged_ms BIGINT;
ALTER TABLE shadow_incidents ADD COLUMN has_agent BOOLEAN NOT NULL DEFAULT TRUE;

ALTER TABLE shadow_alarms ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE shadow_alarms ADD COLUMN alarm_name TEXT NOT NULL DEFAULT '';
ALTER TABLE shadow_alarms ADD COLUMN state TEXT NOT NULL DEFAULT 'ALARM';
ALTER TABLE shadow_alarms ADD COLUMN event_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE shadow_alarms ADD COLUMN original_incident_id BIGINT REFERENCES shadow_incidents(id);
