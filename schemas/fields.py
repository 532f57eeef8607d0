"""Field types of the contract: each carries its own rule and a specific error.

Every rule raises ``PydanticCustomError`` whose type is the public error code, so
``schemas.errors.from_validation_error`` can turn the first failure into the error
object without parsing message text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

import langcodes
import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BeforeValidator, Field, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

# Maximum lengths, in characters. They are part of the contract (README, JSON Schema).
MAX_NAME = 256
MAX_EMAIL = 512
MAX_PHONE = 20
MAX_DESCRIPTION = 5000
MAX_ADDRESS_LINE = 200
MAX_POSTAL_CODE = 20
MAX_LOCALE = 35
MAX_ID = 255
MAX_INVOICE_SEQUENCE = 1_000_000_000

_MULTILINE_ALLOWED = frozenset("\t\n\r")
_BCP47_SHAPE = re.compile(r"[A-Za-z0-9]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_INVOICE_PREFIX = re.compile(r"[A-Z0-9]{3,12}")


def _invalid(message: str, **context: object) -> PydanticCustomError:
    return PydanticCustomError("parameter_invalid", message, dict(context) or None)


def _reject_control_characters(value: str, allowed: frozenset[str]) -> str:
    # NUL cannot be stored by PostgreSQL and other control characters corrupt logs and
    # downstream renderings, so they are refused before anything else sees them.
    for position, char in enumerate(value):
        if char not in allowed and unicodedata.category(char) in ("Cc", "Cs"):
            raise _invalid(
                f"must not contain control characters (found U+{ord(char):04X} "
                f"at position {position})"
            )
    return value


def _single_line(value: str) -> str:
    return _reject_control_characters(value, frozenset())


def _multi_line(value: str) -> str:
    return _reject_control_characters(value, _MULTILINE_ALLOWED)


def _empty_to_none(value: object) -> object:
    """``""`` clears a field exactly like ``null`` does."""
    return None if value == "" else value


def _country(value: str) -> str:
    if len(value) != 2 or not value.isascii() or not value.isupper():
        raise _invalid(
            "must be an uppercase ISO 3166-1 alpha-2 country code such as US; got '{value}'",
            value=value,
        )
    if pycountry.countries.get(alpha_2=value) is None:
        raise _invalid("'{value}' is not an ISO 3166-1 alpha-2 country code", value=value)
    return value


def _email(value: str) -> str:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "email_invalid", "is not a valid email address: {reason}", {"reason": str(exc)}
        ) from None
    return value


def _locale(value: str) -> str:
    if not _BCP47_SHAPE.fullmatch(value) or not langcodes.tag_is_valid(value):
        raise _invalid("'{value}' is not a valid BCP 47 language tag (e.g. en-US)", value=value)
    return value


def _invoice_prefix(value: str) -> str:
    if not _INVOICE_PREFIX.fullmatch(value):
        raise _invalid("must be 3-12 uppercase letters or digits; got '{value}'", value=value)
    return value


def ensure_identifier(value: str) -> str:
    if not value.isprintable() or any(char.isspace() for char in value):
        raise _invalid("must be printable characters without whitespace")
    return value


def ensure_unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise _invalid("must not repeat an entry")
    return values


SingleLine = AfterValidator(_single_line)
Clearable = BeforeValidator(_empty_to_none)

# Text fields that may be cleared: absent = unchanged, null or "" = cleared.
Name = Annotated[Annotated[StrictStr, Field(max_length=MAX_NAME), SingleLine] | None, Clearable]
Phone = Annotated[Annotated[StrictStr, Field(max_length=MAX_PHONE), SingleLine] | None, Clearable]
Description = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_DESCRIPTION), AfterValidator(_multi_line)] | None,
    Clearable,
]
AddressLine = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_ADDRESS_LINE), SingleLine] | None, Clearable
]
PostalCode = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_POSTAL_CODE), SingleLine] | None, Clearable
]
Country = Annotated[Annotated[StrictStr, AfterValidator(_country)] | None, Clearable]
Email = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_EMAIL), SingleLine, AfterValidator(_email)] | None,
    Clearable,
]
Locale = Annotated[StrictStr, Field(max_length=MAX_LOCALE), AfterValidator(_locale)]
PreferredLocales = Annotated[
    Annotated[list[Locale], AfterValidator(ensure_unique)] | None, Clearable
]

# Fields that cannot be cleared.
InvoicePrefix = Annotated[StrictStr, AfterValidator(_invoice_prefix)]
InvoiceSequence = Annotated[StrictInt, Field(ge=1, le=MAX_INVOICE_SEQUENCE)]
Identifier = Annotated[
    StrictStr, Field(min_length=1, max_length=MAX_ID), AfterValidator(ensure_identifier)
]
