"""Prometheus metrics of one worker process, in a registry of its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.domain.batch import Decision

RelayState = Literal["starting", "standby", "leading"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Every metric the service exports. Created once per process by the wiring."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands_consumed = Counter(
            "customer_commands_consumed",
            "Records consumed from the command topic (first processing only).",
            registry=self.registry,
        )
        self.command_outcomes = Counter(
            "customer_command_outcomes",
            "Commands by outcome: applied, rejected, duplicate or dead_lettered.",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "customer_batch_processing_seconds",
            "Time to process one polled batch, database commit included.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "customer_batch_records",
            "Records per processed batch.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "customer_command_lag_seconds",
            "From a command's record timestamp to the commit of its effects.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "customer_consumer_lag_records",
            "Records not yet processed, per assigned partition of the command topic.",
            ["partition"],
            registry=self.registry,
        )
        self.retries = Counter(
            "customer_retries",
            "Retries after transient failures, by component.",
            ["component"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "customer_outbox_backlog",
            "Messages in the outbox waiting to be published (parked ones not counted).",
            registry=self.registry,
        )
        self.outbox_oldest = Gauge(
            "customer_outbox_oldest_seconds",
            "Age of the oldest outbox message that is not parked; 0 when there is none.",
            registry=self.registry,
        )
        self.outbox_parked = Gauge(
            "customer_outbox_parked",
            "Outbox messages Kafka refused for good, by topic and key (the customer); "
            "later messages of that topic and key wait behind them.",
            ["topic", "key"],
            registry=self.registry,
        )
        self.published = Counter(
            "customer_events_published",
            "Messages the relay published, by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "customer_ready",
            "1 when the process is ready (what /readyz would answer), 0 when it is not; "
            "measured at each scrape.",
            registry=self.registry,
        )
        # No child until a relay runs: a process without one has no relay state.
        self.relay_state = Gauge(
            "customer_relay_state",
            "1 for the relay's current state (starting, standby or leading), 0 for the "
            "others; only in processes that run the relay.",
            ["state"],
            registry=self.registry,
        )
        # Children looked up once: labels() per command shows up in profiles.
        self._outcomes = {
            outcome: self.command_outcomes.labels(outcome)
            for outcome in ("applied", "rejected", "duplicate", "dead_lettered")
        }
        for component in ("worker", "relay"):
            self.retries.labels(component)

    def record_batch(self, decisions: Iterable[Decision], *, seconds: float, now_ms: float) -> None:
        counts = dict.fromkeys(self._outcomes, 0)
        observe = self.end_to_end_seconds.observe
        for decision in decisions:
            counts[decision.outcome] += 1
            observe(max(0.0, (now_ms - decision.record.timestamp) / 1000))
        for outcome, count in counts.items():
            if count:
                self._outcomes[outcome].inc(count)
        count = sum(counts.values())
        self.commands_consumed.inc(count)
        self.batch_seconds.observe(seconds)
        self.batch_size.observe(count)

    def relay_in(self, state: RelayState) -> None:
        for each in get_args(RelayState):
            self.relay_state.labels(each).set(1.0 if each == state else 0.0)
