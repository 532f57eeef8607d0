"""Which of asyncpg's errors the PostgreSQL adapter reports as worth retrying, as a claim
conflict, or as permanent."""

from __future__ import annotations

import asyncpg
import pytest

from service.adapters.postgres.errors import translated
from service.application.errors import ClaimConflictError, TransientError


def raised_through(error: BaseException) -> BaseException:
    """What comes out of ``translated()`` when ``error`` is raised inside it."""
    try:
        with translated():
            raise error
    except BaseException as exc:
        return exc
    raise AssertionError("translated() swallowed the error")


def test_a_unique_violation_is_a_claim_conflict() -> None:
    error = asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
    translated_error = raised_through(error)
    assert isinstance(translated_error, ClaimConflictError)
    assert translated_error.__cause__ is error
    assert "duplicate key" in str(translated_error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.InternalClientError("caught half-way"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.InterfaceError("another operation is in progress"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.LockNotAvailableError("lock timeout"),
        asyncpg.exceptions.QueryCanceledError("statement timeout"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.IdleInTransactionSessionTimeoutError("idle in transaction"),
        TimeoutError("command timeout"),
        ConnectionResetError("reset by peer"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_error_a_new_try_may_cure_is_transient(error: Exception) -> None:
    translated_error = raised_through(error)
    assert isinstance(translated_error, TransientError)
    assert translated_error.__cause__ is error
    assert str(translated_error).startswith(type(error).__name__)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CheckViolationError("violates check constraint"),
        asyncpg.exceptions.UndefinedTableError("relation does not exist"),
        asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
        ValueError("not asyncpg's"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_any_other_error_goes_through_as_permanent(error: Exception) -> None:
    assert raised_through(error) is error
