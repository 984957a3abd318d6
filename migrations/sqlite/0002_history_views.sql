-- Job history views: what happened to a message, a ticket, an incident, a job, a run.
-- Times are rendered as ISO-8601 UTC text; the *_ms columns underneath stay queryable.

CREATE VIEW message_history AS
SELECT m.id AS message_id, m.transport_id, m.source, strftime('%Y-%m-%dT%H:%M:%fZ', m.received_ms / 1000.0, 'unixepoch') AS received_at, m.deliveries,
       d.decision, d.kind, d.ticket_key, d.account, d.incident_id, d.job_id, d.duplicate_of,
       d.merged_incident_ids, d.reason, d.policy, strftime('%Y-%m-%dT%H:%M:%fZ', d.decided_ms / 1000.0, 'unixepoch') AS decided_at
FROM messages m LEFT JOIN decisions d ON d.message_id = m.id;

CREATE VIEW ticket_history AS
SELECT t.key, t.project, t.summary, m.transport_id AS first_transport_id, strftime('%Y-%m-%dT%H:%M:%fZ', t.first_seen_ms / 1000.0, 'unixepoch') AS first_seen_at,
       (SELECT COUNT(*) FROM decisions d WHERE d.ticket_key = t.key) AS sightings,
       (SELECT COUNT(*) FROM decisions d WHERE d.ticket_key = t.key AND d.decision = 'duplicate') AS duplicates,
       j.id AS job_id, j.state AS job_state
FROM tickets t JOIN messages m ON m.id = t.first_message_id LEFT JOIN agent_jobs j ON j.ticket_key = t.key;

CREATE VIEW incident_history AS
SELECT i.id AS incident_id, i.account, strftime('%Y-%m-%dT%H:%M:%fZ', i.first_event_ms / 1000.0, 'unixepoch') AS first_event_at, strftime('%Y-%m-%dT%H:%M:%fZ', i.last_event_ms / 1000.0, 'unixepoch') AS last_event_at,
       i.alarm_count, m.transport_id AS opened_by, strftime('%Y-%m-%dT%H:%M:%fZ', i.opened_ms / 1000.0, 'unixepoch') AS opened_at, i.merged_into,
       strftime('%Y-%m-%dT%H:%M:%fZ', i.merged_ms / 1000.0, 'unixepoch') AS merged_at, j.id AS job_id, j.state AS job_state
FROM incidents i JOIN messages m ON m.id = i.opened_by_message_id LEFT JOIN agent_jobs j ON j.incident_id = i.id;

CREATE VIEW job_history AS
SELECT j.id AS job_id, j.kind, j.ticket_key, j.incident_id, m.transport_id AS spawned_by, j.state, j.attempts,
       strftime('%Y-%m-%dT%H:%M:%fZ', j.created_ms / 1000.0, 'unixepoch') AS created_at, strftime('%Y-%m-%dT%H:%M:%fZ', j.updated_ms / 1000.0, 'unixepoch') AS updated_at
FROM agent_jobs j JOIN messages m ON m.id = j.message_id;

CREATE VIEW step_history AS
SELECT r.id AS run_id, r.workflow, r.status AS run_status, s.step, s.status, s.attempts,
       strftime('%Y-%m-%dT%H:%M:%fZ', s.queued_ms / 1000.0, 'unixepoch') AS queued_at, strftime('%Y-%m-%dT%H:%M:%fZ', s.started_ms / 1000.0, 'unixepoch') AS started_at, strftime('%Y-%m-%dT%H:%M:%fZ', s.finished_ms / 1000.0, 'unixepoch') AS finished_at,
       s.finished_ms - s.started_ms AS took_ms, s.error, s.output
FROM runs r JOIN steps s ON s.run_id = r.id;
