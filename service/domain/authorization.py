"""Who may update customers: the principal a command acts for must hold
``pay:customers:update``.

Two modes, chosen by configuration:

* unsigned (no verification key): the command's ``principal`` and ``permissions``
  attributes are trusted as sent. Use it only where every producer is trusted, since
  any producer can claim any permission.
* signed (a verification key is configured): the command must carry ``authtoken``, a
  JWT verified with that key. Its ``sub`` claim is the principal and its ``permissions``
  claim (a list) or ``scope`` claim (space-separated) must hold the action. The
  ``principal`` and ``permissions`` attributes are then ignored. Its times (``exp``, and
  ``nbf`` and ``iat`` when present) are read against the clock it is given, not the wall
  clock, so the check is as pure as the rest of the domain.

Space-separated means ASCII space only (RFC 6749 section 3.3, ``scope-token`` lists are
joined by %x20): ``str.split()`` would also split on a no-break space or an em space, so
one token that merely looks like two would grant the action.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

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
        clock: Callable[[], datetime],
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._key = key
        self._clock = clock
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
                # PyJWT reads the wall clock for these; _too_early_or_late reads ours.
                options={
                    "require": ["sub", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            _too_early_or_late(claims, self._clock().timestamp())
        except jwt.PyJWTError as exc:
            return _denied("authtoken", f"The authtoken is not valid: {exc}")
        subject = claims["sub"]
        if AUTHORIZATION_ACTION not in _permissions(claims):
            return _denied(
                "authtoken", f"Principal '{subject}' lacks the permission {AUTHORIZATION_ACTION}"
            )
        return Principal(str(subject))


def _too_early_or_late(claims: dict[str, object], now: float) -> None:
    """PyJWT's own time rules (a claim is read with ``int()``; no leeway), against ``now``.

    Raises the error PyJWT would, so a refusal reads the same as before the clock was
    injected."""
    # In PyJWT's order, so a token wrong in two ways is refused for the same one.
    iat = _whole_seconds(claims, "iat", "Issued At claim (iat)", jwt.InvalidIssuedAtError)
    if iat is not None and iat > now:
        raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    nbf = _whole_seconds(claims, "nbf", "Not Before claim (nbf)", jwt.DecodeError)
    if nbf is not None and nbf > now:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    exp = _whole_seconds(claims, "exp", "Expiration Time claim (exp)", jwt.DecodeError)
    if exp is not None and exp <= now:
        raise jwt.ExpiredSignatureError("Signature has expired")


def _whole_seconds(
    claims: dict[str, object], name: str, title: str, error: type[jwt.PyJWTError]
) -> int | None:
    if name not in claims:
        return None
    value: Any = claims[name]
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        raise error(f"{title} must be an integer.") from None


def _permissions(claims: dict[str, object]) -> set[str]:
    listed = claims.get("permissions")
    if isinstance(listed, list):
        return {item for item in listed if isinstance(item, str)}
    scope = claims.get("scope")
    return space_separated(scope) if isinstance(scope, str) else set()


def space_separated(tokens: str) -> set[str]:
    """The tokens of a space-separated list; only U+0020 separates them."""
    return {token for token in tokens.split(" ") if token}
