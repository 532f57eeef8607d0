"""``customer-service``: the command line of the service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import typer

from service.adapters import kafka
from service.adapters.migrations import migrate as apply_migrations
from service.logging import configure_logging
from service.seed import seed_customers
from service.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

app = typer.Typer(
    help=(
        "Applies customer.update commands from Kafka to PostgreSQL and publishes "
        "customer.updated events. Settings come from environment variables (see README)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


@app.command()
def migrate() -> None:
    """Apply the database migrations that are not applied yet.

    Safe to run any number of times and from several processes at once.

    Example: DATABASE_URL=postgresql://postgres@localhost/customer_service customer-service migrate
    """
    settings = _settings()

    async def main() -> list[str]:
        connection = await asyncpg.connect(settings.database_url.get_secret_value())
        try:
            return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(connection)]
        finally:
            await connection.close()

    applied = _run(main)
    typer.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@app.command("create-topics")
def create_topics(
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions per topic (default: TOPIC_PARTITIONS)."),
    ] = None,
) -> None:
    """Create the command, event, rejection and dead-letter topics if they are missing.

    Example: customer-service create-topics --partitions 12
    """
    settings = _settings()
    created = _run(lambda: kafka.create_topics(settings, partitions=partitions))
    typer.echo(f"created: {', '.join(created)}" if created else "topics exist")


@app.command()
def seed(
    count: Annotated[int, typer.Option(min=1, help="How many demo customers.")] = 10,
    start: Annotated[int, typer.Option(min=1, help="Number of the first one.")] = 1,
) -> None:
    """Create demo customers cus_demo_000001 ... (existing ones are left alone).

    Example: customer-service seed --count 1000
    """
    settings = _settings()
    chunk = 1000

    async def main() -> int:
        connection = await asyncpg.connect(settings.database_url.get_secret_value())
        created = 0
        try:
            with typer.progressbar(length=count, label="seeding", file=None) as progress:
                for first in range(start, start + count, chunk):
                    size = min(chunk, start + count - first)
                    created += await seed_customers(connection, size, start=first)
                    progress.update(size)
        finally:
            await connection.close()
        return created

    created = _run(main)
    typer.echo(f"created {created} customers (cus_demo_{start:06d} ...)")


@app.command()
def worker() -> None:
    """Consume customer.update, apply it, and publish customer.updated (and rejections).

    Runs until SIGTERM or Ctrl-C, then finishes the batch in flight, publishes what is
    left in the outbox and exits.

    Example: customer-service worker
    """
    from service.app import run_worker, stop_on_signals

    settings = _settings()

    async def main() -> None:
        stopping = asyncio.Event()
        stop_on_signals(stopping)
        await run_worker(settings, stopping)

    _run(main)
