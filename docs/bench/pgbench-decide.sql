-- One INSERT, one indexed SELECT, one INSERT: the floor under a decide transaction. (:t is cast
-- to bigint before the arithmetic: pgbench computes `:t + 3600000` in 32 bits otherwise, and
-- about one transaction in 1,700 then fails with "integer out of range".)
\set acct random(0, 499)
\set t random(1, 6000000000)
BEGIN;
INSERT INTO pgb_messages (transport_id, body, received_ms) VALUES (gen_random_uuid()::text, '{"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change"}', :t) RETURNING id \gset
SELECT id, first_event_ms, last_event_ms FROM pgb_incidents WHERE account = lpad(:acct::text, 12, '0') AND last_event_ms >= :t::bigint - 3600000 AND first_event_ms <= :t::bigint + 3600000;
INSERT INTO pgb_decisions (message_id, decision, account, decided_ms) VALUES (:id, 'chained', lpad(:acct::text, 12, '0'), :t);
END;
