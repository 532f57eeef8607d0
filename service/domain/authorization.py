"""Who may update customers: the principal a command acts for must hold
``pay:customers:update``.

Two modes, chosen by configuration:

* unsigned (no verification key): the command's ``principal`` and ``permissions``
  attributes are trusted as sent. Use it only where every producer is trusted, since
  any producer can claim any permission.
* signed (a verification key is configured): the command must carry ``authtoken``, a
  JWT verified with that key. Its ``sub`` claim is the principal and its ``permissions``
  claim (a list) or ``scope`` claim (space-separated) must hold the action. The
  ``principal`` and ``permissions`` attributes are then ignored.

Space-separated means ASCII space only (RFC 6749 section 3.3, ``scope-token`` lists are
joined by %x20): ``str.split()`` would also split on a no-break space or an em space, so
one token that merely looks like two would grant the action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import jwt

from schemas.command import AUTHORIZATION_ACTION, CustomerUpdateCommand
from schemas.errors import ErrorObject, invalid


@dataclass(frozen=True, slots=True)
class Principal:
    id: str


class Authorizer(Protocol):
    def authorize(self, command: CustomerUpdateCommand) -> Principal | ErrorObject:
        """The principal the command acts for, or why it may not act."""
        ...


def _denied(param: str, message: str) -> ErrorObject:
    return invalid("permission_denied", param, message)


class UnsignedAuthorizer:
    """Trusts the ``principal`` and ``permissions`` attributes of the command."""

    def authorize(self, command: CustomerUpdateCommand) -> Principal | ErrorObject:
        if command.principal is None:
            return _denied("principal", "The command names no principal to act for")
        if AUTHORIZATION_ACTION not in space_separated(command.permissions or ""):
            return _denied(
                "permissions",
                f"Principal '{command.principal}' lacks the permission {AUTHORIZATION_ACTION}",
            )
        return Principal(command.principal)


class JwtAuthorizer:
    """Verifies ``authtoken`` with a key and reads the principal and permissions from it."""

    def __init__(
        self,
        key: str,
        *,
        algorithms: Sequence[str],
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._key = key
        self._algorithms = list(algorithms)
        self._audience = audience
        self._issuer = issuer

    def authorize(self, command: CustomerUpdateCommand) -> Principal | ErrorObject:
        if command.authtoken is None:
            return _denied("authtoken", "The command carries no authtoken")
        try:
            claims = jwt.decode(
                command.authtoken,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub", "exp"]},
            )
        except jwt.PyJWTError as exc:
            return _denied("authtoken", f"The authtoken is not valid: {exc}")
        subject = claims["sub"]
        if AUTHORIZATION_ACTION not in _permissions(claims):
            return _denied(
                "authtoken", f"Principal '{subject}' lacks the permission {AUTHORIZATION_ACTION}"
            )
        return Principal(str(subject))


def _permissions(claims: dict[str, object]) -> set[str]:
    listed = claims.get("permissions")
    if isinstance(listed, list):
        return {item for item in listed if isinstance(item, str)}
    scope = claims.get("scope")
    return space_separated(scope) if isinstance(scope, str) else set()


def space_separated(tokens: str) -> set[str]:
    """The tokens of a space-separated list; only U+0020 separates them."""
    return {token for token in tokens.split(" ") if token}
