"""Use cases, written against ``ports``: the batch transaction, the outbox relay, the
outbox's health, idempotency retention. Never imports a driver."""

from service.application.errors import ClaimConflictError, RecordRefusedError, TransientError
from service.application.outbox_health import OutboxMonitor
from service.application.process_batch import BatchProcessor, ProcessorConfig
from service.application.relay import OutboxRelay, RelayConfig
from service.application.retention import prune_periodically

__all__ = [  # noqa: RUF022 - grouped by kind, not sorted
    # use cases
    "BatchProcessor",
    "OutboxMonitor",
    "OutboxRelay",
    "ProcessorConfig",
    "RelayConfig",
    "prune_periodically",
    # errors adapters raise, loops retry on
    "ClaimConflictError",
    "RecordRefusedError",
    "TransientError",
]
