"""The errors the use cases tell apart, whatever driver raised them.

Adapters translate driver errors into these; the loops retry ``TransientError`` and nothing
else, so what is worth retrying is decided once, by the adapter that knows the driver.
Any other error is permanent: the batch is isolated, or the process stops with it.
"""

from __future__ import annotations


class TransientError(Exception):
    """The same work may succeed if tried again: a connection or a server went away, a
    transaction lost a conflict, an answer did not come in time."""


class ClaimConflictError(Exception):
    """Another worker claimed the same unique value (an invoice prefix, a command id)
    between this one's read and its write. It has committed by now, so one more try sees
    its claim and decides accordingly."""


class MaintenanceRefusedError(Exception):
    """The database refused a step of housekeeping (a table in the way, a row that breaks
    a new table's bounds). The commands' own work is not touched by it, so the worker goes
    on; the message says what was refused, and the next pass tries again."""


class RecordRefusedError(Exception):
    """Kafka refused a record for good (too large, corrupt, invalid for its topic): it is
    the record, not the connection, so sending it again cannot help."""


class AccessRefusedError(Exception):
    """A server refused this client for a reason no retry cures: a certificate the client
    does not trust (unknown CA, another host's, expired), a client certificate the server
    does not take, or credentials it rejects. The message names the endpoint and the
    reason; the process stops with it instead of waiting for the server forever."""
