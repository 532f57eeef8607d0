"""How to reach PostgreSQL: the URL with the TLS settings in it, the password apart, and a
refusal no retry cures told apart from a server that is away.

asyncpg reads ``sslmode``, ``sslrootcert``, ``sslcert`` and ``sslkey`` from the URL with
libpq's meaning; the settings are written into it, so every connection the service
opens (the pool, the relay's leader session, the CLI's) gets the same TLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from service.adapters import tls
from service.application.errors import AccessRefusedError
from service.infrastructure.settings import Settings

#: The server's answers to a client it will not let in, whatever the retry.
REFUSED = (
    asyncpg.InvalidPasswordError,
    # No pg_hba.conf line lets this user in from here (or not without TLS), a role that
    # may not log in, an unknown user.
    asyncpg.InvalidAuthorizationSpecificationError,
    # A TLS setting asyncpg cannot use (a root certificate file gone since start).
    asyncpg.ClientConfigurationError,
)


@dataclass(frozen=True)
class Database:
    """The URL (TLS included) and the password kept out of it."""

    url: str
    password: str | None = None

    @property
    def endpoint(self) -> str:
        """host:port/database, without credentials: for messages."""
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}{parts.path}"

    def options(self) -> dict[str, Any]:
        """asyncpg's ``dsn`` and ``password`` (the password only when given apart)."""
        options: dict[str, Any] = {"dsn": self.url}
        if self.password is not None:
            options["password"] = self.password
        return options

    async def connect(self, **options: Any) -> asyncpg.Connection:
        with refused_for_good(self):
            connection: asyncpg.Connection = await asyncpg.connect(**self.options(), **options)
        return connection


def database(settings: Settings) -> Database:
    """The database the settings name, with ``DATABASE_SSLMODE`` and its files written
    into the URL (over the URL's own) and the password from ``DATABASE_PASSWORD``/``_FILE``
    (read now: each new connection sees a rotated file)."""
    parts = urlsplit(settings.database_url.get_secret_value())
    query = dict(parse_qsl(parts.query))
    given = {
        "sslmode": settings.database_sslmode,
        "sslrootcert": settings.database_ssl_root_cert,
        "sslcert": settings.database_ssl_cert,
        "sslkey": settings.database_ssl_key,
    }
    query.update({name: str(value) for name, value in given.items() if value is not None})
    url = urlunsplit(parts._replace(query=urlencode(query)))
    return Database(url, settings.secret("database_password"))


@contextmanager
def refused_for_good(target: Database) -> Iterator[None]:
    """Raise a refusal no retry cures (TLS, password, pg_hba) as ``AccessRefusedError``
    naming the server; let every other error through."""
    try:
        yield
    except REFUSED as exc:
        raise AccessRefusedError(
            f"PostgreSQL at {target.endpoint} refused this client: {exc}"
        ) from exc
    except OSError as exc:
        reason = tls.refusal(exc)
        if reason is None:
            raise
        raise AccessRefusedError(
            f"TLS with PostgreSQL at {target.endpoint} failed: {reason}"
        ) from exc
