"""Retries with capped exponential backoff and full jitter (tenacity), interruptible by
shutdown so that a worker waiting out an outage still stops promptly on SIGTERM.

A backoff already running when shutdown begins ends at once; later ones run in full, so
work that must finish during shutdown (the relay's drain) never retries in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential


def retrying(
    *,
    on: tuple[type[BaseException], ...],
    initial_delay: float,
    max_delay: float,
    stopping: asyncio.Event,
    before_sleep: Callable[[RetryCallState], None],
    give_up: Callable[[], bool] = lambda: False,
) -> AsyncRetrying:
    """Retry on the exception types ``on`` until ``give_up()`` is true (then the last error
    propagates); anything else propagates at once."""

    async def sleep(seconds: float) -> None:
        if stopping.is_set():
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    return AsyncRetrying(
        retry=retry_if_exception_type(on),
        stop=lambda _: give_up(),
        # Full jitter: uniform over a window of initial_delay, doubled per attempt up to
        # max_delay. (wait_exponential_jitter would add up to a whole second to every
        # wait, whatever initial_delay says.)
        wait=wait_random_exponential(multiplier=initial_delay, max=max_delay),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
