"""Kafka offset commits run behind the batches, one at a time, merged, never out of order."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from service.entrypoints.kafka_consumer import OffsetCommits

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)


class RecordingConsumer:
    """Stands in for the consumer's commit call only; each commit waits for a release."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.started = asyncio.Condition()
        self.release = asyncio.Event()
        self.fail_next = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        async with self.started:
            self.commits.append(dict(offsets))
            self.started.notify_all()
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise CommitFailedError("rebalanced")


async def _until_committing(consumer: RecordingConsumer, count: int) -> None:
    async with consumer.started:
        await consumer.started.wait_for(lambda: len(consumer.commits) >= count)


async def test_offsets_submitted_during_a_commit_are_merged_into_the_next_one() -> None:
    consumer = RecordingConsumer()
    commits = OffsetCommits(consumer)

    commits.submit({P0: 10})
    await _until_committing(consumer, 1)
    commits.submit({P0: 20, P1: 5})
    commits.submit({P0: 30})
    assert consumer.commits == [{P0: 10}]  # one at a time

    consumer.release.set()
    await commits.flush()

    assert consumer.commits == [{P0: 10}, {P0: 30, P1: 5}]


async def test_flush_waits_for_everything_submitted() -> None:
    consumer = RecordingConsumer()
    commits = OffsetCommits(consumer)
    commits.submit({P0: 1})
    await _until_committing(consumer, 1)
    commits.submit({P0: 2})

    flushing = asyncio.create_task(commits.flush())
    await asyncio.sleep(0)
    assert not flushing.done()
    consumer.release.set()
    await flushing

    assert consumer.commits[-1] == {P0: 2}


async def test_a_failed_commit_is_skipped_and_later_offsets_still_go_out() -> None:
    consumer = RecordingConsumer()
    consumer.release.set()
    consumer.fail_next = True
    commits = OffsetCommits(consumer)

    commits.submit({P0: 1})
    await commits.flush()
    commits.submit({P0: 2})
    await commits.flush()

    assert consumer.commits == [{P0: 1}, {P0: 2}]


async def test_flush_with_nothing_submitted_returns() -> None:
    commits = OffsetCommits(RecordingConsumer())
    await asyncio.wait_for(commits.flush(), timeout=1)
