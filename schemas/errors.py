"""The error object every rejection carries, modelled on the public API's error object."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ErrorType = Literal["invalid_request_error", "idempotency_error"]

ErrorCode = Literal[
    "parameter_unknown",
    "parameter_missing",
    "parameter_invalid",
    "parameter_invalid_empty",
    "parameter_invalid_integer",
    "email_invalid",
    "resource_missing",
    "version_conflict",
    "permission_denied",
    "idempotency_key_reused",
]


class ErrorObject(BaseModel):
    """Why a command was refused. ``param`` names the offending field, when there is one,
    as a dotted path into the command (``data.address.country``, ``data.expand.0``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ErrorType
    code: ErrorCode
    param: Annotated[str | None, Field(description="Dotted path of the offending field.")]
    message: Annotated[str, Field(description="A human-readable explanation.")]


def invalid(code: ErrorCode, param: str | None, message: str) -> ErrorObject:
    return ErrorObject(type="invalid_request_error", code=code, param=param, message=message)


_KIND = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "list_type": "a list",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "datetime_type": "an RFC 3339 timestamp",
    "datetime_parsing": "an RFC 3339 timestamp",
    "datetime_from_date_parsing": "an RFC 3339 timestamp",
}
_INTEGER_ERRORS = {"int_type", "int_from_float", "int_parsing"}


def from_validation_error(error: ValidationError) -> ErrorObject:
    """The first failure of ``error`` as an error object, with a message naming the field."""
    first = error.errors(include_url=False)[0]
    kind: str = first["type"]
    param = ".".join(str(part) for part in first["loc"]) or None
    context = first.get("ctx") or {}
    where = param or "command"

    if kind == "extra_forbidden":
        return invalid("parameter_unknown", param, f"Received unknown parameter: {param}")
    if kind == "missing":
        return invalid("parameter_missing", param, f"Missing required parameter: {param}")
    if kind in _INTEGER_ERRORS:
        return invalid(
            "parameter_invalid_integer",
            param,
            f"Invalid {where}: must be an integer, not {_describe(first['input'])}",
        )
    if kind in _KIND:
        return invalid(
            "parameter_invalid",
            param,
            f"Invalid {where}: must be {_KIND[kind]}, not {_describe(first['input'])}",
        )
    if kind == "string_too_long":
        return invalid(
            "parameter_invalid",
            param,
            f"Invalid {where}: must be at most {context['max_length']} characters "
            f"(got {len(first['input'])})",
        )
    if kind == "string_too_short":
        return invalid("parameter_invalid_empty", param, f"Invalid {where}: must not be empty")
    if kind == "greater_than_equal":
        return invalid(
            "parameter_invalid", param, f"Invalid {where}: must be at least {context['ge']}"
        )
    if kind == "less_than_equal":
        return invalid(
            "parameter_invalid", param, f"Invalid {where}: must be at most {context['le']}"
        )
    if kind == "literal_error":
        return invalid(
            "parameter_invalid",
            param,
            f"Invalid {where}: must be one of {context['expected']}; "
            f"got {_describe(first['input'])}",
        )
    if kind in ("parameter_invalid", "parameter_invalid_empty", "email_invalid"):
        return invalid(kind, param, f"Invalid {where}: {first['msg']}")  # type: ignore[arg-type]
    return invalid("parameter_invalid", param, f"Invalid {where}: {first['msg']}")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
