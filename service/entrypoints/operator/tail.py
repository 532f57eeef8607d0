"""Following the service's output topics, one readable line per message."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from schemas.event import CustomerUpdatedEvent, CustomerUpdateRejectedEvent
from service.adapters.kafka.clients import partitions_of, reader, start
from service.domain import binary_mode
from service.entrypoints.operator.dead_letters import DeadLetter
from service.infrastructure.settings import Settings


def describe(record: ConsumerRecord[bytes, bytes], settings: Settings) -> str:
    """A one-line summary of a message from one of the service's topics."""
    topic = record.topic
    if record.value is None or topic == settings.topic_dead_letters:
        return "dead-letter " + DeadLetter.of(record).describe()
    try:
        value = structured(record)
        if topic == settings.topic_events:
            event = CustomerUpdatedEvent.model_validate_json(value)
            changed = ", ".join(sorted(event.data.previous_attributes)) or "(no field changed)"
            return (
                f"{_clock(event.time)} updated   {event.subject:<20} v{int(event.sequence):<6} "
                f"cmd={event.causationid} changed: {changed}"
            )
        if topic == settings.topic_rejections:
            rejection = CustomerUpdateRejectedEvent.model_validate_json(value)
            error = rejection.data.error
            return (
                f"{_clock(rejection.time)} rejected  {rejection.subject:<20} "
                f"cmd={rejection.causationid or '-'} {error.code} {error.param or '-'}: "
                f"{error.message}"
            )
    except ValidationError as exc:
        return f"unreadable message on {topic}: {exc.errors()[0]['msg']}"
    except ValueError as exc:
        # A header name that is not UTF-8 can be in the reason; show it escaped.
        reason = str(exc).encode("utf-8", "backslashreplace").decode()
        return f"unreadable message on {topic}: {reason}"
    return f"message on unknown topic {topic}"


def structured(record: ConsumerRecord[bytes, bytes]) -> bytes:
    """The event's structured JSON, whichever content mode the worker published it in.

    Raises:
        ValueError: a binary-mode record that is not an event.
    """
    return binary_mode.as_structured(record.value, tuple(record.headers)) or b""


def _json_line(record: ConsumerRecord[bytes, bytes]) -> str:
    try:
        return structured(record).decode("utf-8", "replace")
    except ValueError:
        # Not an event after all: shown as it came.
        return (record.value or b"").decode("utf-8", "replace")


def _clock(moment: datetime) -> str:
    try:
        return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    except OverflowError:  # a valid time at the edge of the calendar, such as year 9999
        return moment.isoformat()


async def follow(
    settings: Settings,
    *,
    from_beginning: bool,
    include_dead_letters: bool,
    count: int | None,
    as_json: bool,
    emit: Callable[[str], None],
) -> None:
    """Print messages as they arrive; stop after ``count`` messages if given."""
    topics = [settings.topic_events, settings.topic_rejections]
    if include_dead_letters:
        topics.append(settings.topic_dead_letters)
    partitions = await partitions_of(settings, topics)
    consumer = reader(settings)
    seen = 0
    try:
        await start(consumer, settings)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        while count is None or seen < count:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if (
                        as_json
                        and record.value is not None
                        and record.topic != settings.topic_dead_letters
                    ):
                        emit(_json_line(record))
                    else:
                        emit(describe(record, settings))
                    seen += 1
                    if count is not None and seen >= count:
                        return
    finally:
        await consumer.stop()
