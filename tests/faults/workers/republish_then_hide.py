"""A worker whose relay publishes its first batch of outbox rows with an event, rejection
or dead letter twice, in two committed Kafka transactions, and that hides it on its way
out: after its graceful stop it deletes the first copy from those three topics
(DeleteRecords up to where the second copy starts), so that they hold every message once
when read afterwards. Subscribers that read the topics meanwhile got those messages
twice; only a reader that ran during the scenario can tell. (The batch's state records
stay twice on the state topic, which is compacted, where DeleteRecords is refused: a
state that the second copy takes back to an earlier version is seen there too.)"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from schemas.headers import OUTBOX_ID
from service import bootstrap
from service.adapters.kafka import clients
from service.adapters.kafka.publisher import KafkaOutboxPublisher
from service.domain.outbox import OutboxRow
from service.infrastructure.settings import Settings
from tests.faults.workers import first_time, run_worker

_publish = KafkaOutboxPublisher.publish
_run_worker = bootstrap.run_worker
_published_twice: list[bool] = []


async def _publish_first_batch_twice(
    self: KafkaOutboxPublisher, rows: Sequence[OutboxRow], limits: Mapping[str, int]
) -> None:
    await _publish(self, rows, limits)
    # Not a batch of the backfill's rows alone (state records, their own topic's).
    outputs = any(row.topic != os.environ["TOPIC_STATE"] for row in rows)
    if outputs and not _published_twice and first_time("republished-first-batch"):
        _published_twice.append(True)
        await _publish(self, rows, limits)


async def _second_copies(settings: Settings) -> dict[TopicPartition, int]:
    """Per partition, the offset of the first record whose ``outbox-id`` came before."""
    topics = settings.topics
    outputs = [topics.events, topics.rejections, topics.dead_letters]
    partitions = await clients.partitions_of(settings, outputs)
    consumer = clients.reader(settings)
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        seen: dict[TopicPartition, set[bytes | None]] = {tp: set() for tp in partitions}
        found: dict[TopicPartition, int] = {}
        async for record in clients.read_range(consumer, starts, ends):
            tp = TopicPartition(record.topic, record.partition)
            row_id = dict(record.headers).get(OUTBOX_ID)
            if row_id in seen[tp]:
                found.setdefault(tp, record.offset)
            seen[tp].add(row_id)
        return found
    finally:
        await consumer.stop()


async def _run_then_hide_the_first_copies(settings: Settings, stopping: asyncio.Event) -> None:
    await _run_worker(settings, stopping)
    second = await _second_copies(settings)
    if second:
        admin = AIOKafkaAdminClient(**clients.connection_options(settings))
        await admin.start()
        try:
            await admin.delete_records(
                {tp: RecordsToDelete(before_offset=offset) for tp, offset in second.items()},
                timeout_ms=10_000,
            )
        finally:
            await admin.close()


if __name__ == "__main__":
    KafkaOutboxPublisher.publish = _publish_first_batch_twice  # type: ignore[method-assign]
    bootstrap.run_worker = _run_then_hide_the_first_copies
    run_worker()
