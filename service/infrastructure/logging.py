"""Logs: structlog, JSON lines in production and a readable console on a terminal.

The service's own lines go straight through structlog; standard-library loggers
(aiokafka, asyncpg) are routed through the same processors by ``ProcessorFormatter``,
so every line has the same shape. Email addresses and phone numbers never reach the
output: fields named ``email`` or ``phone`` are masked, and addresses and numbers that
look like phone numbers are masked inside free text.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
_SENSITIVE_KEYS = frozenset({"email", "phone"})
_FREE_TEXT_KEYS = ("event", "error", "message", "exception")
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"\+?\(?\d[\d\s().-]{6,}\d")
#: A dotted IPv4 address looks like a phone number to ``_PHONE``, but it names a server
#: (a broker, a database) that an operator must see in an error.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"  # 0-255, no leading zero
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


_MAYBE_PERSONAL = re.compile(r"[@\d]")


def redact_text(text: str) -> str:
    if _MAYBE_PERSONAL.search(text) is None:
        return text  # neither an address nor a number: the common case, one cheap scan
    return _PHONE.sub(_phone_unless_address, _EMAIL.sub(REDACTED, text))


def _phone_unless_address(match: re.Match[str]) -> str:
    return match[0] if _IPV4.fullmatch(match[0]) else REDACTED


def redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Mask personal data: sensitive fields wholesale, and addresses in any string."""
    for key, value in event.items():
        if key in _SENSITIVE_KEYS and value is not None:
            event[key] = REDACTED
        elif isinstance(value, str):
            if key in _FREE_TEXT_KEYS:
                event[key] = redact_text(value)
            elif "@" in value:
                # Ids and names rarely hold an address; the "@" test spares them the regex.
                event[key] = _EMAIL.sub(REDACTED, value)
    return event


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def _renderer(fmt: Literal["json", "console"]) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(serializer=_dumps)
    return structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())


def _dumps(value: MutableMapping[str, Any], **_: Any) -> str:
    return orjson.dumps(value, default=repr).decode()


class _StdoutHandler(logging.Handler):
    """Writes to ``sys.stdout`` as it is when a line is written, like structlog's
    ``PrintLogger``, so both kinds of line always end up in the same stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO"
) -> None:
    """Configure structlog and the standard library; call once at process start."""
    chosen: Literal["json", "console"] = (
        ("console" if sys.stdout.isatty() else "json") if fmt == "auto" else fmt
    )
    numeric_level = logging.getLevelNamesMapping()[level]
    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, _renderer(chosen)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # No file given: it writes to whatever sys.stdout is at the time of the call.
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _renderer(chosen),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # The clients are chatty at INFO about routine group and connection events.
    for name in ("aiokafka", "kafka"):
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))
