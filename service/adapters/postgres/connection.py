"""How to reach PostgreSQL: the URL with the TLS settings in it, the password apart, and a
refusal no retry cures told apart from a server that is away.

asyncpg reads ``sslmode``, ``sslrootcert``, ``sslcert`` and ``sslkey`` from the URL with
libpq's meaning; the settings are written into it, so every connection the service
opens (the pool, the relay's leader session, the CLI's) gets the same TLS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
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
)

#: What asyncpg says when the server answers TLS with "no": ``ssl = off``, or a pooler
#: without TLS in front. A ConnectionError like a reset, but the same at every attempt.
_NO_TLS = "rejected SSL upgrade"


@dataclass(frozen=True)
class Database:
    """The URL (TLS included) and where the password kept out of it comes from."""

    url: str
    #: Called for each new connection (asyncpg does), so a rotated password file is read.
    password: Callable[[], str | None] = lambda: None

    @property
    def endpoint(self) -> str:
        """Where the URL points, without credentials: for messages. Never raises (a
        multi-host or socket URL has no single host:port to parse)."""
        parts = urlsplit(self.url)
        where = parts.netloc.rpartition("@")[2] or dict(parse_qsl(parts.query)).get("host", "")
        return f"{where or 'localhost'}{parts.path}"

    def options(self) -> dict[str, Any]:
        """asyncpg's ``dsn`` and, when the password is kept apart, ``password``."""
        options: dict[str, Any] = {"dsn": self.url}
        if self.password() is not None:
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
    return Database(url, functools.partial(settings.secret, "database_password"))


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
    except asyncpg.ClientConfigurationError as exc:
        # A TLS setting asyncpg cannot use (a root certificate file it cannot read).
        raise AccessRefusedError(
            f"cannot connect to PostgreSQL at {target.endpoint}: {exc}"
        ) from exc
    except OSError as exc:
        reason = tls.refusal(exc)
        if reason is None and _NO_TLS in str(exc):
            reason = "the server does not offer TLS, and DATABASE_SSLMODE requires it"
        if reason is None:
            raise
        raise AccessRefusedError(
            f"TLS with PostgreSQL at {target.endpoint} failed: {reason}"
        ) from exc
