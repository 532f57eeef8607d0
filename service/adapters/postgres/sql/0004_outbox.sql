-- Transactional outbox: messages written with the change that caused them and published
-- by the relay in id order, then deleted.
CREATE TABLE outbox (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic   text        NOT NULL,
    key     bytea,
    -- NULL only for a dead-lettered tombstone, kept as it came.
    value   bytea,
    -- [[name, base64 value], ...]
    headers jsonb       NOT NULL DEFAULT '[]',
    created timestamptz NOT NULL DEFAULT clock_timestamp()
);
