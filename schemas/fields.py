"""Field types of the contract: each carries its own rule and a specific error.

Every rule raises ``PydanticCustomError`` whose type is the public error code, so
``schemas.errors.from_validation_error`` can turn the first failure into the error
object without parsing message text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any

import email_validator
import langcodes
import pycountry
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import EMAIL_MAX_LENGTH
from email_validator.syntax import validate_email_domain_name, validate_email_local_part
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    StrictInt,
    StrictStr,
)
from pydantic.config import JsonValue
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

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

_BCP47_SHAPE = re.compile(r"[A-Za-z0-9]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_INVOICE_PREFIX = re.compile(r"[A-Z0-9]{3,12}")


def _invalid(message: str, **context: object) -> PydanticCustomError:
    return PydanticCustomError("parameter_invalid", message, dict(context) or None)


# Unicode categories Cc (C0, DEL, C1) and Cs (surrogates), as one character class so the
# scan runs in C; the multi-line variant leaves out tab, line feed and carriage return.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _reject_control_characters(value: str, pattern: re.Pattern[str]) -> str:
    # NUL cannot be stored by PostgreSQL and other control characters corrupt logs and
    # downstream renderings, so they are refused before anything else sees them.
    found = pattern.search(value)
    if found is not None:
        raise _invalid(
            f"must not contain control characters (found U+{ord(found[0]):04X} "
            f"at position {found.start()})"
        )
    return value


def _single_line(value: str) -> str:
    return _reject_control_characters(value, _CONTROL)


def _multi_line(value: str) -> str:
    return _reject_control_characters(value, _CONTROL_BUT_LINES)


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


# A plain ASCII address: no quoting, comments, display name or IP literal. Those are the
# overwhelming majority and take the fast path below; anything else takes the full one.
_PLAIN_EMAIL = re.compile(r"[^\s\"<>\[\]()\\,;:@]+@[A-Za-z0-9.-]+")


@functools.lru_cache(maxsize=4096)
def _valid_domain(domain: str) -> None:
    # Domains repeat across addresses and their check (IDNA, special-use names) is most
    # of email-validator's cost: about 40 of its 75 us.
    validate_email_domain_name(
        domain,
        test_environment=email_validator.TEST_ENVIRONMENT,
        globally_deliverable=email_validator.GLOBALLY_DELIVERABLE,
    )


def plain_email_is_valid(value: str) -> bool:
    """email-validator's verdict on a plain ASCII address, from its own local-part and
    domain checks with the domain's verdict cached (``check_email`` in the tests compares
    this with ``validate_email`` over thousands of addresses)."""
    if not (value.isascii() and len(value) <= EMAIL_MAX_LENGTH and _PLAIN_EMAIL.fullmatch(value)):
        return False
    local, _, domain = value.rpartition("@")
    try:
        validate_email_local_part(
            local,
            allow_smtputf8=email_validator.ALLOW_SMTPUTF8,
            allow_empty_local=email_validator.ALLOW_EMPTY_LOCAL,
            quoted_local_part=False,
            strict=email_validator.STRICT,
        )
        _valid_domain(domain)
    except EmailNotValidError:
        return False
    return True


def _email(value: str) -> str:
    if plain_email_is_valid(value):
        return value
    try:
        # Everything else, and every refusal (for the library's own message).
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "email_invalid", "is not a valid email address: {reason}", {"reason": str(exc)}
        ) from None
    return value


@functools.lru_cache(maxsize=4096)
def _valid_locale(value: str) -> bool:
    return _BCP47_SHAPE.fullmatch(value) is not None and langcodes.tag_is_valid(value)


def _locale(value: str) -> str:
    if not _valid_locale(value):
        raise _invalid("'{value}' is not a valid BCP 47 language tag (e.g. en-US)", value=value)
    return value


def _invoice_prefix(value: str) -> str:
    if not _INVOICE_PREFIX.fullmatch(value):
        raise _invalid("must be 3-12 uppercase letters or digits; got '{value}'", value=value)
    return value


_WHITESPACE = re.compile(r"\s")


def ensure_identifier(value: str) -> str:
    if not value.isprintable() or _WHITESPACE.search(value) is not None:
        raise _invalid("must be printable characters without whitespace")
    return value


def ensure_unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise _invalid("must not repeat an entry")
    return values


def ensure_unique_tags(values: list[str]) -> list[str]:
    # Language tags are case-insensitive (RFC 5646 2.1.1): en-US and en-us are one tag.
    if len({value.casefold() for value in values}) != len(values):
        raise _invalid("must not repeat an entry (language tags ignore case)")
    return values


TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def _traceparent(value: str) -> str:
    if not TRACEPARENT.fullmatch(value) or value.startswith("ff"):
        raise _invalid("must be a W3C traceparent such as 00-<32 hex>-<16 hex>-01")
    return value


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def ensure_rfc3339(value: object) -> object:
    """Only RFC 3339 text (or null): pydantic alone would also take Unix seconds and other
    ISO 8601 forms."""
    if value is not None and (not isinstance(value, str) or not _RFC3339.fullmatch(value)):
        raise _invalid("must be an RFC 3339 timestamp with a UTC offset, e.g. 2026-01-31T09:30:00Z")
    return value


# RFC 9110 8.3.1: type "/" subtype *( OWS ";" OWS parameter ), names case-insensitive.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"'
_PARAMETER = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})=({_TOKEN}|{_QUOTED})")
#: ``application/json`` in any case, as JSON Schema (which has no flags) can say it.
_JSON_TYPE = "[Aa][Pp][Pp][Ll][Ii][Cc][Aa][Tt][Ii][Oo][Nn]/[Jj][Ss][Oo][Nn]"
JSON_MEDIA_TYPE = re.compile(rf"{_JSON_TYPE}(?:{_PARAMETER.pattern})*")


def ensure_json_media_type(value: str) -> str:
    """``datacontenttype``: JSON, with parameters if any (CloudEvents SDKs send
    ``application/json; charset=utf-8``); a charset other than UTF-8 would mean the
    bytes are not what the record was read as."""
    if not JSON_MEDIA_TYPE.fullmatch(value):
        raise _invalid("must be application/json, optionally with parameters")
    for name, raw in _PARAMETER.findall(value):
        charset = raw.strip('"').lower()
        if name.lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise _invalid("must declare charset=utf-8 if any: the record is read as UTF-8")
    return value


#: An absolute URI (RFC 3986 4.3: a scheme, then anything printable in ASCII).
ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]*")


def ensure_absolute_uri(value: str) -> str:
    if not ABSOLUTE_URI.fullmatch(value):
        raise _invalid("must be an absolute URI, such as https://example.com/schema.json")
    return value


def documented(**keywords: JsonValue) -> Any:
    """JSON Schema keywords that publish a rule a validator already enforces.

    They only describe: the validator stays the one check, so a broken rule is still
    reported with its specific error code rather than pydantic's generic pattern error.
    """
    return Field(json_schema_extra=keywords)


# The validators above allow no whitespace and no control character; ``isprintable`` also
# refuses what no portable pattern names (see SCHEMA_GAPS).
NoWhitespace = documented(pattern="^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$")
#: ``time`` as the validator reads it; that it is a real date is ``format: date-time``.
Rfc3339 = documented(pattern=f"^{_RFC3339.pattern}$")


@dataclass(frozen=True, slots=True)
class SchemaGap:
    """A rule the models enforce that the published JSON Schema cannot say."""

    rule: str
    #: Matches the message of the error the models give when the rule is broken.
    message: re.Pattern[str]


#: Everything a command may break that its published JSON Schema accepts: the schema is
#: exact but for these (its description lists them, and a property test holds it to that).
SCHEMA_GAPS = (
    SchemaGap(
        "ids, source, principal and correlationid hold printable characters only: Unicode's "
        "format, private-use and unassigned characters are refused too, which no portable "
        "pattern names",
        re.compile(r"must be printable characters"),
    ),
    SchemaGap(
        "each preferred locale is a valid BCP 47 tag (the schema checks its syntax)",
        re.compile(r"is not a valid BCP 47 language tag"),
    ),
    SchemaGap(
        "no preferred locale appears twice in any case (uniqueItems compares case)",
        re.compile(r"language tags ignore case"),
    ),
    SchemaGap(
        "an integer is written without a fraction or exponent (12.0 is refused): to JSON "
        "Schema, 12.0 is the integer 12",
        re.compile(r"must be an integer, not the number"),
    ),
    SchemaGap(
        "an email address is one a mail system can take (format: email, which validators "
        "check loosely if at all)",
        re.compile(r"is not a valid email address"),
    ),
    SchemaGap(
        "time is a real date and time (format: date-time, which validators check only when asked)",
        re.compile(r"must be an RFC 3339 timestamp, not"),
    ),
)

_EMPTY_STRING: JsonSchemaValue = {"const": "", "type": "string"}


class _ClearedByEmptyString(BeforeValidator):
    """A before-validator that also publishes ``""`` as an accepted value: its schema would
    otherwise come from the inner type alone, which refuses ``""`` wherever that type has
    a pattern or is not a string."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        inner = handler(schema)
        if "anyOf" in inner:
            return {**inner, "anyOf": [*inner["anyOf"], _EMPTY_STRING]}
        return {"anyOf": [inner, _EMPTY_STRING]}


SingleLine = AfterValidator(_single_line)
# The control-character rules as patterns (surrogates, which the validators refuse too,
# cannot be in a JSON text that is UTF-8 at all).
NoControl = documented(pattern="^[^\\u0000-\\u001f\\u007f-\\u009f]*$")
NoControlButLines = documented(
    pattern="^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
)
#: Every ISO 3166-1 alpha-2 code, as the published schema's enum.
COUNTRY_CODES = sorted(country.alpha_2 for country in pycountry.countries)
Clearable = _ClearedByEmptyString(_empty_to_none)

# Text fields that may be cleared: absent = unchanged, null or "" = cleared.
Name = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_NAME), SingleLine, NoControl] | None, Clearable
]
Phone = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_PHONE), SingleLine, NoControl] | None, Clearable
]
Description = Annotated[
    Annotated[
        StrictStr,
        Field(max_length=MAX_DESCRIPTION),
        AfterValidator(_multi_line),
        NoControlButLines,
    ]
    | None,
    Clearable,
]
AddressLine = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_ADDRESS_LINE), SingleLine, NoControl] | None,
    Clearable,
]
PostalCode = Annotated[
    Annotated[StrictStr, Field(max_length=MAX_POSTAL_CODE), SingleLine, NoControl] | None,
    Clearable,
]
Country = Annotated[
    Annotated[StrictStr, AfterValidator(_country), documented(enum=COUNTRY_CODES)] | None,
    Clearable,
]
Email = Annotated[
    Annotated[
        StrictStr,
        Field(max_length=MAX_EMAIL),
        SingleLine,
        AfterValidator(_email),
        documented(format="email"),
    ]
    | None,
    Clearable,
]
Locale = Annotated[
    StrictStr,
    Field(max_length=MAX_LOCALE),
    AfterValidator(_locale),
    documented(pattern=f"^{_BCP47_SHAPE.pattern}$"),
]
PreferredLocales = Annotated[
    Annotated[list[Locale], AfterValidator(ensure_unique_tags), documented(uniqueItems=True)]
    | None,
    Clearable,
]

# Fields that cannot be cleared.
InvoicePrefix = Annotated[
    StrictStr,
    AfterValidator(_invoice_prefix),
    documented(minLength=3, maxLength=12, pattern=f"^{_INVOICE_PREFIX.pattern}$"),
]
InvoiceSequence = Annotated[StrictInt, Field(ge=1, le=MAX_INVOICE_SEQUENCE)]
TraceParent = Annotated[
    StrictStr,
    AfterValidator(_traceparent),
    # Version ff is invalid (W3C Trace Context 3.2.2.1).
    documented(pattern=f"^(?!ff){TRACEPARENT.pattern}$"),
]
Identifier = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_ID),
    AfterValidator(ensure_identifier),
    NoWhitespace,
]
