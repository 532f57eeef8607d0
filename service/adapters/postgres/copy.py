"""Binary COPY into a table, bounded by the connection's command timeout.

asyncpg sends a COPY in chunks of 512 KiB and, between chunks, waits for the socket to
drain with no timeout at all (``writing_allowed`` in ``protocol.pyx``, asyncpg 0.30 to
0.32); a connection lost meanwhile does not wake that wait, and cancelled there on a
closed transport it raises ``AttributeError`` in place of the cancellation. A batch whose
outbox rows pass 512 KiB (dead letters of large records) could then hang on a stalled
link until the batch timeout, and come out as an error that looks permanent. An
``INSERT`` is bounded by the command timeout, so a COPY is made to be as well: it runs
under that deadline, and any error once the deadline passed or the connection closed is
a ``TransientError``, after which the batch is rolled back and tried again.

COPY's binary codecs come from the columns' types as asyncpg first saw them on the
connection (a cached statement that is never re-planned). A migration must therefore
never change the type of a column written by COPY (``outbox``, ``processed_commands``)
in place, while workers run: add a column instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from service.application.errors import TransientError


async def copy_rows(
    connection: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> str:
    """``copy_records_to_table``, within the connection's command timeout."""
    # The timeout the pool gave the connection; asyncpg keeps it in its private config.
    config = getattr(connection, "_config", None)
    timeout: float | None = getattr(config, "command_timeout", None)
    try:
        async with asyncio.timeout(timeout) as deadline:
            status: str = await connection.copy_records_to_table(
                table, records=rows, columns=columns
            )
    except TimeoutError as exc:
        raise TransientError(f"COPY into {table} took longer than {timeout}s") from exc
    except Exception as exc:
        closed = getattr(connection, "is_closed", lambda: False)()
        if deadline.expired() or closed:
            raise TransientError(
                f"COPY into {table} failed on a lost connection: {type(exc).__name__}"
            ) from exc
        raise
    return status
