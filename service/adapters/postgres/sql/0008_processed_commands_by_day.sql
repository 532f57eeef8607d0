-- Idempotency rows by UTC day, in tables of a few days each, so that forgetting the days
-- past the retention drops a table instead of deleting its rows one by one: the cost of
-- retention stays the same at any size and leaves nothing for vacuum.
--
-- PostgreSQL's unique indexes hold within a partition, so a command id is unique within
-- its table. The worker looks an id up across every table before writing it, and a
-- redelivered command comes back on its own Kafka partition, whose batches hold that
-- partition's stored position locked one at a time: it is always found. What a table
-- boundary can let through is one id reused for two different customers by two
-- transactions that overlap as a table's first day begins (midnight UTC): both are
-- applied, instead of the later one being rejected for the reused id.
--
-- Workers create the coming tables ahead and drop those past the retention (see
-- retention.py). A row whose day has no table yet lands in the default partition, which
-- is pruned by DELETE and moved out of whenever a table for its day is made.
ALTER TABLE processed_commands RENAME TO processed_commands_unpartitioned;
ALTER INDEX processed_commands_pkey RENAME TO processed_commands_unpartitioned_pkey;
ALTER INDEX processed_commands_processed_at_idx
    RENAME TO processed_commands_unpartitioned_processed_at_idx;

CREATE TABLE processed_commands (
    command_id   text        NOT NULL,
    customer_id  text        NOT NULL,
    fingerprint  bytea       NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'rejected')),
    version      bigint,
    processed_at timestamptz NOT NULL DEFAULT now(),
    processed_on date        NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    PRIMARY KEY (command_id, processed_on)
) PARTITION BY RANGE (processed_on);

CREATE TABLE processed_commands_default PARTITION OF processed_commands DEFAULT;
-- Only the default partition is ever searched by day; a day's own table never is.
CREATE INDEX processed_commands_default_processed_on_idx
    ON processed_commands_default (processed_on);

INSERT INTO processed_commands
SELECT command_id, customer_id, fingerprint, outcome, version, processed_at,
       (processed_at AT TIME ZONE 'UTC')::date
FROM processed_commands_unpartitioned;

DROP TABLE processed_commands_unpartitioned;
