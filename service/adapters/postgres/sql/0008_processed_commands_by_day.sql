-- Idempotency rows by UTC day, in tables of a few days each, so that forgetting the days
-- past the retention drops a table instead of deleting its rows one by one: the cost of
-- retention stays the same at any size and leaves nothing for vacuum.
--
-- PostgreSQL's unique indexes hold within a partition and must include its key, so a
-- command id is unique within its day. The worker looks an id up across every table
-- before writing it, and a redelivered command comes back on its own Kafka partition,
-- whose batches hold that partition's stored position locked one at a time: it is always
-- found. What midnight UTC can let through is one id reused for two different customers
-- by two transactions that overlap it, neither seeing the other's row: both are applied,
-- instead of the later one being rejected for the reused id. The lookup then gives the
-- first one written, so a redelivery of either is answered as if that one had won.
--
-- Workers create the coming tables ahead and drop those past the retention (see
-- retention.py). A row whose day has no table yet (no pass ran in time) lands in the
-- default partition, which is pruned by DELETE and moved out of when its table is made.
ALTER TABLE processed_commands RENAME TO processed_commands_unpartitioned;
ALTER INDEX processed_commands_pkey RENAME TO processed_commands_unpartitioned_pkey;
ALTER INDEX IF EXISTS processed_commands_processed_at_idx
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
-- Only the default partition is ever searched by day; a period's own table never is.
CREATE INDEX processed_commands_default_processed_on_idx
    ON processed_commands_default (processed_on);

-- Week-long tables (the default IDEMPOTENCY_PERIOD_DAYS, Monday to Monday as the workers
-- count them) from the oldest row's week to the week after next, so that the rows
-- copied below are dropped whole with their week and the default partition starts empty:
-- attaching a table scans the default partition while batches wait.
DO $$
DECLARE
    last_week date := date_trunc('week', (now() AT TIME ZONE 'UTC')::date + 2)::date;
    week      date;
BEGIN
    SELECT date_trunc('week', min(processed_at AT TIME ZONE 'UTC'))::date INTO week
    FROM processed_commands_unpartitioned;
    week := least(coalesce(week, last_week), last_week);
    WHILE week <= last_week LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF processed_commands FOR VALUES FROM (%L) TO (%L)',
            format('processed_commands_%s_%s', to_char(week, 'YYYYMMDD'),
                   to_char(week + 7, 'YYYYMMDD')),
            week, week + 7
        );
        week := week + 7;
    END LOOP;
END
$$;

INSERT INTO processed_commands
SELECT command_id, customer_id, fingerprint, outcome, version, processed_at,
       (processed_at AT TIME ZONE 'UTC')::date
FROM processed_commands_unpartitioned;

DROP TABLE processed_commands_unpartitioned;
