"""Which idempotency tables to make and drop: every day ahead is held by exactly one
table, a table is dropped only once every row in it is the retention old."""

from __future__ import annotations

import datetime
import itertools

from hypothesis import given
from hypothesis import strategies as st

from service.domain.retention_periods import (
    Period,
    period_of,
    periods_to_drop,
    periods_to_make,
)

MONDAY = datetime.date(2026, 11, 30)


def day(n: int) -> datetime.date:
    return MONDAY + datetime.timedelta(days=n)


def test_a_week_wide_period_runs_monday_to_monday() -> None:
    assert period_of(day(3), 7) == Period(MONDAY, day(7))
    assert period_of(day(7), 7) == Period(day(7), day(14))
    assert period_of(day(3), 1) == Period(day(3), day(4))


def test_the_table_name_says_the_period_and_reads_back() -> None:
    period = Period(MONDAY, day(7))

    assert period.table == "processed_commands_20261130_20261207"
    assert Period.from_table(period.table) == period
    assert Period.from_table("processed_commands_default") is None
    assert Period.from_table("processed_commands_20261207_20261130") is None


def test_today_and_the_days_ahead_get_the_periods_that_hold_them() -> None:
    assert periods_to_make([], day(6), width=7, days_ahead=2) == [
        Period(MONDAY, day(7)),
        Period(day(7), day(14)),
    ]
    assert periods_to_make([Period(MONDAY, day(7))], day(2), width=7, days_ahead=2) == []


def test_a_changed_width_never_makes_two_tables_claim_a_day() -> None:
    # Daily tables from before, then a week-wide width: the week is cut around them.
    existing = [Period(day(8), day(9)), Period(day(9), day(10))]

    made = periods_to_make(existing, day(7), width=7, days_ahead=5)

    assert made == [Period(day(7), day(8)), Period(day(10), day(14))]


def test_a_period_is_dropped_once_its_last_day_is_the_retention_old() -> None:
    week, next_week = Period(MONDAY, day(7)), Period(day(7), day(14))

    # Sunday's rows (day 6) are 7 days old at the start of day 14 and not before.
    assert periods_to_drop([week, next_week], day(13), retention_days=7) == []
    assert periods_to_drop([week, next_week], day(14), retention_days=7) == [week]


@given(
    width=st.integers(1, 30),
    days_ahead=st.integers(0, 5),
    retention=st.integers(1, 40),
    existing_widths=st.lists(st.integers(1, 10), max_size=6),
    first=st.integers(-20, 20),
    today=st.integers(0, 60),
)
def test_planned_periods_never_overlap_and_nothing_younger_than_the_retention_is_dropped(
    width: int,
    days_ahead: int,
    retention: int,
    existing_widths: list[int],
    first: int,
    today: int,
) -> None:
    existing = []
    start = day(first)
    for length in existing_widths:
        existing.append(Period(start, start + datetime.timedelta(days=length)))
        start = existing[-1].end

    made = periods_to_make(existing, day(today), width=width, days_ahead=days_ahead)
    every = sorted([*existing, *made])

    for earlier, later in itertools.pairwise(every):
        assert earlier.end <= later.start
    for offset in range(days_ahead + 1):
        assert sum(p.holds(day(today + offset)) for p in every) == 1
    for period in made:
        assert period.end - period.start <= datetime.timedelta(days=width)
    dropped = periods_to_drop(every, day(today), retention_days=retention)
    for period in every:
        # Rows of its last day are at least this old at the start of today.
        youngest_age = day(today) - period.end
        due = youngest_age >= datetime.timedelta(days=retention)
        assert (period in dropped) == due, (period, youngest_age)
