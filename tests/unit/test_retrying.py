"""The backoff between retries: full jitter over a window that starts at
``initial_delay``, doubles with each attempt and stops growing at ``max_delay``."""

from __future__ import annotations

import asyncio

from tenacity import RetryCallState

from service.infrastructure.retrying import retrying

SAMPLES = 200


def waits(attempt: int, *, initial: float = 0.1, cap: float = 30.0) -> list[float]:
    """``SAMPLES`` backoffs after failed attempt number ``attempt``."""
    policy = retrying(
        on=(ConnectionError,),
        initial_delay=initial,
        max_delay=cap,
        stopping=asyncio.Event(),
        before_sleep=lambda _state: None,
    )
    state = RetryCallState(retry_object=policy, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    assert policy.wait is not None
    return [policy.wait(state) for _ in range(SAMPLES)]


def test_the_first_backoff_is_within_the_initial_delay() -> None:
    # A worker told to retry after 0.1 s must not wait ten times that on the first retry.
    first = waits(1)
    assert all(0 <= wait <= 0.1 for wait in first)
    assert len(set(first)) > SAMPLES // 2, "the backoff is not jittered"


def test_the_window_doubles_with_each_attempt() -> None:
    for attempt in (2, 3, 4, 5):
        window = 0.1 * 2 ** (attempt - 1)
        sampled = waits(attempt)
        assert all(0 <= wait <= window for wait in sampled)
        # Some waits fall in the window's upper half, which the previous window lacks.
        assert max(sampled) > window / 2


def test_no_backoff_exceeds_the_maximum() -> None:
    late = waits(40, cap=2.0)
    assert all(0 <= wait <= 2.0 for wait in late)
    assert max(late) > 1.0
