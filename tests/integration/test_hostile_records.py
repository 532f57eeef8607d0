"""One hostile record at a time, against the real Kafka and PostgreSQL: none of them may
stop the worker, wedge the relay, or cost another command its event.

Each test sends the record the way a producer we do not control would (kcat, built on
librdkafka, where our own client cannot write it), then ordinary commands after it, and
checks that every one of those is answered exactly once and in order.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from devstack.kcat import produce_raw
from schemas.headers import (
    DLT_ERROR_CODE,
    DLT_HEADERS_DROPPED,
    DLT_ORIGINAL_SHA256,
    DLT_ORIGINAL_VALUE_SIZE,
    DLT_TRUNCATED,
    OUTBOX_ID,
)
from service.adapters.kafka.clients import connection_options
from service.adapters.postgres.outbox import decode_raw_headers
from service.bootstrap import WorkerProcess, build_relay
from service.entrypoints.operator.dead_letters import read_dead_letters, replay
from service.infrastructure.settings import Settings
from tests.support import (
    Received,
    TopicReader,
    command,
    encode,
    event_topics,
    eventually,
    fill_outbox,
    insert_customer,
    outbox_size,
    produce,
    produce_commands,
    read_everything,
    running_relay,
    running_worker,
    shrink_topic,
)

LATER = 10


def later_commands(customer_id: str) -> list[dict[str, Any]]:
    return [command(customer_id, {"description": f"after {n}"}) for n in range(LATER)]


async def answered_in_order(
    reader: TopicReader, commands: list[dict[str, Any]], *, within: float = 60.0
) -> list[Received]:
    """Wait for an event of every command in ``commands`` (one customer), and check there is
    exactly one each, in order, with consecutive versions."""
    wanted = [c["id"] for c in commands]
    topic = reader.settings.topic_events

    def mine() -> list[Received]:
        return [e for e in reader.on(topic) if e.json().get("causationid") in wanted]

    await reader.wait_until(lambda _: len(mine()) >= len(wanted), within=within, what="events")
    events = mine()
    assert [e.json()["causationid"] for e in events] == wanted
    versions = [int(e.json()["sequence"]) for e in events]
    assert versions == list(range(versions[0], versions[0] + len(versions)))
    return events


def header(record: Received, name: str) -> bytes | None:
    values = [value for key, value in record.headers if key == name]
    assert len(values) <= 1, f"{name} appears {len(values)} times"
    return values[0] if values else None


async def dead_letter_then_answers(
    settings: Settings, later: list[dict[str, Any]], *, answered: list[dict[str, Any]] | None = None
) -> tuple[Received, TopicReader]:
    """Run the worker over what was produced and ``later``: every command of ``answered``
    (default ``later``) gets its event once and in order, and the one hostile record is the
    only dead letter."""
    await produce_commands(settings, later)
    async with (
        running_worker(settings) as worker,
        TopicReader(settings, event_topics(settings), worker) as reader,
    ):
        await answered_in_order(reader, later if answered is None else answered)
        [letter] = await reader.wait_for_count(settings.topic_dead_letters, 1)
    return letter, reader


async def test_a_header_name_with_nul_is_a_dead_letter_and_the_worker_goes_on(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_nul")
    await produce(
        settings,
        [(b"cus_nul", b"not json")],
        headers=[("x-\x00-name", b"v"), ("x-kept", b"kept")],
    )
    letter, _ = await dead_letter_then_answers(settings, later_commands("cus_nul"))

    assert header(letter, DLT_ERROR_CODE) == b"record_header_invalid"
    assert header(letter, DLT_HEADERS_DROPPED) == b"1"
    assert header(letter, "x-kept") == b"kept"
    assert (letter.key, letter.value) == (b"cus_nul", b"not json")
    [stored] = await db.fetch("SELECT key, value, headers FROM dead_letter_originals")
    assert decode_raw_headers(stored["headers"]) == [(b"x-\x00-name", b"v"), (b"x-kept", b"kept")]


async def test_a_header_name_that_is_not_utf8_does_not_crash_the_consumer(
    settings: Settings, db: asyncpg.Connection, kcat: Path
) -> None:
    await insert_customer(db, "cus_utf")
    before = command("cus_utf", {"name": "before"})
    await produce_commands(settings, [before])
    await produce_raw(
        settings.kafka_bootstrap_servers,
        settings.topic_commands,
        key=b"cus_utf",
        value=encode(command("cus_utf", {"name": "hostile"})),
        headers=[(b"\xff\xfebad", b"v")],
        kcat=kcat,
    )
    later = later_commands("cus_utf")
    letter, _ = await dead_letter_then_answers(settings, later, answered=[before, *later])

    assert header(letter, DLT_ERROR_CODE) == b"record_header_invalid"
    assert b"\\xff\\xfebad" in (header(letter, "kafka_dlt-exception-message") or b"")
    assert header(letter, DLT_HEADERS_DROPPED) == b"1"
    [stored] = await db.fetch("SELECT headers FROM dead_letter_originals")
    assert decode_raw_headers(stored["headers"]) == [(b"\xff\xfebad", b"v")]
    assert await db.fetchval("SELECT name FROM customers WHERE id = 'cus_utf'") == "before"


async def test_our_own_headers_on_a_record_are_kept_only_renamed_on_its_dead_letter(
    settings: Settings,
) -> None:
    await produce(
        settings,
        [(b"cus_forge", b"[1]")],
        headers=[(OUTBOX_ID, b"987654"), ("kafka_dlt-exception-cause-fqcn", b"forged")],
    )
    async with (
        running_worker(settings) as worker,
        TopicReader(settings, event_topics(settings), worker) as reader,
    ):
        [letter] = await reader.wait_for_count(settings.topic_dead_letters, 1)

    assert header(letter, "original-outbox-id") == b"987654"
    assert header(letter, "original-kafka_dlt-exception-cause-fqcn") == b"forged"
    assert header(letter, DLT_ERROR_CODE) == b"record_not_object"
    assert header(letter, OUTBOX_ID) != b"987654"  # the relay's own id, the only one


async def test_forged_outbox_ids_on_a_topic_never_delete_unpublished_rows(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Recovery reads the topics back and deletes the rows it finds there; anyone who can
    write to a topic can write an ``outbox-id``. Only a record that is the row counts."""
    await insert_customer(db, "cus_rows")
    commands = [command("cus_rows", {"description": f"d{n}"}) for n in range(5)]
    await fill_outbox(settings, db, commands)
    pending = [row["id"] for row in await db.fetch("SELECT id FROM outbox ORDER BY id")]
    forged = [(OUTBOX_ID, str(row_id).encode()) for row_id in pending]
    for topic in (settings.topic_events, settings.topic_dead_letters):
        await produce(settings, [(b"cus_rows", b"{}")], topic=topic, headers=forged[:1])
        beyond_bigint = (OUTBOX_ID, b"9999999999999999999")
        for name_value in [
            *forged,
            (OUTBOX_ID, b"not-a-number"),
            (OUTBOX_ID, b"-1"),
            beyond_bigint,
        ]:
            await produce(settings, [(b"cus_rows", b"{}")], topic=topic, headers=[name_value])

    async with (
        running_relay(build_relay(settings)) as relay,
        TopicReader(settings, event_topics(settings), relay) as reader,
    ):
        await answered_in_order(reader, commands)
        await eventually(lambda: _outbox_is_empty(db), what="an empty outbox")
        assert not relay.done()


async def _outbox_is_empty(db: asyncpg.Connection) -> bool:
    return await outbox_size(db) == 0


async def test_a_record_too_large_to_dead_letter_whole_is_cut_to_fit(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_big")
    value = b"x" * 1_048_400
    producer = AIOKafkaProducer(**connection_options(settings), max_request_size=2_000_000)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_commands, value, key=b"cus_big")
    finally:
        await producer.stop()
    letter, _ = await dead_letter_then_answers(settings, later_commands("cus_big"))

    assert header(letter, DLT_ERROR_CODE) == b"record_too_large"
    assert header(letter, DLT_TRUNCATED) == b"true"
    assert header(letter, DLT_ORIGINAL_VALUE_SIZE) == str(len(value)).encode()
    assert header(letter, DLT_ORIGINAL_SHA256) == hashlib.sha256(value).hexdigest().encode()
    assert value.startswith(letter.value)
    assert 0 < len(letter.value) < len(value)
    stored = await db.fetchval("SELECT value FROM dead_letter_originals WHERE key = 'cus_big'")
    assert stored == value
    # The dlq tools show and replay the whole original, not the cut copy.
    [listed] = await read_dead_letters(settings)
    assert listed.original is not None
    assert listed.original.value == value
    assert "partial copy; whole original in the database" in listed.describe()
    await replay(settings, [listed])
    replayed = await read_everything(settings, [settings.topic_commands])
    assert replayed[settings.topic_commands][-1].value == value


async def test_a_key_too_large_is_a_dead_letter(settings: Settings, db: asyncpg.Connection) -> None:
    await insert_customer(db, "cus_key")
    big_key = b"k" * 340_000
    await produce(settings, [(big_key, encode(command("cus_key")))])
    letter, reader = await dead_letter_then_answers(settings, later_commands("cus_key"))
    assert reader.on(settings.topic_rejections) == []

    assert header(letter, DLT_ERROR_CODE) == b"record_key_too_large"
    assert letter.key == big_key


async def readyz(port: int) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize("limits_known", [True, False], ids=["checked", "refused-by-broker"])
async def test_a_row_kafka_refuses_is_parked_and_the_others_flow(
    settings: Settings, db: asyncpg.Connection, limits_known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events topic takes at most 3000 bytes; one event of cus_park is larger. It is
    parked, cus_park's later events wait behind it, every other customer's flow, and
    /readyz names it; ``outbox retry`` after the limit is raised publishes them in order.
    Either the relay knows the limit and parks before sending, or (limits_known=False) it
    learns it from the broker's refusal."""
    await shrink_topic(settings, settings.topic_events, 3000)
    if not limits_known:
        monkeypatch.setattr(
            "service.adapters.kafka.clients.max_message_bytes",
            lambda _settings, topics: _unknown(topics),
        )
    for customer_id in ("cus_park", "cus_flow"):
        await insert_customer(db, customer_id)
    parked = [
        command("cus_park", {"description": "small"}),
        command("cus_park", {"description": "y" * 4000}),
        *later_commands("cus_park")[:3],
    ]
    flowing = later_commands("cus_flow")
    process = WorkerProcess(settings)
    stopping = asyncio.Event()
    worker = asyncio.create_task(process.run(stopping))
    try:
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await produce_commands(settings, parked[:2])
            await produce_commands(settings, [*parked[2:], *flowing])
            await answered_in_order(reader, flowing)
            await answered_in_order(reader, parked[:1])
            await eventually(
                lambda: _parked_count(db, 1), what="the large event to be parked", within=60
            )
            port = process.http_port
            assert port is not None
            answers: list[tuple[int, Any]] = []

            async def unready() -> bool:
                answers.append(await readyz(port))
                return answers[-1][0] == 503

            await eventually(unready, what="/readyz to answer 503")
            [problem] = [p for p in answers[-1][1]["problems"] if "parked" in p]
            assert "cus_park" in problem
            assert await db.fetchval("SELECT count(*) FROM outbox WHERE parked_at IS NULL") == 3
            assert len([e for e in reader.on(settings.topic_events) if e.key == b"cus_park"]) == 1

            await shrink_topic(settings, settings.topic_events, 1_048_588)
            await db.execute("UPDATE outbox SET parked_at = NULL, parked_reason = NULL")
            await answered_in_order(reader, parked)
    finally:
        stopping.set()
        await asyncio.wait_for(worker, timeout=60)


async def _unknown(topics: Any) -> dict[str, int]:
    return {topic: 1_048_588 for topic in topics}


async def _parked_count(db: asyncpg.Connection, count: int) -> bool:
    found = await db.fetchval("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
    return bool(found == count)


async def test_permissions_split_on_a_no_break_space_do_not_authorise(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_nbsp", name="Kept")
    sneaky = command(
        "cus_nbsp", {"name": "Changed"}, permissions="pay:customers:read\u00a0pay:customers:update"
    )
    await produce_commands(settings, [sneaky])
    async with (
        running_worker(settings) as worker,
        TopicReader(settings, event_topics(settings), worker) as reader,
    ):
        [rejection] = await reader.wait_for_count(settings.topic_rejections, 1)

    assert rejection.json()["data"]["error"]["code"] == "permission_denied"
    assert await db.fetchval("SELECT name FROM customers WHERE id = 'cus_nbsp'") == "Kept"


async def test_a_compressed_command_is_read_whatever_the_codec(
    settings: Settings, db: asyncpg.Connection, kcat: Path
) -> None:
    """Java clients often compress with lz4 or zstd; without the codec aiokafka raised
    inside getmany on every poll."""
    await insert_customer(db, "cus_codec")
    commands = [
        command("cus_codec", {"description": codec}) for codec in ("lz4", "zstd", "snappy", "gzip")
    ]
    for codec, document in zip(("lz4", "zstd", "snappy", "gzip"), commands, strict=True):
        await produce_raw(
            settings.kafka_bootstrap_servers,
            settings.topic_commands,
            key=b"cus_codec",
            value=encode(document),
            compression=codec,
            kcat=kcat,
        )
    async with (
        running_worker(settings) as worker,
        TopicReader(settings, event_topics(settings), worker) as reader,
    ):
        await answered_in_order(reader, commands)
