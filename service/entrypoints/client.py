"""A typed client for producers in other services: build a valid ``customer.update``
command, send it, and optionally wait for its outcome.

Example::

    async with CommandSender(settings) as sender:
        cmd = build_command("cus_123", {"email": "ada@example.com"}, source="billing",
                            principal="svc-billing", permissions=[AUTHORIZATION_ACTION])
        outcome = await sender.send_and_wait(cmd, within=10)
        if isinstance(outcome, CustomerUpdateRejectedEvent):
            print(outcome.data.error.message)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from pydantic import ValidationError

from schemas.command import AUTHORIZATION_ACTION, CustomerUpdateCommand
from schemas.errors import ErrorObject, from_validation_error
from schemas.event import CustomerUpdatedEvent, CustomerUpdateRejectedEvent
from service.adapters.kafka.clients import connection_options, partitions_of, reader, start
from service.domain import binary_mode
from service.infrastructure.settings import Settings

Outcome = CustomerUpdatedEvent | CustomerUpdateRejectedEvent


class CommandInvalidError(ValueError):
    """The command breaks the contract; the worker would refuse it the same way."""

    def __init__(self, error: ErrorObject) -> None:
        super().__init__(error.message)
        self.error = error


def build_command(
    customer_id: str,
    changes: Mapping[str, Any],
    *,
    source: str,
    principal: str | None = None,
    permissions: Iterable[str] = (AUTHORIZATION_ACTION,),
    authtoken: str | None = None,
    expected_version: int | None = None,
    correlation_id: str | None = None,
    command_id: str | None = None,
    traceparent: str | None = None,
) -> CustomerUpdateCommand:
    """A command validated exactly as the worker validates it.

    ``changes`` is the update body: absent fields stay, ``None`` clears a clearable field.

    Raises:
        CommandInvalidError: with the error object the worker would have sent back.
    """
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": command_id or f"cmd_{uuid.uuid4().hex}",
        "source": source,
        "type": "customer.update",
        "subject": customer_id,
        "time": datetime.now(UTC).isoformat(),
        "data": dict(changes),
    }
    optional = {
        "principal": principal,
        "permissions": " ".join(permissions) if principal is not None else None,
        "authtoken": authtoken,
        "expectedversion": expected_version,
        "correlationid": correlation_id,
        "traceparent": traceparent,
    }
    document.update({name: value for name, value in optional.items() if value is not None})
    try:
        return CustomerUpdateCommand.model_validate(document)
    except ValidationError as exc:
        raise CommandInvalidError(from_validation_error(exc)) from None


def encode_command(command: CustomerUpdateCommand) -> bytes:
    """The record value. Only fields that were given are written: an absent field means
    "unchanged", which a ``null`` would turn into "clear"."""
    return command.model_dump_json(exclude_unset=True).encode()


@dataclass(frozen=True)
class Sent:
    command_id: str
    partition: int
    offset: int


class CommandSender:
    """Sends commands with an idempotent producer; waits for outcomes on request."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **connection_options(settings), acks="all", enable_idempotence=True
        )

    async def __aenter__(self) -> CommandSender:
        try:
            await start(self._producer, self._settings)
        except BaseException:
            await self._producer.stop()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send(self, command: CustomerUpdateCommand) -> Sent:
        metadata = await self._producer.send_and_wait(
            self._settings.topic_commands, encode_command(command), key=command.subject.encode()
        )
        return Sent(command.id, metadata.partition, metadata.offset)

    async def send_and_wait(self, command: CustomerUpdateCommand, *, within: float) -> Outcome:
        """Send ``command`` and return its event or rejection.

        Raises:
            TimeoutError: no outcome within ``within`` seconds (for example because the id
                was used before: a duplicate publishes nothing new).
        """
        settings = self._settings
        watcher = reader(settings)
        partitions = await partitions_of(
            settings, [settings.topic_events, settings.topic_rejections]
        )
        try:
            await start(watcher, settings)
            watcher.assign(partitions)
            # Positions are fixed before sending, so the outcome cannot slip past.
            ends = await watcher.end_offsets(partitions)
            for tp, offset in ends.items():
                watcher.seek(tp, offset)
            await self.send(command)
            async with asyncio.timeout(within):
                while True:
                    batch = await watcher.getmany(timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            outcome = outcome_of(record, settings, command.id)
                            if outcome is not None:
                                return outcome
        finally:
            await watcher.stop()


def outcome_of(
    record: ConsumerRecord[bytes, bytes], settings: Settings, command_id: str
) -> Outcome | None:
    """The event or rejection ``record`` holds if it answers ``command_id``, else None:
    another command's outcome, or a record that is no event at all (anyone can write to
    a topic), is skipped rather than ending the wait."""
    try:
        # Either content mode: the worker's EVENT_CONTENT_MODE is not the client's to know.
        value = binary_mode.as_structured(record.value, tuple(record.headers)) or b""
        outcome: Outcome
        if record.topic == settings.topic_events:
            outcome = CustomerUpdatedEvent.model_validate_json(value)
        else:
            outcome = CustomerUpdateRejectedEvent.model_validate_json(value)
    except ValueError:  # not JSON, not an event, or headers no event has
        return None
    return outcome if outcome.causationid == command_id else None
