-- A row Kafka refuses for good (too large for its topic, say) is parked rather than
-- retried forever: the relay skips it, and the rows after it of the same topic and key
-- wait behind it, so a customer's events stay in order while others flow.
-- `customer-service outbox retry` unparks it, `outbox discard` deletes it.
ALTER TABLE outbox
    ADD COLUMN parked_at     timestamptz,
    ADD COLUMN parked_reason text;

-- On the id alone: keys can be longer than an index entry may be, and parked rows are few.
CREATE INDEX outbox_parked ON outbox (id) WHERE parked_at IS NOT NULL;

-- The whole original of each dead letter that the dead-letter topic holds only in part
-- (cut to fit its max.message.bytes, or without headers no client can read), for
-- `customer-service dlq list` and `dlq replay`.
CREATE TABLE dead_letter_originals (
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    consumer_group text        NOT NULL,
    key            bytea,
    value          bytea,
    -- [[base64 name bytes, base64 value or null], ...]: names may not be UTF-8
    headers        jsonb       NOT NULL,
    created        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, "offset")
);
