"""Trace context from a command to its event and log line, and OpenTelemetry spans when
tracing is switched on.

Off (the default), an event carries its command's ``traceparent`` unchanged. On, each
command gets a span, child of the command's context, exported over OTLP/HTTP; the event
carries that span's context, and asyncpg's queries are traced too. Both implement
``application.ports.Tracing``.
"""

from __future__ import annotations

from service.infrastructure.settings import Settings


class PassThrough:
    """No spans: the event carries the command's own trace context."""

    def command_span(
        self, traceparent: str | None, *, name: str, attributes: dict[str, str], start_ns: int
    ) -> str | None:
        return traceparent

    def shutdown(self) -> None:
        pass


class OpenTelemetryTracing:
    def __init__(self, provider: object) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer("customer-service")  # type: ignore[attr-defined]
        self._propagator = TraceContextTextMapPropagator()

    def command_span(
        self, traceparent: str | None, *, name: str, attributes: dict[str, str], start_ns: int
    ) -> str | None:
        from opentelemetry.trace import SpanKind, set_span_in_context

        parent = self._propagator.extract({"traceparent": traceparent} if traceparent else {})
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, start_time=start_ns
        )
        span.end()
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return carrier.get("traceparent", traceparent)

    def shutdown(self) -> None:
        self._provider.shutdown()  # type: ignore[attr-defined]


def configure_tracing(settings: Settings) -> PassThrough | OpenTelemetryTracing:
    if not settings.tracing_enabled:
        return PassThrough()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.tracing_service_name})
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint))
    )
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return OpenTelemetryTracing(provider)
