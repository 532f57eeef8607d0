"""What came out for each command: read from the event, rejection and dead-letter topics.

Events and rejections name their command in ``causationid``; a dead letter carries the
poison record's ``bench-index`` header (its value is not JSON). Every command of a run
should get exactly one output, so counting them shows both that the worker processed
every command and whether any was published twice.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from bench.load import INDEX_HEADER, Outcome, index_of
from service.domain import binary_mode

OUTCOMES: tuple[Outcome, ...] = ("applied", "rejected", "dead_lettered")
_CODE: dict[Outcome, int] = {outcome: code for code, outcome in enumerate(OUTCOMES, start=1)}


@dataclass(frozen=True, slots=True)
class Output:
    """One output record: the command it answers (None if not one of ours), the outcome
    its topic stands for and, for an event, the customer's version after the update."""

    index: int | None
    outcome: Outcome
    sequence: int = 0
    #: The event's ``time`` (epoch seconds): when the worker decided its batch, just
    #: before the batch's statements and commit; 0 for a dead letter.
    decided_at: float = 0.0


def parse_output(
    outcome: Outcome,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    *,
    prefix: str,
) -> Output:
    if outcome == "dead_lettered":
        for name, header in headers:
            if name == INDEX_HEADER:
                try:
                    return Output(int(header), outcome)
                except ValueError:
                    break
        return Output(None, outcome)
    try:
        # Workers given EVENT_CONTENT_MODE=binary publish the envelope in headers.
        document = orjson.loads(binary_mode.as_structured(value, tuple(headers)) or b"")
    except ValueError:
        return Output(None, outcome)
    if not isinstance(document, dict):
        return Output(None, outcome)
    causation = document.get("causationid")
    index = index_of(causation, prefix) if isinstance(causation, str) else None
    sequence = document.get("sequence")
    number = int(sequence) if isinstance(sequence, str) and sequence.isdigit() else 0
    return Output(index, outcome, number, _epoch(document.get("time")))


def _epoch(time: object) -> float:
    if not isinstance(time, str):
        return 0.0
    try:
        return datetime.fromisoformat(time).timestamp()
    except ValueError:
        return 0.0


class OutcomeLog:
    """Per command of one run: its outcome, its event's sequence and when it arrived."""

    def __init__(self, count: int, prefix: str) -> None:
        self.count = count
        self.prefix = prefix
        self.outcomes = bytearray(count)
        self.sequences = array("q", bytes(8 * count))
        self.received_at = array("d", bytes(8 * count))
        self.decided_at = array("d", bytes(8 * count))
        self.seen = 0
        #: Outputs for a command that already had one: published twice.
        self.duplicates = 0
        #: Outputs that name no command of this run.
        self.foreign = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, output: Output, at: float) -> None:
        index = output.index
        if index is None or not 0 <= index < self.count:
            self.foreign += 1
            return
        if self.outcomes[index]:
            self.duplicates += 1
            return
        self.outcomes[index] = _CODE[output.outcome]
        self.sequences[index] = output.sequence
        self.received_at[index] = at
        self.decided_at[index] = output.decided_at
        self.seen += 1
        if self.first_at is None:
            self.first_at = at
        self.last_at = at

    @property
    def complete(self) -> bool:
        return self.seen >= self.count

    @property
    def missing(self) -> int:
        return self.count - self.seen

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {outcome: 0 for outcome in OUTCOMES}
        for code in self.outcomes:
            if code:
                found[OUTCOMES[code - 1]] += 1
        return found

    def outcome_of(self, index: int) -> Outcome | None:
        code = self.outcomes[index]
        return OUTCOMES[code - 1] if code else None

    def mismatches(self, other: OutcomeLog) -> int:
        """Commands whose outcome or event sequence differs between two runs of the
        same load, among those ``other`` answered (a run stopped at its time limit
        answered a prefix of each partition)."""
        if other.count != self.count:
            raise ValueError("the runs have different loads")
        return sum(
            1
            for index in range(self.count)
            if other.outcomes[index]
            and (
                self.outcomes[index] != other.outcomes[index]
                or self.sequences[index] != other.sequences[index]
            )
        )

    def split_ms(
        self, sent_at: Sequence[float], *, since: float = 0.0
    ) -> tuple[list[float], list[float]]:
        """For each answered event or rejection sent at or after ``since``: due to
        decided (poll, classify, fold), and decided to visible (statements, commit, the
        relay's Kafka transaction, the reader's fetch)."""
        decided, visible = [], []
        for index in range(min(self.count, len(sent_at))):
            at = self.decided_at[index]
            if self.outcomes[index] and at and sent_at[index] >= since:
                decided.append((at - sent_at[index]) * 1000)
                visible.append((self.received_at[index] - at) * 1000)
        return decided, visible

    def latencies_ms(self, sent_at: Sequence[float], *, since: float = 0.0) -> list[float]:
        """Latency of each answered command sent at or after ``since`` (epoch seconds)."""
        return [
            (self.received_at[index] - sent_at[index]) * 1000
            for index in range(min(self.count, len(sent_at)))
            if self.outcomes[index] and sent_at[index] >= since
        ]
