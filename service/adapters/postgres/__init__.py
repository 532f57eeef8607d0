"""PostgreSQL: the batch and outbox statements, migrations, demo seed."""
