-- A row may carry a second record, the customer's state for the compacted state topic,
-- published under the row's key in the same Kafka transaction as the row's own record:
-- the state topic then never disagrees with the events. All three are set or none.
ALTER TABLE outbox
    ADD COLUMN state_topic   text,
    ADD COLUMN state_value   bytea,
    ADD COLUMN state_headers jsonb,
    ADD CONSTRAINT outbox_state_whole CHECK (
        (state_topic IS NULL) = (state_value IS NULL)
        AND (state_topic IS NULL) = (state_headers IS NULL)
    );

-- Where each `customer-service backfill --all` run got to, so that one stopped half way
-- (a crash, a deployment) goes on from there instead of starting over.
CREATE TABLE backfill_runs (
    name      text        PRIMARY KEY,
    -- The last customer id published, in the database's id order; NULL before the first.
    after_id  text,
    published bigint      NOT NULL DEFAULT 0,
    started   timestamptz NOT NULL DEFAULT now(),
    updated   timestamptz NOT NULL DEFAULT now(),
    finished  timestamptz
);
