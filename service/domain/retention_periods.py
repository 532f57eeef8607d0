"""Which tables of idempotency rows to make and which to drop, as pure date arithmetic.

The rows are kept in one table per period of ``width`` days (see the adapter's
``retention.py``). A period is dropped once its last day is the retention old, so that
rows are kept for the retention and at most one period more. Periods are counted from
the first day of the calendar, a Monday, so that every worker computes the same ones and
a width of 7 makes weeks from Monday.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass

_NAME = re.compile(r"processed_commands_(\d{8})_(\d{8})")


@dataclass(frozen=True, order=True, slots=True)
class Period:
    """The days ``start`` up to, not including, ``end``."""

    start: datetime.date
    end: datetime.date

    @property
    def table(self) -> str:
        return f"processed_commands_{self.start:%Y%m%d}_{self.end:%Y%m%d}"

    def holds(self, day: datetime.date) -> bool:
        return self.start <= day < self.end

    @classmethod
    def from_table(cls, name: str) -> Period | None:
        """The period a table of that name holds; None for a table that is not one."""
        match = _NAME.fullmatch(name)
        if match is None:
            return None
        try:
            start, end = (
                datetime.datetime.strptime(part, "%Y%m%d").date() for part in match.groups()
            )
        except ValueError:  # digits that are no date, as in a table made by hand
            return None
        return cls(start, end) if start < end else None


def period_of(day: datetime.date, width: int) -> Period:
    first = (day.toordinal() - 1) // width * width + 1
    start = datetime.date.fromordinal(first)
    return Period(start, start + datetime.timedelta(days=width))


def periods_to_make(
    existing: Iterable[Period], today: datetime.date, *, width: int, days_ahead: int
) -> list[Period]:
    """The periods to make so that today and the next ``days_ahead`` days each have one.

    A new period is cut short where an existing one begins or ends, so that a width
    changed between runs never makes two tables claim one day."""
    have = sorted(existing)
    made: list[Period] = []
    for offset in range(days_ahead + 1):
        day = today + datetime.timedelta(days=offset)
        if any(period.holds(day) for period in (*have, *made)):
            continue
        wanted = period_of(day, width)
        taken = [*have, *made]
        start = max([wanted.start, *(p.end for p in taken if p.end <= day)])
        end = min([wanted.end, *(p.start for p in taken if p.start > day)])
        made.append(Period(start, end))
    return made


def periods_to_drop(
    existing: Iterable[Period], today: datetime.date, *, retention_days: int
) -> list[Period]:
    """The periods whose every row is at least ``retention_days`` old at the start of today."""
    oldest_kept = oldest_day_kept(today, retention_days)
    return sorted(period for period in existing if period.end <= oldest_kept)


def oldest_day_kept(today: datetime.date, retention_days: int) -> datetime.date:
    return today - datetime.timedelta(days=retention_days)
