-- Arrival order where it matters (docs/design.md section 3): a message run's ordering key
-- (`alarm:<account>` for an alarm, NULL otherwise), set when the transport hands the message
-- over. `decide` waits while an earlier run of the same key is still running, so within an
-- account messages are decided in the order they were received, whatever the number of
-- deciders; other accounts go on in parallel.
ALTER TABLE runs ADD COLUMN order_key TEXT;
CREATE INDEX runs_running_by_order_key ON runs(order_key, id) WHERE status = 'running' AND order_key IS NOT NULL;
