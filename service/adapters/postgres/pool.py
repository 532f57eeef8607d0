"""The asyncpg pool, and which of asyncpg's errors a retry may cure."""

from __future__ import annotations

import asyncpg

#: Errors after which the same work may succeed if tried again: the connection or the
#: server went away, or the transaction lost a conflict. Anything else is permanent.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    # Raised client-side when a connection is unusable (closed under us, or left busy by
    # an interrupted operation); a fresh connection is the cure.
    asyncpg.InterfaceError,
    # Raised for a statement caught half-way when the session ended under it (a worker
    # waking from a freeze past the idle-in-transaction timeout).
    asyncpg.exceptions._base.InternalClientError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.LockNotAvailableError,
    # The server ends a session that sits idle inside a transaction (see create_pool); a
    # statement sent just as it does gets this, a later one finds the connection closed.
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    OSError,
    TimeoutError,
)


async def create_pool(
    url: str, *, size: int, command_timeout: float, idle_in_transaction_timeout: float
) -> asyncpg.Pool:
    """``idle_in_transaction_timeout`` bounds how long a stalled client (a frozen process,
    a paused VM) can keep a batch transaction, and the row locks its successor needs,
    open: PostgreSQL ends such a session, and the worker retries on a new one."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        command_timeout=command_timeout,
        server_settings={
            "idle_in_transaction_session_timeout": str(round(idle_in_transaction_timeout * 1000))
        },
    )
    return pool
