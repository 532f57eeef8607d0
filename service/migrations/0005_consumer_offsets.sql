-- The next offset to process per partition, written in the same transaction as the
-- effects of the records before it. On assignment the worker resumes from here, and a
-- batch skips records below it, so a record's effects are never applied twice.
CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
