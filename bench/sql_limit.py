"""The SQL write-set limit: how many commands per second PostgreSQL sustains for exactly
the statements the worker runs per batch, with no Python work per command in the loop.

Two steps, on fresh copies of the run's seeded database:

1. **capture** (untimed for the limit): the service's own ``BatchProcessor`` (classify,
   fold, build the events and state records, the real ``BatchStore`` and
   ``save_outbox``) processes the throughput run's commands, in batches of
   ``BATCH_MAX_RECORDS``, on one connection that records every statement it is given:
   its method, SQL text, parameters and result (status or row count), batch by batch,
   and commits each batch as the worker does. What is replayed is therefore the
   worker's SQL and the worker's parameter values by construction; nothing is
   re-implemented here.
2. **replay** (timed, once per round, each on a copy of its own made quiet first): each
   distinct statement prepared once, then every batch in order on one connection (one
   worker's concurrency): ``BEGIN``, the recorded statements with the recorded
   parameters, ``COMMIT``. The loop does nothing
   per command: per batch it only passes the pre-built arrays to the prepared
   statements. The figure is PostgreSQL's work plus asyncpg's encoding of the arrays
   (and decoding of the rows ``lock_customers`` and the other reads return) and the
   round trips of one connection. Each statement's result is compared with the
   captured one (``verified``): the replay locked, updated and inserted the same rows.

The relay's statements (reading and deleting the outbox) are not part of it: they are
not the batch's, and in the worker they run on a connection of their own.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from unittest import mock

import asyncpg
from aiokafka.partitioner import murmur2

from bench.cpu import CpuMeter, CpuSample, cpu_figures
from bench.kafka_io import BenchmarkError
from bench.load import Command
from bench.stats import median, rate, spread
from bench.workers import worker_env
from service.adapters.postgres.batch_store import PostgresUnitOfWork
from service.adapters.postgres.copy import copy_rows
from service.adapters.postgres.errors import translated
from service.application.process_batch import BatchProcessor, ProcessorConfig
from service.bootstrap import build_authorizer
from service.domain.events import DEFAULT_MAX_MESSAGE_BYTES
from service.domain.inbound import InboundRecord
from service.infrastructure.settings import Settings

Method = Literal["execute", "fetch", "executemany", "copy"]

#: The record timestamps of the captured batches (epoch ms): a fixed instant, so that
#: nothing in the parameters depends on when the capture ran but the events' ``time``.
BASE_TIMESTAMP_MS = 1_767_225_600_000
#: ``timestamp_type`` of a producer-set (CreateTime) timestamp.
CREATE_TIME = 0
#: Name of the transaction's own round trips in the per-statement figures.
BEGIN, COMMIT = "begin", "commit"


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a batch as the worker ran it: which ``BatchStore`` (or
    ``save_outbox``) function sent it, how, the SQL, the parameters, and what came back:
    the status for ``execute`` (``INSERT 0 500``), the row count for ``fetch``, None for
    ``executemany``. A ``copy`` (``copy_records_to_table``) has a ``COPY`` statement's
    text as its query, the table, columns and records as its args, and the status
    (``COPY 500``) as its result."""

    name: str
    method: Method
    query: str
    args: tuple[Any, ...]
    result: str | int | None


@dataclass(frozen=True, slots=True)
class Batch:
    #: Records in the batch (all the batch's commands, poison and invalid ones included).
    records: int
    statements: tuple[Statement, ...]


def worker_settings(settings: Settings, extra: Mapping[str, str]) -> Settings:
    """The settings the phase's worker would run with: the caller's environment, the
    phase's endpoints, topics and group (``settings``), then ``extra`` (``--worker-env``),
    read the way the worker reads them."""
    env = worker_env(settings, log_level="WARNING", extra=extra)
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the benchmark's producer (aiokafka's default partitioner) sends a
    keyed record to."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def plan_batches(
    commands: Sequence[Command], *, topic: str, partitions: int, batch_size: int
) -> list[list[InboundRecord]]:
    """The commands as the worker's consumer would see them: each on the partition its
    key hashes to, at the next offset there; cut in production order into batches of
    ``batch_size``, each batch's records grouped by partition in offset order (how
    ``getmany`` hands them over)."""
    if partitions < 1 or batch_size < 1:
        raise ValueError("partitions and batch_size must be at least 1")
    next_offset = [0] * partitions
    records: list[InboundRecord] = []
    for command in commands:
        partition = partition_of(command.key, partitions)
        offset = next_offset[partition]
        next_offset[partition] += 1
        records.append(
            InboundRecord(
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp=BASE_TIMESTAMP_MS + command.index,
                timestamp_type=CREATE_TIME,
                key=command.key,
                value=command.value,
                headers=tuple(command.headers),
            )
        )
    return [
        sorted(records[start : start + batch_size], key=lambda r: (r.partition, r.offset))
        for start in range(0, len(records), batch_size)
    ]


def copy_text(table_name: str, columns: Sequence[str]) -> str:
    """What a ``copy_records_to_table`` sends, as text (its name in the figures' SQL)."""
    return f"COPY {table_name} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"


class RecordingConnection:
    """An asyncpg connection that keeps, in ``statements``, every statement sent through
    it (with the name of the function that sent it) before passing it on."""

    def __init__(self, connection: asyncpg.Connection, statements: list[Statement]) -> None:
        self._connection = connection
        self.statements = statements

    async def execute(self, query: str, *args: Any) -> str:
        status: str = await self._connection.execute(query, *args)
        self._keep("execute", query, args, status)
        return status

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._connection.fetch(query, *args)
        self._keep("fetch", query, args, len(rows))
        return rows

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(row) for row in args]
        await self._connection.executemany(query, rows)
        self._keep("executemany", query, (rows,), None)

    async def copy_records_to_table(
        self, table_name: str, *, records: Iterable[Sequence[Any]], columns: Sequence[str]
    ) -> str:
        rows = [tuple(row) for row in records]
        status: str = await self._connection.copy_records_to_table(
            table_name, records=rows, columns=columns
        )
        self._keep(
            "copy", copy_text(table_name, columns), (table_name, tuple(columns), rows), status
        )
        return status

    def _keep(self, method: Method, query: str, args: tuple[Any, ...], result: Any) -> None:
        # The caller of execute/fetch/executemany/copy: a BatchStore method, or save_outbox
        # (a COPY comes through ``copy_rows`` on its way).
        frame = sys._getframe(2)
        if frame.f_code.co_name == copy_rows.__name__ and frame.f_back is not None:
            frame = frame.f_back
        caller = frame.f_code.co_name
        self.statements.append(Statement(caller, method, query, args, result))


@dataclass
class Capture:
    batches: list[Batch]
    seconds: float
    records: int


async def capture(
    url: str, settings: Settings, batches: Sequence[Sequence[InboundRecord]]
) -> Capture:
    """``capture_on`` a new connection to ``url``."""
    connection: asyncpg.Connection = await asyncpg.connect(url)
    try:
        return await capture_on(connection, settings, batches)
    finally:
        await connection.close()


async def capture_on(
    connection: asyncpg.Connection,
    settings: Settings,
    batches: Sequence[Sequence[InboundRecord]],
) -> Capture:
    """Run the service's ``BatchProcessor``, configured as the worker is from
    ``settings``, over ``batches`` on ``connection`` (committing each, as the worker's
    ``batch_transaction`` does), and return what it sent. Fails if a batch was not one
    committed transaction (the processor isolated records after an error): that would
    not be the worker's usual batch."""
    current: list[Statement] = []
    units: list[PostgresUnitOfWork] = []

    @asynccontextmanager
    async def begin() -> AsyncIterator[PostgresUnitOfWork]:
        with translated():
            transaction = connection.transaction()
            await transaction.start()
            recording = cast(asyncpg.Connection, RecordingConnection(connection, current))
            unit = PostgresUnitOfWork(recording, transaction)
            units.append(unit)
            try:
                yield unit
            finally:
                if not unit.committed:
                    with suppress(Exception):
                        await transaction.rollback()

    processor = BatchProcessor(
        begin,
        ProcessorConfig(
            consumer_group=settings.kafka_consumer_group,
            source=settings.event_source,
            topics=settings.topics,
            limits=settings.limits,
            # The bench's topics keep the broker's default, which the worker reads.
            dead_letter_max_bytes=DEFAULT_MAX_MESSAGE_BYTES,
            content_mode=settings.event_content_mode,
            publish_state=settings.publish_state,
        ),
        build_authorizer(settings),
    )
    captured: list[Batch] = []
    started = time.perf_counter()
    for number, records in enumerate(batches, 1):
        current.clear()
        units.clear()
        decisions = await processor.process(list(records))
        if len(units) != 1 or not units[0].committed or len(decisions) != len(records):
            raise BenchmarkError(
                f"sql_write_set: batch {number} of the capture was not one committed "
                f"transaction ({len(units)} units, {len(decisions)}/{len(records)} "
                "decisions); the processor isolated records after an error"
            )
        captured.append(Batch(len(records), tuple(current)))
    return Capture(captured, time.perf_counter() - started, sum(len(b) for b in batches))


@dataclass
class Replay:
    """What the timed replay measured."""

    batches: int
    records: int
    seconds: float
    #: Seconds and calls of each statement (by the name of the function that sent it,
    #: ``begin`` and ``commit`` for the transaction's own round trips).
    statement_seconds: dict[str, float] = field(default_factory=dict)
    statement_calls: dict[str, int] = field(default_factory=dict)
    #: CPU samples just before the first batch and just after the last one.
    cpu: tuple[CpuSample, CpuSample] | None = None
    wal_bytes: int | None = None
    #: Every statement gave the same status or row count as in the capture.
    verified: bool = False
    mismatches: list[str] = field(default_factory=list)
    prepared_statements: int = 0


def statement_names(batch: Batch) -> list[str]:
    """Names of a batch's statements, in order: the function that sent each, numbered
    when one function sent more than one (``claim_positions``, ``claim_positions.2``),
    between ``begin`` and ``commit``."""
    seen: dict[str, int] = {}
    names = [BEGIN]
    for statement in batch.statements:
        seen[statement.name] = seen.get(statement.name, 0) + 1
        count = seen[statement.name]
        names.append(statement.name if count == 1 else f"{statement.name}.{count}")
    names.append(COMMIT)
    return names


async def replay(
    url: str, batches: Sequence[Batch], *, meter: CpuMeter, admin_url: str | None = None
) -> Replay:
    """Time ``batches`` on one connection to ``url``: every distinct statement prepared
    first (untimed), then each batch in its own transaction (the server's default
    isolation, as the worker's), its statements sent with their recorded parameters.
    ``meter`` is sampled at both ends; with ``admin_url``, the WAL written is counted."""
    from bench import db

    connection: asyncpg.Connection = await asyncpg.connect(url)
    try:
        prepared: dict[str, asyncpg.prepared_stmt.PreparedStatement] = {}
        for batch in batches:
            for statement in batch.statements:
                # A COPY is not prepared: asyncpg sends it as it is (and prepares, once per
                # connection, the query that tells it the columns' types).
                if statement.method != "copy" and statement.query not in prepared:
                    prepared[statement.query] = await connection.prepare(statement.query)
        plans = [
            (
                batch,
                statement_names(batch),
                [prepared.get(s.query) for s in batch.statements],
            )
            for batch in batches
        ]
        results: list[list[str | int | None]] = []
        seconds: dict[str, float] = {}
        calls: dict[str, int] = {}
        clock = time.perf_counter
        wal_from = await db.wal_position(admin_url) if admin_url else None
        before = meter.sample()
        started = clock()
        for batch, names, statements in plans:
            got: list[str | int | None] = []
            timings: list[float] = []
            mark = clock()
            transaction = connection.transaction()
            await transaction.start()
            now = clock()
            timings.append(now - mark)
            mark = now
            for statement, ready in zip(batch.statements, statements, strict=True):
                if ready is None:
                    table_name, columns, rows = statement.args
                    got.append(
                        await connection.copy_records_to_table(
                            table_name, records=rows, columns=columns
                        )
                    )
                elif statement.method == "executemany":
                    await ready.executemany(statement.args[0])
                    got.append(None)
                elif statement.method == "fetch":
                    got.append(len(await ready.fetch(*statement.args)))
                else:
                    await ready.fetch(*statement.args)
                    got.append(ready.get_statusmsg())
                now = clock()
                timings.append(now - mark)
                mark = now
            await transaction.commit()
            timings.append(clock() - mark)
            for name, spent in zip(names, timings, strict=True):
                seconds[name] = seconds.get(name, 0.0) + spent
                calls[name] = calls.get(name, 0) + 1
            results.append(got)
        elapsed = clock() - started
        after = meter.sample()
        wal_until = await db.wal_position(admin_url) if admin_url else None
    finally:
        await connection.close()
    mismatches = [
        f"batch {number} {name}: captured {statement.result!r}, replayed {result!r}"
        for number, (batch, got) in enumerate(zip(batches, results, strict=True), 1)
        for name, statement, result in zip(
            statement_names(batch)[1:-1], batch.statements, got, strict=True
        )
        if statement.result != result
    ]
    return Replay(
        batches=len(batches),
        records=sum(batch.records for batch in batches),
        seconds=elapsed,
        statement_seconds=seconds,
        statement_calls=calls,
        cpu=(before, after),
        wal_bytes=wal_until - wal_from if wal_from is not None and wal_until is not None else None,
        verified=not mismatches and len(results) == len(batches),
        mismatches=mismatches[:10],
        prepared_statements=len(prepared),
    )


def sql_figures(
    result: Replay,
    *,
    captured: Capture,
    batch_max_records: int,
    quiet: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``sql_write_set`` block (without ``ours_fraction_of_limit``, which
    ``report.build_result`` adds): commands per second of the replay, its CPU per
    command by process, the time of each statement, and the capture's own rate."""
    commands = result.records
    cpu = cpu_figures(*result.cpu, commands) if result.cpu is not None else None
    per_command: dict[str, float | None] | None = None
    if cpu is not None:
        processes = cast(dict[str, Any], cpu["processes"])
        per_command = {
            name: None if figures is None else figures["us_per_command"]
            for name, figures in processes.items()
        }
        per_command["all"] = cast(dict[str, float], cpu["all"])["us_per_command"]
    total = sum(result.statement_seconds.values())
    statements = {
        name: {
            "calls": result.statement_calls[name],
            "seconds": round(spent, 4),
            "ms_per_call": round(spent / result.statement_calls[name] * 1000, 3),
            "share": round(spent / total, 3) if total > 0 else None,
        }
        for name, spent in sorted(result.statement_seconds.items(), key=lambda kv: -kv[1])
    }
    return {
        "commands_per_second": round(rate(commands, result.seconds), 1),
        "commands": commands,
        "batches": result.batches,
        "batch_max_records": batch_max_records,
        "seconds": round(result.seconds, 3),
        "ms_per_batch": round(result.seconds / result.batches * 1000, 2)
        if result.batches
        else None,
        "round_trips_per_batch": round(sum(result.statement_calls.values()) / result.batches, 2)
        if result.batches
        else None,
        "cpu_us_per_command": per_command,
        "cpu": cpu,
        "wal_bytes": result.wal_bytes,
        "wal_bytes_per_command": round(result.wal_bytes / commands, 1)
        if result.wal_bytes is not None and commands
        else None,
        "statements": statements,
        "prepared_statements": result.prepared_statements,
        "verified": result.verified,
        "mismatches": result.mismatches,
        "database_quiet": dict(quiet) if quiet is not None else None,
        "capture": {
            "seconds": round(captured.seconds, 3),
            "processor_commands_per_second": round(rate(captured.records, captured.seconds), 1),
        },
    }


def combined_figures(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``sql_figures`` of several replays of the same capture (each on a fresh copy):
    ``commands_per_second`` is their median, the other figures are the median round's
    (the slower of the two middle ones for an even count), ``verified`` needs every
    round, and ``rounds`` and ``spread`` show each round and the range."""
    if not rounds:
        raise ValueError("no rounds")
    ordered = sorted(range(len(rounds)), key=lambda i: rounds[i]["commands_per_second"])
    middle = dict(rounds[ordered[(len(ordered) - 1) // 2]])
    rates = [round_["commands_per_second"] for round_ in rounds]
    postgres = [
        (round_["cpu_us_per_command"] or {}).get("postgres")
        for round_ in rounds
        if round_["cpu_us_per_command"] is not None
    ]
    return {
        **middle,
        "commands_per_second": round(median(rates), 1),
        "verified": all(round_["verified"] for round_ in rounds),
        "mismatches": [m for round_ in rounds for m in round_["mismatches"]][:10],
        "spread": {
            "commands_per_second": spread(rates),
            "cpu_us_per_command_postgres": spread([v for v in postgres if v is not None]),
        },
        "rounds": [
            {
                "round": number,
                "commands_per_second": round_["commands_per_second"],
                "seconds": round_["seconds"],
                "cpu_us_per_command": round_["cpu_us_per_command"],
                "verified": round_["verified"],
                "database_quiet": round_["database_quiet"],
            }
            for number, round_ in enumerate(rounds, 1)
        ],
    }
