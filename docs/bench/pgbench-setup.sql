-- Tables for the pgbench reference transaction: shaped like Conductor's messages, incidents
-- and decisions, with the same kinds of indexes.
DROP TABLE IF EXISTS pgb_messages, pgb_incidents, pgb_decisions;
CREATE TABLE pgb_messages (id BIGSERIAL PRIMARY KEY, transport_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, received_ms BIGINT NOT NULL);
CREATE TABLE pgb_incidents (id BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, first_event_ms BIGINT NOT NULL, last_event_ms BIGINT NOT NULL);
CREATE INDEX ON pgb_incidents (account, last_event_ms);
INSERT INTO pgb_incidents (account, first_event_ms, last_event_ms)
SELECT lpad((g % 500)::text, 12, '0'), g::bigint * 60000, g::bigint * 60000 + 600000 FROM generate_series(1, 100000) g;
CREATE TABLE pgb_decisions (message_id BIGINT PRIMARY KEY, decision TEXT NOT NULL, account TEXT, decided_ms BIGINT NOT NULL);
