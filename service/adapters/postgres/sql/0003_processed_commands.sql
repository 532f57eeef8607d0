-- Idempotency: one row per command id that had an outcome, written in the same
-- transaction as that outcome. Rows older than the retention are pruned.
CREATE TABLE processed_commands (
    command_id   text        PRIMARY KEY,
    customer_id  text        NOT NULL,
    fingerprint  bytea       NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'rejected')),
    version      bigint,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_commands_processed_at_idx ON processed_commands (processed_at);
