"""``customer-service``: the command line of the service."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import structlog
import typer
import uvloop

from service.adapters.kafka import clients as kafka
from service.adapters.postgres.connection import database
from service.adapters.postgres.migrations import migrate as apply_migrations
from service.adapters.postgres.outbox import OutboxStore
from service.adapters.postgres.seed import seed_customers
from service.application.backfill import BackfillBusyError, Started
from service.application.errors import AccessRefusedError, TransientError
from service.application.ports import OutboxStats, ParkedRow
from service.infrastructure.collector import tune_for_batches
from service.infrastructure.logging import configure_logging
from service.infrastructure.settings import Settings, SettingsError, load_settings

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


def _run_until_stopped(
    process: str, main: Callable[[], Awaitable[T]], *, records_per_batch: int
) -> T:
    """Run a long-lived process; an error nothing retries (a permanent one: a refused
    password, a missing permission, a port in use) ends it with one log line naming it,
    and exit code 1."""
    tune_for_batches(records_per_batch)
    try:
        return _run(main)
    except typer.Exit:
        raise
    except Exception as exc:
        errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        structlog.get_logger(__name__).error(
            "process_failed", process=process, errors=[repr(error) for error in errors]
        )
        raise typer.Exit(1) from exc


def _run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main``; a server's refusal (TLS, credentials) ends the verb with its message
    on stderr and exit code 1, not a traceback."""
    # uvloop: a faster event loop for the client libraries' socket work.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(main())  # type: ignore[arg-type]
        except* AccessRefusedError as group:
            for error in group.exceptions:
                # Once for log collectors, once in plain words for whoever ran the verb.
                structlog.get_logger(__name__).error("access_refused", error=str(error))
                typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None


@app.command()
def migrate() -> None:
    """Apply the database migrations that are not applied yet.

    Safe to run any number of times and from several processes at once.

    \b
    Example:
      DATABASE_URL=postgresql://postgres@localhost/customer_service customer-service migrate
    """
    settings = _settings()

    async def main() -> list[str]:
        connection = await database(settings).connect()
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
    """Create the command, event, rejection, dead-letter and (compacted) state topics if
    they are missing.

    Example: customer-service create-topics --partitions 12
    """
    settings = _settings()
    created = _run(lambda: kafka.create_topics(settings, partitions=partitions))
    typer.echo(f"created: {', '.join(created)}" if created else "topics exist")
    if settings.publish_state and settings.topic_state not in created:
        # Made by someone else (a platform team, an older tool): a state topic that is not
        # compacted loses every customer not updated within its retention.
        policy = _run(lambda: kafka.cleanup_policy(settings, settings.topic_state))
        policies = set((policy or "").replace(" ", "").split(","))
        if policy is not None and (policies != {"compact"}):
            typer.echo(
                f"warning: {settings.topic_state} has cleanup.policy={policy}: customers not "
                "updated within its retention drop out of it; set cleanup.policy=compact",
                err=True,
            )


@app.command()
def backfill(
    customers: Annotated[
        list[str] | None, typer.Argument(help="Customer ids (or --all).", show_default=False)
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every customer, in id order.")] = False,
    rate: Annotated[
        float,
        typer.Option(min=0, max=1_000_000, help="Customers per second at most (0: no limit)."),
    ] = 1000,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Customers per transaction.")
    ] = 200,
    restart: Annotated[
        bool, typer.Option(help="Start --all over instead of resuming a stopped run.")
    ] = False,
) -> None:
    """Publish customers' current state to the state topic (TOPIC_STATE), through the
    outbox, so it is ordered with concurrent updates. Publishes no customer.updated event.

    Run it once when the state topic is new (the first deployment with it), and after
    customers were created or changed outside the service (an import, a migration, the
    seed): until then they have no state record, and subscribers that bootstrap from the
    topic do not see them. --all resumes where a stopped run left off.

    \b
    Examples:
      customer-service backfill --all --rate 500
      customer-service backfill cus_123 cus_456
    """
    from service.entrypoints.operator.backfill import run_backfill

    settings = _settings()
    if bool(customers) == every:
        typer.echo("name customer ids, or pass --all", err=True)
        raise typer.Exit(2)
    if not settings.publish_state:
        typer.echo("PUBLISH_STATE is false: there is no state topic to backfill", err=True)
        raise typer.Exit(2)
    with contextlib.ExitStack() as bars:

        def on_start(started: Started) -> Callable[[int], None]:
            if started.resumed is not None:
                typer.echo(
                    f"resuming after {started.resumed.after_id} "
                    f"({started.resumed.published} published before)",
                    err=True,
                )
            bar = typer.progressbar(length=started.remaining, label="backfilling", file=sys.stderr)
            return bars.enter_context(bar).update

        try:
            _, published, missing = _run(
                lambda: run_backfill(
                    settings,
                    customers=list(customers or []),
                    restart=restart,
                    rate=rate,
                    batch_size=batch_size,
                    on_start=on_start,
                )
            )
        except BackfillBusyError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except TransientError as exc:
            typer.echo(
                f"error: PostgreSQL is unavailable ({exc}); a rerun of --all resumes where "
                "this one stopped",
                err=True,
            )
            raise typer.Exit(1) from None
    typer.echo(f"published the state of {published} customer(s) to {settings.topic_state}")
    if missing:
        typer.echo(f"no such customer: {', '.join(missing)}", err=True)
        raise typer.Exit(1)


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
        connection = await database(settings).connect()
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
def worker(
    processes: Annotated[
        str | None,
        typer.Option(
            help="Run N consumer processes and one relay process under a supervisor "
            "(auto: one per CPU this process may use), to use every core.",
            metavar="N|auto",
        ),
    ] = None,
) -> None:
    """Consume customer.update, apply it, and publish customer.updated (and rejections).

    Runs until SIGTERM or Ctrl-C, then finishes the batch in flight, publishes what is
    left in the outbox and exits. With --processes, a supervisor runs the consumers
    and the relay as processes of their own, passes SIGTERM on, serves the probes and
    metrics of all of them on HTTP_PORT, and exits when any of them fails.

    \b
    Examples:
      customer-service worker
      customer-service worker --processes auto
    """
    from service.bootstrap import run_worker, stop_on_signals

    settings = _settings()
    if processes is not None:
        from service.entrypoints.supervisor import process_count, supervise

        try:
            count = process_count(processes)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--processes") from None

        async def supervised() -> int:
            stopping = asyncio.Event()
            stop_on_signals(stopping)
            return await supervise(settings, count, stopping)

        raise typer.Exit(_run_until_stopped("supervisor", supervised, records_per_batch=1))

    async def main() -> None:
        stopping = asyncio.Event()
        stop_on_signals(stopping)
        await run_worker(settings, stopping)

    _run_until_stopped("worker", main, records_per_batch=settings.batch_max_records)


@app.command()
def relay() -> None:
    """Run only the outbox relay, for deployments that scale it apart from the workers
    (then run the workers with RELAY_ENABLED=false). One relay leads at a time.

    Example: RELAY_ENABLED=true customer-service relay
    """
    from service.bootstrap import run_relay, stop_on_signals

    settings = _settings()

    async def main() -> None:
        stopping = asyncio.Event()
        stop_on_signals(stopping)
        await run_relay(settings, stopping)

    _run_until_stopped("relay", main, records_per_batch=settings.relay_batch_size)


@app.command()
def send(
    customer_id: Annotated[str, typer.Argument(help="The customer to update (record key).")],
    name: Annotated[str | None, typer.Option(help="Full name or business name.")] = None,
    email: Annotated[str | None, typer.Option(help="Email address.")] = None,
    phone: Annotated[str | None, typer.Option(help="Phone number.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    invoice_prefix: Annotated[
        str | None, typer.Option(help="3-12 uppercase letters or digits.")
    ] = None,
    next_invoice_sequence: Annotated[int | None, typer.Option(help="Next invoice number.")] = None,
    tax_exempt: Annotated[str | None, typer.Option(help="exempt, none or reverse.")] = None,
    preferred_locales: Annotated[
        str | None, typer.Option(help="Comma-separated BCP 47 tags, e.g. en-US,fr-FR.")
    ] = None,
    address_city: Annotated[str | None, typer.Option("--address.city")] = None,
    address_country: Annotated[
        str | None, typer.Option("--address.country", help="ISO 3166-1 alpha-2, e.g. IT.")
    ] = None,
    address_line1: Annotated[str | None, typer.Option("--address.line1")] = None,
    address_line2: Annotated[str | None, typer.Option("--address.line2")] = None,
    address_postal_code: Annotated[str | None, typer.Option("--address.postal_code")] = None,
    address_state: Annotated[str | None, typer.Option("--address.state")] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(help="Clear a field (repeatable): name, address, address.city, ..."),
    ] = None,
    expand: Annotated[list[str] | None, typer.Option(help="Expand a field: subscriptions.")] = None,
    expected_version: Annotated[
        int | None, typer.Option(help="Apply only if the customer is at this version.")
    ] = None,
    command_id: Annotated[
        str | None, typer.Option("--id", help="Command id (default: new).")
    ] = None,
    correlation_id: Annotated[str | None, typer.Option(help="Correlation id to carry.")] = None,
    principal: Annotated[str, typer.Option(help="Who the command acts for.")] = "cli",
    authtoken: Annotated[str | None, typer.Option(help="Signed JWT (signed mode).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for and print the outcome.")] = True,
    within: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 30.0,
) -> None:
    """Send one customer.update command and print its outcome.

    Exit status: 0 applied (or sent, with --no-wait), 1 rejected, 2 refused before
    sending (invalid command), 3 no outcome in time.

    Examples:

    \b
      customer-service send cus_demo_000001 --email ada@example.com --address.city Rome
      customer-service send cus_demo_000001 --clear phone --expand subscriptions
      customer-service send cus_demo_000001 --name "Ada" --expected-version 3 --no-wait
    """
    from service.entrypoints.client import CommandInvalidError, CommandSender, build_command

    settings = _settings()
    changes: dict[str, object] = {}
    address: dict[str, object] = {}
    given = {
        "name": name, "email": email, "phone": phone, "description": description,
        "invoice_prefix": invoice_prefix, "next_invoice_sequence": next_invoice_sequence,
        "tax_exempt": tax_exempt,
        "preferred_locales": preferred_locales.split(",") if preferred_locales else None,
    }  # fmt: skip
    changes.update({field: value for field, value in given.items() if value is not None})
    given_address = {
        "city": address_city, "country": address_country, "line1": address_line1,
        "line2": address_line2, "postal_code": address_postal_code, "state": address_state,
    }  # fmt: skip
    address.update({field: value for field, value in given_address.items() if value is not None})
    for field in clear or []:
        if field.startswith("address."):
            address[field.removeprefix("address.")] = None
        else:
            changes[field] = None
    if address:
        changes["address"] = address
    if expand:
        changes["expand"] = expand
    try:
        command = build_command(
            customer_id,
            changes,
            source=f"{settings.kafka_client_id}-cli",
            principal=None if authtoken else principal,
            authtoken=authtoken,
            expected_version=expected_version,
            correlation_id=correlation_id,
            command_id=command_id,
        )
    except CommandInvalidError as exc:
        typer.echo(f"refused before sending: {exc.error.code} {exc.error.param}: {exc}", err=True)
        raise typer.Exit(2) from None

    async def main() -> int:
        from schemas.event import CustomerUpdatedEvent

        async with CommandSender(settings) as sender:
            if not wait:
                sent = await sender.send(command)
                typer.echo(f"sent {sent.command_id} to partition {sent.partition} at {sent.offset}")
                return 0
            try:
                outcome = await sender.send_and_wait(command, within=within)
            except TimeoutError:
                typer.echo(
                    f"sent {command.id}; no outcome within {within:.0f}s (a command id used "
                    "before publishes nothing new)",
                    err=True,
                )
                return 3
        typer.echo(outcome.model_dump_json(indent=2))
        return 0 if isinstance(outcome, CustomerUpdatedEvent) else 1

    raise typer.Exit(_run(main))


@app.command()
def tail(
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message.")] = False,
    dlq: Annotated[bool, typer.Option(help="Include the dead-letter topic.")] = False,
    json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each event as structured CloudEvents JSON, whichever its mode.",
        ),
    ] = False,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
) -> None:
    """Follow customer.updated and customer.update.rejected, one readable line each.

    Examples:

    \b
      customer-service tail
      customer-service tail --from-beginning --dlq --count 20
    """
    from service.entrypoints.operator.tail import follow

    settings = _settings()
    _run(
        lambda: follow(
            settings,
            from_beginning=from_beginning,
            include_dead_letters=dlq,
            count=count,
            as_json=json,
            emit=typer.echo,
        )
    )


dlq_app = typer.Typer(
    help="Inspect the dead-letter topic and replay chosen records.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list() -> None:
    """List every dead letter: position, origin, error code and message, value preview.

    Example: customer-service dlq list
    """
    from service.entrypoints.operator.dead_letters import read_dead_letters

    settings = _settings()
    letters = _run(lambda: read_dead_letters(settings))
    for letter in letters:
        typer.echo(letter.describe())
    typer.echo(f"{len(letters)} dead letter(s) in {settings.topic_dead_letters}", err=True)


@dlq_app.command("replay")
def dlq_replay(
    positions: Annotated[
        list[str] | None,
        typer.Argument(help="Dead letters to replay, as partition:offset (see dlq list)."),
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Publish chosen dead letters onto customer.update again, with their original key,
    value and headers. Use it after fixing what made them fail.

    Examples:

    \b
      customer-service dlq replay 0:12 2:40
      customer-service dlq replay --all
    """
    from service.entrypoints.operator.dead_letters import read_dead_letters, replay, select

    settings = _settings()
    if not positions and not replay_all:
        typer.echo("name partition:offset positions, or pass --all", err=True)
        raise typer.Exit(2)

    async def main() -> int:
        letters = await read_dead_letters(settings)
        try:
            chosen = letters if replay_all else select(letters, positions or [])
        except KeyError as exc:
            typer.echo(str(exc.args[0]), err=True)
            raise typer.Exit(2) from None
        with typer.progressbar(length=len(chosen), label="replaying") as progress:
            return await replay(settings, chosen, on_sent=lambda _: progress.update(1))

    replayed = _run(main)
    typer.echo(f"replayed {replayed} dead letter(s) onto {settings.topic_commands}")


outbox_app = typer.Typer(
    help=(
        "Inspect the outbox and deal with messages Kafka refused for good (parked): "
        "retry them after fixing the cause, or discard them."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(outbox_app, name="outbox")


def _with_outbox(settings: Settings, work: Callable[[OutboxStore], Awaitable[T]]) -> T:
    async def main() -> T:
        connection = await database(settings).connect()
        try:
            return await work(OutboxStore(connection))
        finally:
            await connection.close()

    return _run(main)


def _row_ids(ids: list[int] | None, every: bool) -> list[int] | None:
    if bool(ids) == every:
        typer.echo("name outbox ids (see `outbox list`), or pass --all", err=True)
        raise typer.Exit(2)
    return None if every else list(ids or [])


@outbox_app.command("list")
def outbox_list() -> None:
    """List the parked messages: id, topic, key, size, when and why Kafka refused them,
    and how many later messages of the same key wait behind each. Also prints how many
    messages wait to be published and how old the oldest is.

    Example: customer-service outbox list
    """
    from service.domain.outbox import shown_key

    settings = _settings()

    async def work(store: OutboxStore) -> tuple[OutboxStats, list[ParkedRow]]:
        return await store.stats(), await store.parked()

    stats, parked = _with_outbox(settings, work)
    for row in parked:
        typer.echo(
            f"{row.id:<10} {row.topic:<28} key={shown_key(row.key)} {row.size} bytes "
            f"parked {row.parked_at:%Y-%m-%d %H:%M:%S} waiting-behind={row.waiting} "
            f"| {row.reason}"
        )
    typer.echo(
        f"{stats.parked} parked; {stats.waiting} waiting, the oldest {stats.oldest_seconds:.0f}s",
        err=True,
    )


@outbox_app.command("retry")
def outbox_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Outbox ids (see outbox list).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every parked message.")] = False,
) -> None:
    """Unpark messages, so that the relay publishes them again (and the messages of the
    same key that waited behind them). Use it after fixing the cause, e.g. after raising
    the topic's max.message.bytes; a message refused again is parked again.

    Examples:

    \b
      customer-service outbox retry 1234
      customer-service outbox retry --all
    """
    settings = _settings()
    chosen = _row_ids(ids, every)

    async def work(store: OutboxStore) -> int:
        if chosen is None:
            return await store.unpark(None)
        done = 0
        with typer.progressbar(chosen, label="retrying", file=sys.stderr) as progress:
            for row_id in progress:
                done += await store.unpark([row_id])
        return done

    typer.echo(f"unparked {_with_outbox(settings, work)} message(s)")


@outbox_app.command("discard")
def outbox_discard(
    ids: Annotated[list[int], typer.Argument(help="Outbox ids of parked messages.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete parked messages for good: they are never published, and subscribers see a
    gap in that customer's versions. The messages that waited behind them go out next.

    Example: customer-service outbox discard 1234 --yes
    """
    settings = _settings()
    if not yes:
        typer.confirm(f"Discard {len(ids)} parked message(s) for good?", abort=True)

    async def work(store: OutboxStore) -> int:
        done = 0
        with typer.progressbar(ids, label="discarding", file=sys.stderr) as progress:
            for row_id in progress:
                done += await store.discard([row_id])
        return done

    discarded = _with_outbox(settings, work)
    typer.echo(f"discarded {discarded} message(s)")
    if discarded < len(ids):
        typer.echo("the others are not parked outbox messages", err=True)
        raise typer.Exit(1)
