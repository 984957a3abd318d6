-- Whether an incident, or any incident merged into it, has an agent job. A merge keeps the
-- earliest incident, while the job stays on the incident it was started for. Switching
-- incidents from shadow to on can therefore leave a merged group whose surviving incident
-- has no job of its own. Reading the survivor's own jobs would start a second agent for the
-- group, so the flag is carried onto the survivor at every merge.
ALTER TABLE incidents ADD COLUMN has_agent BOOLEAN NOT NULL DEFAULT FALSE;

-- Backfill: an incident has an agent if a job exists for it or for any incident merged into
-- it, at any depth.
WITH RECURSIVE grp(root, id) AS (
    SELECT id, id FROM incidents
    UNION ALL
    SELECT grp.root, m.id FROM incidents m JOIN grp ON m.merged_into = grp.id
)
UPDATE incidents SET has_agent = TRUE
WHERE id IN (SELECT grp.root FROM grp JOIN agent_jobs j ON j.incident_id = grp.id);
