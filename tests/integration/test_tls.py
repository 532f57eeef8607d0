"""TLS and authentication against the real servers: the native broker's SSL, SASL_SSL and
mutual-TLS listeners, and PostgreSQL with ``verify-full``.

Every Kafka client of the service (the consumer, the relay's producer, the admin calls,
the producer client and the CLI's) and every PostgreSQL connection (pool, relay leader,
CLI) goes through the settings under test; a refusal (unknown CA, another host's or an
expired certificate, no client certificate, a wrong password) stops the process at start
with a message naming the server and the reason, and no retry.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devstack.native_kafka import NativeKafka
from devstack.native_postgres import CERTIFICATE_USER, OTHER_HOST, NativePostgres
from devstack.stack import Stack, native_kafka, native_postgres, native_postgres_tls
from schemas.event import CustomerUpdatedEvent
from service.adapters.postgres.migrations import migrate
from service.entrypoints.client import CommandSender, build_command
from service.infrastructure.settings import Settings
from tests.support import insert_customer, running_worker

CLI = str(Path(sys.executable).parent / "customer-service")


@pytest.fixture(scope="session")
def broker(stack: Stack) -> NativeKafka:
    if stack.kafka_source != "native":
        pytest.skip("the TLS listeners are part of the native stack only")
    return native_kafka(os.environ)


@pytest.fixture(scope="session")
def tls_server(stack: Stack) -> Iterator[NativePostgres]:
    """The stack's TLS PostgreSQL, started for this session if it is not running."""
    if stack.postgres_source != "native":
        pytest.skip("the TLS PostgreSQL is part of the native stack only")
    server = native_postgres_tls(os.environ)
    started = not server.running()
    server.start()
    yield server
    if started:
        server.stop()


@pytest.fixture(scope="session")
async def tls_template(tls_server: NativePostgres) -> AsyncIterator[str]:
    name = f"cs_tls_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(tls_server.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        template = await asyncpg.connect(tls_server.url(name))
        try:
            await migrate(template)
        finally:
            await template.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def tls_database(tls_server: NativePostgres, tls_template: str) -> AsyncIterator[str]:
    """This test's database on the TLS server (its name)."""
    name = f"cs_tls_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(tls_server.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tls_template}"')
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def tls_db(
    tls_server: NativePostgres, tls_database: str
) -> AsyncIterator[asyncpg.Connection]:
    """A plain superuser connection to this test's database, for arranging and asserting."""
    connection = await asyncpg.connect(tls_server.url(tls_database))
    try:
        yield connection
    finally:
        await connection.close()


def kafka_tls(broker: NativeKafka, mode: str, listener: str | None = None) -> dict[str, Any]:
    """Settings for one Kafka mode: SSL (server verified), SASL_SSL (SCRAM-SHA-512, the
    password from a file) or MTLS (a client certificate)."""
    certificates = broker.certificates
    update: dict[str, Any] = {
        "kafka_bootstrap_servers": broker.tls_bootstrap_servers(listener or mode),
        "kafka_security_protocol": "SASL_SSL" if mode == "SASL_SSL" else "SSL",
        "kafka_ssl_cafile": certificates.ca,
    }
    if mode == "SASL_SSL":
        update |= {
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": broker.sasl_credentials().username,
            "kafka_sasl_password_file": broker.sasl_password_file,
        }
    if mode == "MTLS":
        update |= {
            "kafka_ssl_certfile": certificates.client_cert,
            "kafka_ssl_keyfile": certificates.client_key,
        }
    return update


def postgres_tls(
    server: NativePostgres, database: str, *, host: str = "127.0.0.1"
) -> dict[str, Any]:
    """verify-full as the TLS-only password user, the password from a file."""
    return {
        "database_url": server.tls_url(database, host=host),
        "database_sslmode": "verify-full",
        "database_ssl_root_cert": server.certificates.ca,
        "database_password_file": server.password_file,
    }


def secured(settings: Settings, *updates: dict[str, Any]) -> Settings:
    merged: dict[str, Any] = {}
    for update in updates:
        merged |= update
    # Validated again, as the process would load them (model_copy does not validate).
    return Settings(**{**settings.model_dump(exclude_unset=False), **merged, "_env_file": None})


async def tls_sessions(connection: asyncpg.Connection, database: str) -> dict[bool, int]:
    """How many sessions on ``database`` other than ``connection``'s use TLS, and how many
    do not."""
    rows = await connection.fetch(
        "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = $1 AND a.pid <> pg_backend_pid() GROUP BY s.ssl",
        database,
    )
    return {row["ssl"]: row["count"] for row in rows}


@pytest.mark.parametrize("mode", ["SSL", "SASL_SSL", "MTLS"])
async def test_worker_relay_and_client_work_over_kafka_tls_and_postgres_verify_full(
    broker: NativeKafka,
    tls_server: NativePostgres,
    tls_database: str,
    tls_db: asyncpg.Connection,
    settings: Settings,
    mode: str,
) -> None:
    config = secured(settings, kafka_tls(broker, mode), postgres_tls(tls_server, tls_database))
    await insert_customer(tls_db, "cus_tls", invoice_prefix="TLS01")
    command = build_command("cus_tls", {"name": f"Over {mode}"}, source="tests", principal="svc")

    async with running_worker(config), CommandSender(config) as sender:
        outcome = await sender.send_and_wait(command, within=60)
        sessions = await tls_sessions(tls_db, tls_database)

    assert isinstance(outcome, CustomerUpdatedEvent)
    assert outcome.data.object.name == f"Over {mode}"
    # The pool and the relay's leader session (pg_hba lets this user in over TLS only,
    # so the count is what shows that the service connected at all this way).
    assert sessions.get(True, 0) >= 2
    assert (
        await tls_db.fetchval("SELECT name FROM customers WHERE id = 'cus_tls'") == f"Over {mode}"
    )


async def test_postgres_client_certificate_authentication(
    broker: NativeKafka,
    tls_server: NativePostgres,
    tls_database: str,
    tls_db: asyncpg.Connection,
    settings: Settings,
) -> None:
    certificates = tls_server.certificates
    config = secured(
        settings,
        kafka_tls(broker, "MTLS"),
        {
            "database_url": tls_server.tls_url(tls_database, user=CERTIFICATE_USER),
            "database_sslmode": "verify-full",
            "database_ssl_root_cert": certificates.ca,
            "database_ssl_cert": certificates.client_cert,
            "database_ssl_key": certificates.client_key,
        },
    )
    await insert_customer(tls_db, "cus_cert", invoice_prefix="CERT1")
    command = build_command("cus_cert", {"name": "By certificate"}, source="t", principal="svc")

    async with running_worker(config), CommandSender(config) as sender:
        outcome = await sender.send_and_wait(command, within=60)

    assert isinstance(outcome, CustomerUpdatedEvent)
    assert outcome.data.object.name == "By certificate"


# -- refusals ------------------------------------------------------------------------


def _wrong_password(tmp: Path) -> Path:
    path = tmp / "wrong-password"
    path.write_text("not-the-password\n")
    return path


#: (Kafka mode, what goes wrong, settings changed on top of the mode's, words the error
#: must contain). The endpoint is checked separately.
KAFKA_REFUSALS: list[tuple[str, str, str]] = [
    ("SSL", "wrong CA", "unknown CA"),
    ("SSL", "wrong host", "hostname mismatch"),
    ("SSL", "expired", "expired"),
    ("SASL_SSL", "wrong CA", "unknown CA"),
    ("SASL_SSL", "wrong host", "hostname mismatch"),
    ("SASL_SSL", "bad password", "Authentication failed"),
    ("MTLS", "wrong CA", "unknown CA"),
    ("MTLS", "wrong host", "hostname mismatch"),
    ("MTLS", "no client certificate", "client certificate"),
]


def kafka_refusal(broker: NativeKafka, mode: str, fault: str, tmp: Path) -> dict[str, Any]:
    listener = {"wrong host": f"{mode}_OTHER_HOST", "expired": "SSL_EXPIRED"}.get(fault, mode)
    update = kafka_tls(broker, mode, listener)
    if fault == "wrong CA":
        update["kafka_ssl_cafile"] = broker.certificates.other_ca
    elif fault == "bad password":
        update["kafka_sasl_password_file"] = _wrong_password(tmp)
    elif fault == "no client certificate":
        update["kafka_ssl_certfile"] = update["kafka_ssl_keyfile"] = None
    return update


POSTGRES_REFUSALS: list[tuple[str, str]] = [
    ("wrong CA", "unknown CA"),
    ("wrong host", "hostname mismatch"),
    ("bad password", "password authentication failed"),
    ("no client certificate", "requires a valid client certificate"),
    ("no TLS", "no encryption"),
    ("server without TLS", "does not offer TLS"),
]


def postgres_refusal(
    server: NativePostgres, database: str, fault: str, tmp: Path
) -> dict[str, Any]:
    update = postgres_tls(
        server, database, host=OTHER_HOST if fault == "wrong host" else "127.0.0.1"
    )
    if fault == "wrong CA":
        update["database_ssl_root_cert"] = server.certificates.other_ca
    elif fault == "bad password":
        update["database_password_file"] = _wrong_password(tmp)
    elif fault == "no client certificate":
        update["database_url"] = server.tls_url(database, user=CERTIFICATE_USER)
        update["database_password_file"] = None
    elif fault == "no TLS":
        update = {**update, "database_sslmode": "disable", "database_ssl_root_cert": None}
    elif fault == "server without TLS":
        # The stack's main PostgreSQL (the wheel's, built without OpenSSL).
        plain = native_postgres(os.environ)
        update = {**update, "database_url": plain.url(), "database_password_file": None}
    return update


def environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.environment(), "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}


async def run_cli(settings: Settings, *arguments: str, within: float = 60) -> tuple[int, str]:
    """Exit status and everything written (stdout and stderr), of ``customer-service``."""
    process = await asyncio.create_subprocess_exec(
        CLI,
        *arguments,
        env=environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=within)
    except TimeoutError:
        process.kill()
        raise AssertionError(f"customer-service {' '.join(arguments)} was still running") from None
    assert process.returncode is not None
    return process.returncode, output.decode()


def assert_refused_at_start(code: int, output: str, endpoint: str, reason: str) -> None:
    assert code == 1, output
    assert endpoint in output, output
    assert reason in output, output
    # Refused once, reported once: no waiting for a server that is there.
    assert "waiting_for_kafka" not in output, output
    assert "waiting_for_database" not in output, output
    # The reason is the last word, on stderr, plain (uvloop may log its own copy of the
    # handshake error before it: MagicStack/uvloop#437).
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    assert reason in last, last
    assert endpoint in last, last


@pytest.mark.parametrize(("mode", "fault", "reason"), KAFKA_REFUSALS)
async def test_a_kafka_refusal_stops_the_worker_at_start_with_the_reason(
    broker: NativeKafka,
    settings: Settings,
    tmp_path: Path,
    mode: str,
    fault: str,
    reason: str,
) -> None:
    config = secured(settings, kafka_refusal(broker, mode, fault, tmp_path))
    code, output = await run_cli(config, "worker")
    assert_refused_at_start(code, output, config.kafka_bootstrap_servers, reason)


async def test_a_refused_child_stops_the_supervisor_of_several_processes(
    broker: NativeKafka, settings: Settings, tmp_path: Path
) -> None:
    """Under ``--processes`` the refused child exits 1 and the supervisor exits with it,
    rather than restarting it into the same refusal."""
    config = secured(settings, kafka_refusal(broker, "SSL", "wrong CA", tmp_path))
    code, output = await run_cli(config, "worker", "--processes", "2")
    assert code == 1, output
    assert f"TLS with Kafka at {config.kafka_bootstrap_servers} failed: unknown CA" in output
    assert "supervisor_child_exited" in output, output
    assert "waiting_for_kafka" not in output, output


@pytest.mark.parametrize(("fault", "reason"), POSTGRES_REFUSALS)
async def test_a_postgres_refusal_stops_the_worker_at_start_with_the_reason(
    broker: NativeKafka,
    tls_server: NativePostgres,
    tls_database: str,
    settings: Settings,
    tmp_path: Path,
    fault: str,
    reason: str,
) -> None:
    config = secured(
        settings,
        kafka_tls(broker, "SSL"),
        postgres_refusal(tls_server, tls_database, fault, tmp_path),
    )
    code, output = await run_cli(config, "worker")
    host = OTHER_HOST if fault == "wrong host" else "127.0.0.1"
    port = (
        native_postgres(os.environ).port() if fault == "server without TLS" else tls_server.port()
    )
    assert_refused_at_start(code, output, f"{host}:{port}", reason)


@pytest.mark.parametrize(
    "verb",
    ["relay", "migrate", "create-topics", "dlq list", "outbox list", "tail --from-beginning"],
)
async def test_every_verb_stops_with_the_reason_when_refused(
    broker: NativeKafka,
    tls_server: NativePostgres,
    tls_database: str,
    settings: Settings,
    tmp_path: Path,
    verb: str,
) -> None:
    """Each verb that talks to Kafka meets a Kafka it does not trust; each that talks only
    to PostgreSQL meets one that refuses its password."""
    kafka_fault = kafka_refusal(broker, "SSL", "wrong CA", tmp_path)
    database_fault = postgres_refusal(tls_server, tls_database, "bad password", tmp_path)
    only_database = verb in ("migrate", "outbox list")
    config = secured(
        settings,
        kafka_tls(broker, "SSL") if only_database else kafka_fault,
        database_fault if only_database else postgres_tls(tls_server, tls_database),
    )
    code, output = await run_cli(config, *verb.split())
    if only_database:
        assert_refused_at_start(code, output, str(tls_server.port()), "password authentication")
    else:
        assert_refused_at_start(code, output, config.kafka_bootstrap_servers, "unknown CA")


async def test_the_cli_verbs_work_over_tls(
    broker: NativeKafka,
    tls_server: NativePostgres,
    tls_database: str,
    settings: Settings,
) -> None:
    config = secured(
        settings, kafka_tls(broker, "SASL_SSL"), postgres_tls(tls_server, tls_database)
    )
    for verb in (
        ["migrate"],
        ["create-topics"],
        ["seed", "--count", "1"],
        ["dlq", "list"],
        ["outbox", "list"],
    ):
        code, output = await run_cli(config, *verb)
        assert code == 0, (verb, output)
    async with running_worker(config):
        code, output = await run_cli(
            config, "send", "cus_demo_000001", "--name", "Sent over TLS", "--within", "60"
        )
    assert code == 0, output
    code, output = await run_cli(config, "tail", "--from-beginning", "--count", "1")
    assert code == 0, output
    assert "updated   cus_demo_000001" in output, output
    assert "changed: name" in output, output


async def test_secrets_never_reach_the_logs(
    broker: NativeKafka,
    tls_server: NativePostgres,
    tls_database: str,
    tls_db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """A worker process at DEBUG that applies a command, the client and a verb, and a
    refused start, with every secret given as a file: none of the secrets, nor the
    private keys, appear in anything the processes wrote."""
    certificates = broker.certificates
    config = secured(
        settings, kafka_tls(broker, "SASL_SSL"), postgres_tls(tls_server, tls_database)
    )
    mtls = secured(settings, kafka_tls(broker, "MTLS"), postgres_tls(tls_server, tls_database))
    refused = secured(
        settings,
        kafka_tls(broker, "SSL"),
        postgres_refusal(tls_server, tls_database, "bad password", tmp_path),
    )
    await insert_customer(tls_db, "cus_secret", invoice_prefix="SECR1")
    worker = await asyncio.create_subprocess_exec(
        CLI,
        "worker",
        env=environment(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        sent = await run_cli(config, "send", "cus_secret", "--name", "Quiet", "--within", "60")
    finally:
        worker.terminate()
        worker_output, _ = await asyncio.wait_for(worker.communicate(), timeout=60)
    listed = await run_cli(mtls, "dlq", "list")
    failed = await run_cli(refused, "worker")
    assert [sent[0], listed[0], failed[0], worker.returncode] == [0, 0, 1, 0]
    logged = worker_output.decode()
    assert '"worker_started"' in logged

    secrets = [
        broker.sasl_credentials().password,
        tls_server.password(),
        "not-the-password",
        *(key_line(path) for path in (certificates.client_key, certificates.server_key)),
    ]
    for output in (logged, sent[1], listed[1], failed[1]):
        for secret in secrets:
            assert secret not in output


def key_line(path: Path) -> str:
    """A line of base64 from the middle of a PEM private key."""
    return path.read_text().splitlines()[1]
