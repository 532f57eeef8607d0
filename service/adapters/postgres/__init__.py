"""PostgreSQL through asyncpg: the pool, a batch's unit of work, the outbox and its
leader lock, idempotency retention, migrations (``sql/``) and the demo seed."""

from service.adapters.postgres.batch_store import BatchStore, PostgresUnitOfWork, batch_transaction
from service.adapters.postgres.migrations import migrate
from service.adapters.postgres.outbox import OutboxStore, PostgresLeadership, read_outbox
from service.adapters.postgres.pool import create_pool
from service.adapters.postgres.retention import prune_processed_commands
from service.adapters.postgres.seed import seed_customers

__all__ = [  # noqa: RUF022 - grouped by kind, not sorted
    # connections
    "create_pool",
    # the batch
    "BatchStore",
    "PostgresUnitOfWork",
    "batch_transaction",
    # the outbox
    "OutboxStore",
    "PostgresLeadership",
    "read_outbox",
    # upkeep
    "migrate",
    "prune_processed_commands",
    "seed_customers",
]
