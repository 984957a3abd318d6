-- Every input decided (docs/design.md section 3).
-- `raw`: the bytes of a body that was not exactly its stored text (invalid UTF-8, or NUL
-- characters, which the text shows as U+FFFD). `reuses`: the earlier message whose transport
-- id this one arrived under with a different body; it is stored under a derived transport id
-- and rejected, never counted as a redelivery.
ALTER TABLE messages ADD COLUMN raw BYTEA;
ALTER TABLE messages ADD COLUMN reuses BIGINT REFERENCES messages(id);
