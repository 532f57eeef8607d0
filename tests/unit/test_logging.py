"""Logs: one JSON shape for the service and the client libraries, personal data masked."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from service.infrastructure.logging import REDACTED, configure_logging, redact_text


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure_logging("json", "INFO")
    yield capsys
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_the_service_logs_one_json_object_per_line(json_logs: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("service.entrypoints.kafka_consumer").info(
        "command_applied", command_id="c1", partition=2
    )
    [line] = lines(json_logs)
    assert line["event"] == "command_applied"
    assert line["command_id"] == "c1"
    assert line["partition"] == 2
    assert line["level"] == "info"
    assert "timestamp" in line


def test_library_logs_go_through_the_same_pipeline(json_logs: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("asyncpg.pool").warning("connection to %s lost", "db")
    logging.getLogger("aiokafka.consumer").warning("rebalancing")
    first, second = lines(json_logs)
    assert first == {
        **first,
        "event": "connection to db lost",
        "logger": "asyncpg.pool",
        "level": "warning",
    }
    assert second["logger"] == "aiokafka.consumer"


def test_email_and_phone_fields_are_masked(json_logs: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger().info("x", email="ada@example.com", phone="+39 06 1234 5678", name="Ada")
    [line] = lines(json_logs)
    assert line["email"] == REDACTED
    assert line["phone"] == REDACTED
    assert line["name"] == "Ada"


def test_addresses_inside_free_text_are_masked(json_logs: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger().warning(
        "record_failed", error="Key (email)=(ada@example.com) clashes; call +1 (555) 123-4567"
    )
    logging.getLogger("asyncpg").error("rejected ada@example.com")
    structured, foreign = lines(json_logs)
    assert "ada@example.com" not in str(structured)
    assert "555" not in str(structured["error"])
    assert "ada@example.com" not in str(foreign)


def test_ids_and_numbers_in_structured_fields_stay_readable(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    structlog.get_logger().info("command_applied", command_id="cmd-20261126-0001", offset=123456789)
    [line] = lines(json_logs)
    assert line["command_id"] == "cmd-20261126-0001"
    assert line["offset"] == 123456789


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ada.king+x@mail.example.org now", f"write to {REDACTED} now"),
        ("tel +44 20 7946 0958", f"tel {REDACTED}"),
        ("version 12 of 3", "version 12 of 3"),
        # A server's address is what an operator needs to read in a connection error.
        ('Unable connect to "127.0.0.1:9093"', 'Unable connect to "127.0.0.1:9093"'),
        ("call 555.123.4567 or 127.0.0.2", f"call {REDACTED} or 127.0.0.2"),
        # Dotted like an address, but no address: 456 and 333 are no octets, 02 has a zero.
        ("call 02.123.456.78 now", f"call {REDACTED} now"),
        ("or 333.123.456.7", f"or {REDACTED}"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_debug_lines_are_dropped_at_info(json_logs: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger().debug("noise")
    assert lines(json_logs) == []
