"""Retries with capped exponential backoff and full jitter (tenacity), interruptible by
shutdown so that a worker waiting out an outage still stops promptly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter


def retrying(
    *,
    on: tuple[type[BaseException], ...],
    initial_delay: float,
    max_delay: float,
    stopping: asyncio.Event,
    before_sleep: Callable[[RetryCallState], None],
) -> AsyncRetrying:
    """Retry forever on the exception types ``on``; anything else propagates at once."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    return AsyncRetrying(
        retry=retry_if_exception_type(on),
        wait=wait_exponential_jitter(multiplier=initial_delay, max=max_delay),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
