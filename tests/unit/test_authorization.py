"""Who may update customers: trusted attributes (unsigned) or a verified JWT (signed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from schemas.command import AUTHORIZATION_ACTION
from schemas.errors import ErrorObject
from service.domain.authorization import JwtAuthorizer, Principal, UnsignedAuthorizer
from tests.unit.builders import command

# 64 bytes each: long enough for HS512 too, so PyJWT raises no InsecureKeyLengthWarning.
SECRET = "unit-test-secret-" + "s" * 47
OTHER_SECRET = "another-secret--" + "o" * 48
#: The authorizer's clock: a moment far from today, so a test that passes only because
#: the wall clock was read instead would fail.
NOW = datetime(2031, 5, 4, 12, 0, tzinfo=UTC)
SIGNED = JwtAuthorizer(SECRET, algorithms=["HS256"], clock=lambda: NOW)


def at(offset_seconds: int) -> int:
    """A JWT time ``offset_seconds`` from the authorizer's clock."""
    return int((NOW + timedelta(seconds=offset_seconds)).timestamp())


def token(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "svc-billing",
        "exp": at(300),
        "permissions": [AUTHORIZATION_ACTION],
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def denied(result: Principal | ErrorObject, param: str) -> ErrorObject:
    assert isinstance(result, ErrorObject), result
    assert (result.type, result.code, result.param) == (
        "invalid_request_error",
        "permission_denied",
        param,
    )
    return result


# Unsigned


def test_unsigned_without_principal_is_denied() -> None:
    error = denied(UnsignedAuthorizer().authorize(command(principal=None)), "principal")
    assert "no principal" in error.message


@pytest.mark.parametrize("permissions", [None, "", "pay:customers:read", "PAY:CUSTOMERS:UPDATE"])
def test_unsigned_without_the_permission_is_denied(permissions: str | None) -> None:
    result = UnsignedAuthorizer().authorize(command(principal="svc-a", permissions=permissions))
    error = denied(result, "permissions")
    assert "'svc-a'" in error.message
    assert AUTHORIZATION_ACTION in error.message


@pytest.mark.parametrize(
    "permissions",
    [
        AUTHORIZATION_ACTION,
        f"pay:customers:read {AUTHORIZATION_ACTION} pay:invoices:write",
        f"pay:customers:read  {AUTHORIZATION_ACTION}",
    ],
)
def test_unsigned_with_the_permission_acts_for_the_principal(permissions: str) -> None:
    result = UnsignedAuthorizer().authorize(command(principal="svc-a", permissions=permissions))
    assert result == Principal("svc-a")


@pytest.mark.parametrize("separator", ["\u00a0", "\u2003", "\t", "\n"])
def test_unsigned_splits_permissions_on_ascii_space_only(separator: str) -> None:
    permissions = f"pay:customers:read{separator}{AUTHORIZATION_ACTION}"
    result = UnsignedAuthorizer().authorize(command(principal="svc-a", permissions=permissions))
    denied(result, "permissions")


@pytest.mark.parametrize("separator", ["\u00a0", "\u2003", "\t"])
def test_a_scope_splits_on_ascii_space_only(separator: str) -> None:
    scope = f"pay:customers:read{separator}{AUTHORIZATION_ACTION}"
    result = SIGNED.authorize(command(authtoken=token(claims(permissions=None, scope=scope))))
    denied(result, "authtoken")


def test_unsigned_does_not_match_the_permission_as_a_substring() -> None:
    result = UnsignedAuthorizer().authorize(
        command(principal="svc-a", permissions=f"{AUTHORIZATION_ACTION}:all")
    )
    denied(result, "permissions")


# Signed


def test_a_valid_token_with_a_permissions_list_acts_for_its_subject() -> None:
    result = SIGNED.authorize(command(authtoken=token(claims())))
    assert result == Principal("svc-billing")


def test_a_valid_token_with_a_scope_string_acts_for_its_subject() -> None:
    scope = f"openid {AUTHORIZATION_ACTION} pay:invoices:read"
    result = SIGNED.authorize(command(authtoken=token(claims(permissions=None, scope=scope))))
    assert result == Principal("svc-billing")


def test_the_token_decides_the_principal_not_the_attributes() -> None:
    result = SIGNED.authorize(
        command(authtoken=token(claims()), principal="svc-claimed", permissions="")
    )
    assert result == Principal("svc-billing")


def test_a_command_without_authtoken_is_denied_even_with_attributes() -> None:
    result = SIGNED.authorize(command(principal="svc-a", permissions=AUTHORIZATION_ACTION))
    error = denied(result, "authtoken")
    assert "no authtoken" in error.message


def test_an_expired_token_is_denied() -> None:
    expired = token(claims(exp=at(-60)))
    error = denied(SIGNED.authorize(command(authtoken=expired)), "authtoken")
    assert "expired" in error.message


def test_times_are_read_against_the_given_clock_not_the_wall_clock() -> None:
    # Valid for five minutes after NOW, which is years from the wall clock.
    assert SIGNED.authorize(command(authtoken=token(claims()))) == Principal("svc-billing")
    wall = int(datetime.now(UTC).timestamp())
    live_today = token(claims(exp=wall + 300, nbf=wall - 60, iat=wall - 60))
    error = denied(SIGNED.authorize(command(authtoken=live_today)), "authtoken")
    assert "expired" in error.message


def test_a_token_expiring_at_the_clocks_second_is_expired() -> None:
    error = denied(SIGNED.authorize(command(authtoken=token(claims(exp=at(0))))), "authtoken")
    assert "expired" in error.message
    assert SIGNED.authorize(command(authtoken=token(claims(exp=at(1))))) == Principal("svc-billing")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_from_the_clocks_future_is_denied(claim: str) -> None:
    early = token(claims(**{claim: at(60)}))
    error = denied(SIGNED.authorize(command(authtoken=early)), "authtoken")
    assert f"not yet valid ({claim})" in error.message
    assert SIGNED.authorize(command(authtoken=token(claims(**{claim: at(0)})))) == Principal(
        "svc-billing"
    )


@pytest.mark.parametrize(
    ("claim", "title"),
    [("exp", "Expiration Time"), ("nbf", "Not Before"), ("iat", "Issued At")],
)
def test_a_time_claim_that_is_not_a_number_is_denied(claim: str, title: str) -> None:
    odd = token(claims(**{claim: "soon"}))
    error = denied(SIGNED.authorize(command(authtoken=odd)), "authtoken")
    assert f"{title} claim ({claim}) must be an integer" in error.message


def test_a_token_both_immature_and_expired_is_refused_as_pyjwt_would() -> None:
    both = token(claims(exp=at(-60), iat=at(60)))
    error = denied(SIGNED.authorize(command(authtoken=both)), "authtoken")
    with pytest.raises(jwt.ImmatureSignatureError) as pyjwt_says:
        jwt.decode(both, SECRET, algorithms=["HS256"], options={"verify_exp": True})
    assert str(pyjwt_says.value) in error.message


def test_a_token_signed_with_another_key_is_denied() -> None:
    forged = token(claims(), key=OTHER_SECRET)
    error = denied(SIGNED.authorize(command(authtoken=forged)), "authtoken")
    assert "not valid" in error.message


def test_a_token_signed_with_another_algorithm_is_denied() -> None:
    other = token(claims(), algorithm="HS512")
    denied(SIGNED.authorize(command(authtoken=other)), "authtoken")


def test_an_unsigned_token_is_denied() -> None:
    unsigned = jwt.encode(claims(), key="", algorithm="none")
    denied(SIGNED.authorize(command(authtoken=unsigned)), "authtoken")


@pytest.mark.parametrize("missing", ["sub", "exp"])
def test_a_token_without_a_required_claim_is_denied(missing: str) -> None:
    incomplete = token(claims(**{missing: None}))
    error = denied(SIGNED.authorize(command(authtoken=incomplete)), "authtoken")
    assert missing in error.message


@pytest.mark.parametrize(
    "grants",
    [
        {"permissions": ["pay:customers:read"]},
        {"permissions": []},
        {"permissions": None},
        {"permissions": None, "scope": "pay:customers:read"},
        {"permissions": AUTHORIZATION_ACTION},
        {"permissions": None, "scope": [AUTHORIZATION_ACTION]},
    ],
    ids=[
        "other-permission",
        "empty-list",
        "no-claim",
        "scope-without-it",
        "permissions-as-string",
        "scope-as-list",
    ],
)
def test_a_token_without_the_permission_is_denied(grants: dict[str, Any]) -> None:
    result = SIGNED.authorize(command(authtoken=token(claims(**grants))))
    error = denied(result, "authtoken")
    assert "'svc-billing' lacks the permission" in error.message


def test_a_garbage_token_is_denied() -> None:
    denied(SIGNED.authorize(command(authtoken="not.a.jwt")), "authtoken")


def test_the_audience_is_checked_when_configured() -> None:
    authorizer = JwtAuthorizer(
        SECRET, algorithms=["HS256"], clock=lambda: NOW, audience="customer-service"
    )
    assert authorizer.authorize(
        command(authtoken=token(claims(aud="customer-service")))
    ) == Principal("svc-billing")
    denied(authorizer.authorize(command(authtoken=token(claims(aud="billing")))), "authtoken")


def test_the_issuer_is_checked_when_configured() -> None:
    authorizer = JwtAuthorizer(
        SECRET, algorithms=["HS256"], clock=lambda: NOW, issuer="https://idp.example"
    )
    assert authorizer.authorize(
        command(authtoken=token(claims(iss="https://idp.example")))
    ) == Principal("svc-billing")
    denied(authorizer.authorize(command(authtoken=token(claims(iss="https://evil")))), "authtoken")
