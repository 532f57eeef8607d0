"""The SQL write-set limit (``bench.sql_limit``): the batches as the worker sees them,
the capture going through the service's own processor and ``BatchStore`` (so that the
statements replayed are the worker's, and a change there is replayed too), the replay
sending exactly what was captured, and the figures. No servers, no timed assertions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import asyncpg
import pytest
from aiokafka.partitioner import DefaultPartitioner

from bench.__main__ import build_parser, options_from_args, summary
from bench.cpu import CpuMeter, CpuSample
from bench.kafka_io import BenchmarkError
from bench.load import LoadSpec, generate
from bench.report import RESULT_VERSION, build_result
from bench.runner import Options, phase_plan, phase_settings
from bench.sql_limit import (
    Batch,
    Capture,
    Replay,
    Statement,
    capture_on,
    combined_figures,
    copy_text,
    partition_of,
    plan_batches,
    replay,
    sql_figures,
    statement_names,
    worker_settings,
)
from service.adapters.postgres.batch_store import BatchStore
from service.domain.batch import ProcessedCommand
from service.domain.customer import CustomerState
from service.domain.events import OutboundMessage, StateRecord
from service.domain.inbound import InboundRecord
from service.infrastructure.settings import Settings
from tests.bench.test_bench import _throughput

TOPIC = "bench.t.sql_write_set.customer.update"
SPEC = LoadSpec(customers=50, seed=3)


def _settings(**extra: str) -> Settings:
    settings, _ = phase_settings(
        "bench.t.sql_write_set",
        kafka="localhost:1",
        database_url="postgresql://u@localhost:1/bench_t_sql_capture",
        database="bench_t_sql_capture",
    )
    return worker_settings(settings, extra)


# -- the option and the plan ------------------------------------------------------------


def _options(*argv: str) -> Options:
    return options_from_args(build_parser().parse_args(list(argv)), native_home=None)


def test_the_limit_runs_by_default_right_after_ours() -> None:
    default = _options()

    assert (default.sql_limit, default.sql_batches, default.sql_rounds) == (True, 30, 3)
    assert phase_plan(default)[:3] == ["ours", "sql_write_set", "naive"]
    assert default.parameters()["sql_limit"] is True


def test_the_limit_can_be_skipped_or_sized() -> None:
    assert "sql_write_set" not in phase_plan(_options("--no-sql-limit"))
    assert _options("--sql-batches", "7").sql_batches == 7
    assert _options("--sql-rounds", "5").sql_rounds == 5
    for sized in (["--sql-batches", "7"], ["--sql-rounds", "2"]):
        with pytest.raises(ValueError, match="need the limit"):
            _options("--no-sql-limit", *sized)
    with pytest.raises(ValueError, match="sql_batches"):
        Options(sql_batches=0)
    with pytest.raises(ValueError, match="sql_rounds"):
        Options(sql_rounds=0)


def test_the_capture_reads_the_settings_as_the_worker_does() -> None:
    settings = _settings(BATCH_MAX_RECORDS="120", PUBLISH_STATE="false")

    assert settings.batch_max_records == 120
    assert settings.publish_state is False
    assert settings.topic_commands == TOPIC
    assert settings.kafka_consumer_group == "bench.t.sql_write_set.worker"
    assert _settings().batch_max_records == Settings(_env_file=None).batch_max_records


# -- the batches as the worker's consumer sees them --------------------------------------


def test_commands_go_to_the_partition_the_producer_picks() -> None:
    partitions = list(range(6))
    for command in generate(SPEC, 200, prefix="tp"):
        expected = DefaultPartitioner()(command.key, partitions, partitions)
        assert partition_of(command.key, 6) == expected


def test_batches_cut_the_load_in_order_with_contiguous_offsets_per_partition() -> None:
    commands = generate(LoadSpec(customers=50, seed=3, poison_ratio=0.01), 1234, prefix="tp")

    batches = plan_batches(commands, topic=TOPIC, partitions=6, batch_size=500)

    assert [len(batch) for batch in batches] == [500, 500, 234]
    flat = [record for batch in batches for record in batch]
    assert sorted(record.value or b"" for record in flat) == sorted(c.value for c in commands)
    next_offset: dict[int, int] = {}
    for batch in batches:
        assert batch == sorted(batch, key=lambda r: (r.partition, r.offset))
        for record in batch:
            assert record.topic == TOPIC
            assert record.offset == next_offset.get(record.partition, 0)
            next_offset[record.partition] = record.offset + 1
    # Each batch holds the next 500 commands produced, whatever their partition.
    first = {record.value for record in batches[0]}
    assert first == {command.value for command in commands[:500]}
    poison = next(command for command in commands if command.headers)
    assert any(record.headers == poison.headers for record in flat)


# -- the capture: the service's processor and BatchStore on a recording connection ------


def _customer_row(customer_id: str) -> dict[str, Any]:
    number = int(customer_id.rsplit("_", 1)[1])
    return {
        "id": customer_id, "created": 1_700_000_000, "delinquent": False,
        "address_city": None, "address_country": None, "address_line1": None,
        "address_line2": None, "address_postal_code": None, "address_state": None,
        "description": None, "email": f"demo{number}@example.com",
        "invoice_prefix": f"DEMO{number:06d}", "next_invoice_sequence": 1,
        "last_invoice_sequence": 0, "name": f"Demo Customer {number}", "phone": None,
        "preferred_locales": ["en-US"], "tax_exempt": "none", "version": 1,
    }  # fmt: skip


class _FakeTransaction:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def start(self) -> None:
        self.log.append("BEGIN")

    async def commit(self) -> None:
        self.log.append("COMMIT")

    async def rollback(self) -> None:
        self.log.append("ROLLBACK")


class _FakeConnection:
    """Answers a batch's statements as a seeded database would (every customer exists,
    every position is new), and logs what it was sent."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def transaction(self) -> _FakeTransaction:
        return _FakeTransaction(self.log)

    async def execute(self, query: str, *args: Any) -> str:
        self.sent.append((query, args))
        self.log.append("execute")
        rows = len(args[1]) if len(args) > 1 and isinstance(args[1], list) else 1
        return f"{query.split()[0]} 0 {rows}" if "INSERT" in query.split()[0] else f"OK {rows}"

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        self.sent.append((query, args))
        self.log.append("fetch")
        if "INTO consumer_offsets" in query:
            return [
                {"topic": topic, "partition": partition, "next_offset": 0}
                for topic, partition in zip(args[1], args[2], strict=True)
            ]
        if "FROM customers WHERE id = ANY" in query:
            return [_customer_row(customer_id) for customer_id in args[0]]
        return []

    async def executemany(self, query: str, args: Sequence[Sequence[Any]]) -> None:
        self.sent.append((query, tuple(args)))
        self.log.append("executemany")

    async def copy_records_to_table(
        self, table_name: str, *, records: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> str:
        rows = list(records)
        self.sent.append((copy_text(table_name, columns), (table_name, tuple(columns), rows)))
        self.log.append("copy")
        return f"COPY {len(rows)}"


def _batches(count: int = 1000, size: int = 500) -> list[list[InboundRecord]]:
    commands = generate(SPEC, count, prefix="tp")
    return plan_batches(commands, topic=TOPIC, partitions=3, batch_size=size)


async def _capture(batches: Sequence[Sequence[InboundRecord]]) -> tuple[Capture, _FakeConnection]:
    connection = _FakeConnection()
    captured = await capture_on(cast(asyncpg.Connection, connection), _settings(), batches)
    return captured, connection


async def _direct_queries() -> dict[str, list[str]]:
    """The SQL each ``BatchStore`` method sends when called directly (not through the
    processor): what the worker runs, by the name of the method that sends it."""
    connection = _FakeConnection()
    store = BatchStore(cast(asyncpg.Connection, connection))
    customer = CustomerState(
        id="cus_demo_000001", created=0, delinquent=False, address=None, description=None,
        email=None, invoice_prefix="DEMO000001", next_invoice_sequence=1, name=None,
        phone=None, preferred_locales=("en-US",), tax_exempt="none",
        last_invoice_sequence=0, version=2,
    )  # fmt: skip
    message = OutboundMessage("t", b"k", b"v", (("h", b"1"),), StateRecord("s", b"v"))
    record = InboundRecord(TOPIC, 0, 0, 0, 0, b"k", b"v")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "claim_positions": lambda: store.claim_positions("g", {(TOPIC, 0): 0}),
        "lock_customers": lambda: store.lock_customers(["cus_demo_000001"]),
        "prefix_owners": lambda: store.prefix_owners(["P"]),
        "known_commands": lambda: store.known_commands(["c"]),
        "subscriptions": lambda: store.subscriptions(["cus_demo_000001"]),
        "save_customers": lambda: store.save_customers([customer]),
        "save_processed": lambda: store.save_processed(
            [ProcessedCommand("c", "cus_demo_000001", b"f", "applied", 2)]
        ),
        "save_outbox": lambda: store.save_outbox([message]),
        "save_dead_letter_originals": lambda: store.save_dead_letter_originals("g", [record]),
        "save_positions": lambda: store.save_positions("g", {(TOPIC, 0): 1}),
    }
    queries: dict[str, list[str]] = {}
    for name, call in calls.items():
        before = len(connection.sent)
        await call()
        queries[name] = [query for query, _ in connection.sent[before:]]
    return queries


async def test_each_captured_batch_is_the_workers_statements_in_one_transaction() -> None:
    captured, connection = await _capture(_batches())

    assert [batch.records for batch in captured.batches] == [500, 500]
    assert connection.log.count("BEGIN") == connection.log.count("COMMIT") == 2
    assert "ROLLBACK" not in connection.log
    names = statement_names(captured.batches[0])
    assert names[:5] == ["begin", "claim_positions", "lock_customers", "prefix_owners",
                         "known_commands"]  # fmt: skip
    assert names[-4:] == ["save_outbox", "save_outbox.2", "save_positions", "commit"]
    for required in ("known_commands", "save_customers", "save_processed"):
        assert required in names
    # What was recorded is what went to the connection, in order.
    recorded = [(s.query, s.args) for batch in captured.batches for s in batch.statements]
    assert [query for query, _ in recorded] == [query for query, _ in connection.sent]


async def test_the_captured_sql_is_the_sql_batch_store_sends() -> None:
    captured, _ = await _capture(_batches())
    direct = await _direct_queries()

    for batch in captured.batches:
        seen: dict[str, int] = {}
        for statement in batch.statements:
            number = seen.get(statement.name, 0)
            seen[statement.name] = number + 1
            assert statement.name in direct, statement.name
            assert statement.query == direct[statement.name][number]
    names = {s.name for batch in captured.batches for s in batch.statements}
    # Every write of the batch, and its reads, are there (dead-letter originals only for
    # partial dead letters, which this load does not make).
    assert set(direct) - names == {"save_dead_letter_originals"}


async def test_the_capture_holds_the_arrays_the_worker_would_send() -> None:
    captured, _ = await _capture(_batches())
    first = captured.batches[0]
    by_name: dict[str, Statement] = {}
    for statement in first.statements:
        by_name.setdefault(statement.name, statement)  # the first of each name

    outbox = by_name["save_outbox"]
    table, columns, rows = outbox.args
    assert (outbox.method, table, columns[:3]) == ("copy", "outbox", ("topic", "key", "value"))
    assert len(rows) == first.records  # one output per command
    assert all(isinstance(row[2], bytes) and row[2] for row in rows)
    processed = by_name["save_processed"]
    assert processed.method == "copy"
    assert len(processed.args[2]) > 0.9 * first.records  # valid and rejected-by-state ones
    assert by_name["save_outbox"].result == f"COPY {first.records}"
    assert by_name["lock_customers"].result == len(by_name["lock_customers"].args[0])


async def test_a_change_in_batch_store_is_what_gets_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def save_positions(self: BatchStore, group: str, offsets: dict[Any, int]) -> None:
        await self.connection.execute("SELECT /* changed */ $1::text", group)

    monkeypatch.setattr(BatchStore, "save_positions", save_positions)
    captured, _ = await _capture(_batches(500))

    last = captured.batches[0].statements[-1]
    assert last.query == "SELECT /* changed */ $1::text"


async def test_a_batch_the_processor_had_to_isolate_fails_the_capture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: BatchStore, customers: Sequence[CustomerState]) -> None:
        if customers:
            raise RuntimeError("boom")

    monkeypatch.setattr(BatchStore, "save_customers", broken)
    with pytest.raises(BenchmarkError, match="not one committed transaction"):
        await _capture(_batches(10, size=10))


# -- the replay ---------------------------------------------------------------------------


class _Prepared:
    def __init__(self, query: str, server: _ReplayServer) -> None:
        self.query = query
        self.server = server
        self.status = ""

    async def fetch(self, *args: Any) -> list[object]:
        self.server.log.append(("fetch", self.query, args))
        answer = self.server.answers.get(self.query, 0)
        if isinstance(answer, str):
            self.status = answer
            return []
        return [object()] * answer

    async def executemany(self, rows: Sequence[Sequence[Any]]) -> None:
        self.server.log.append(("executemany", self.query, (rows,)))

    def get_statusmsg(self) -> str:
        return self.status


class _ReplayServer:
    def __init__(self, answers: dict[str, str | int]) -> None:
        self.answers = answers
        self.log: list[tuple[str, str, tuple[Any, ...]]] = []
        self.prepared: list[str] = []

    async def prepare(self, query: str) -> _Prepared:
        self.prepared.append(query)
        return _Prepared(query, self)

    async def copy_records_to_table(
        self, table_name: str, *, records: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> str:
        self.log.append(("copy", table_name, (tuple(columns), list(records))))
        return str(self.answers.get(table_name, "COPY 0"))

    def transaction(self) -> _ReplayTransaction:
        return _ReplayTransaction(self)

    async def close(self) -> None:
        pass


class _ReplayTransaction:
    def __init__(self, server: _ReplayServer) -> None:
        self.server = server

    async def start(self) -> None:
        self.server.log.append(("begin", "", ()))

    async def commit(self) -> None:
        self.server.log.append(("commit", "", ()))


def _recorded() -> list[Batch]:
    statements = (
        Statement("claim_positions", "execute", "INSERT a", ("g", ["t"]), "INSERT 0 1"),
        Statement("lock_customers", "fetch", "SELECT c", (["x", "y"],), 2),
        Statement("save_dead_letter_originals", "executemany", "INSERT d", ([("g", 1)],), None),
        Statement(
            "save_processed", "copy", copy_text("p", ("a",)), ("p", ("a",), [(1,)]), "COPY 1"
        ),
    )
    return [Batch(3, statements), Batch(2, statements[:2])]


async def _replay(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, str | int]
) -> tuple[Replay, _ReplayServer]:
    server = _ReplayServer(answers)

    async def connect(url: str) -> _ReplayServer:
        return server

    monkeypatch.setattr("bench.sql_limit.asyncpg.connect", connect)
    result = await replay("postgresql://x/y", _recorded(), meter=CpuMeter({}))
    return result, server


async def test_the_replay_sends_the_captured_statements_batch_by_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, server = await _replay(
        monkeypatch, {"INSERT a": "INSERT 0 1", "SELECT c": 2, "p": "COPY 1"}
    )

    # Each statement prepared once, first; a COPY is sent as it is.
    assert server.prepared == ["INSERT a", "SELECT c", "INSERT d"]
    assert [(method, query) for method, query, _ in server.log] == [
        ("begin", ""), ("fetch", "INSERT a"), ("fetch", "SELECT c"),
        ("executemany", "INSERT d"), ("copy", "p"), ("commit", ""),
        ("begin", ""), ("fetch", "INSERT a"), ("fetch", "SELECT c"), ("commit", ""),
    ]  # fmt: skip
    assert server.log[1][2] == ("g", ["t"])
    assert server.log[3][2] == ([("g", 1)],)
    assert server.log[4][2] == (("a",), [(1,)])
    assert (result.batches, result.records, result.prepared_statements) == (2, 5, 3)
    assert result.statement_calls == {
        "begin": 2, "claim_positions": 2, "lock_customers": 2,
        "save_dead_letter_originals": 1, "save_processed": 1, "commit": 2,
    }  # fmt: skip
    assert result.verified is True
    assert result.mismatches == []


async def test_a_copy_that_wrote_another_count_is_not_verified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, _ = await _replay(monkeypatch, {"INSERT a": "INSERT 0 1", "SELECT c": 2, "p": "COPY 0"})

    assert result.verified is False
    assert result.mismatches == ["batch 1 save_processed: captured 'COPY 1', replayed 'COPY 0'"]


async def test_a_replay_that_touched_other_rows_is_not_verified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, _ = await _replay(monkeypatch, {"INSERT a": "INSERT 0 0", "SELECT c": 2})

    assert result.verified is False
    assert result.mismatches[0] == (
        "batch 1 claim_positions: captured 'INSERT 0 1', replayed 'INSERT 0 0'"
    )


# -- the figures --------------------------------------------------------------------------


def _figures() -> dict[str, Any]:
    result = Replay(
        batches=40,
        records=20_000,
        seconds=2.0,
        statement_seconds={"save_outbox": 1.5, "commit": 0.5},
        statement_calls={"save_outbox": 40, "commit": 40},
        cpu=(
            CpuSample(10.0, {"postgres": 1.0, "driver": 5.0}),
            CpuSample(12.0, {"postgres": 2.6, "driver": 5.4}),
        ),
        wal_bytes=50_000_000,
        verified=True,
        prepared_statements=11,
    )
    captured = Capture([], seconds=8.0, records=20_000)
    return sql_figures(result, captured=captured, batch_max_records=500)


def test_the_limits_figures() -> None:
    figures = _figures()

    assert figures["commands_per_second"] == 10_000.0
    assert (figures["commands"], figures["batches"], figures["seconds"]) == (20_000, 40, 2.0)
    assert figures["ms_per_batch"] == 50.0
    assert figures["round_trips_per_batch"] == 2.0
    assert figures["cpu_us_per_command"] == {"postgres": 80.0, "driver": 20.0, "all": 100.0}
    assert figures["cpu"]["processes"]["postgres"]["cores"] == 0.8
    assert figures["wal_bytes_per_command"] == 2500.0
    assert list(figures["statements"]) == ["save_outbox", "commit"]  # largest first
    assert figures["statements"]["save_outbox"] == {
        "calls": 40, "seconds": 1.5, "ms_per_call": 37.5, "share": 0.75,
    }  # fmt: skip
    assert figures["capture"] == {"seconds": 8.0, "processor_commands_per_second": 2500.0}
    assert figures["verified"] is True


def _round(rate: float, postgres: float, *, verified: bool = True) -> dict[str, Any]:
    return {
        **_figures(),
        "commands_per_second": rate,
        "cpu_us_per_command": {"postgres": postgres, "driver": 20.0, "all": postgres + 20},
        "verified": verified,
        "mismatches": [] if verified else ["batch 1 x: captured 1, replayed 0"],
    }


def test_rounds_combine_into_their_median_with_the_range() -> None:
    rounds = [_round(8000.0, 90.0), _round(5000.0, 120.0), _round(10000.0, 70.0)]

    combined = combined_figures(rounds)

    assert combined["commands_per_second"] == 8000.0
    assert combined["cpu_us_per_command"]["postgres"] == 90.0  # the median round's
    assert combined["spread"]["commands_per_second"] == {
        "median": 8000.0, "min": 5000.0, "max": 10000.0, "n": 3,
    }  # fmt: skip
    assert combined["spread"]["cpu_us_per_command_postgres"]["max"] == 120.0
    assert [r["commands_per_second"] for r in combined["rounds"]] == [8000.0, 5000.0, 10000.0]
    assert combined["verified"] is True
    even = combined_figures([_round(4000.0, 1.0), _round(6000.0, 2.0, verified=False)])
    assert even["commands_per_second"] == 5000.0
    assert even["cpu_us_per_command"]["postgres"] == 1.0  # the slower middle round
    assert even["verified"] is False
    assert even["mismatches"] == ["batch 1 x: captured 1, replayed 0"]
    with pytest.raises(ValueError, match="no rounds"):
        combined_figures([])


def test_the_result_has_ours_fraction_of_the_limit() -> None:
    ours = _throughput("ours", 1.0)  # 100 commands in 1 s
    result = build_result(
        parameters={}, machine={}, load={}, ours=ours, naive=None, latency=None, soak=None,
        wall_seconds=1.0, sql_write_set=combined_figures([_figures()]),
    )  # fmt: skip

    assert result["result_version"] == RESULT_VERSION == 6
    block = result["sql_write_set"]
    ours_rate = result["throughput"]["ours_commands_per_second"]
    assert block["ours_fraction_of_limit"] == round(ours_rate / 10_000.0, 3)
    assert "SQL write-set limit 10000/s" in summary(result)
    without = build_result(
        parameters={}, machine={}, load={}, ours=ours, naive=None, latency=None, soak=None,
        wall_seconds=1.0,
    )  # fmt: skip
    assert without["sql_write_set"] is None
    assert "SQL write-set" not in summary(without)
