-- The next offset to process per partition, written in the same transaction as the
-- effects of the records before it. A batch locks these rows and skips records below
-- them, so a record redelivered by Kafka (whose committed offsets trail these) is never
-- applied twice, even by a worker that still runs after losing its partitions.
CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
