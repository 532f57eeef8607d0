"""Which of asyncpg's errors a retry may cure, as ``application.errors``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from service.application.errors import ClaimConflictError, TransientError

#: Errors after which the same work may succeed if tried again: the connection or the
#: server went away, or the transaction lost a conflict. Anything else is permanent.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    # Raised client-side when a connection is unusable (closed under us, or left busy by
    # an interrupted operation); a fresh connection is the cure.
    asyncpg.InterfaceError,
    # Raised for a statement caught half-way when the session ended under it (a worker
    # waking from a freeze past the idle-in-transaction timeout).
    asyncpg.exceptions.InternalClientError,
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


@contextmanager
def translated() -> Iterator[None]:
    """Raise asyncpg's curable errors as ``TransientError`` and a unique violation as
    ``ClaimConflictError``; let every other error through as it is."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise ClaimConflictError(str(exc)) from exc
    except TRANSIENT_ERRORS as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
