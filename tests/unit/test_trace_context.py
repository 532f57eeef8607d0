"""W3C trace context: from a command (attribute or header) to its event and log line."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from schemas.errors import from_validation_error
from service.domain.authorization import UnsignedAuthorizer
from service.domain.batch import Decision
from service.domain.inbound import Invalid, Limits, Valid, classify
from service.entrypoints.kafka_consumer import log_outcomes
from service.infrastructure.tracing import OpenTelemetryTracing, PassThrough
from tests.unit.builders import command_document, record

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def classify_with(
    document: dict[str, object], headers: tuple[tuple[str, bytes], ...] = ()
) -> object:
    return classify(record(orjson.dumps(document), headers=headers), Limits(), UnsignedAuthorizer())


def test_the_traceparent_attribute_wins_over_the_record_header() -> None:
    item = classify_with(command_document(traceparent=PARENT), (("traceparent", OTHER.encode()),))
    assert isinstance(item, Valid)
    assert item.traceparent == PARENT


def test_the_record_header_is_used_when_the_command_has_no_attribute() -> None:
    item = classify_with(command_document(), (("traceparent", PARENT.encode()),))
    assert isinstance(item, Valid)
    assert item.traceparent == PARENT


def test_an_invalid_traceparent_header_is_ignored() -> None:
    item = classify_with(command_document(), (("traceparent", b"00-nothex-01"),))
    assert isinstance(item, Valid)
    assert item.traceparent is None


@pytest.mark.parametrize(
    "value", ["00-abc-def-01", f"ff-{TRACE_ID}-00f067aa0ba902b7-01", PARENT.upper(), 42]
)
def test_an_invalid_traceparent_attribute_is_refused(value: object) -> None:
    item = classify_with(command_document(traceparent=value))
    assert isinstance(item, Invalid)
    assert (item.error.code, item.error.param) == ("parameter_invalid", "traceparent")


def test_a_rejection_keeps_the_trace_context_of_its_command() -> None:
    item = classify_with(command_document({"nickname": "x"}, traceparent=PARENT))
    assert isinstance(item, Invalid)
    assert item.traceparent == PARENT


def test_without_tracing_the_event_carries_the_commands_context() -> None:
    assert PassThrough().command_span(PARENT, name="n", attributes={}, start_ns=0) == PARENT
    assert PassThrough().command_span(None, name="n", attributes={}, start_ns=0) is None


def test_with_tracing_each_command_gets_a_child_span_whose_context_the_event_carries() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OpenTelemetryTracing(provider)

    carried = tracing.command_span(
        PARENT, name="customer.update process", attributes={"customer.id": "cus_1"}, start_ns=1
    )

    [span] = exporter.get_finished_spans()
    assert carried is not None
    assert carried.split("-")[1] == TRACE_ID
    assert carried.split("-")[2] == format(span.context.span_id, "016x")
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes is not None
    assert span.attributes["customer.id"] == "cus_1"
    provider.shutdown()


def test_the_outcome_log_line_names_the_trace() -> None:
    decision = Decision(record(b"{}"), "rejected", customer_id="cus_1", traceparent=PARENT)
    with capture_logs() as logs:
        log_outcomes([decision], duration_ms=1.0)
    assert logs[0]["trace_id"] == TRACE_ID
    assert logs[0]["outcome"] == "rejected"


def test_the_error_names_traceparent() -> None:
    from pydantic import ValidationError

    from schemas.command import CustomerUpdateCommand

    with pytest.raises(ValidationError) as raised:
        CustomerUpdateCommand.model_validate(command_document(traceparent="nope"))
    assert "W3C traceparent" in from_validation_error(raised.value).message
